//! The report opened in a real browser: Debian's Chromium, headless, renders a recorded run's
//! report to a PNG and dumps its DOM. The PNG must not be blank (and the p99 line must be
//! drawn in it), and the DOM must hold the title and every chart. Chromium is installed by
//! `scripts/setup.sh`; without it this test fails and says so.
//!
//! Chromium runs in a process group of its own (led by a process of the test's, so that the
//! group's id stays Chromium's until the group is killed) with its own temporary profile
//! and home, within a deadline; when it is done the group is killed, and so is anything
//! whose command line names the temporary directory (the crash handler, which leaves the
//! group), so no process outlives the test.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{chart_ids, TempDir};

/// How long one Chromium run may take before it is killed (a cold start on a loaded CI
/// machine takes seconds; a hang takes forever).
const DEADLINE: Duration = Duration::from_secs(120);

fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromium is not on PATH: run scripts/setup.sh (it installs Debian's chromium \
                 package), then run this test again"
            )
        })
}

/// Live (not zombie) processes of the group `pgid`, or whose command line names `marker`
/// (the crash handler starts in a session of its own, but its database is under the
/// temporary home given to Chromium).
fn ours(pgid: u32, marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // pid (comm) state ppid pgrp ...: the fields after the last ')'.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.first() == Some(&"Z") {
                return false;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            fields.get(2) == Some(&pgid.to_string().as_str())
                || String::from_utf8_lossy(&cmdline).contains(marker)
        })
        .collect()
}

/// SIGKILL to Chromium's group and to anything else it started (by pid), then until none is
/// left (bounded).
fn kill_ours(pgid: u32, marker: &str) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = ours(pgid, marker);
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "chromium processes left behind: {left:?}"
        );
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(left.iter().map(u32::to_string))
            .stderr(Stdio::null())
            .status();
        // Scan again once one of them has exited (its pidfd turns readable), not on a timer.
        wait_any_exit(&left, deadline);
    }
}

/// Blocks until one of `pids` has exited or `until` has passed; at once when one is
/// already gone.
fn wait_any_exit(pids: &[u32], until: std::time::Instant) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    use rustix::process::{pidfd_open, Pid, PidfdFlags};
    let Some(fds) = pids
        .iter()
        .map(|&p| pidfd_open(Pid::from_raw(p as i32)?, PidfdFlags::empty()).ok())
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let mut polled: Vec<PollFd> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let left = Timespec::try_from(until.saturating_duration_since(std::time::Instant::now())).ok();
    let _ = poll(&mut polled, left.as_ref());
}

/// Runs headless Chromium on `url` with `args`, stdout to `stdout`, in its own process group
/// and profile, killed at the deadline; returns its exit status.
fn run_chromium(work: &Path, args: &[String], url: &str, stdout: &Path) -> ExitStatus {
    use std::os::unix::process::CommandExt;
    let profile = work.join(format!("profile-{}", args.len()));
    // A home of its own: the crash handler's database and any cache land in the temporary
    // directory, and name it on their command lines.
    let home = work.join("home");
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-crash-reporter",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--window-size=1280,4000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .env("HOME", &home)
    .env("XDG_CONFIG_HOME", home.join(".config"))
    .env("XDG_CACHE_HOME", home.join(".cache"))
    .stdin(Stdio::null())
    .stdout(File::create(stdout).unwrap())
    .stderr(File::create(work.join("chromium.log")).unwrap());
    // The group's leader is a process of ours that waits on its stdin and is reaped only
    // after the group is killed: while it is unreaped the group's id cannot be reused, so
    // the kill below reaches Chromium's group and no other, even when Chromium itself has
    // already been reaped.
    let mut leader = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("starting the process group's leader");
    let pgid = leader.id();
    cmd.process_group(i32::try_from(pgid).expect("a pid"));
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            kill_ours(pgid, &work.display().to_string());
            let _ = leader.wait();
            panic!("starting chromium: {e}");
        }
    };
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(());
        status
    });
    let in_time = rx.recv_timeout(DEADLINE).is_ok();
    // Whether it finished or hangs: the group goes, helpers and leader included, and only
    // then is the leader reaped.
    kill_ours(pgid, &work.display().to_string());
    let _ = leader.wait();
    let status = waiter.join().unwrap().expect("waiting for chromium");
    let log = std::fs::read_to_string(work.join("chromium.log")).unwrap_or_default();
    assert!(
        in_time,
        "chromium did not finish within {DEADLINE:?}; its log:\n{log}"
    );
    assert!(
        status.success(),
        "chromium failed ({status}); its log:\n{log}"
    );
    status
}

