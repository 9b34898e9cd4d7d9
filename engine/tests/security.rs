//! The pair's control plane is separate and authenticated: engine control is refused on the
//! client port, the control port and the admin endpoint want the pair's secret, a process
//! without it can neither join as a standby (and read the state) nor push an epoch, and a
//! browser's cross-protocol request is closed unanswered. Each attack runs against a real
//! pair, which must go on serving with its epochs and roles untouched.

mod common;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Pair;
use replicator::driver::{self, Turn};
use replicator::{Hello, Identity, LinkConfig, Receiver, ReceiverEvent, Secret};
use resp::{Client, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn addr<'a>(status: &'a serde_json::Value, role: &str, port: &str) -> &'a str {
    Pair::engine(status, role).unwrap()[port].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_commands_on_the_client_port_change_nothing() {
    let pair = Pair::up();
    let before = pair.wait_in_sync().await;
    let standby = addr(&before, "standby", "client_addr").to_string();
    let mut client = Client::connect_timeout(standby.as_str(), Duration::from_secs(5))
        .await
        .unwrap();
    for cmd in [
        &[&b"TANDEM.PROMOTE"[..], b"99"][..],
        &[b"TANDEM.LEASE", b"99", b"60000", b"simplex"],
        &[b"TANDEM.OUTOFSERVICE"],
        &[b"TANDEM.FOLLOW", b"127.0.0.1:1", b"99"],
        &[b"tandem.promote", b"100"],
    ] {
        let reply = client.call(cmd).await.unwrap();
        assert!(
            matches!(&reply, Reply::Error(e) if e.contains("not accepted on the client port")),
            "{reply}"
        );
    }
    let role = client.call(&[b"ROLE"]).await.unwrap();
    assert!(format!("{role}").contains("slave"), "{role}");
    let after = pair.wait_in_sync().await;
    for (b, a) in before["engines"]
        .as_array()
        .unwrap()
        .iter()
        .zip(after["engines"].as_array().unwrap())
    {
        assert_eq!((&b["role"], &b["epoch"]), (&a["role"], &a["epoch"]));
    }
    assert_eq!(before["epoch"], after["epoch"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_port_and_the_admin_endpoint_refuse_a_wrong_secret() {
    let pair = Pair::up();
    let s = pair.wait_in_sync().await;
    let control = addr(&s, "standby", "control_addr").to_string();
    // A control command without the handshake: refused, connection closed.
    let mut c = Client::connect_timeout(control.as_str(), Duration::from_secs(5))
        .await
        .unwrap();
    let reply = c.call(&[b"TANDEM.PROMOTE", b"99"]).await.unwrap();
    assert!(
        matches!(&reply, Reply::Error(e) if e.starts_with("NOAUTH")),
        "{reply}"
    );
    assert!(
        c.call(&[b"PING"]).await.is_err(),
        "the connection stays open"
    );
    // The handshake with another pair's secret fails on both sides' checks.
    let wrong = Secret::from_bytes(*b"another-pairs-secret");
    for (target, service) in [
        (control.as_str(), "control"),
        (pair.admin.as_str(), "admin"),
    ] {
        let e = Client::connect_authenticated(target, Duration::from_secs(5), &wrong, service)
            .await
            .err()
            .expect("a wrong secret is refused");
        assert!(matches!(e, resp::ClientError::Auth(_)), "{service}: {e}");
    }
    // The right secret works on both.
    let mut ok =
        Client::connect_authenticated(&control, Duration::from_secs(5), &pair.secret, "control")
            .await
            .expect("the pair's secret opens the control port");
    assert!(matches!(
        ok.call(&[b"TANDEM.STATUS"]).await.unwrap(),
        Reply::Bulk(_)
    ));
    let after = pair.wait_in_sync().await;
    assert_eq!(s["epoch"], after["epoch"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_request_to_the_admin_endpoint_is_closed_unanswered() {
    let pair = Pair::up();
    pair.wait_in_sync().await;
    for request in [
        &b"POST /SHUTDOWN HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"SHUTDOWN\r\n",
    ] {
        let mut stream = tokio::net::TcpStream::connect(&pair.admin).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("closed within the deadline");
        assert!(read.is_ok() || answer.is_empty());
        assert!(
            !String::from_utf8_lossy(&answer).contains("OK"),
            "{:?} was obeyed: {:?}",
            String::from_utf8_lossy(request),
            String::from_utf8_lossy(&answer)
        );
    }
    // The pair is still up and in sync.
    pair.wait_in_sync().await;
}

/// What an intruding standby saw of the active, and how its link ended.
async fn intrude(replication: &str, secret: Secret, epoch: u64) -> (bool, String) {
    let stream = tokio::net::TcpStream::connect(replication).await.unwrap();
    let identity = Identity {
        engine: "intruder".into(),
        epoch,
        app_name: "sessions".into(),
        app_version: "1.0".into(),
        feature_level: 1,
        ..Identity::default()
    };
    let hello = Hello::new(identity, 0, 0);
    let mut receiver = Receiver::new(Instant::now(), LinkConfig::new(secret), &hello);
    let wake = tokio::sync::Notify::new();
    let mut events = Vec::new();
    let step = |now, input: &[u8], tx: &mut VecDeque<Bytes>| {
        if !input.is_empty() {
            receiver.handle_input(now, input);
        }
        receiver.handle_timeout(now);
        while let Some(ev) = receiver.poll_event() {
            events.push(ev);
        }
        while let Some(f) = receiver.poll_transmit(now) {
            tx.push_back(f);
        }
        Turn {
            deadline: receiver.poll_timeout(),
            done: receiver.is_closed(),
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), driver::run(stream, &wake, step)).await;
    let accepted = events.iter().any(|e| {
        matches!(
            e,
            ReceiverEvent::Accepted { .. } | ReceiverEvent::SnapshotChunk { .. }
        )
    });
    let closed = events
        .iter()
        .find_map(|e| match e {
            ReceiverEvent::Closed { reason } => Some(reason.clone()),
            _ => None,
        })
        .unwrap_or_default();
    (accepted, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_without_the_secret_gets_no_state_and_moves_no_epoch() {
    let pair = Pair::up();
    let before = pair.wait_in_sync().await;
    let mut client = pair.active_client().await;
    assert_eq!(
        client.call(&[b"SET", b"secret-data", b"1"]).await.unwrap(),
        Reply::Simple("OK".into())
    );
    let active = Pair::engine(&before, "active").unwrap().clone();
    let replication = active["replication_addr"].as_str().unwrap();
    let wrong = Secret::from_bytes(*b"guessed-secret-0000");
    let (accepted, reason) = intrude(replication, wrong, 99).await;
    assert!(!accepted, "an intruder was accepted");
    assert!(reason.contains("refused"), "{reason}");
    let after = pair.wait_in_sync().await;
    let a = Pair::engine(&after, "active").unwrap();
    assert_eq!(a["pid"], active["pid"]);
    assert_eq!(
        a["epoch"], active["epoch"],
        "the intruder's epoch moved the active"
    );
    assert_eq!(
        a["counters"]["snapshots_sent"], active["counters"]["snapshots_sent"],
        "a snapshot went to the intruder"
    );
    assert!(
        a["counters"]["replication_links_refused"].as_u64().unwrap()
            > active["counters"]["replication_links_refused"]
                .as_u64()
                .unwrap()
    );
    assert_eq!(
        client.call(&[b"SET", b"still", b"serving"]).await.unwrap(),
        Reply::Simple("OK".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_requirepass_the_client_port_wants_auth_first() {
    let pair = Pair::up_with(&["--requirepass", "s3cret-pass"]);
    let s = pair.wait_in_sync().await;
    let addr = addr(&s, "active", "client_addr").to_string();
    let mut c = Client::connect_timeout(addr.as_str(), Duration::from_secs(5))
        .await
        .unwrap();
    let r = c.call(&[b"SET", b"k", b"v"]).await.unwrap();
    assert!(
        matches!(&r, Reply::Error(e) if e.starts_with("NOAUTH")),
        "{r}"
    );
    let r = c.call(&[b"AUTH", b"wrong"]).await.unwrap();
    assert!(
        matches!(&r, Reply::Error(e) if e.starts_with("WRONGPASS")),
        "{r}"
    );
    let r = c
        .call(&[b"AUTH", b"default", b"s3cret-pass"])
        .await
        .unwrap();
    assert_eq!(r, Reply::Simple("OK".into()));
    assert_eq!(
        c.call(&[b"SET", b"k", b"v"]).await.unwrap(),
        Reply::Simple("OK".into())
    );
    // The pair's own control plane does not use the password: a switchover still works.
    let r = pair.admin(&["SWITCHOVER"]).await;
    assert!(!r.is_error(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_clients_max_are_refused_and_the_others_served() {
    let pair = Pair::up_with(&["--clients-max", "3"]);
    let s = pair.wait_in_sync().await;
    let addr = addr(&s, "active", "client_addr").to_string();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect_timeout(addr.as_str(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            c.call(&[b"PING"]).await.unwrap(),
            Reply::Simple("PONG".into())
        );
        held.push(c);
    }
    let mut extra = Client::connect_timeout(addr.as_str(), Duration::from_secs(5))
        .await
        .unwrap();
    let r = extra.call(&[b"PING"]).await;
    assert!(
        matches!(&r, Ok(Reply::Error(e)) if e.contains("max number of clients")) || r.is_err(),
        "{r:?}"
    );
    // The ones admitted are served; one that leaves frees its place.
    assert_eq!(
        held[0].call(&[b"PING"]).await.unwrap(),
        Reply::Simple("PONG".into())
    );
    drop(held.pop());
    let deadline = Instant::now() + common::DEADLINE;
    loop {
        let mut c = Client::connect_timeout(addr.as_str(), Duration::from_secs(5))
            .await
            .unwrap();
        if c.call(&[b"PING"]).await.ok() == Some(Reply::Simple("PONG".into())) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was not given back"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_does_not_lock_the_pair_out_of_its_control_plane() {
    let mut pair = Pair::up();
    let s = pair.wait_in_sync().await;
    let mut idle = Vec::new();
    for target in [
        addr(&s, "active", "control_addr").to_string(),
        addr(&s, "standby", "control_addr").to_string(),
        pair.admin.clone(),
    ] {
        for _ in 0..150 {
            idle.push(tokio::net::TcpStream::connect(&target).await.unwrap());
        }
    }
    // A new supervisor still gets in to both engines (new control connections), and the
    // operator to it (a new admin connection).
    pair.kill_supervisor();
    pair.restart_supervisor();
    for _ in 0..150 {
        idle.push(tokio::net::TcpStream::connect(&pair.admin).await.unwrap());
    }
    let r = pair.admin(&["SWITCHOVER"]).await;
    assert!(!r.is_error(), "{r}");
    let after = pair.wait_in_sync().await;
    assert_ne!(
        Pair::engine(&after, "active").unwrap()["name"],
        Pair::engine(&s, "active").unwrap()["name"]
    );
    drop(idle);
}
