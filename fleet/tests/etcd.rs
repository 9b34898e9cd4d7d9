//! The client against a real etcd (Debian's etcd-server, on loopback ports etcd picks).

use fleet::local::LocalEtcd;
use fleet::{Client, Compare, Op};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn keys_transactions_and_leases_against_a_real_etcd() {
    let dir = tempdir();
    let mut etcd = LocalEtcd::start(&dir).expect("etcd (scripts/setup.sh installs it)");
    let client = Client::new(&etcd.url()).unwrap();
    runtime().block_on(async {
        assert_eq!(client.get("/t/a").await.unwrap(), None);
        client.put("/t/a", b"1", 0).await.unwrap();
        client.put("/t/b", b"\xff\x00", 0).await.unwrap();
        client.put("/u", b"x", 0).await.unwrap();
        let a = client.get("/t/a").await.unwrap().unwrap();
        assert_eq!((a.value.as_slice(), a.version), (&b"1"[..], 1));
        let all = client.get_prefix("/t/").await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].value, b"\xff\x00");

        // Compare-and-put: only one of two writers that read the same revision wins.
        let cmp = [Compare::ModRevision("/t/a".into(), a.mod_revision)];
        let first = client
            .txn(&cmp, &[Op::put("/t/a", "2")], &[Op::Get("/t/a".into())])
            .await
            .unwrap();
        assert!(first.succeeded);
        let second = client
            .txn(&cmp, &[Op::put("/t/a", "3")], &[Op::Get("/t/a".into())])
            .await
            .unwrap();
        assert!(!second.succeeded);
        assert_eq!(second.gets[0][0].value, b"2");

        // Create-if-absent on a lease; the key goes with the lease.
        let lease = client.lease_grant(5).await.unwrap();
        assert!(client.lease_keepalive(lease).await.unwrap() > 0);
        let create = |v: &'static str| {
            let client = client.clone();
            async move {
                client
                    .txn(
                        &[Compare::Version("/t/leader".into(), 0)],
                        &[Op::Put {
                            key: "/t/leader".into(),
                            value: v.into(),
                            lease,
                        }],
                        &[],
                    )
                    .await
                    .unwrap()
                    .succeeded
            }
        };
        assert!(create("me").await);
        assert!(!create("you").await);
        client.lease_revoke(lease).await.unwrap();
        assert_eq!(client.get("/t/leader").await.unwrap(), None);
        assert!(client.lease_keepalive(lease).await.is_err());
        client.delete("/u").await.unwrap();
        assert_eq!(client.get("/u").await.unwrap(), None);

        // A watch registered before a change hears of it, a put or a delete under a prefix.
        let mut watch = client.watch("/w/", true).await.unwrap();
        client.put("/w/x", b"1", 0).await.unwrap();
        watch.changed().await.unwrap();
        client.delete("/w/x").await.unwrap();
        watch.changed().await.unwrap();

        // Down: unreachable, said as such; back on the same port with the same data.
        etcd.kill();
        let err = client.get("/t/a").await.unwrap_err();
        assert!(err.is_unreachable(), "{err}");
        etcd.restart().unwrap();
        assert_eq!(client.get("/t/a").await.unwrap().unwrap().value, b"2");
    });
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fleet-etcd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
