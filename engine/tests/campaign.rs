//! `tandem campaign` over real pairs registered in a real etcd (Debian's `etcd-server`,
//! started by `fleet::local::LocalEtcd` on loopback in a temporary directory): a campaign
//! over four pairs under load completes with nothing acknowledged lost; a faulty 2.0 stops
//! the campaign after the canary rolls back, the other pairs untouched; the campaign process
//! SIGKILLed mid-wave and the same command run again completes, every pair upgraded exactly
//! once. Every wait is on a process's exit, a pair's status or etcd's record, with a deadline.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{following_client, lost, versions, Pair, Writer};
use fleet::keys::{CampaignRecord, CampaignState, Layout, Outcome, PairRecord};
use fleet::local::LocalEtcd;

/// Short windows, and an acceptance check that judges errors only (as `upgrade.rs`).
const QUICK: [&str; 8] = [
    "--baseline",
    "400ms",
    "--evaluate",
    "800ms",
    "--settle",
    "200ms",
    "--p99-slack-ms",
    "60000",
];

/// One fleet at a time: three fleets of pairs and their etcds at once on a CI machine of two
/// cores slow etcd's writes down to where a supervisor's witness gives up on them.
static ONE_FLEET: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A fleet: a real etcd and `n` pairs registered in it (`p1`...), sharing one secret.
struct Fleet {
    _one: std::sync::MutexGuard<'static, ()>,
    pairs: Vec<Pair>,
    etcd: Option<LocalEtcd>,
    dir: PathBuf,
    secret_file: PathBuf,
}

