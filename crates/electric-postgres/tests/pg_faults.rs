//! Faults on PRIVATE clusters this test creates (initdb/pg_ctl, ports 7401–7409, a temp dir,
//! killed by postmaster PID at the end): wal_level=replica, a restart mid-stream, an
//! invalidated slot.

mod common;

use std::time::Duration;

use common::*;
use electric_core::cdc::{CdcError, ChangeSource, Op, Position, Value};
use electric_postgres::PgChangeSource;

fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Int(i)) => *i,
        other => panic!("not an int: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_is_a_setting_error_naming_wal_level() {
    let Some(cluster) = PrivateCluster::create(7401, &["wal_level = replica"], &[]) else {
        return;
    };
    let url = cluster.url();
    let c = connect(&url).await.expect("private cluster");
    let n = Names::new(&url, 1);
    c.batch_execute(&format!(
        "CREATE TABLE \"{}\" (id int8 PRIMARY KEY)",
        n.tables[0]
    ))
    .await
    .unwrap();
    let err = PgChangeSource::new(n.config(&url))
        .unwrap()
        .start(None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CdcError::Setting { setting, actual, .. } if setting == "wal_level" && actual == "replica"),
        "{err}"
    );
    assert!(err.to_string().contains("wal_level"));
    assert!(!err.is_retryable());
    drop(cluster);
}

