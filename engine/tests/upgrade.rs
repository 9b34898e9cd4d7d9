//! The rolling upgrade of a real pair under pipelined writes: 1.0 -> 2.0 completes with
//! nothing lost and the gated command working only after the features are enabled; a faulty
//! 2.0 is rolled back to 1.0 with nothing lost; mixed pairs replicate both ways and refuse to
//! enable the features.

mod common;

use common::{lost, versions, Pair, Writer, UPGRADE_QUICK as QUICK};
use resp::Reply;
use serde_json::Value;

async fn upgrade(pair: &Pair, args: &[&str]) -> Value {
    let mut cmd = vec!["UPGRADE"];
    cmd.extend_from_slice(args);
    match pair.admin(&cmd).await {
        Reply::Simple(s) => serde_json::from_str(&s).expect("upgrade report"),
        Reply::Bulk(b) => serde_json::from_slice(&b).expect("upgrade report"),
        other => panic!("upgrade: {other}"),
    }
}

async fn transfer(pair: &Pair, id: &str) -> Reply {
    let mut c = pair.active_client().await;
    let _ = c
        .call(&[b"SESSION.OPEN", id.as_bytes(), b"alice"])
        .await
        .unwrap();
    c.call(&[b"SESSION.TRANSFER", id.as_bytes(), b"bob"])
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_upgrade_under_pipelined_writes_completes_and_loses_nothing() {
    let pair = Pair::up();
    pair.wait_in_sync().await;
    let before = transfer(&pair, "s-before").await;
    assert!(
        before
            .error_message()
            .is_some_and(|e| e.contains("unknown command")),
        "1.0: {before}"
    );
    let writer = Writer::start(&pair, "up:");
    let mut opts = QUICK.to_vec();
    opts.insert(0, "2.0");
    let report = upgrade(&pair, &opts).await;
    let written = writer.finish().await;
    assert_eq!(report["outcome"], "completed", "{report:#}");
    let names: Vec<&str> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, reports::timeline::phase::UPGRADE.to_vec());
    assert!(
        report["evaluation"]["stats"]["commands"].as_u64().unwrap() > 0,
        "the writer followed the switchover"
    );
    let s = pair.wait_in_sync().await;
    assert_eq!(versions(&s), ["2.0", "2.0"]);
    assert!(s["engines"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["features_enabled"] == true));
    let after = transfer(&pair, "s-after").await;
    assert_eq!(
        after,
        Reply::Simple("OK".into()),
        "the gated command after step 8"
    );
    assert!(
        written.acked.len() > 1000,
        "writes went on: {}",
        written.acked.len()
    );
    let mut c = pair.active_client().await;
    assert_eq!(lost(&mut c, &written.acked).await, Vec::<String>::new());
    let timeline: Value =
        serde_json::from_str(&std::fs::read_to_string(pair.dir.join("timeline.json")).unwrap())
            .unwrap();
    assert!(timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "features_enabled"));
    let s = pair
        .wait_for(|s| s["engines"][0]["digest"] == s["engines"][1]["digest"])
        .await;
    assert_eq!(
        s["engines"][0]["seq_applied"],
        s["engines"][1]["seq_applied"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_version_is_rolled_back_with_nothing_lost() {
    let pair = Pair::up();
    pair.wait_in_sync().await;
    let writer = Writer::start(&pair, "fb:");
    let mut opts = QUICK.to_vec();
    opts.splice(0..0, ["2.0", "fault", "errors"]);
    let report = upgrade(&pair, &opts).await;
    let written = writer.finish().await;
    assert_eq!(report["outcome"], "rolled_back", "{report:#}");
    assert!(
        report["reason"].as_str().unwrap().contains("error rate"),
        "{report:#}"
    );
    let names: Vec<&str> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(&names[..5], &reports::timeline::phase::UPGRADE[..5]);
    assert_eq!(&names[5..], reports::timeline::phase::FALLBACK_PATH);
    let s = pair.wait_in_sync().await;
    assert_eq!(versions(&s), ["1.0", "1.0"]);
    assert!(written.errors > 0, "the faulty build failed some writes");
    let mut c = pair.active_client().await;
    assert_eq!(lost(&mut c, &written.acked).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_versions_replicate_both_ways_and_refuse_to_enable_the_features() {
    let pair = Pair::up();
    pair.wait_in_sync().await;
    let writer = Writer::start(&pair, "mx:");
    // A 2.0 standby follows the 1.0 active...
    let r = pair.admin(&["RELOAD", "b", "2.0"]).await;
    assert!(!r.is_error(), "{r}");
    let s = pair.wait_in_sync().await;
    assert_eq!(versions(&s), ["1.0", "2.0"]);
    let standby = Pair::engine(&s, "standby").unwrap();
    assert_eq!(standby["versions_differ"], true);
    let refused = pair.admin(&["FEATURES.ENABLE"]).await;
    assert!(
        refused
            .error_message()
            .is_some_and(|e| e.contains("every engine")),
        "{refused}"
    );
    // ...then the 1.0 engine follows the 2.0 active, in the 1.0 format.
    let r = pair.admin(&["SWITCHOVER"]).await;
    assert!(!r.is_error(), "{r}");
    let s = pair.wait_in_sync().await;
    assert_eq!(Pair::engine(&s, "active").unwrap()["app_version"], "2.0");
    assert_eq!(Pair::engine(&s, "standby").unwrap()["app_version"], "1.0");
    let gated = transfer(&pair, "s-mixed").await;
    assert!(
        gated
            .error_message()
            .is_some_and(|e| e.starts_with("FEATUREDISABLED")),
        "{gated}"
    );
    let refused = pair.admin(&["FEATURES.ENABLE"]).await;
    assert!(refused.is_error(), "{refused}");
    let written = writer.finish().await;
    let s = pair
        .wait_for(|s| {
            s["engines"][0]["digest"] == s["engines"][1]["digest"]
                && s["engines"][0]["seq_applied"] == s["engines"][1]["seq_applied"]
        })
        .await;
    assert!(s["engines"][0]["work_units"].as_u64().unwrap() >= 1);
    let mut c = pair.active_client().await;
    assert_eq!(lost(&mut c, &written.acked).await, Vec::<String>::new());
}
