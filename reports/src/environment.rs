//! What ran, where: the build and the machine of a run, read from `/proc` (Linux) with
//! plain fallbacks elsewhere, so that a report says whether two runs can be compared.

use crate::summary::Environment;

/// The git revision this build came from (`git describe`), `unknown` outside a checkout.
pub const GIT_REVISION: &str = env!("TANDEM_GIT_REVISION");

/// The environment of a run made now, on this machine. `target_version` names what was
/// driven (`1.0 -> 2.0`, `redis 7.0.15`).
pub fn capture(target_version: &str) -> Environment {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let hostname = Some(read("/proc/sys/kernel/hostname"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    let os = match (
        read("/proc/sys/kernel/ostype"),
        read("/proc/sys/kernel/osrelease"),
    ) {
        (t, r) if !t.is_empty() => format!("{t} {r} {}", std::env::consts::ARCH),
        _ => format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
    };
    Environment {
        tandem_version: env!("CARGO_PKG_VERSION").to_string(),
        git_revision: GIT_REVISION.to_string(),
        target_version: target_version.to_string(),
        hostname,
        os,
        cpu_model: cpu_model(&read("/proc/cpuinfo")),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get() as u32),
        memory_mb: memory_mb(&read("/proc/meminfo")),
    }
}

fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn memory_mb(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| {
            let kb = l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?;
            kb.trim().parse::<u64>().ok()
        })
        .map_or(0, |kb| kb / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_formats() {
        assert_eq!(
            cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n"),
            "AMD EPYC 7B13"
        );
        assert_eq!(cpu_model(""), "unknown");
        assert_eq!(
            memory_mb("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            24_000
        );
        let env = capture("1.0 -> 2.0");
        assert_eq!(env.target_version, "1.0 -> 2.0");
        assert!(!env.git_revision.is_empty() && !env.os.is_empty());
    }
}
