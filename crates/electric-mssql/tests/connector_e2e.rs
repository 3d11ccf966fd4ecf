//! `MssqlChangeSource` (on `FakeCt`) driving electric-core's `Connector` into documents, with the
//! connector killed (aborted) and restarted between and during bursts of commits, retention
//! cleanup and TRUNCATE: at the end every document equals its row.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Rng;
use electric_core::cdc::{
    Backoff, Connector, ConnectorHandle, JsonDoc, MemoryCheckpoints, Position, TableMapping,
    TableName,
};
use electric_core::store::MemoryStore;
use electric_core::DataManager;
use electric_mssql::fake::FakeCt;
use electric_mssql::{ct_row, MssqlChangeSource, PollBackoff, TrackedTable};
use tokio_util::sync::CancellationToken;

const T: &str = "dbo.orders";

/// A position every checkpoint of version `v` or later is at or above.
fn at_version(v: u64) -> Position {
    let mut b = vec![electric_mssql::source::POSITION_FORMAT];
    b.extend_from_slice(&v.to_be_bytes());
    Position::from_bytes(b)
}

fn spawn(
    db: &FakeCt,
    ck: &Arc<MemoryCheckpoints>,
    docs: &DataManager<JsonDoc>,
    batch: usize,
) -> ConnectorHandle {
    let source = MssqlChangeSource::builder(db.backend())
        .name("orders")
        .batch_size(batch)
        .backoff(PollBackoff::Fixed(Duration::from_millis(1)))
        .table(TrackedTable::new(T).unwrap())
        .build()
        .unwrap();
    Connector::builder(source, ck.clone(), "orders")
        .table(TableMapping::columns(
            TableName::new("dbo", "orders"),
            docs.clone(),
        ))
        .backoff(Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
            max_retries: None,
        })
        .index_shards(4)
        .build()
        .unwrap()
        .spawn(CancellationToken::new())
}

async fn wait(h: &ConnectorHandle, v: u64) {
    tokio::time::timeout(
        Duration::from_secs(60),
        h.wait_for_checkpoint(&at_version(v)),
    )
    .await
    .expect("the connector caught up (generous bound)")
    .expect("the connector runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_equal_rows_after_crashes_cleanup_and_truncate() {
    let db = FakeCt::new();
    db.create_table(T, &["id", "status", "qty"], &["id"]);
    for i in 0..10 {
        db.commit(|tx| tx.put(T, ct_row![i, "open", i]));
    }
    let store = Arc::new(MemoryStore::new());
    let docs = DataManager::<JsonDoc>::builder(store.clone(), "app", "orders")
        .build()
        .unwrap();
    let ck = Arc::new(MemoryCheckpoints::new());
    let mut rng = Rng(0x5eed);
    for round in 0..8 {
        let h = spawn(&db, &ck, &docs, 1 + rng.below(5) as usize);
        for _ in 0..25 {
            let id = rng.below(15) as i64;
            db.commit(|tx| {
                if rng.below(4) == 0 {
                    tx.delete(T, ct_row![id]);
                } else {
                    tx.put(T, ct_row![id, "open", rng.below(1000) as i64]);
                }
            });
        }
        match round {
            2 => db.cleanup(T, db.version()),
            5 => {
                db.truncate(T);
                db.commit(|tx| tx.put(T, ct_row![3, "after truncate", 3]));
            }
            _ => {}
        }
        if round % 2 == 0 {
            wait(&h, db.version()).await;
        } else {
            tokio::task::yield_now().await;
        }
        h.abort(); // a crash, wherever it is
        let _ = h.join().await;
    }
    // Down: deletes, then retention cleanup passes the checkpoint: the restart must resync.
    db.commit(|tx| (0..5).for_each(|id| tx.delete(T, ct_row![id])));
    db.commit(|tx| tx.put(T, ct_row![14, "late", 14]));
    db.cleanup(T, db.version());
    let h = spawn(&db, &ck, &docs, 3);
    wait(&h, db.version()).await;
    // Running: TRUNCATE (no change records) then one insert.
    db.truncate(T);
    db.commit(|tx| tx.put(T, ct_row![7, "after truncate", 7]));
    wait(&h, db.version()).await;
    assert_eq!(db.rows(T).len(), 1);

    let rows = db.rows(T);
    for id in 0..15i64 {
        let doc = docs.get(&id.to_string()).await.unwrap();
        let row = rows
            .iter()
            .find(|r| r[0] == electric_core::cdc::Value::Int(id));
        match (doc, row) {
            (None, None) => {}
            (Some(d), Some(r)) => {
                assert_eq!(d["id"], id);
                let electric_core::cdc::Value::Text(status) = &r[1] else {
                    panic!()
                };
                let electric_core::cdc::Value::Int(qty) = &r[2] else {
                    panic!()
                };
                assert_eq!(d["status"], serde_json::json!(status), "doc {id}");
                assert_eq!(d["qty"], serde_json::json!(qty), "doc {id}");
            }
            (d, r) => panic!("doc {id}: document {d:?} but row {r:?}"),
        }
    }
    h.shutdown();
    h.join().await.unwrap();
}
