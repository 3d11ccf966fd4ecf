//! The resume rule against `FakeCt`: commits, cleanup, TRUNCATE, races, restarts — and the
//! original's two flaws, run on the same fake, losing data (so these tests can fail).

mod common;

use std::time::Duration;

use common::{db_rows, key_string, source, sync_to, Rng, Sink};
use electric_core::cdc::{CdcError, ChangeSource, Op, SourceEvent, Value};
use electric_mssql::fake::{Call, FakeCt, SnapshotAt};
use electric_mssql::{ct_row, CtBackend, MssqlChangeSource, TableQuery, TrackedTable};

const T: &str = "dbo.orders";
const TN: &str = "dbo.orders";

fn orders() -> FakeCt {
    let db = FakeCt::new();
    db.create_table(T, &["id", "status", "qty"], &["id"]);
    db
}

/// The sink's key of order `id`.
fn k(id: i64) -> String {
    key_string(&[Value::Int(id)])
}

fn assert_equal(db: &FakeCt, sink: &Sink) {
    assert_eq!(
        sink.rows(TN),
        db_rows(db, T, &[0]),
        "the sink must equal the table"
    );
}

#[tokio::test(start_paused = true)]
async fn initial_snapshot_then_inserts_updates_deletes() {
    let db = orders();
    for i in 0..7 {
        db.commit(|tx| tx.put(T, ct_row![i, "open", i * 10]));
    }
    let mut src = source(&db, &[T], 3);
    src.start(None).await.unwrap();
    let mut sink = Sink::default();
    sync_to(&mut src, &mut sink, db.version()).await;
    assert_eq!(sink.resyncs, vec![(TN.to_string(), "initial".to_string())]);
    assert_equal(&db, &sink);
    assert_eq!(db.calls().scan, 3, "7 rows in pages of 3");

    let v = db.commit(|tx| {
        tx.put(T, ct_row![100, "open", 1]);
        tx.put(T, ct_row![2, "closed", 20]);
        tx.delete(T, ct_row![3]);
    });
    let before = sink.deliveries.len();
    sync_to(&mut src, &mut sink, v).await;
    assert_equal(&db, &sink);
    let new: Vec<_> = sink.deliveries[before..].to_vec();
    assert_eq!(new.len(), 3);
    // Key order within the tick; the joined row decides: present ⇒ upsert, absent ⇒ delete.
    assert_eq!(new[0].key, k(2));
    assert_eq!(new[1].key, k(3));
    assert_eq!(new[1].state, None);
    assert_eq!(new[2].key, k(100));
    assert!(new.iter().all(|d| d.cur == v));
    assert_eq!(src.stats().resyncs, 1);
}

#[tokio::test(start_paused = true)]
async fn operations_follow_the_joined_row_and_the_advisory_operation() {
    let db = orders();
    let mut src = source(&db, &[T], 100);
    src.start(None).await.unwrap();
    let mut sink = Sink::default();
    sync_to(&mut src, &mut sink, db.version()).await;

    db.commit(|tx| tx.put(T, ct_row![1, "open", 1]));
    let ev = src.next().await.unwrap().unwrap();
    let SourceEvent::Changes(b) = &ev else {
        panic!("{ev:?}")
    };
    assert_eq!(b.items[0].op, Op::Insert);
    assert!(
        b.checkpoint.is_some(),
        "the last batch of a tick carries its checkpoint"
    );
    sink.apply(&mut src, ev).await;

    db.commit(|tx| tx.put(T, ct_row![1, "open", 2]));
    let ev = src.next().await.unwrap().unwrap();
    let SourceEvent::Changes(b) = &ev else {
        panic!("{ev:?}")
    };
    assert_eq!(b.items[0].op, Op::Update);
    assert_eq!(
        b.items[0].new.as_ref().unwrap().get("qty"),
        Some(&Value::Int(2))
    );
    sink.apply(&mut src, ev).await;

    // Inserted and deleted between two polls: CHANGETABLE says D; no row ⇒ delete.
    db.commit(|tx| tx.put(T, ct_row![2, "open", 1]));
    db.commit(|tx| tx.delete(T, ct_row![2]));
    let ev = src.next().await.unwrap().unwrap();
    let SourceEvent::Changes(b) = &ev else {
        panic!("{ev:?}")
    };
    assert_eq!(b.items.len(), 1);
    assert_eq!(b.items[0].op, Op::Delete);
    assert!(b.items[0].new.is_none());
    sink.apply(&mut src, ev).await;
    assert_equal(&db, &sink);
}