/// Starts `src` at `from`, retrying while the server is unavailable (bounded).
async fn start_retrying(src: &mut PgChangeSource, from: Option<Position>) {
    for attempt in 0.. {
        match src.start(from.clone()).await {
            Ok(()) => return,
            Err(e) if e.is_retryable() && attempt < 100 => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("start: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_stream_is_unavailable_then_resumes_without_loss() {
    let Some(cluster) = PrivateCluster::create(7402, &["wal_level = logical"], &[]) else {
        return;
    };
    let url = cluster.url();
    let c = connect(&url).await.expect("private cluster");
    let n = Names::new(&url, 1);
    let t = n.tables[0].clone();
    c.batch_execute(&format!("CREATE TABLE \"{t}\" (id int8 PRIMARY KEY)"))
        .await
        .unwrap();
    let mut src = PgChangeSource::new(n.config(&url)).unwrap();
    src.start(None).await.unwrap();
    let mut seen = Seen::default();
    drain_until(&mut src, &mut seen, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    for i in 1..=20i64 {
        c.execute(&format!("INSERT INTO \"{t}\" VALUES ($1)"), &[&i])
            .await
            .unwrap();
    }
    drain_until(&mut src, &mut seen, |s| s.items.len() >= 20)
        .await
        .unwrap();
    let acked = seen.checkpoints.last().unwrap().clone();

    // Kill the server (immediate shutdown: crash recovery on start) and restart it.
    cluster.kill();
    let err = match next_event(&mut src, Duration::from_secs(120)).await {
        Err(e) => e,
        Ok(ev) => panic!("unexpected event after the kill: {ev:?}"),
    };
    assert!(matches!(err, CdcError::Unavailable(_)), "{err}");
    assert!(err.is_retryable());
    cluster.start();
    let c = connect(&url).await.expect("restarted cluster");
    for i in 21..=40i64 {
        c.execute(&format!("INSERT INTO \"{t}\" VALUES ($1)"), &[&i])
            .await
            .unwrap();
    }
    start_retrying(&mut src, Some(acked)).await;
    let mut after = Seen::default();
    drain_until(&mut src, &mut after, |s| s.items.len() >= 20)
        .await
        .unwrap();
    let ids: Vec<i64> = after.items.iter().map(|i| int(i.key.get("id"))).collect();
    assert_eq!(
        ids,
        (21..=40).collect::<Vec<_>>(),
        "no loss and nothing acked replayed"
    );
    assert!(after.snapshot_starts.is_empty());
    drop(src);
    n.cleanup(&c).await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_is_recreated_and_re_snapshotted() {
    let Some(cluster) = PrivateCluster::create(
        7403,
        &[
            "wal_level = logical",
            "max_slot_wal_keep_size = '2MB'",
            "min_wal_size = '2MB'",
            "max_wal_size = '4MB'",
            "wal_keep_size = 0",
        ],
        &["--wal-segsize=1"],
    ) else {
        return;
    };
    let url = cluster.url();
    let c = connect(&url).await.expect("private cluster");
    let n = Names::new(&url, 2);
    let (t, filler) = (n.tables[0].clone(), n.tables[1].clone());
    c.batch_execute(&format!(
        "CREATE TABLE \"{t}\" (id int8 PRIMARY KEY); CREATE TABLE \"{filler}\" (v text); \
         INSERT INTO \"{t}\" VALUES (1)"
    ))
    .await
    .unwrap();
    let mut cfg = n.config(&url);
    cfg.tables.truncate(1);
    let mut src = PgChangeSource::new(cfg.clone()).unwrap();
    src.start(None).await.unwrap();
    let mut seen = Seen::default();
    drain_until(&mut src, &mut seen, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    let acked = seen.checkpoints.last().unwrap().clone();
    drop(src); // the slot is inactive from now on

    // Write far more WAL than max_slot_wal_keep_size and checkpoint until the slot is lost.
    c.batch_execute(&format!("INSERT INTO \"{t}\" VALUES (2)"))
        .await
        .unwrap();
    let mut status = String::new();
    for _ in 0..40 {
        c.batch_execute(&format!(
            "INSERT INTO \"{filler}\" SELECT repeat('x', 500) FROM generate_series(1, 4000); \
             SELECT pg_switch_wal(); CHECKPOINT"
        ))
        .await
        .unwrap();
        status = c
            .query_one(
                "SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1",
                &[&n.slot],
            )
            .await
            .unwrap()
            .get(0);
        if status == "lost" {
            break;
        }
    }
    assert_eq!(status, "lost", "the slot was not invalidated");

    let mut src = PgChangeSource::new(cfg).unwrap();
    start_retrying(&mut src, Some(acked)).await;
    let mut again = Seen::default();
    drain_until(&mut src, &mut again, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    assert_eq!(again.snapshot_starts, vec!["slot invalidated"]);
    let mut ids: Vec<i64> = again.items.iter().map(|i| int(i.key.get("id"))).collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![1, 2],
        "the re-snapshot holds every row, including the lost change"
    );
    assert!(again.items.iter().all(|i| i.op == Op::Insert));
    // And it streams again from the new slot.
    c.batch_execute(&format!("INSERT INTO \"{t}\" VALUES (3)"))
        .await
        .unwrap();
    drain_until(&mut src, &mut again, |s| s.items.len() >= 3)
        .await
        .unwrap();
    assert_eq!(int(again.items[2].key.get("id")), 3);
    let status: String = c
        .query_one(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&n.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(status, "lost");
    drop(src);
    n.cleanup(&c).await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_invalidated_while_streaming_ends_the_stream_then_re_snapshots() {
    let Some(cluster) = PrivateCluster::create(
        7404,
        &[
            "wal_level = logical",
            "max_slot_wal_keep_size = '2MB'",
            "min_wal_size = '2MB'",
            "max_wal_size = '4MB'",
            "wal_keep_size = 0",
        ],
        &["--wal-segsize=1"],
    ) else {
        return;
    };
    let url = cluster.url();
    let c = connect(&url).await.expect("private cluster");
    let n = Names::new(&url, 2);
    let (t, filler) = (n.tables[0].clone(), n.tables[1].clone());
    c.batch_execute(&format!(
        "CREATE TABLE \"{t}\" (id int8 PRIMARY KEY); CREATE TABLE \"{filler}\" (v text); \
         INSERT INTO \"{t}\" VALUES (1)"
    ))
    .await
    .unwrap();
    let mut cfg = n.config(&url);
    cfg.tables.truncate(1);
    let mut src = PgChangeSource::new(cfg).unwrap();
    src.start(None).await.unwrap();
    let mut seen = Seen::default();
    drain_until(&mut src, &mut seen, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    let acked = seen.checkpoints.last().unwrap().clone();
    // A transaction delivered and never acknowledged: the active slot cannot advance.
    c.batch_execute(&format!("INSERT INTO \"{t}\" VALUES (2)"))
        .await
        .unwrap();
    loop {
        if let electric_core::cdc::SourceEvent::Changes(b) =
            next_event(&mut src, Duration::from_secs(60)).await.unwrap()
        {
            if b.checkpoint.is_some() {
                break;
            }
        }
    }
    let mut status = String::new();
    for _ in 0..40 {
        c.batch_execute(&format!(
            "INSERT INTO \"{filler}\" SELECT repeat('x', 500) FROM generate_series(1, 4000); \
             SELECT pg_switch_wal(); CHECKPOINT"
        ))
        .await
        .unwrap();
        status = c
            .query_one(
                "SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1",
                &[&n.slot],
            )
            .await
            .unwrap()
            .get(0);
        if status == "lost" {
            break;
        }
    }
    assert_eq!(status, "lost", "the active slot was not invalidated");
    // The server ends the walsender holding the slot: the stream ends with a retryable error.
    let err = match next_event(&mut src, Duration::from_secs(60)).await {
        Err(e) => e,
        Ok(ev) => panic!("unexpected event: {ev:?}"),
    };
    assert!(matches!(err, CdcError::Unavailable(_)), "{err}");
    eprintln!("stream ended with: {err}");
    // The caller restarts from its last checkpoint: the source re-snapshots.
    start_retrying(&mut src, Some(acked)).await;
    let mut again = Seen::default();
    drain_until(&mut src, &mut again, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    assert_eq!(again.snapshot_starts, vec!["slot invalidated"]);
    let mut ids: Vec<i64> = again.items.iter().map(|i| int(i.key.get("id"))).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
    drop(src);
    n.cleanup(&c).await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_passwords_work_for_both_connections_and_a_wrong_one_is_a_login_error() {
    let pw = std::env::temp_dir().join(common::unique("electric_pw"));
    std::fs::write(&pw, "s3cret\n").unwrap();
    let pw_arg = format!("--pwfile={}", pw.display());
    // The file must be readable by the postgres user initdb runs as.
    let _ = std::process::Command::new("chmod")
        .arg("644")
        .arg(&pw)
        .status();
    let Some(cluster) = PrivateCluster::create(
        7406,
        &[
            "wal_level = logical",
            "password_encryption = 'scram-sha-256'",
        ],
        &["--auth-host=scram-sha-256", &pw_arg],
    ) else {
        return;
    };
    let _ = std::fs::remove_file(&pw);
    let url = format!(
        "postgres://postgres:s3cret@127.0.0.1:{}/postgres",
        cluster.port
    );
    let c = connect(&url)
        .await
        .expect("private cluster with a password");
    let n = Names::new(&url, 1);
    let t = n.tables[0].clone();
    c.batch_execute(&format!(
        "CREATE TABLE \"{t}\" (id int8 PRIMARY KEY); INSERT INTO \"{t}\" VALUES (1)"
    ))
    .await
    .unwrap();
    let mut src = PgChangeSource::new(n.config(&url)).unwrap();
    src.start(None).await.unwrap();
    let mut seen = Seen::default();
    drain_until(&mut src, &mut seen, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    c.batch_execute(&format!("INSERT INTO \"{t}\" VALUES (2)"))
        .await
        .unwrap();
    drain_until(&mut src, &mut seen, |s| s.items.len() >= 2)
        .await
        .unwrap();
    assert_eq!(int(seen.items[1].key.get("id")), 2, "streamed over SCRAM");
    drop(src);
    let bad = format!(
        "postgres://postgres:wrong@127.0.0.1:{}/postgres",
        cluster.port
    );
    let mut cfg = n.config(&bad);
    cfg.slot = format!("{}_x", n.slot);
    let err = PgChangeSource::new(cfg)
        .unwrap()
        .start(None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CdcError::Permission { right, .. } if right == "LOGIN"),
        "{err}"
    );
    n.cleanup(&c).await;
    drop(cluster);
}

/// Sends `sig` to the cluster's postmaster and every process under it.
fn signal_cluster(cluster: &PrivateCluster, sig: &str) {
    let pid = cluster.pid().expect("postmaster pid").to_string();
    let children = std::process::Command::new("pgrep")
        .args(["-P", &pid])
        .output()
        .expect("pgrep");
    let mut pids = vec![pid];
    pids.extend(
        String::from_utf8_lossy(&children.stdout)
            .split_whitespace()
            .map(str::to_string),
    );
    let st = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .args(&pids)
        .status()
        .unwrap();
    assert!(st.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_is_detected_as_unavailable() {
    let Some(cluster) = PrivateCluster::create(7407, &["wal_level = logical"], &[]) else {
        return;
    };
    let url = cluster.url();
    let c = connect(&url).await.expect("private cluster");
    let n = Names::new(&url, 1);
    let t = n.tables[0].clone();
    c.batch_execute(&format!("CREATE TABLE \"{t}\" (id int8 PRIMARY KEY)"))
        .await
        .unwrap();
    let mut cfg = n.config(&url);
    cfg.table_check_interval = Duration::from_millis(200);
    cfg.liveness_timeout = Duration::from_secs(2);
    let mut src = PgChangeSource::new(cfg).unwrap();
    src.start(None).await.unwrap();
    let mut seen = Seen::default();
    drain_until(&mut src, &mut seen, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    let acked = seen.checkpoints.last().unwrap().clone();
    signal_cluster(&cluster, "STOP");
    // No panic before the thaw: a stopped cluster would outlive the test.
    let res = tokio::time::timeout(Duration::from_secs(60), src.next()).await;
    signal_cluster(&cluster, "CONT");
    let err = match res {
        Ok(Err(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    };
    assert!(
        matches!(&err, CdcError::Unavailable(m) if m.contains("did not answer")),
        "{err}"
    );
    // Thawed, it resumes.
    start_retrying(&mut src, Some(acked)).await;
    c.batch_execute(&format!("INSERT INTO \"{t}\" VALUES (1)"))
        .await
        .unwrap();
    drain_until(&mut src, &mut seen, |s| !s.items.is_empty())
        .await
        .unwrap();
    drop(src);
    n.cleanup(&c).await;
    drop(cluster);
}
