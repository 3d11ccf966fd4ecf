//! PgChangeSource against the PostgreSQL of `.ci/services` (ELECTRIC_TEST_PG_URL).

mod common;

use std::time::Duration;

use common::*;
use electric_core::cdc::{CdcError, ChangeSource, Op, SourceEvent, Value};
use electric_postgres::{checkpoint_lsn, CmpOp, Literal, PgChangeSource, RowFilter, TableConfig};

fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Int(i)) => *i,
        other => panic!("not an int: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_stream_inserts_updates_deletes() {
    let url = pg_url();
    let Some(c) = connect(&url).await else { return };
    let n = Names::new(&url, 1);
    let t = &n.tables[0];
    c.batch_execute(&format!(
        "CREATE TABLE \"{t}\" (id int8 PRIMARY KEY, v text); \
         INSERT INTO \"{t}\" SELECT g, 'v' || g FROM generate_series(1, 5) g"
    ))
    .await
    .unwrap();
    let mut src = PgChangeSource::new(n.config(&url)).unwrap();
    assert_eq!(src.name(), format!("pg:{}", n.slot));
    src.start(None).await.unwrap();
    let mut seen = Seen::default();
    drain_until(&mut src, &mut seen, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    assert_eq!(seen.snapshot_starts, vec!["initial"]);
    assert_eq!(seen.snapshot_ends, 1);
    let mut ids: Vec<i64> = seen.items.iter().map(|i| int(i.key.get("id"))).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    assert!(seen.items.iter().all(|i| i.op == Op::Insert));
    assert_eq!(
        seen.items[0].new.as_ref().unwrap().get("v"),
        Some(&Value::Text(format!(
            "v{}",
            int(seen.items[0].key.get("id"))
        )))
    );

    // One simple-query string is one transaction: three calls, three transactions.
    c.batch_execute(&format!("INSERT INTO \"{t}\" VALUES (6, 'six')"))
        .await
        .unwrap();
    c.batch_execute(&format!(
        "UPDATE \"{t}\" SET v = 'one' WHERE id = 1; DELETE FROM \"{t}\" WHERE id = 2"
    ))
    .await
    .unwrap();
    c.batch_execute(&format!("UPDATE \"{t}\" SET id = 7 WHERE id = 3"))
        .await
        .unwrap();
    let before = seen.items.len();
    drain_until(&mut src, &mut seen, |s| s.checkpoints.len() >= 4)
        .await
        .unwrap();
    let got: Vec<(Op, i64)> = seen.items[before..]
        .iter()
        .map(|i| (i.op, int(i.key.get("id"))))
        .collect();
    assert_eq!(
        got,
        vec![
            (Op::Insert, 6),
            (Op::Update, 1),
            (Op::Delete, 2),
            (Op::Delete, 3),
            (Op::Insert, 7)
        ]
    );
    let upd = &seen.items[before + 1];
    assert_eq!(
        upd.new.as_ref().unwrap().get("v"),
        Some(&Value::Text("one".into()))
    );
    assert!(
        upd.old.is_none(),
        "no old row without REPLICA IDENTITY FULL"
    );
    // Positions strictly increase, checkpoints included.
    let mut all: Vec<_> = seen.items.iter().map(|i| i.position.clone()).collect();
    all.extend(seen.checkpoints.iter().cloned());
    all.sort();
    all.dedup();
    assert_eq!(all.len(), seen.items.len() + seen.checkpoints.len());
    for w in seen.items.windows(2) {
        assert!(w[0].position < w[1].position);
    }
    drop(src);
    n.cleanup(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_off_under_concurrent_writes_has_no_gap_and_no_duplicate() {
    let url = pg_url();
    let Some(c) = connect(&url).await else { return };
    let n = Names::new(&url, 1);
    let t = n.tables[0].clone();
    c.batch_execute(&format!("CREATE TABLE \"{t}\" (id int8 PRIMARY KEY)"))
        .await
        .unwrap();
    const N: i64 = 400;
    let writer = {
        let url = url.clone();
        let t = t.clone();
        tokio::spawn(async move {
            let c = connect(&url).await.unwrap();
            for i in 1..=N {
                c.execute(&format!("INSERT INTO \"{t}\" VALUES ($1)"), &[&i])
                    .await
                    .unwrap();
            }
        })
    };
    // Start while the writer runs.
    while connect(&url)
        .await
        .unwrap()
        .query_one(&format!("SELECT count(*) FROM \"{t}\""), &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        < 50
    {
        tokio::task::yield_now().await;
    }
    let mut src = PgChangeSource::new(n.config(&url)).unwrap();
    src.start(None).await.unwrap();
    writer.await.unwrap();
    let mut seen = Seen::default();
    drain_until(&mut src, &mut seen, |s| s.items.len() as i64 >= N)
        .await
        .unwrap();
    let mut ids: Vec<i64> = seen.items.iter().map(|i| int(i.key.get("id"))).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(seen.items.len() as i64, N, "a duplicate at the hand-off");
    assert_eq!(ids, (1..=N).collect::<Vec<_>>(), "a gap at the hand-off");
    drop(src);
    n.cleanup(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_transaction_arrives_in_bounded_batches_checkpointed_once() {
    let url = pg_url();
    let Some(c) = connect(&url).await else { return };
    let n = Names::new(&url, 1);
    let t = &n.tables[0];
    c.batch_execute(&format!(
        "CREATE TABLE \"{t}\" (id int8 PRIMARY KEY, v int4)"
    ))
    .await
    .unwrap();
    let mut src = PgChangeSource::new(n.config(&url).with_max_batch(10)).unwrap();
    src.start(None).await.unwrap();
    let mut seen = Seen::default();
    drain_until(&mut src, &mut seen, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    c.batch_execute(&format!(
        "INSERT INTO \"{t}\" SELECT g, g FROM generate_series(1, 35) g"
    ))
    .await
    .unwrap();
    let mut sizes = Vec::new();
    loop {
        match next_event(&mut src, Duration::from_secs(60)).await.unwrap() {
            SourceEvent::Changes(b) => {
                sizes.push((b.items.len(), b.checkpoint.is_some()));
                if let Some(cp) = b.checkpoint {
                    src.ack(&cp).await.unwrap();
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        sizes,
        vec![(10, false), (10, false), (10, false), (5, true)]
    );
    drop(src);
    n.cleanup(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toast_unchanged_types_and_full_identity() {
    let url = pg_url();
    let Some(c) = connect(&url).await else { return };
    let n = Names::new(&url, 2);
    let (t, f) = (&n.tables[0], &n.tables[1]);
    c.batch_execute(&format!(
        "CREATE TABLE \"{t}\" (id int4 PRIMARY KEY, b bool, f float8, j jsonb, by bytea, num numeric, big text); \
         ALTER TABLE \"{t}\" ALTER COLUMN big SET STORAGE EXTERNAL; \
         CREATE TABLE \"{f}\" (k text, v int4); ALTER TABLE \"{f}\" REPLICA IDENTITY FULL"
    ))
    .await
    .unwrap();
    let mut src = PgChangeSource::new(n.config(&url)).unwrap();
    src.start(None).await.unwrap();
    let mut seen = Seen::default();
    drain_until(&mut src, &mut seen, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    c.batch_execute(&format!(
        "INSERT INTO \"{t}\" VALUES (1, true, 'NaN', '{{\"a\": [1]}}', '\\x0102', 1.50, repeat('x', 5000)); \
         UPDATE \"{t}\" SET b = false WHERE id = 1; \
         INSERT INTO \"{f}\" VALUES ('a', 1); UPDATE \"{f}\" SET v = 2; DELETE FROM \"{f}\""
    ))
    .await
    .unwrap();
    drain_until(&mut src, &mut seen, |s| s.items.len() >= 5)
        .await
        .unwrap();
    let ins = seen.items[0].new.as_ref().unwrap();
    assert_eq!(ins.get("b"), Some(&Value::Bool(true)));
    assert_eq!(ins.get("f"), Some(&Value::Text("NaN".into())));
    assert_eq!(
        ins.get("j"),
        Some(&Value::Json(serde_json::json!({"a": [1]})))
    );
    assert_eq!(ins.get("by"), Some(&Value::Bytes(vec![1, 2])));
    assert_eq!(ins.get("num"), Some(&Value::Text("1.50".into())));
    assert_eq!(ins.get("big"), Some(&Value::Text("x".repeat(5000))));
    let upd = seen.items[1].new.as_ref().unwrap();
    assert_eq!(upd.get("b"), Some(&Value::Bool(false)));
    assert_eq!(upd.get("big"), Some(&Value::Unchanged), "TOAST unchanged");
    // REPLICA IDENTITY FULL without a primary key: every column is the key, old rows known.
    let fu = &seen.items[3];
    assert_eq!(
        fu.op,
        Op::Delete,
        "a full-identity update changes its all-column key"
    );
    assert_eq!(fu.key.columns.len(), 2);
    let fi = &seen.items[4];
    assert_eq!((fi.op, fi.key.get("v")), (Op::Insert, Some(&Value::Int(2))));
    drain_until(&mut src, &mut seen, |s| s.items.len() >= 6)
        .await
        .unwrap();
    let fd = &seen.items[5];
    assert_eq!(fd.op, Op::Delete);
    assert_eq!(
        fd.old.as_ref().unwrap().get("k"),
        Some(&Value::Text("a".into()))
    );
    drop(src);
    n.cleanup(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_lists_and_row_filters_apply_to_snapshot_and_stream() {
    let url = pg_url();
    let Some(c) = connect(&url).await else { return };
    let n = Names::new(&url, 1);
    let t = &n.tables[0];
    c.batch_execute(&format!(
        "CREATE TABLE \"{t}\" (id int8 PRIMARY KEY, a int4, secret text); \
         INSERT INTO \"{t}\" VALUES (1, 5, 's'), (2, 50, 's')"
    ))
    .await
    .unwrap();
    let mut cfg = n.config(&url);
    cfg.tables = vec![TableConfig::new("public", t)
        .with_columns(["id", "a"])
        .with_filter(RowFilter::Cmp("id".into(), CmpOp::Ge, Literal::Int(2)))];
    let mut src = PgChangeSource::new(cfg).unwrap();
    src.start(None).await.unwrap();
    let mut seen = Seen::default();
    drain_until(&mut src, &mut seen, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    assert_eq!(seen.items.len(), 1);
    let row = seen.items[0].new.as_ref().unwrap();
    assert_eq!(row.get("id"), Some(&Value::Int(2)));
    assert_eq!(
        row.get("secret"),
        None,
        "column list honoured in the snapshot"
    );
    c.batch_execute(&format!(
        "INSERT INTO \"{t}\" VALUES (0, 1, 's'); INSERT INTO \"{t}\" VALUES (3, 7, 's')"
    ))
    .await
    .unwrap();
    drain_until(&mut src, &mut seen, |s| s.items.len() >= 2)
        .await
        .unwrap();
    let row = seen.items[1].new.as_ref().unwrap();
    assert_eq!(
        row.get("id"),
        Some(&Value::Int(3)),
        "row filter honoured in the stream"
    );
    assert_eq!(row.columns.len(), 2, "column list honoured in the stream");
    drop(src);
    n.cleanup(&c).await;
}

async fn confirmed_flush(c: &tokio_postgres::Client, slot: &str) -> i64 {
    c.query_one(
        "SELECT (confirmed_flush_lsn - '0/0')::int8 FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .get(0)
}

/// Writes only to `other` (unpublished) and waits until the slot's confirmed_flush_lsn passes
/// the WAL written, driving `src` meanwhile (it must deliver nothing).
async fn idle_writes_get_confirmed(
    c: &tokio_postgres::Client,
    src: &mut PgChangeSource,
    slot: &str,
    other: &str,
) {
    let before = confirmed_flush(c, slot).await;
    c.batch_execute(&format!(
        "INSERT INTO \"{other}\" SELECT generate_series(1, 1000)"
    ))
    .await
    .unwrap();
    let written: i64 = c
        .query_one("SELECT (pg_current_wal_flush_lsn() - '0/0')::int8", &[])
        .await
        .unwrap()
        .get(0);
    assert!(written > before);
    let mut now = before;
    for _ in 0..300 {
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(100), src.next()).await {
            panic!("nothing published was written, got {r:?}");
        }
        now = confirmed_flush(c, slot).await;
        if now >= written {
            break;
        }
    }
    assert!(
        now >= written,
        "confirmed_flush_lsn {now} never reached {written} (was {before})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_slot_confirms_keepalives_and_retains_no_wal() {
    let url = pg_url();
    let Some(c) = connect(&url).await else { return };
    let n = Names::new(&url, 2);
    let (t, other) = (&n.tables[0], &n.tables[1]);
    c.batch_execute(&format!(
        "CREATE TABLE \"{t}\" (id int8 PRIMARY KEY); CREATE TABLE \"{other}\" (id int8)"
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
    idle_writes_get_confirmed(&c, &mut src, &n.slot, other).await;

    // A delivered but unacknowledged transaction holds confirmation back.
    c.batch_execute(&format!("INSERT INTO \"{t}\" VALUES (1)"))
        .await
        .unwrap();
    let held = loop {
        if let SourceEvent::Changes(b) =
            next_event(&mut src, Duration::from_secs(60)).await.unwrap()
        {
            if let Some(cp) = b.checkpoint {
                break cp;
            }
        }
    };
    // (A confirmation from before this transaction may still be on its way: only the
    // transaction's own end must not be confirmed.)
    let held_lsn = checkpoint_lsn(&held).unwrap() as i64;
    c.batch_execute(&format!("INSERT INTO \"{other}\" VALUES (1)"))
        .await
        .unwrap();
    for _ in 0..20 {
        let _ = tokio::time::timeout(Duration::from_millis(100), src.next()).await;
    }
    let now = confirmed_flush(&c, &n.slot).await;
    assert!(
        now < held_lsn,
        "confirmed {now} passed an unacknowledged transaction ending at {held_lsn}"
    );
    src.ack(&held).await.unwrap();

    // After a resume from a persisted checkpoint, an idle slot confirms too.
    drop(src);
    let mut src = PgChangeSource::new(cfg).unwrap();
    src.start(Some(held)).await.unwrap();
    idle_writes_get_confirmed(&c, &mut src, &n.slot, other).await;
    drop(src);
    n.cleanup(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_over_max_message_bytes_is_a_typed_permanent_error() {
    let url = pg_url();
    let Some(c) = connect(&url).await else { return };
    let n = Names::new(&url, 1);
    let t = &n.tables[0];
    c.batch_execute(&format!(
        "CREATE TABLE \"{t}\" (id int8 PRIMARY KEY, v text)"
    ))
    .await
    .unwrap();
    let mut cfg = n.config(&url);
    cfg.max_message_bytes = 64 << 10;
    let mut src = PgChangeSource::new(cfg).unwrap();
    src.start(None).await.unwrap();
    let mut seen = Seen::default();
    drain_until(&mut src, &mut seen, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    c.batch_execute(&format!(
        "INSERT INTO \"{t}\" VALUES (1, 'small'); \
         INSERT INTO \"{t}\" SELECT 2, string_agg(md5(g::text), '') FROM generate_series(1, 8000) g"
    ))
    .await
    .unwrap();
    let err = loop {
        match next_event(&mut src, Duration::from_secs(60)).await {
            Err(e) => break e,
            Ok(SourceEvent::Changes(b)) => assert!(
                b.checkpoint.is_none(),
                "the big row's transaction never completes"
            ),
            Ok(other) => panic!("unexpected {other:?}"),
        }
    };
    assert!(
        matches!(&err, CdcError::Malformed { reason, .. } if reason.contains("max_message_bytes")),
        "{err}"
    );
    assert!(!err.is_retryable());
    drop(src);
    n.cleanup(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_the_acked_checkpoint_replays_only_the_unacked() {
    let url = pg_url();
    let Some(c) = connect(&url).await else { return };
    let n = Names::new(&url, 1);
    let t = &n.tables[0];
    c.batch_execute(&format!("CREATE TABLE \"{t}\" (id int8 PRIMARY KEY)"))
        .await
        .unwrap();
    let mut src = PgChangeSource::new(n.config(&url)).unwrap();
    src.start(None).await.unwrap();
    let mut seen = Seen::default();
    drain_until(&mut src, &mut seen, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    for i in [1, 2] {
        c.batch_execute(&format!("INSERT INTO \"{t}\" VALUES ({i})"))
            .await
            .unwrap();
    }
    drain_until(&mut src, &mut seen, |s| s.checkpoints.len() >= 3)
        .await
        .unwrap();
    let acked = seen.checkpoints.last().unwrap().clone();
    // One more transaction delivered but never acked.
    c.batch_execute(&format!("INSERT INTO \"{t}\" VALUES (3)"))
        .await
        .unwrap();
    loop {
        if let SourceEvent::Changes(b) =
            next_event(&mut src, Duration::from_secs(60)).await.unwrap()
        {
            if b.checkpoint.is_some() {
                break;
            }
        }
    }
    drop(src);
    c.batch_execute(&format!("INSERT INTO \"{t}\" VALUES (4)"))
        .await
        .unwrap();
    let mut src = PgChangeSource::new(n.config(&url)).unwrap();
    src.start(Some(acked.clone())).await.unwrap();
    let mut again = Seen::default();
    drain_until(&mut src, &mut again, |s| s.items.len() >= 2)
        .await
        .unwrap();
    let ids: Vec<i64> = again.items.iter().map(|i| int(i.key.get("id"))).collect();
    assert_eq!(
        ids,
        vec![3, 4],
        "acked changes are not replayed; unacked ones are"
    );
    assert!(again.snapshot_starts.is_empty());
    assert!(again.items[0].position > acked);
    assert!(checkpoint_lsn(&acked).is_ok());
    // A position that is not a checkpoint is refused.
    let mut bad = PgChangeSource::new(n.config(&url)).unwrap();
    assert!(matches!(
        bad.start(Some(again.items[0].position.clone())).await,
        Err(CdcError::BadPosition { .. })
    ));
    drop(src);
    n.cleanup(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_added_column_and_dropped_table_and_truncate() {
    let url = pg_url();
    let Some(c) = connect(&url).await else { return };
    let n = Names::new(&url, 1);
    let t = &n.tables[0];
    c.batch_execute(&format!("CREATE TABLE \"{t}\" (id int8 PRIMARY KEY)"))
        .await
        .unwrap();
    let mut cfg = n.config(&url);
    cfg.table_check_interval = Duration::from_millis(200);
    let mut src = PgChangeSource::new(cfg).unwrap();
    src.start(None).await.unwrap();
    let mut seen = Seen::default();
    drain_until(&mut src, &mut seen, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    for sql in [
        format!("INSERT INTO \"{t}\" VALUES (1)"),
        format!("ALTER TABLE \"{t}\" ADD COLUMN extra text"),
        format!("INSERT INTO \"{t}\" VALUES (2, 'e')"),
        format!("TRUNCATE \"{t}\""),
    ] {
        c.batch_execute(&sql).await.unwrap();
    }
    drain_until(&mut src, &mut seen, |s| {
        s.items.len() >= 2 && s.snapshot_ends >= 2
    })
    .await
    .unwrap();
    assert_eq!(seen.items[0].new.as_ref().unwrap().columns.len(), 1);
    assert_eq!(
        seen.items[1].new.as_ref().unwrap().get("extra"),
        Some(&Value::Text("e".into())),
        "the added column is picked up"
    );
    assert_eq!(seen.snapshot_starts, vec!["initial", "truncated"]);
    drain_until(&mut src, &mut seen, |s| s.checkpoints.len() >= 4)
        .await
        .unwrap();
    c.batch_execute(&format!("DROP TABLE \"{t}\""))
        .await
        .unwrap();
    let err = match next_event(&mut src, Duration::from_secs(60)).await {
        Err(e) => e,
        Ok(ev) => panic!("unexpected {ev:?}"),
    };
    assert!(
        matches!(&err, CdcError::Table { reason, .. } if reason.contains("dropped")),
        "{err}"
    );
    drop(src);
    n.cleanup(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tables_and_missing_rights_are_typed_errors() {
    let url = pg_url();
    let Some(c) = connect(&url).await else { return };
    let n = Names::new(&url, 2);
    let (nopk, ok) = (&n.tables[0], &n.tables[1]);
    c.batch_execute(&format!(
        "CREATE TABLE \"{nopk}\" (v int4); CREATE TABLE \"{ok}\" (id int4 PRIMARY KEY, v int4)"
    ))
    .await
    .unwrap();
    let mut cfg = n.config(&url);
    cfg.tables.truncate(1);
    let mut src = PgChangeSource::new(cfg.clone()).unwrap();
    let err = src.start(None).await.unwrap_err();
    assert!(
        matches!(&err, CdcError::Table { reason, .. } if reason.contains("primary key")),
        "{err}"
    );
    // Unknown table.
    cfg.tables = vec![TableConfig::new("public", "no_such_table_electric")];
    let err = PgChangeSource::new(cfg.clone())
        .unwrap()
        .start(None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CdcError::Table { reason, .. } if reason == "not found"),
        "{err}"
    );
    // A column list without the key.
    cfg.tables = vec![TableConfig::new("public", ok).with_columns(["v"])];
    let err = PgChangeSource::new(cfg.clone())
        .unwrap()
        .start(None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CdcError::Table { reason, .. } if reason.contains("key column")),
        "{err}"
    );
    // A role with REPLICATION that does not own the table cannot create the publication.
    let owner_less = common::unique("notowner");
    c.batch_execute(&format!(
        "CREATE ROLE \"{owner_less}\" LOGIN REPLICATION; GRANT SELECT ON \"{ok}\" TO \"{owner_less}\""
    ))
    .await
    .unwrap();
    let mut u = url_parts::Url::parse(&url);
    u.user = owner_less.clone();
    let mut cfg2 = cfg.clone();
    cfg2.url = u.to_string();
    cfg2.tables = vec![TableConfig::new("public", ok)];
    let err = PgChangeSource::new(cfg2)
        .unwrap()
        .start(None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CdcError::Permission { right, .. } if right.contains("ownership")),
        "{err}"
    );
    c.batch_execute(&format!(
        "REVOKE ALL ON \"{ok}\" FROM \"{owner_less}\"; DROP ROLE \"{owner_less}\""
    ))
    .await
    .unwrap();
    // A role without REPLICATION.
    let role = common::unique("norepl");
    c.batch_execute(&format!(
        "CREATE ROLE \"{role}\" LOGIN NOREPLICATION; GRANT SELECT ON \"{ok}\" TO \"{role}\""
    ))
    .await
    .unwrap();
    let mut u: url_parts::Url = url_parts::Url::parse(&url);
    u.user = role.clone();
    cfg.url = u.to_string();
    cfg.tables = vec![TableConfig::new("public", ok)];
    let err = PgChangeSource::new(cfg)
        .unwrap()
        .start(None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CdcError::Permission { right, .. } if right == "REPLICATION"),
        "{err}"
    );
    assert!(!err.is_retryable());
    c.batch_execute(&format!(
        "REVOKE ALL ON \"{ok}\" FROM \"{role}\"; DROP ROLE \"{role}\""
    ))
    .await
    .unwrap();
    n.cleanup(&c).await;
}

mod url_parts {
    /// Just enough URL handling to swap the user of `postgres://user@host:port/db`.
    pub struct Url {
        pub user: String,
        rest: String,
    }
    impl Url {
        pub fn parse(url: &str) -> Self {
            let body = url
                .strip_prefix("postgres://")
                .or_else(|| url.strip_prefix("postgresql://"))
                .unwrap();
            let (cred, rest) = body.split_once('@').unwrap_or(("postgres", body));
            Self {
                user: cred.split(':').next().unwrap().to_string(),
                rest: rest.to_string(),
            }
        }
    }
    impl std::fmt::Display for Url {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "postgres://{}@{}", self.user, self.rest)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_from_before_a_slot_recreation_is_answered_with_a_snapshot() {
    let url = pg_url();
    let Some(c) = connect(&url).await else { return };
    let n = Names::new(&url, 1);
    let t = &n.tables[0];
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
    let old = seen.checkpoints.last().unwrap().clone();
    drop(src);
    // A change the old slot would have carried, then a snapshot that recreates the slot and
    // "crashes" before its checkpoint is persisted.
    c.batch_execute(&format!("INSERT INTO \"{t}\" VALUES (2)"))
        .await
        .unwrap();
    let mut src = PgChangeSource::new(n.config(&url)).unwrap();
    src.start(None).await.unwrap();
    let ev = next_event(&mut src, Duration::from_secs(60)).await.unwrap();
    assert!(matches!(ev, SourceEvent::SnapshotStart { .. }));
    drop(src);
    // Restarting from the old checkpoint must not stream from the new slot (change 2 would be
    // lost): it snapshots again.
    let mut src = PgChangeSource::new(n.config(&url)).unwrap();
    src.start(Some(old)).await.unwrap();
    let mut again = Seen::default();
    drain_until(&mut src, &mut again, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    assert_eq!(again.snapshot_starts, vec!["slot recreated"]);
    let mut ids: Vec<i64> = again.items.iter().map(|i| int(i.key.get("id"))).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
    // And its own checkpoint resumes normally.
    let cp = again.checkpoints.last().unwrap().clone();
    drop(src);
    let mut src = PgChangeSource::new(n.config(&url)).unwrap();
    src.start(Some(cp)).await.unwrap();
    c.batch_execute(&format!("INSERT INTO \"{t}\" VALUES (3)"))
        .await
        .unwrap();
    let mut after = Seen::default();
    drain_until(&mut src, &mut after, |s| !s.items.is_empty())
        .await
        .unwrap();
    assert!(after.snapshot_starts.is_empty());
    assert_eq!(int(after.items[0].key.get("id")), 3);
    drop(src);
    n.cleanup(&c).await;
}