#[tokio::test(start_paused = true)]
async fn idle_polls_read_only_the_current_version_and_back_off_as_the_original() {
    let db = orders();
    db.create_table("dbo.other", &["id"], &["id"]);
    let mut src = source(&db, &[T], 100);
    src.start(None).await.unwrap();
    let mut sink = Sink::default();
    sync_to(&mut src, &mut sink, db.version()).await;
    let calls = db.calls();

    // The initial load of the empty table was an empty poll (n = 1). Then 10.005 s of (paused)
    // time idle: waits of n × 10 ms for n = 1, 2, …: 44 waits fit (9.9 s), each then one poll.
    assert_eq!(src.stats().empty_polls, 1);
    let idle = tokio::time::timeout(Duration::from_millis(10_005), src.next()).await;
    assert!(idle.is_err(), "nothing to return while idle");
    let after = db.calls();
    assert_eq!(after.current_version - calls.current_version, 44);
    assert_eq!(
        after.begin, calls.begin,
        "no transaction while the version stands still"
    );
    assert_eq!(after.min_valid, calls.min_valid);
    assert_eq!(after.changes, calls.changes, "no table queried while idle");
    assert_eq!(src.stats().empty_polls, 45);

    // Another table moves the database version: one tick, nothing for us, still "empty".
    db.commit(|tx| tx.put("dbo.other", ct_row![1]));
    let ev = src.next().await.unwrap().unwrap();
    let SourceEvent::Changes(b) = &ev else {
        panic!("{ev:?}")
    };
    assert!(b.items.is_empty() && b.checkpoint.is_some());
    sink.apply(&mut src, ev).await;
    assert_eq!(src.stats().empty_polls, 46);

    // A change resets the backoff.
    let v = db.commit(|tx| tx.put(T, ct_row![1, "open", 1]));
    sync_to(&mut src, &mut sink, v).await;
    assert_eq!(src.stats().empty_polls, 0);
    assert_equal(&db, &sink);
}

#[tokio::test(start_paused = true)]
async fn retention_cleanup_past_the_checkpoint_resyncs_on_restart() {
    let db = orders();
    for i in 0..5 {
        db.commit(|tx| tx.put(T, ct_row![i, "open", i]));
    }
    let mut sink = Sink::default();
    {
        let mut src = source(&db, &[T], 2);
        src.start(None).await.unwrap();
        sync_to(&mut src, &mut sink, db.version()).await;
    }
    // Down: changes, including a delete, then cleanup passes the checkpoint.
    db.commit(|tx| tx.delete(T, ct_row![1]));
    db.commit(|tx| tx.put(T, ct_row![9, "open", 9]));
    db.commit(|tx| tx.put(T, ct_row![2, "closed", 2]));
    let v = db.version();
    db.cleanup(T, v);

    let mut src = source(&db, &[T], 2);
    sink.restarted();
    src.start(sink.checkpoint.clone()).await.unwrap();
    sync_to(&mut src, &mut sink, v).await;
    let (_, reason) = sink.resyncs.last().unwrap();
    assert!(reason.contains("expired"), "{reason}");
    assert_equal(&db, &sink);
    assert!(
        !sink.rows(TN).contains_key(&k(1)),
        "the delete was not lost"
    );
}

#[tokio::test(start_paused = true)]
async fn cleanup_that_keeps_the_checkpoint_valid_needs_no_resync() {
    let db = orders();
    let mut src = source(&db, &[T], 10);
    src.start(None).await.unwrap();
    let mut sink = Sink::default();
    for i in 0..4 {
        db.commit(|tx| tx.put(T, ct_row![i, "open", i]));
    }
    sync_to(&mut src, &mut sink, db.version()).await;
    db.cleanup(T, sink.version().unwrap());
    let v = db.commit(|tx| tx.put(T, ct_row![7, "open", 7]));
    sync_to(&mut src, &mut sink, v).await;
    assert_eq!(sink.resyncs.len(), 1, "only the initial load");
    assert_equal(&db, &sink);
}

#[tokio::test(start_paused = true)]
async fn truncate_resyncs_the_table() {
    let db = orders();
    for i in 0..4 {
        db.commit(|tx| tx.put(T, ct_row![i, "open", i]));
    }
    let mut src = source(&db, &[T], 10);
    src.start(None).await.unwrap();
    let mut sink = Sink::default();
    sync_to(&mut src, &mut sink, db.version()).await;
    db.truncate(T);
    let v = db.commit(|tx| tx.put(T, ct_row![42, "open", 1]));
    sync_to(&mut src, &mut sink, v).await;
    assert_eq!(sink.resyncs.len(), 2);
    assert_equal(&db, &sink);
    assert_eq!(sink.rows(TN).len(), 1);
}

