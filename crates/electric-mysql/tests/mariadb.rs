//! `MysqlChangeSource` against the MariaDB that `.ci/services` starts (log_bin, ROW, FULL image
//! and metadata). Each test uses its own table (dropped afterwards) and replica server id.

mod common;

use std::collections::HashMap;

use common::*;
use electric_core::cdc::{CdcError, ChangeSource, Op, Position, SourceEvent, Value};
use electric_mysql::{BinlogPos, HistoryLostPolicy, MysqlChangeSource};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

async fn create(admin: &mut Conn, prefix: &str, columns: &str) -> (String, DropTable) {
    let t = unique(prefix);
    admin
        .query_drop(format!(
            "CREATE TABLE test.{t} ({columns}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        ))
        .await
        .unwrap();
    let guard = DropTable {
        url: url(),
        table: format!("test.{t}"),
    };
    (format!("test.{t}"), guard)
}

fn source(table: &str, max_batch: usize) -> MysqlChangeSource {
    MysqlChangeSource::builder(url())
        .table(table)
        .server_id(server_id())
        .max_batch(max_batch)
        .build()
        .unwrap()
}

/// Starts from scratch on an empty table and reads through the snapshot's checkpoint.
async fn started(table: &str, max_batch: usize) -> (MysqlChangeSource, Seen) {
    let mut src = source(table, max_batch);
    src.start(None).await.unwrap();
    let mut seen = Seen::default();
    collect_until(&mut src, &mut seen, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    assert!(seen.items.is_empty(), "the table was empty");
    (src, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_hands_off_to_the_stream_without_gap_or_duplicate() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let (t, _g) = create(
        &mut admin,
        "cdc_handoff",
        "id INT PRIMARY KEY, v VARCHAR(20)",
    )
    .await;
    let values: Vec<String> = (1..=200).map(|i| format!("({i}, 'v{i}')")).collect();
    admin
        .query_drop(format!("INSERT INTO {t} VALUES {}", values.join(",")))
        .await
        .unwrap();
    // Writes run while the snapshot is taken, one transaction each.
    let table = t.clone();
    let writer = tokio::spawn(async move {
        let mut c = Conn::from_url(url()).await.unwrap();
        for i in 201..=400 {
            c.query_drop(format!("INSERT INTO {table} VALUES ({i}, 'w{i}')"))
                .await
                .unwrap();
        }
    });
    let mut src = source(&t, 16);
    src.start(None).await.unwrap();
    let mut seen = Seen::default();
    collect_until(&mut src, &mut seen, |s| {
        s.items.iter().any(|i| id(i) == 400)
    })
    .await
    .unwrap();
    writer.await.unwrap();
    // A fence: once it arrives, nothing written before it is still in flight.
    admin
        .query_drop(format!("INSERT INTO {t} VALUES (1000, 'fence')"))
        .await
        .unwrap();
    collect_until(&mut src, &mut seen, |s| {
        s.items.iter().any(|i| id(i) == 1000)
    })
    .await
    .unwrap();

    let mut counts: HashMap<i64, usize> = HashMap::new();
    for item in &seen.items {
        assert_eq!(item.op, Op::Insert);
        *counts.entry(id(item)).or_default() += 1;
    }
    for i in (1..=400).chain([1000]) {
        assert_eq!(
            counts.get(&i),
            Some(&1),
            "id {i} seen {:?} times",
            counts.get(&i)
        );
    }
    assert_eq!(counts.len(), 401);
    assert_increasing(&seen.items);

    // The snapshot: SnapshotStart("initial"), pages of at most 16, SnapshotEnd, a checkpoint.
    let start = seen
        .events
        .iter()
        .position(
            |e| matches!(e, SourceEvent::SnapshotStart { reason, .. } if &**reason == "initial"),
        )
        .expect("snapshot start");
    let end = seen
        .events
        .iter()
        .position(|e| matches!(e, SourceEvent::SnapshotEnd { .. }))
        .expect("snapshot end");
    assert_eq!(start, 0);
    let mut in_snapshot = 0;
    for e in &seen.events[start + 1..end] {
        let SourceEvent::Changes(b) = e else {
            panic!("unexpected {e:?}")
        };
        assert!(b.items.len() <= 16);
        assert!(b.checkpoint.is_none());
        in_snapshot += b.items.len();
        for i in &b.items {
            assert_eq!(
                i.new.as_ref().unwrap().get("v"),
                Some(&Value::Text(format!(
                    "{}{}",
                    if id(i) <= 200 { "v" } else { "w" },
                    id(i)
                )))
            );
        }
    }
    assert!(
        in_snapshot >= 200,
        "every row written before start is in the snapshot"
    );
    let SourceEvent::Changes(after) = &seen.events[end + 1] else {
        panic!("a checkpoint follows the snapshot")
    };
    assert!(after.items.is_empty() && after.checkpoint.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_updates_and_deletes_carry_keys_and_images() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let (t, _g) = create(
        &mut admin,
        "cdc_crud",
        "id INT PRIMARY KEY, v VARCHAR(20), n INT",
    )
    .await;
    let (mut src, mut seen) = started(&t, 100).await;
    admin
        .query_drop(format!(
            "INSERT INTO {t} VALUES (1, 'a', 10), (2, 'b', 20); \
             UPDATE {t} SET v = 'a2', n = n + 1 WHERE id = 1; \
             DELETE FROM {t} WHERE id = 2; \
             UPDATE {t} SET id = 3 WHERE id = 1"
        ))
        .await
        .unwrap();
    collect_until(&mut src, &mut seen, |s| s.items.len() >= 6)
        .await
        .unwrap();
    let it = &seen.items;
    assert_eq!(it.len(), 6);
    assert_eq!((it[0].op, id(&it[0])), (Op::Insert, 1));
    assert_eq!((it[1].op, id(&it[1])), (Op::Insert, 2));
    assert_eq!(
        it[0].new.as_ref().unwrap().get("v"),
        Some(&Value::Text("a".into()))
    );
    assert!(it[0].old.is_none());
    assert_eq!((it[2].op, id(&it[2])), (Op::Update, 1));
    assert_eq!(
        it[2].old.as_ref().unwrap().get("v"),
        Some(&Value::Text("a".into()))
    );
    assert_eq!(
        it[2].new.as_ref().unwrap().get("v"),
        Some(&Value::Text("a2".into()))
    );
    assert_eq!(int(it[2].new.as_ref().unwrap(), "n"), 11);
    assert_eq!((it[3].op, id(&it[3])), (Op::Delete, 2));
    assert!(it[3].new.is_none());
    assert_eq!(int(it[3].old.as_ref().unwrap(), "n"), 20);
    // A primary-key change is the old row's delete and the new row's insert.
    assert_eq!((it[4].op, id(&it[4])), (Op::Delete, 1));
    assert_eq!((it[5].op, id(&it[5])), (Op::Insert, 3));
    assert_eq!(
        it[5].new.as_ref().unwrap().get("v"),
        Some(&Value::Text("a2".into()))
    );
    assert_increasing(it);
    // Four autocommit statements: four checkpoints after the snapshot's, each after its items.
    let after: Vec<usize> = seen.checkpoints.iter().skip(1).map(|(_, n)| *n).collect();
    assert_eq!(after, vec![2, 3, 4, 6]);
    for (c, n) in &seen.checkpoints[1..] {
        assert!(seen.items[..*n].iter().all(|i| i.position < *c));
        assert!(seen.items[*n..].iter().all(|i| i.position > *c));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_a_checkpoint_loses_and_repeats_nothing() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let (t, _g) = create(&mut admin, "cdc_resume", "id INT PRIMARY KEY, v INT").await;
    let (mut src, mut seen) = started(&t, 100).await;
    for i in 1..=10 {
        admin
            .query_drop(format!("INSERT INTO {t} VALUES ({i}, {i})"))
            .await
            .unwrap();
    }
    collect_until(&mut src, &mut seen, |s| s.items.len() >= 10)
        .await
        .unwrap();
    // Pretend the sink applied the first 6 transactions, then crashed.
    let (ckpt, applied) = seen.checkpoints[1 + 5].clone();
    assert_eq!(applied, 6);
    src.ack(&ckpt).await.unwrap();
    drop(src);
    for i in 11..=20 {
        admin
            .query_drop(format!("INSERT INTO {t} VALUES ({i}, {i})"))
            .await
            .unwrap();
    }
    let mut again = source(&t, 100);
    let (file, _) = (ckpt.clone(), ());
    again.start(Some(file)).await.unwrap();
    let mut rest = Seen::default();
    collect_until(&mut again, &mut rest, |s| {
        s.items.iter().any(|i| id(i) == 20)
    })
    .await
    .unwrap();
    let ids: Vec<i64> = rest.items.iter().map(id).collect();
    assert_eq!(ids, (7..=20).collect::<Vec<_>>());
    assert!(rest.items.iter().all(|i| i.position > ckpt));
    assert!(rest
        .events
        .iter()
        .all(|e| !matches!(e, SourceEvent::SnapshotStart { .. })));
    let (name, offset) = again.describe(&ckpt).unwrap();
    assert!(name.contains('.') && offset > 4, "{name}:{offset}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_transaction_arrives_in_bounded_batches() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let (t, _g) = create(
        &mut admin,
        "cdc_bigtx",
        "id INT PRIMARY KEY, pad VARCHAR(100)",
    )
    .await;
    let (mut src, mut seen) = started(&t, 100).await;
    let before = seen.events.len();
    let mut tx = admin.start_transaction(Default::default()).await.unwrap();
    for chunk in (1..=2500).collect::<Vec<i32>>().chunks(250) {
        let v: Vec<String> = chunk
            .iter()
            .map(|i| format!("({i}, REPEAT('x', 100))"))
            .collect();
        tx.query_drop(format!("INSERT INTO {t} VALUES {}", v.join(",")))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    collect_until(&mut src, &mut seen, |s| s.checkpoints.len() >= 2)
        .await
        .unwrap();
    let batches: Vec<_> = seen.events[before..]
        .iter()
        .filter_map(|e| match e {
            SourceEvent::Changes(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(seen.items.len(), 2500);
    assert!(batches.len() >= 25, "{} batches", batches.len());
    assert!(batches.iter().all(|b| b.items.len() <= 100));
    let (last, rest) = batches.split_last().unwrap();
    assert!(last.checkpoint.is_some());
    assert!(rest.iter().all(|b| b.checkpoint.is_none()));
    assert_increasing(&seen.items);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binlog_rotation_is_followed_and_resumable() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let (t, _g) = create(&mut admin, "cdc_rotate", "id INT PRIMARY KEY").await;
    let (mut src, mut seen) = started(&t, 100).await;
    admin
        .query_drop(format!("INSERT INTO {t} VALUES (1)"))
        .await
        .unwrap();
    admin.query_drop("FLUSH BINARY LOGS").await.unwrap();
    admin
        .query_drop(format!("INSERT INTO {t} VALUES (2)"))
        .await
        .unwrap();
    admin.query_drop("FLUSH BINARY LOGS").await.unwrap();
    admin
        .query_drop(format!("INSERT INTO {t} VALUES (3)"))
        .await
        .unwrap();
    collect_until(&mut src, &mut seen, |s| s.items.len() >= 3)
        .await
        .unwrap();
    let files: Vec<u32> = seen
        .items
        .iter()
        .map(|i| BinlogPos::decode(&i.position).unwrap().file_seq)
        .collect();
    assert!(files[0] < files[1] && files[1] < files[2], "{files:?}");
    assert_increasing(&seen.items);
    // Resume from the checkpoint after id 1: it lies in the older file.
    let ckpt = seen.checkpoints[1].0.clone();
    assert_eq!(BinlogPos::decode(&ckpt).unwrap().file_seq, files[0]);
    let mut again = source(&t, 100);
    again.start(Some(ckpt)).await.unwrap();
    let mut rest = Seen::default();
    collect_until(&mut again, &mut rest, |s| s.items.len() >= 2)
        .await
        .unwrap();
    assert_eq!(rest.items.iter().map(id).collect::<Vec<_>>(), vec![2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_map_the_same_from_snapshot_and_binlog() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let (t, _g) = create(
        &mut admin,
        "cdc_types",
        "id INT PRIMARY KEY, ti TINYINT, si SMALLINT UNSIGNED, mi MEDIUMINT, mu MEDIUMINT UNSIGNED, \
         bu BIGINT UNSIGNED, f FLOAT, d DOUBLE, dc DECIMAL(10,3), c CHAR(5), vc VARCHAR(30), \
         l1 VARCHAR(10) CHARACTER SET latin1, tx TEXT, vb VARBINARY(10), bl BLOB, j JSON, \
         dt DATE, dtt DATETIME(6), ts TIMESTAMP(3) NULL DEFAULT NULL, tm TIME, yr YEAR, \
         bt BIT(12), en ENUM('a','b','c'), st SET('x','y','z'), n INT NULL",
    )
    .await;
    admin.query_drop("SET time_zone = '+00:00'").await.unwrap();
    let row = |id: i32| {
        format!(
            "INSERT INTO {t} VALUES ({id}, -5, 65535, -8388608, 16777215, 18446744073709551615, 1.5, \
             2.25, 12.5, 'ab', 'héllo ✓', 'café', 'long text', x'00ff', x'010203', \
             '{{\"a\": [1, 2]}}', '2024-02-29', '2024-02-29 13:14:15.123456', \
             '2024-02-29 13:14:15.5', '-12:34:56', 2024, b'101', 'b', 'x,z', NULL)"
        )
    };
    admin.query_drop(row(1)).await.unwrap();
    let mut src = source(&t, 100);
    src.start(None).await.unwrap();
    let mut seen = Seen::default();
    collect_until(&mut src, &mut seen, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    admin.query_drop(row(2)).await.unwrap();
    collect_until(&mut src, &mut seen, |s| s.items.len() >= 2)
        .await
        .unwrap();
    let expected: Vec<(&str, Value)> = vec![
        ("ti", Value::Int(-5)),
        ("si", Value::Int(65535)),
        ("mi", Value::Int(-8_388_608)),
        ("mu", Value::Int(16_777_215)),
        ("bu", Value::Text("18446744073709551615".into())),
        ("f", Value::Float(1.5)),
        ("d", Value::Float(2.25)),
        ("dc", Value::Text("12.500".into())),
        ("c", Value::Text("ab".into())),
        ("vc", Value::Text("héllo ✓".into())),
        ("l1", Value::Text("café".into())),
        ("tx", Value::Text("long text".into())),
        ("vb", Value::Bytes(vec![0, 255])),
        ("bl", Value::Bytes(vec![1, 2, 3])),
        ("j", Value::Json(serde_json::json!({"a": [1, 2]}))),
        ("dt", Value::Text("2024-02-29".into())),
        ("dtt", Value::Text("2024-02-29T13:14:15.123456".into())),
        ("ts", Value::Text("2024-02-29T13:14:15.500000Z".into())),
        ("tm", Value::Text("-12:34:56".into())),
        ("yr", Value::Int(2024)),
        ("bt", Value::Int(5)),
        ("en", Value::Text("b".into())),
        ("st", Value::Text("x,z".into())),
        ("n", Value::Null),
    ];
    for (which, item) in ["snapshot", "binlog"].iter().zip(&seen.items) {
        let new = item.new.as_ref().unwrap();
        for (c, v) in &expected {
            assert_eq!(new.get(c), Some(v), "{which}: column {c}");
        }
        assert_eq!(new.columns.len(), expected.len() + 1, "{which}: {new:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_column_is_picked_up_and_a_dropped_table_is_an_error() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let (t, _g) = create(&mut admin, "cdc_ddl", "id INT PRIMARY KEY, v INT").await;
    let (mut src, mut seen) = started(&t, 100).await;
    admin
        .query_drop(format!("INSERT INTO {t} VALUES (1, 1)"))
        .await
        .unwrap();
    admin
        .query_drop(format!(
            "ALTER TABLE {t} ADD COLUMN extra VARCHAR(10) NOT NULL DEFAULT 'x', \
             ADD COLUMN doc JSON NULL"
        ))
        .await
        .unwrap();
    admin
        .query_drop(format!(
            "INSERT INTO {t} VALUES (2, 2, 'y', '[1]'); UPDATE {t} SET v = 3 WHERE id = 1"
        ))
        .await
        .unwrap();
    collect_until(&mut src, &mut seen, |s| s.items.len() >= 3)
        .await
        .unwrap();
    assert_eq!(seen.items[0].new.as_ref().unwrap().columns.len(), 2);
    let n2 = seen.items[1].new.as_ref().unwrap();
    assert_eq!(n2.get("extra"), Some(&Value::Text("y".into())));
    assert_eq!(n2.get("doc"), Some(&Value::Json(serde_json::json!([1]))));
    let up = &seen.items[2];
    assert_eq!(up.op, Op::Update);
    assert_eq!(
        up.new.as_ref().unwrap().get("extra"),
        Some(&Value::Text("x".into()))
    );
    assert_eq!(up.old.as_ref().unwrap().get("v"), Some(&Value::Int(1)));

    admin.query_drop(format!("DROP TABLE {t}")).await.unwrap();
    let err = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(30), src.next()).await {
            Ok(Ok(Some(ev))) => seen.record(ev),
            Ok(Ok(None)) => panic!("source ended"),
            Ok(Err(e)) => break e,
            Err(_) => panic!("no error after DROP TABLE"),
        }
    };
    match &err {
        CdcError::Table { table, reason } => {
            assert_eq!(table.to_string(), t);
            assert!(reason.contains("dropped"), "{reason}");
        }
        other => panic!("expected a table error, got {other:?}"),
    }
    assert!(!err.is_retryable());
    assert!(matches!(src.next().await, Err(CdcError::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_is_an_empty_resnapshot() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let (t, _g) = create(&mut admin, "cdc_trunc", "id INT PRIMARY KEY").await;
    let (mut src, mut seen) = started(&t, 100).await;
    admin
        .query_drop(format!(
            "INSERT INTO {t} VALUES (1); TRUNCATE TABLE {t}; INSERT INTO {t} VALUES (2)"
        ))
        .await
        .unwrap();
    collect_until(&mut src, &mut seen, |s| s.items.len() >= 2)
        .await
        .unwrap();
    let kinds: Vec<String> = seen
        .events
        .iter()
        .skip_while(|e| !matches!(e, SourceEvent::Changes(b) if !b.items.is_empty()))
        .map(|e| match e {
            SourceEvent::Changes(b) => format!("changes {}", b.items.len()),
            SourceEvent::SnapshotStart { reason, .. } => format!("start {reason}"),
            SourceEvent::SnapshotEnd { .. } => "end".into(),
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            "changes 1",
            "start truncate",
            "end",
            "changes 0",
            "changes 1"
        ],
        "{:?}",
        seen.events
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_without_a_key_or_missing_are_refused() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let (t, _g) = create(&mut admin, "cdc_nopk", "id INT, v INT").await;
    let mut src = source(&t, 100);
    match src.start(None).await {
        Err(CdcError::Table { reason, .. }) => assert!(reason.contains("primary key"), "{reason}"),
        other => panic!("expected a table error, got {other:?}"),
    }
    let mut src = source(&format!("test.{}", unique("cdc_missing")), 100);
    match src.start(None).await {
        Err(CdcError::Table { reason, .. }) => assert!(reason.contains("not found"), "{reason}"),
        other => panic!("expected a table error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_and_foreign_positions() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let (t, _g) = create(&mut admin, "cdc_purged", "id INT PRIMARY KEY").await;
    admin
        .query_drop(format!("INSERT INTO {t} VALUES (1), (2)"))
        .await
        .unwrap();
    // binlog.000000 never exists: older than the oldest file, so it counts as purged.
    let gone = BinlogPos {
        file_seq: 0,
        offset: 4,
        sub: 0,
    }
    .encode();
    let mut strict = MysqlChangeSource::builder(url())
        .table(&t)
        .server_id(server_id())
        .on_history_lost(HistoryLostPolicy::Error)
        .build()
        .unwrap();
    assert!(matches!(
        strict.start(Some(gone.clone())).await,
        Err(CdcError::HistoryLost(_))
    ));
    let mut src = source(&t, 100);
    src.start(Some(gone)).await.unwrap();
    let mut seen = Seen::default();
    collect_until(&mut src, &mut seen, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    assert!(matches!(&seen.events[0],
        SourceEvent::SnapshotStart { reason, .. } if &**reason == "binlog purged"));
    assert_eq!(seen.items.iter().map(id).collect::<Vec<_>>(), vec![1, 2]);

    let future = BinlogPos {
        file_seq: u32::MAX,
        offset: 4,
        sub: 0,
    }
    .encode();
    assert!(matches!(
        source(&t, 100).start(Some(future)).await,
        Err(CdcError::BadPosition { .. })
    ));
    assert!(matches!(
        source(&t, 100)
            .start(Some(Position::from_bytes(vec![1, 2, 3])))
            .await,
        Err(CdcError::BadPosition { .. })
    ));
}

struct DropUser(String);
impl Drop for DropUser {
    fn drop(&mut self) {
        let user = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut c) = Conn::from_url(url()).await {
                    let _ = c
                        .query_drop(format!("DROP USER IF EXISTS '{user}'@'127.0.0.1'"))
                        .await;
                }
            });
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_replication_rights_are_named() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let (t, _g) = create(&mut admin, "cdc_rights", "id INT PRIMARY KEY").await;
    let opts = mysql_async::Opts::from_url(&url()).unwrap();
    let host = opts.ip_or_hostname().to_string();
    let port = opts.tcp_port();
    for (grants, right) in [
        ("GRANT SELECT ON test.* TO {u}", "REPLICATION CLIENT"),
        (
            "GRANT SELECT ON test.* TO {u}; GRANT REPLICATION CLIENT ON *.* TO {u}",
            "REPLICATION SLAVE",
        ),
    ] {
        let user = unique("cdc_u");
        let user = &user[..user.len().min(32)];
        let _du = DropUser(user.to_string());
        let u = format!("'{user}'@'127.0.0.1'");
        admin
            .query_drop(format!("CREATE USER {u} IDENTIFIED BY 'pw'"))
            .await
            .unwrap();
        admin.query_drop(grants.replace("{u}", &u)).await.unwrap();
        let mut src = MysqlChangeSource::builder(format!("mysql://{user}:pw@{host}:{port}/test"))
            .table(&t)
            .server_id(server_id())
            .build()
            .unwrap();
        match src.start(None).await {
            Err(CdcError::Permission { right: r, .. }) => {
                assert!(r.starts_with(right), "{r} for {grants}")
            }
            other => panic!("expected a missing {right}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_next_calls_lose_nothing() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let (t, _g) = create(&mut admin, "cdc_cancel", "id INT PRIMARY KEY, pad TEXT").await;
    let values: Vec<String> = (1..=300)
        .map(|i| format!("({i}, REPEAT('p', 2000))"))
        .collect();
    admin
        .query_drop(format!("INSERT INTO {t} VALUES {}", values.join(",")))
        .await
        .unwrap();
    let table = t.clone();
    let writer = tokio::spawn(async move {
        let mut c = Conn::from_url(url()).await.unwrap();
        for i in 301..=600 {
            c.query_drop(format!(
                "INSERT INTO {table} VALUES ({i}, REPEAT('q', 2000))"
            ))
            .await
            .unwrap();
        }
    });
    let mut src = source(&t, 7);
    src.start(None).await.unwrap();
    let mut seen = Seen::default();
    let mut cancelled = 0;
    // Tiny deadlines cancel `next` at arbitrary await points (snapshot pages, binlog reads).
    let mut deadline = 1u64;
    while !seen.items.iter().any(|i| id(i) == 600) {
        match tokio::time::timeout(std::time::Duration::from_micros(deadline), src.next()).await {
            Ok(Ok(Some(ev))) => seen.record(ev),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => cancelled += 1,
        }
        deadline = deadline % 2000 + 37;
    }
    writer.await.unwrap();
    // How many deadlines strike depends on the host's speed (5 on a quiet one, dozens under
    // load); one is enough for the property, and without any the run proves nothing.
    assert!(cancelled > 0, "no call was cancelled");
    let mut ids: Vec<i64> = seen.items.iter().map(id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=600).collect::<Vec<_>>(), "each row exactly once");
    assert_increasing(&seen.items);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_elsewhere_advance_the_checkpoint_on_heartbeats() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let (t, _g) = create(&mut admin, "cdc_idle", "id INT PRIMARY KEY").await;
    let (other, _g2) = create(&mut admin, "cdc_other", "id INT PRIMARY KEY").await;
    let mut src = MysqlChangeSource::builder(url())
        .table(&t)
        .server_id(server_id())
        .heartbeat(std::time::Duration::from_millis(200))
        .build()
        .unwrap();
    src.start(None).await.unwrap();
    let mut seen = Seen::default();
    collect_until(&mut src, &mut seen, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    let first = seen.last_checkpoint().unwrap();
    admin
        .query_drop(format!("INSERT INTO {other} VALUES (1), (2)"))
        .await
        .unwrap();
    collect_until(&mut src, &mut seen, |s| s.checkpoints.len() >= 2)
        .await
        .unwrap();
    assert!(seen.items.is_empty(), "no change of the captured table");
    let idle = seen.last_checkpoint().unwrap();
    assert!(idle > first);
    // Resuming from the idle checkpoint skips the other table's transaction.
    admin
        .query_drop(format!("INSERT INTO {t} VALUES (7)"))
        .await
        .unwrap();
    let mut again = source(&t, 10);
    again.start(Some(idle)).await.unwrap();
    let mut rest = Seen::default();
    collect_until(&mut again, &mut rest, |s| !s.items.is_empty())
        .await
        .unwrap();
    assert_eq!(rest.items.iter().map(id).collect::<Vec<_>>(), vec![7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_or_replace_empties_the_table_and_statement_writes_are_refused() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let (t, _g) = create(&mut admin, "cdc_repl", "id INT PRIMARY KEY").await;
    let (other, _g2) = create(&mut admin, "cdc_repl_other", "id INT PRIMARY KEY").await;
    let (mut src, mut seen) = started(&t, 100).await;
    admin
        .query_drop(format!(
            "INSERT INTO {t} VALUES (1); \
             CREATE OR REPLACE TABLE {t} (id INT PRIMARY KEY, w INT) ENGINE=InnoDB; \
             INSERT INTO {t} VALUES (2, 20)"
        ))
        .await
        .unwrap();
    collect_until(&mut src, &mut seen, |s| s.items.len() >= 2)
        .await
        .unwrap();
    assert!(seen.events.iter().any(|e| matches!(e,
        SourceEvent::SnapshotStart { reason, .. } if &**reason == "create or replace")));
    assert_eq!(
        seen.items[1].new.as_ref().unwrap().get("w"),
        Some(&Value::Int(20)),
        "the new table's columns"
    );
    // A session that writes in STATEMENT format: its rows are not in the binlog. A statement
    // on another table is fine; one on the captured table stops the source.
    admin
        .query_drop("SET SESSION binlog_format = 'STATEMENT'")
        .await
        .unwrap();
    admin
        .query_drop(format!("INSERT INTO {other} VALUES (5)"))
        .await
        .unwrap();
    admin
        .query_drop(format!("INSERT INTO {t} VALUES (3, 30)"))
        .await
        .unwrap();
    let err = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(30), src.next()).await {
            Ok(Ok(Some(ev))) => seen.record(ev),
            Ok(Ok(None)) => panic!("source ended"),
            Ok(Err(e)) => break e,
            Err(_) => panic!("no error after a statement-format write"),
        }
    };
    match err {
        CdcError::Setting {
            setting, actual, ..
        } => {
            assert_eq!(setting, "binlog_format");
            assert!(actual.contains(&t), "{actual}");
        }
        other => panic!("expected a binlog_format error, got {other:?}"),
    }
}