/// Pixels (RGB) of a PNG and its size.
fn decode(png_path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let file = std::io::BufReader::new(File::open(png_path).expect("the screenshot"));
    let mut decoder = png::Decoder::new(file);
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("a PNG of sane size")];
    let info = reader.next_frame(&mut buf).expect("a PNG frame");
    let channels = info.color_type.samples();
    let pixels = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|c| match channels {
            1 | 2 => [c[0], c[0], c[0]],
            _ => [c[0], c[1], c[2]],
        })
        .collect();
    (info.width, info.height, pixels)
}

#[test]
fn the_report_renders_in_chromium() {
    let work = TempDir::new("browser");
    let run = common::showcase(work.path());
    let report = run.render_report().unwrap();
    let url = format!("file://{}", report.display());
    let title = {
        let html = std::fs::read_to_string(&report).unwrap();
        let start = html.find("<title>").unwrap() + "<title>".len();
        let end = html.find("</title>").unwrap();
        html[start..end].to_string()
    };

    let screenshot = work.path().join("report.png");
    run_chromium(
        work.path(),
        &[format!("--screenshot={}", screenshot.display())],
        &url,
        &work.path().join("screenshot.out"),
    );
    let (width, height, pixels) = decode(&screenshot);
    assert_eq!((width, height), (1280, 4000), "the window size");
    // Not blank: most pixels are the page's background, but far from all.
    let mut counts = std::collections::HashMap::new();
    for p in &pixels {
        *counts.entry(*p).or_insert(0usize) += 1;
    }
    let (background, _) = counts.iter().max_by_key(|(_, n)| **n).unwrap();
    let far = |p: &[u8; 3], q: &[u8; 3]| {
        p.iter()
            .zip(q)
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .sum::<i32>()
            > 24
    };
    let drawn = pixels.iter().filter(|p| far(p, background)).count();
    eprintln!(
        "{drawn} of {} pixels drawn, background {background:?}",
        pixels.len()
    );
    assert!(
        drawn > pixels.len() / 50,
        "the screenshot is nearly blank: {drawn} of {} pixels differ from the background",
        pixels.len()
    );
    // The charts were drawn: the p99 line's blue (#1d4ed8) is on the page.
    let p99 = pixels
        .iter()
        .filter(|p| !far(p, &[0x1d, 0x4e, 0xd8]))
        .count();
    assert!(p99 > 200, "no p99 line in the screenshot ({p99} pixels)");

    let dom_path = work.path().join("dom.html");
    run_chromium(work.path(), &["--dump-dom".to_string()], &url, &dom_path);
    let dom = std::fs::read_to_string(&dom_path).unwrap();
    assert!(
        dom.contains(&format!("<title>{title}</title>")),
        "the DOM has no title {title:?}"
    );
    for id in chart_ids(&run) {
        assert!(
            dom.contains(&format!("id=\"{id}\"")),
            "chart {id} missing from the DOM"
        );
    }

    // The comparison page too: both runs' charts are in its DOM.
    let redis = common::write_samples(&work.path().join("samples"))
        .into_iter()
        .find(|(name, _)| name == "sample-redis")
        .unwrap()
        .1;
    let compare = run.render_compare(&redis, "tandem", "redis").unwrap();
    let compare_dom = work.path().join("compare-dom.html");
    run_chromium(
        work.path(),
        &["--dump-dom".to_string()],
        &format!("file://{}", compare.display()),
        &compare_dom,
    );
    let dom = std::fs::read_to_string(&compare_dom).unwrap();
    assert!(dom.contains("<title>tandem: tandem vs redis</title>"));
    for id in ["latency", "throughput", "spectrum"] {
        assert!(
            dom.contains(&format!("id=\"{id}\"")),
            "chart {id} missing from the comparison's DOM"
        );
    }
    if let Some(keep) = std::env::var_os("TANDEM_KEEP_SCREENSHOT") {
        std::fs::copy(&screenshot, keep).unwrap();
    }

    // A fleet run's report (the recorded fleet fixture): its charts, the lanes of its pairs
    // and the table linking to each pair's report are in the DOM.
    let fleet = common::fleet_fixture(&work.path().join("fleet"));
    let fleet_report = fleet.render_report().unwrap();
    let fleet_dom = work.path().join("fleet-dom.html");
    run_chromium(
        work.path(),
        &["--dump-dom".to_string()],
        &format!("file://{}", fleet_report.display()),
        &fleet_dom,
    );
    let dom = std::fs::read_to_string(&fleet_dom).unwrap();
    assert!(
        dom.contains("<title>tandem fleet · "),
        "the fleet report's title"
    );
    for id in [
        "verdict",
        "latency",
        "throughput",
        "lanes",
        "pairs",
        "spectrum",
    ] {
        assert!(
            dom.contains(&format!("id=\"{id}\"")),
            "{id} missing from the fleet report's DOM"
        );
    }
    let summary = fleet.read_summary().unwrap();
    for p in &summary.fleet.as_ref().unwrap().pairs {
        assert!(
            dom.contains(&format!("href=\"{}/report.html\"", p.dir)),
            "no link to {}'s report",
            p.name
        );
    }
}