/// A commit landing at each point of a tick, for both snapshot behaviours: nothing is lost, and
/// the only duplicate is the raced change, first read in the tick it raced (its version above
/// that tick's `cur`), then again in the next tick.
#[tokio::test(start_paused = true)]
async fn commits_racing_the_poll_are_not_lost_and_duplicates_stay_in_the_window() {
    for at in [SnapshotAt::FirstRead, SnapshotAt::Begin] {
        for point in [
            Call::CurrentVersion,
            Call::Begin,
            Call::MinValid,
            Call::Changes,
            Call::Commit,
        ] {
            let db = orders();
            db.set_snapshot_at(at);
            db.commit(|tx| tx.put(T, ct_row![1, "open", 1]));
            let mut src = source(&db, &[T], 1);
            src.start(None).await.unwrap();
            let mut sink = Sink::default();
            sync_to(&mut src, &mut sink, db.version()).await;

            // A change that makes the tick run, and a racing commit at `point`.
            db.commit(|tx| tx.put(T, ct_row![5, "open", 5]));
            db.inject(point, |db| {
                db.commit(|tx| tx.put(T, ct_row![3, "open", 3]));
            });
            let before = sink.deliveries.len();
            // Drain until the racing commit is covered by a checkpoint.
            let raced_version = db.version() + 1;
            sync_to(&mut src, &mut sink, raced_version).await;
            assert_equal(&db, &sink);

            let mut seen = std::collections::BTreeMap::<String, Vec<u64>>::new();
            for d in &sink.deliveries[before..] {
                seen.entry(d.key.clone()).or_default().push(d.cur);
            }
            for (key, curs) in &seen {
                if curs.len() > 1 {
                    assert_eq!(key, &k(3), "{at:?}/{point:?}: {seen:?}");
                    assert_eq!(curs.len(), 2, "{at:?}/{point:?}: {seen:?}");
                    assert!(
                        curs[0] < raced_version,
                        "first read in the window above cur"
                    );
                    assert!(curs[1] >= raced_version);
                }
            }
            assert!(seen.contains_key(&k(3)), "{at:?}/{point:?}");
        }
    }
}

/// Restarts (the source dropped, a checkpoint persisted or not), failed calls, cleanup and
/// TRUNCATE at pseudo-random points of a long run: at the end the sink equals the table.
#[tokio::test(start_paused = true)]
async fn random_restarts_failures_cleanup_and_truncate_lose_nothing() {
    for seed in 1..=8u64 {
        let db = FakeCt::new();
        db.create_table(T, &["id", "status", "qty"], &["id"]);
        db.create_table(
            "dbo.lines",
            &["order_id", "line", "sku"],
            &["order_id", "line"],
        );
        let key_lines = [0usize, 1];
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut sink = Sink::default();
        let mut src = source(&db, &[T, "dbo.lines"], 1 + rng.below(4) as usize);
        src.start(None).await.unwrap();
        let mut restarts = 0;
        for _step in 0..300 {
            match rng.below(100) {
                0..=49 => {
                    let n = 1 + rng.below(3);
                    db.commit(|tx| {
                        for _ in 0..n {
                            let id = rng.below(20) as i64;
                            match rng.below(4) {
                                0 => tx.delete(T, ct_row![id]),
                                1 => tx.put("dbo.lines", ct_row![id, rng.below(3) as i64, "sku"]),
                                2 => tx.delete("dbo.lines", ct_row![id, rng.below(3) as i64]),
                                _ => tx.put(T, ct_row![id, "open", rng.below(100) as i64]),
                            }
                        }
                    });
                }
                50..=54 => {
                    let v = db.version();
                    db.cleanup(
                        if rng.below(2) == 0 { T } else { "dbo.lines" },
                        v.saturating_sub(rng.below(4)),
                    );
                }
                55 => {
                    db.truncate(if rng.below(2) == 0 { T } else { "dbo.lines" });
                }
                56..=60 => {
                    let call = [
                        Call::CurrentVersion,
                        Call::Begin,
                        Call::MinValid,
                        Call::Changes,
                        Call::Scan,
                        Call::Commit,
                    ][rng.below(6) as usize];
                    db.fail_next(call);
                }
                61..=64 => {
                    let v = db.version();
                    let c = db.clone();
                    let call = [
                        Call::CurrentVersion,
                        Call::Begin,
                        Call::MinValid,
                        Call::Changes,
                        Call::Scan,
                    ][rng.below(5) as usize];
                    db.inject(call, move |_| {
                        c.commit(|tx| tx.put(T, ct_row![(v % 20) as i64, "raced", 0]));
                    });
                }
                65..=72 => {
                    // Crash and restart from the persisted checkpoint.
                    drop(src);
                    restarts += 1;
                    src = source(&db, &[T, "dbo.lines"], 1 + rng.below(4) as usize);
                    sink.restarted();
                    while let Err(e) = src.start(sink.checkpoint.clone()).await {
                        assert!(e.is_retryable(), "{e}");
                    }
                }
                _ => {
                    // Let the source run a few events.
                    for _ in 0..rng.below(6) {
                        match tokio::time::timeout(Duration::from_secs(10), src.next()).await {
                            Ok(Ok(Some(ev))) => sink.apply(&mut src, ev).await,
                            Ok(Err(e)) => assert!(e.is_retryable(), "{e}"),
                            Ok(Ok(None)) => unreachable!(),
                            Err(_) => break,
                        }
                    }
                }
            }
        }
        // Catch up, retrying failed calls.
        let target = db.version();
        loop {
            match tokio::time::timeout(Duration::from_secs(3600), src.next()).await {
                Ok(Ok(Some(ev))) => sink.apply(&mut src, ev).await,
                Ok(Err(e)) => assert!(e.is_retryable(), "{e}"),
                other => panic!("{other:?}"),
            }
            if sink.version().is_some_and(|v| v >= target) {
                break;
            }
        }
        assert_eq!(sink.rows(TN), db_rows(&db, T, &[0]), "seed {seed}: orders");
        assert_eq!(
            sink.rows("dbo.lines"),
            db_rows(&db, "dbo.lines", &key_lines),
            "seed {seed}: lines"
        );
        assert!(restarts > 0, "seed {seed} never restarted");
    }
}