impl Fleet {
    async fn up(what: &str, n: usize) -> Fleet {
        let one = ONE_FLEET.lock().unwrap_or_else(|e| e.into_inner());
        let dir =
            std::env::temp_dir().join(format!("tandem-campaign-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let etcd = LocalEtcd::start(&dir.join("etcd")).expect("etcd starts (Debian's etcd-server)");
        let secret_file = dir.join("secret");
        replicator::Secret::load_or_create(&secret_file).expect("secret");
        let url = etcd.url();
        // The pairs start side by side.
        let pairs: Vec<Pair> = std::thread::scope(|s| {
            let handles: Vec<_> = (1..=n)
                .map(|i| {
                    let (url, secret_file) = (&url, &secret_file);
                    s.spawn(move || {
                        let name = format!("p{i}");
                        Pair::up_sharing(secret_file, &["--etcd", url, "--name", &name])
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("pair up"))
                .collect()
        });
        let fleet = Fleet {
            _one: one,
            pairs,
            etcd: Some(etcd),
            dir,
            secret_file,
        };
        for p in &fleet.pairs {
            p.wait_in_sync().await;
        }
        for i in 1..=n {
            fleet
                .wait_pair(&format!("p{i}"), |r| r.version.as_deref() == Some("1.0"))
                .await;
        }
        fleet
    }

    fn url(&self) -> String {
        self.etcd.as_ref().unwrap().url()
    }

    fn client(&self) -> fleet::Client {
        fleet::Client::new(&self.url()).unwrap()
    }

    async fn record(&self) -> Option<CampaignRecord> {
        self.client()
            .get(&Layout::default().campaign())
            .await
            .expect("etcd answers")
            .map(|kv| serde_json::from_slice(&kv.value).expect("a campaign record"))
    }

    async fn pair_record(&self, name: &str) -> PairRecord {
        let kv = self
            .client()
            .get(&Layout::default().pair(name))
            .await
            .expect("etcd answers")
            .expect("registered");
        serde_json::from_slice(&kv.value).expect("a pair record")
    }

    /// Waits, on an etcd watch of `P/pair/NAME`, until `cond` holds.
    async fn wait_pair(&self, name: &str, cond: impl Fn(&PairRecord) -> bool) -> PairRecord {
        let key = Layout::default().pair(name);
        common::etcd_wait(&self.client(), &key, false, name, || async {
            let r = self.pair_record(name).await;
            cond(&r).then_some(r)
        })
        .await
    }

    /// `tandem campaign ARGS --etcd URL` with the fleet's secret; output to a file.
    fn campaign(&self, args: &[&str], log: &str) -> std::process::Child {
        let out = std::fs::File::create(self.dir.join(log)).expect("log");
        Command::new(env!("CARGO_BIN_EXE_tandem"))
            .env("TANDEM_SECRET_FILE", &self.secret_file)
            .arg("campaign")
            .args(args)
            .args(["--etcd", &self.url()])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("tandem campaign")
    }

    /// Runs `tandem campaign ARGS` to its end; its exit code and output.
    async fn run(&self, args: &[&str], log: &str) -> (i32, String) {
        let mut child = self.campaign(args, log);
        let pid = child.id();
        let waited = tokio::time::timeout(
            Duration::from_secs(180),
            tokio::task::spawn_blocking(move || child.wait()),
        )
        .await;
        let output = std::fs::read_to_string(self.dir.join(log)).unwrap_or_default();
        let status = match waited {
            Ok(done) => done.expect("wait task").expect("wait"),
            Err(_) => {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                panic!("tandem campaign did not end; its output:\n{output}");
            }
        };
        (status.code().unwrap_or(-1), output)
    }

    /// `tandem campaign status` (human, then JSON).
    fn status(&self, json: bool) -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
        cmd.args(["campaign", "status", "--etcd", &self.url()]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().expect("tandem campaign status");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.pairs.clear(); // each pair's processes, killed by its own drop
        if std::thread::panicking() {
            for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    eprintln!("---- {}\n{text}", path.display());
                }
            }
        }
        drop(self.etcd.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Upgrade starts in a pair's timeline.json.
fn upgrade_starts(pair: &Pair) -> usize {
    pair.timeline()
        .iter()
        .filter(|e| e.kind == common::EventKind::UpgradeStart)
        .count()
}

/// Every acknowledged write reads back from the pair's active.
async fn assert_none_lost(pair: &Pair, acked: &std::collections::HashMap<String, String>) {
    let s = pair.wait_in_sync().await;
    let addr = Pair::engine(&s, "active").unwrap()["client_addr"]
        .as_str()
        .unwrap()
        .to_string();
    let mut client = following_client(&addr).await.expect("the active");
    client.set_timeout(Some(Duration::from_secs(30)));
    let missing = lost(&mut client, acked).await;
    assert!(
        missing.is_empty(),
        "{}: {} of {} lost: {:?}",
        pair.dir.display(),
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

const PREFIXES: [&str; 4] = ["w1:", "w2:", "w3:", "w4:"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_over_four_pairs_under_load_completes_with_nothing_lost() {
    let fleet = Fleet::up("load", 4).await;
    let writers: Vec<Writer> = fleet
        .pairs
        .iter()
        .zip(PREFIXES)
        .map(|(p, prefix)| Writer::start(p, prefix))
        .collect();
    for w in &writers {
        w.wait_for_more(200).await;
    }
    let mut args = vec!["--to", "2.0", "--parallel", "2"];
    args.extend(QUICK);
    let (code, output) = fleet.run(&args, "campaign.log").await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("wave 1/3 (canary): p1"), "{output}");
    assert!(output.contains("wave 3/3: p4"), "{output}");
    let mut written = Vec::new();
    for w in writers {
        written.push(w.finish().await);
    }
    let record = fleet.record().await.expect("the campaign");
    assert_eq!(record.state, CampaignState::Completed, "{record:#?}");
    assert_eq!(record.waves, vec![vec!["p1"], vec!["p2", "p3"], vec!["p4"]]);
    assert_eq!(record.count(Outcome::Upgraded), 4, "{record:#?}");
    assert_eq!(record.runs, 1);
    for ((pair, w), i) in fleet.pairs.iter().zip(&written).zip(1..) {
        let s = pair.wait_in_sync().await;
        assert_eq!(versions(&s), ["2.0", "2.0"], "p{i}");
        assert!(
            s["engines"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["features_enabled"] == true),
            "p{i}: {s:#}"
        );
        assert!(w.acked.len() > 200, "p{i}: writes went on");
        assert_none_lost(pair, &w.acked).await;
        assert_eq!(upgrade_starts(pair), 1, "p{i}");
        let r = fleet.pair_record(&format!("p{i}")).await;
        let u = r.upgrade.expect("an upgrade record");
        assert_eq!(u.tag, Some(format!("{}/p{i}", record.id)));
        assert_eq!(u.outcome.as_deref(), Some("completed"));
    }
    let status = fleet.status(false);
    assert!(
        status.contains(&format!("campaign {}: to 2.0, completed", record.id)),
        "{status}"
    );
    assert_eq!(status.matches(" upgraded ").count(), 4, "{status}");
    let json: serde_json::Value = serde_json::from_str(&fleet.status(true)).unwrap();
    assert_eq!(json["pairs"].as_array().unwrap().len(), 4);
    assert_eq!(json["campaign"]["state"]["state"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_version_stops_the_campaign_after_the_canary_rolls_back() {
    let fleet = Fleet::up("fault", 3).await;
    // Load on the canary, so that the faulty build's errors show in its evaluation.
    let writer = Writer::start(&fleet.pairs[0], "fault:");
    writer.wait_for_more(200).await;
    let mut args = vec!["--to", "2.0", "--fault", "errors", "--parallel", "2"];
    args.extend(QUICK);
    let (code, output) = fleet.run(&args, "campaign.log").await;
    assert_eq!(code, 3, "{output}");
    let written = writer.finish().await;
    assert!(output.contains("p1: ROLLED BACK"), "{output}");
    assert!(output.contains("STOPPED"), "{output}");
    let record = fleet.record().await.expect("the campaign");
    let CampaignState::Stopped(why) = &record.state else {
        panic!("{record:#?}")
    };
    assert!(why.starts_with("p1 rolled back: "), "{why}");
    assert!(why.contains("error rate"), "{why}");
    assert_eq!(record.pairs["p1"].outcome, Outcome::RolledBack);
    // The canary is back on 1.0 with nothing lost; the others were never asked.
    let s = fleet.pairs[0].wait_in_sync().await;
    assert_eq!(versions(&s), ["1.0", "1.0"]);
    assert!(written.errors > 0, "the faulty build failed some writes");
    assert_none_lost(&fleet.pairs[0], &written.acked).await;
    for (pair, name) in fleet.pairs.iter().zip(["p1", "p2", "p3"]).skip(1) {
        assert_eq!(record.pairs[name].outcome, Outcome::Pending);
        let r = fleet.pair_record(name).await;
        assert_eq!(r.upgrade, None, "{name}: {r:#?}");
        assert_eq!(r.version.as_deref(), Some("1.0"));
        assert_eq!(upgrade_starts(pair), 0, "{name}");
    }
    let status = fleet.status(false);
    assert!(status.contains("stopped: p1 rolled back"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_killed_mid_wave_is_resumed_by_the_same_command() {
    let fleet = Fleet::up("resume", 4).await;
    let mut args = vec!["--to", "2.0", "--owner-ttl", "2s"];
    args.extend(QUICK);
    let first = fleet.campaign(&args, "first.log");
    // Wait until a pair of the second wave is Running in etcd, then SIGKILL the process.
    let key = Layout::default().campaign();
    let first = std::cell::RefCell::new(first);
    common::etcd_wait(&fleet.client(), &key, false, "no second wave", || async {
        let running = fleet.record().await.is_some_and(|r| {
            r.pairs
                .values()
                .any(|p| p.wave == 1 && p.outcome == Outcome::Running)
        });
        assert!(
            running || first.borrow_mut().try_wait().unwrap().is_none(),
            "the campaign ended before its second wave: {}",
            std::fs::read_to_string(fleet.dir.join("first.log")).unwrap_or_default()
        );
        running.then_some(())
    })
    .await;
    let mut first = first.into_inner();
    first.kill().unwrap();
    first.wait().unwrap();
    let killed = fleet.record().await.unwrap();
    assert_eq!(killed.state, CampaignState::Running);
    // Another version is refused while this campaign is unfinished.
    let (code, output) = fleet.run(&["--to", "1.0"], "other.log").await;
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("is unfinished"), "{output}");
    // The same command again: it waits for the dead process's lease, and finishes the job.
    let (code, output) = fleet.run(&args, "second.log").await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("resuming campaign"), "{output}");
    let record = fleet.record().await.unwrap();
    assert_eq!(record.id, killed.id);
    assert_eq!(record.state, CampaignState::Completed, "{record:#?}");
    assert_eq!(record.runs, 2);
    assert_eq!(record.count(Outcome::Upgraded), 4, "{record:#?}");
    for (pair, i) in fleet.pairs.iter().zip(1..) {
        let s = pair.wait_in_sync().await;
        assert_eq!(versions(&s), ["2.0", "2.0"], "p{i}");
        assert_eq!(upgrade_starts(pair), 1, "p{i} upgraded exactly once");
        let r = fleet.pair_record(&format!("p{i}")).await;
        assert_eq!(
            r.upgrade.and_then(|u| u.tag),
            Some(format!("{}/p{i}", record.id))
        );
    }
}