/// Pessimistic snapshots: cleanup removes records under a running snapshot. The second
/// minimum-valid-version read catches it and resyncs the table in the same tick.
#[tokio::test(start_paused = true)]
async fn cleanup_during_the_read_is_caught_by_the_second_check() {
    let db = orders();
    db.set_cleanup_spares_snapshots(false);
    for i in 0..3 {
        db.commit(|tx| tx.put(T, ct_row![i, "open", i]));
    }
    let mut src = source(&db, &[T], 10);
    src.start(None).await.unwrap();
    let mut sink = Sink::default();
    sync_to(&mut src, &mut sink, db.version()).await;

    db.commit(|tx| tx.put(T, ct_row![1, "closed", 1]));
    let v = db.commit(|tx| tx.delete(T, ct_row![2]));
    let c = db.clone();
    db.inject(Call::MinValid, move |_| c.cleanup(T, v + 1));
    sync_to(&mut src, &mut sink, v).await;
    let (_, reason) = sink.resyncs.last().unwrap();
    assert!(reason.contains("during the read"), "{reason}");
    assert_equal(&db, &sink);
}

#[tokio::test(start_paused = true)]
async fn a_changed_configuration_resyncs_every_table() {
    let db = orders();
    db.commit(|tx| tx.put(T, ct_row![1, "open", 1]));
    let mut sink = Sink::default();
    {
        let mut src = source(&db, &[T], 10);
        src.start(None).await.unwrap();
        sync_to(&mut src, &mut sink, db.version()).await;
    }
    let mut src = MssqlChangeSource::builder(db.backend())
        .table(
            TrackedTable::new(T)
                .unwrap()
                .columns(&["id", "status", "qty"])
                .unwrap()
                .filter(electric_mssql::Filter::eq("status", "open").unwrap()),
        )
        .build()
        .unwrap();
    sink.restarted();
    src.start(sink.checkpoint.clone()).await.unwrap();
    let ev = src.next().await.unwrap().unwrap();
    let SourceEvent::SnapshotStart { reason, .. } = ev else {
        panic!("{ev:?}")
    };
    assert!(reason.contains("configuration changed"), "{reason}");

    // The same configuration again: no resync.
    let mut sink = Sink::default();
    let mut src = source(&db, &[T], 10);
    src.start(None).await.unwrap();
    sync_to(&mut src, &mut sink, db.version()).await;
    let mut again = source(&db, &[T], 10);
    sink.restarted();
    again.start(sink.checkpoint.clone()).await.unwrap();
    let v = db.commit(|tx| tx.put(T, ct_row![2, "open", 2]));
    sync_to(&mut again, &mut sink, v).await;
    assert_eq!(sink.resyncs.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_filter_applies_to_the_current_row_leaving_reads_as_delete() {
    let db = orders();
    db.create_table("dbo.status_names", &["status", "label"], &["status"]);
    db.commit(|tx| {
        tx.put("dbo.status_names", ct_row!["open", "Open order"]);
        tx.put(T, ct_row![1, "open", 1]);
        tx.put(T, ct_row![2, "closed", 2]);
    });
    let spec = TrackedTable::new(T)
        .unwrap()
        .columns(&["qty"])
        .unwrap()
        .filter(electric_mssql::Filter::eq("status", "open").unwrap())
        .lookup(
            electric_mssql::Lookup::new(
                "names",
                "dbo.status_names",
                &["status", "label"],
                &[("status", "status")],
            )
            .unwrap(),
        )
        .with_change_columns();
    let mut src = MssqlChangeSource::builder(db.backend())
        .table(spec)
        .build()
        .unwrap();
    src.start(None).await.unwrap();
    let mut sink = Sink::default();
    sync_to(&mut src, &mut sink, db.version()).await;
    let rows = sink.rows(TN);
    assert_eq!(rows.len(), 1, "only open orders: {rows:?}");
    assert_eq!(
        rows[&k(1)],
        ct_row![1, "open", "Open order"],
        "qty, then the lookup's columns"
    );

    // Order 1 closes: it leaves the set (a delete); order 2 opens: an upsert with change columns.
    db.commit(|tx| tx.put(T, ct_row![1, "closed", 1]));
    let v = db.commit(|tx| tx.put(T, ct_row![2, "open", 20]));
    sync_to(&mut src, &mut sink, v).await;
    let rows = sink.rows(TN);
    assert_eq!(rows.len(), 1);
    let r = &rows[&k(2)];
    assert_eq!(&r[..3], &ct_row![20, "open", "Open order"][..]);
    assert_eq!(r[3], Value::Int(v as i64), "SYS_CHANGE_VERSION");
    assert_eq!(r[4], Value::Text("U".into()), "SYS_CHANGE_OPERATION");
    assert_eq!(
        src.queries()[0].column_names(),
        vec!["qty", "names.status", "names.label"]
    );
}

#[tokio::test(start_paused = true)]
async fn start_names_what_is_missing() {
    use electric_mssql::DbSettings;
    let db = orders();
    let start = |db: &FakeCt, t: &str| {
        let mut s = MssqlChangeSource::builder(db.backend())
            .table(TrackedTable::new(t).unwrap())
            .build()
            .unwrap();
        async move { s.start(None).await }
    };
    db.set_settings(DbSettings {
        snapshot_isolation: false,
        change_tracking: true,
    });
    let e = start(&db, T).await.unwrap_err();
    assert!(
        matches!(&e, CdcError::Setting { setting, .. } if setting == "ALLOW_SNAPSHOT_ISOLATION"),
        "{e}"
    );
    db.set_settings(DbSettings {
        snapshot_isolation: true,
        change_tracking: false,
    });
    let e = start(&db, T).await.unwrap_err();
    assert!(
        matches!(&e, CdcError::Setting { setting, .. } if setting.contains("CHANGE_TRACKING")),
        "{e}"
    );
    db.set_settings(DbSettings {
        snapshot_isolation: true,
        change_tracking: true,
    });

    let e = start(&db, "dbo.missing").await.unwrap_err();
    assert!(
        matches!(&e, CdcError::Table { reason, .. } if reason.contains("not found")),
        "{e}"
    );
    db.create_table("dbo.nokey", &["a"], &[]);
    let e = start(&db, "dbo.nokey").await.unwrap_err();
    assert!(
        matches!(&e, CdcError::Table { reason, .. } if reason.contains("primary key")),
        "{e}"
    );
    db.set_tracked(T, false);
    let e = start(&db, T).await.unwrap_err();
    assert!(
        matches!(&e, CdcError::Setting { setting, .. } if setting.contains("dbo.orders")),
        "{e}"
    );
    db.set_tracked(T, true);
    let mut s = MssqlChangeSource::builder(db.backend())
        .table(TrackedTable::new(T).unwrap().columns(&["nope"]).unwrap())
        .build()
        .unwrap();
    let e = s.start(None).await.unwrap_err();
    assert!(
        matches!(&e, CdcError::Table { reason, .. } if reason.contains("nope")),
        "{e}"
    );
    assert!(!e.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn bad_positions_and_misuse_are_typed_errors() {
    let db = orders();
    let mut src = source(&db, &[T], 10);
    assert!(matches!(src.next().await, Err(CdcError::Config(_))));
    let bad = electric_core::cdc::Position::from_bytes(vec![9, 9, 9]);
    assert!(matches!(
        src.start(Some(bad.clone())).await,
        Err(CdcError::BadPosition { .. })
    ));
    src.start(None).await.unwrap();
    let mut sink = Sink::default();
    sync_to(&mut src, &mut sink, db.version()).await;
    // An item position is not a checkpoint.
    db.commit(|tx| tx.put(T, ct_row![1, "open", 1]));
    sync_to(&mut src, &mut sink, db.version()).await;
    let item = sink.deliveries.last().unwrap().position.clone();
    assert!(matches!(
        src.ack(&item).await,
        Err(CdcError::BadPosition { .. })
    ));
    assert!(matches!(
        src.ack(&bad).await,
        Err(CdcError::BadPosition { .. })
    ));
    let mut other = source(&db, &[T], 10);
    assert!(matches!(
        other.start(Some(item)).await,
        Err(CdcError::BadPosition { .. })
    ));
    assert_eq!(src.acked(), sink.checkpoint.as_ref());

    // Builder validation.
    let b = || MssqlChangeSource::builder(db.backend());
    assert!(matches!(b().build(), Err(CdcError::Config(_))));
    let t = || TrackedTable::new(T).unwrap();
    assert!(matches!(
        b().table(t()).table(t()).build(),
        Err(CdcError::Config(_))
    ));
    assert!(matches!(
        b().table(t()).batch_size(0).build(),
        Err(CdcError::Config(_))
    ));
    assert!(matches!(
        b().table(t()).name("").build(),
        Err(CdcError::Config(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_table_dropped_mid_stream_is_a_clear_permanent_error() {
    let db = orders();
    db.commit(|tx| tx.put(T, ct_row![1, "open", 1]));
    let mut src = source(&db, &[T], 10);
    src.start(None).await.unwrap();
    let mut sink = Sink::default();
    sync_to(&mut src, &mut sink, db.version()).await;
    db.drop_table(T);
    let e = tokio::time::timeout(Duration::from_secs(60), src.next())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&e, CdcError::Table { table, reason } if table.to_string() == TN && reason.contains("dropped")),
        "{e}"
    );
    assert!(!e.is_retryable());
    // A restart names the table as gone.
    let e = src.start(sink.checkpoint.clone()).await.unwrap_err();
    assert!(
        matches!(&e, CdcError::Table { reason, .. } if reason.contains("not found")),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn change_tracking_turned_off_mid_stream_names_the_setting() {
    let db = orders();
    let mut src = source(&db, &[T], 10);
    src.start(None).await.unwrap();
    let mut sink = Sink::default();
    sync_to(&mut src, &mut sink, db.version()).await;
    db.set_tracked(T, false);
    db.commit(|tx| tx.put(T, ct_row![1, "open", 1]));
    let e = tokio::time::timeout(Duration::from_secs(60), src.next())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&e, CdcError::Setting { setting, .. } if setting.contains("dbo.orders")),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_version_going_back_is_history_lost() {
    let db = orders();
    for i in 0..3 {
        db.commit(|tx| tx.put(T, ct_row![i, "open", i]));
    }
    let mut src = source(&db, &[T], 10);
    src.start(None).await.unwrap();
    let mut sink = Sink::default();
    sync_to(&mut src, &mut sink, db.version()).await;
    db.set_version(1);
    let e = tokio::time::timeout(Duration::from_secs(60), src.next())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, CdcError::HistoryLost(_)), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_call_mid_tick_restarts_the_tick_with_higher_positions() {
    let db = orders();
    let mut src = source(&db, &[T], 1);
    src.start(None).await.unwrap();
    let mut sink = Sink::default();
    sync_to(&mut src, &mut sink, db.version()).await;
    for i in 0..4 {
        db.commit(|tx| tx.put(T, ct_row![i, "open", i]));
    }
    let v = db.version();
    // The second changes page fails: the first page was delivered; the tick starts again.
    db.inject(Call::Changes, |db| db.fail_next(Call::Changes));
    let mut errors = 0;
    while sink.version().is_none_or(|x| x < v) {
        match src.next().await {
            Ok(Some(ev)) => sink.apply(&mut src, ev).await,
            Ok(None) => unreachable!(),
            Err(e) => {
                assert!(e.is_retryable());
                errors += 1;
            }
        }
    }
    assert_eq!(errors, 1);
    assert_equal(&db, &sink);
    // Key 0 came twice (first tick, then the restarted tick) with increasing positions.
    let k0: Vec<_> = sink.deliveries.iter().filter(|d| d.key == k(0)).collect();
    assert_eq!(k0.len(), 2, "{k0:?}");
    let (a, b) = (
        electric_mssql::MssqlPosition::decode(&k0[0].position).unwrap(),
        electric_mssql::MssqlPosition::decode(&k0[1].position).unwrap(),
    );
    assert_eq!((a.version, a.cycle), (v, 0));
    assert_eq!(
        (b.version, b.cycle),
        (v, 1),
        "the same version, the next cycle"
    );
}

/// A backend whose changes pages take a second, so a call can be cancelled inside one.
struct Slow(electric_mssql::fake::FakeCtBackend);

#[async_trait::async_trait]
impl CtBackend for Slow {
    async fn database_settings(
        &mut self,
    ) -> electric_core::cdc::CdcResult<electric_mssql::DbSettings> {
        self.0.database_settings().await
    }
    async fn describe(
        &mut self,
        t: &electric_mssql::TableRef,
    ) -> electric_core::cdc::CdcResult<Option<electric_mssql::TableInfo>> {
        self.0.describe(t).await
    }
    async fn current_version(&mut self) -> electric_core::cdc::CdcResult<Option<u64>> {
        self.0.current_version().await
    }
    async fn begin_snapshot(&mut self) -> electric_core::cdc::CdcResult<()> {
        self.0.begin_snapshot().await
    }
    async fn min_valid_version(
        &mut self,
        t: &electric_mssql::TableRef,
    ) -> electric_core::cdc::CdcResult<Option<u64>> {
        self.0.min_valid_version(t).await
    }
    async fn changes_since(
        &mut self,
        q: &TableQuery,
        since: u64,
        after: Option<&[Value]>,
        limit: usize,
    ) -> electric_core::cdc::CdcResult<Vec<electric_mssql::ChangeRow>> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.0.changes_since(q, since, after, limit).await
    }
    async fn full_scan(
        &mut self,
        q: &TableQuery,
        after: Option<&[Value]>,
        limit: usize,
    ) -> electric_core::cdc::CdcResult<Vec<electric_mssql::ScanRow>> {
        self.0.full_scan(q, after, limit).await
    }
    async fn commit(&mut self) -> electric_core::cdc::CdcResult<()> {
        self.0.commit().await
    }
    async fn rollback(&mut self) -> electric_core::cdc::CdcResult<()> {
        self.0.rollback().await
    }
    async fn reset(&mut self) -> electric_core::cdc::CdcResult<()> {
        self.0.reset().await
    }
}

#[tokio::test(start_paused = true)]
async fn next_is_cancel_safe() {
    let db = orders();
    let mut src = MssqlChangeSource::builder(Slow(db.backend()))
        .table(TrackedTable::new(T).unwrap())
        .batch_size(1)
        .build()
        .unwrap();
    src.start(None).await.unwrap();
    let mut sink = Sink::default();
    sync_to(&mut src, &mut sink, db.version()).await;

    // Cancelled during the idle backoff: nothing lost.
    assert!(tokio::time::timeout(Duration::from_millis(5), src.next())
        .await
        .is_err());
    db.commit(|tx| tx.put(T, ct_row![1, "open", 1]));
    db.commit(|tx| tx.put(T, ct_row![2, "open", 2]));
    // Cancelled inside a changes page: the next call resets the backend and starts the tick
    // again; nothing lost, positions still increase (the sink asserts it).
    assert!(tokio::time::timeout(Duration::from_millis(1500), async {
        loop {
            let ev = src.next().await.unwrap().unwrap();
            sink.apply(&mut src, ev).await;
        }
    })
    .await
    .is_err());
    sync_to(&mut src, &mut sink, db.version()).await;
    assert_equal(&db, &sink);
}

// ---------------------------------------------------------------------------------------------
// The original's rules, on the same fake: each loses a change (so the tests above can fail).

/// The original (SPEC §10.1): read `CHANGETABLE` without snapshot isolation, advance to
/// `max(SYS_CHANGE_VERSION)`; on an empty poll refresh the version from `CURRENT_VERSION()`.
struct Original {
    backend: electric_mssql::fake::FakeCtBackend,
    q: TableQuery,
    version: u64,
    page: usize,
    rows: std::collections::BTreeMap<String, Option<Vec<Value>>>,
}

impl Original {
    async fn new(db: &FakeCt, page: usize) -> Self {
        let mut backend = db.backend();
        let info = backend
            .describe(&electric_mssql::TableRef::parse(T).unwrap())
            .await
            .unwrap()
            .unwrap();
        let q = TableQuery::resolve(
            &TrackedTable::new(T).unwrap(),
            &info.key,
            &info.columns,
            None,
        )
        .unwrap();
        let version = backend.current_version().await.unwrap().unwrap();
        Self {
            backend,
            q,
            version,
            page,
            rows: Default::default(),
        }
    }

    async fn poll(&mut self) {
        let mut after: Option<Vec<Value>> = None;
        let mut all = Vec::new();
        loop {
            let rows = self
                .backend
                .changes_since(&self.q, self.version, after.as_deref(), self.page)
                .await
                .unwrap();
            let full = rows.len() == self.page;
            after = rows.last().map(|r| r.key.clone());
            all.extend(rows);
            if !full {
                break;
            }
        }
        if all.is_empty() {
            self.version = self.backend.current_version().await.unwrap().unwrap();
            return;
        }
        for r in all {
            let Value::Int(v) = r.version else { panic!() };
            self.version = self.version.max(v as u64);
            self.rows
                .insert(key_string(&r.key), r.present.then_some(r.columns));
        }
    }

    fn table(&self) -> std::collections::BTreeMap<String, Vec<Value>> {
        self.rows
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn flaw_one_max_version_of_a_non_snapshot_read_skips_a_row_for_ever() {
    let script = |db: &FakeCt| {
        db.commit(|tx| tx.put(T, ct_row![3, "open", 3]));
        // While the reader is between pages: key 1 changes, then key 5 changes.
        db.inject(Call::Changes, |db| {
            db.commit(|tx| tx.put(T, ct_row![1, "open", 1]));
            db.commit(|tx| tx.put(T, ct_row![5, "open", 5]));
        });
    };

    // The original: page 1 sees key 3 (v1); page 2, live, sees key 5 (v3) but not key 1 (v2,
    // behind the cursor); it advances to 3 and never sees key 1.
    let db = orders();
    let mut naive = Original::new(&db, 1).await;
    script(&db);
    for _ in 0..5 {
        naive.poll().await;
    }
    let expected = db_rows(&db, T, &[0]);
    assert_ne!(naive.table(), expected, "the original's rule loses key 1");
    assert!(!naive.table().contains_key(&k(1)));

    // The rule: the same script, nothing lost.
    let db = orders();
    let mut src = source(&db, &[T], 1);
    src.start(None).await.unwrap();
    let mut sink = Sink::default();
    sync_to(&mut src, &mut sink, db.version()).await;
    script(&db);
    sync_to(&mut src, &mut sink, 3).await;
    assert_equal(&db, &sink);
}

#[tokio::test(start_paused = true)]
async fn flaw_two_refreshing_the_version_on_an_empty_poll_skips_a_commit() {
    // A commit lands between the empty query and reading CURRENT_VERSION().
    let script = |db: &FakeCt| {
        db.inject(Call::Changes, |db| {
            db.commit(|tx| tx.put(T, ct_row![7, "open", 7]));
        });
    };

    let db = orders();
    let mut naive = Original::new(&db, 100).await;
    script(&db);
    for _ in 0..5 {
        naive.poll().await;
    }
    assert!(
        naive.table().is_empty(),
        "the original's rule loses the commit"
    );
    assert_ne!(naive.table(), db_rows(&db, T, &[0]));

    // The rule reads CURRENT_VERSION first: nothing lost. (Its first tick after the load only
    // checks; a commit makes it query, and the injected commit lands after that query.)
    let db = orders();
    let mut src = source(&db, &[T], 100);
    src.start(None).await.unwrap();
    let mut sink = Sink::default();
    sync_to(&mut src, &mut sink, db.version()).await;
    db.commit(|tx| tx.put(T, ct_row![1, "open", 1]));
    script(&db);
    sync_to(&mut src, &mut sink, db.version() + 1).await;
    assert_equal(&db, &sink);
    assert_eq!(sink.rows(TN).len(), 2);
}

/// Why `CURRENT_VERSION()` is read before `BEGIN`: if a server took the snapshot at `BEGIN`
/// and `CURRENT_VERSION()` were not snapshot-consistent, reading it inside the transaction
/// would resume past a commit the snapshot did not see.
#[tokio::test(start_paused = true)]
async fn reading_the_version_inside_a_begin_snapshot_would_lose_a_commit() {
    let db = orders();
    db.set_snapshot_at(SnapshotAt::Begin);
    let mut b = db.backend();
    let info = b
        .describe(&electric_mssql::TableRef::parse(T).unwrap())
        .await
        .unwrap()
        .unwrap();
    let q = TableQuery::resolve(
        &TrackedTable::new(T).unwrap(),
        &info.key,
        &info.columns,
        None,
    )
    .unwrap();
    let last = db.commit(|tx| tx.put(T, ct_row![1, "open", 1]));
    db.commit(|tx| tx.put(T, ct_row![2, "open", 2]));
    db.inject(Call::Begin, |db| {
        db.commit(|tx| tx.put(T, ct_row![3, "open", 3]));
    });
    b.begin_snapshot().await.unwrap();
    let cur = b.current_version().await.unwrap().unwrap();
    let rows = b.changes_since(&q, last, None, 100).await.unwrap();
    b.commit().await.unwrap();
    assert_eq!(
        cur,
        db.version(),
        "the live version includes the raced commit"
    );
    assert!(
        rows.iter().all(|r| r.key != ct_row![3]),
        "the snapshot does not: resuming from cur would skip key 3"
    );

    // The rule on the same script.
    let db = orders();
    db.set_snapshot_at(SnapshotAt::Begin);
    let mut src = source(&db, &[T], 100);
    src.start(None).await.unwrap();
    let mut sink = Sink::default();
    sync_to(&mut src, &mut sink, db.version()).await;
    db.commit(|tx| tx.put(T, ct_row![1, "open", 1]));
    db.inject(Call::Begin, |db| {
        db.commit(|tx| tx.put(T, ct_row![3, "open", 3]));
    });
    sync_to(&mut src, &mut sink, db.version() + 1).await;
    assert_equal(&db, &sink);
    assert_eq!(sink.rows(TN).len(), 2);
}
