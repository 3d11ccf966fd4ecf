//! End to end: PostgreSQL → PgChangeSource → electric-core's Connector → documents in a
//! DataManager (memory store), across a connector restart. Every document must equal its row.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use electric_core::cdc::TableName;
use electric_core::cdc::{Connector, JsonDoc, MemoryCheckpoints, TableMapping};
use electric_core::{DataManager, MemoryStore};
use electric_postgres::PgChangeSource;
use tokio_util::sync::CancellationToken;

type Rows = BTreeMap<i64, (String, String, Option<f64>)>;

async fn table_rows(c: &tokio_postgres::Client, t: &str) -> Rows {
    c.query(&format!("SELECT id, name, bio, score FROM \"{t}\""), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect()
}

/// Whether every row has an equal document and no deleted id has one.
async fn converged(
    docs: &DataManager<JsonDoc>,
    rows: &Rows,
    ids: std::ops::RangeInclusive<i64>,
) -> Result<(), String> {
    for id in ids {
        let doc = docs.get(&id.to_string()).await.map_err(|e| e.to_string())?;
        match (rows.get(&id), doc) {
            (None, None) => {}
            (Some((name, bio, score)), Some(d)) => {
                let ok = d.get("id").and_then(|v| v.as_i64()) == Some(id)
                    && d.get("name").and_then(|v| v.as_str()) == Some(name.as_str())
                    && d.get("bio").and_then(|v| v.as_str()) == Some(bio.as_str())
                    && d.get("score").and_then(|v| v.as_f64()) == *score;
                if !ok {
                    let shown: Vec<_> = d.iter().filter(|(k, _)| *k != "bio").collect();
                    return Err(format!(
                        "doc {id} differs from {name:?} {score:?}: {shown:?}"
                    ));
                }
            }
            (r, d) => return Err(format!("id {id}: row {r:?}, doc present {}", d.is_some())),
        }
    }
    Ok(())
}

async fn wait_converged(
    docs: &DataManager<JsonDoc>,
    c: &tokio_postgres::Client,
    t: &str,
    ids: std::ops::RangeInclusive<i64>,
) {
    let rows = table_rows(c, t).await;
    let mut last = String::new();
    for _ in 0..600 {
        match converged(docs, &rows, ids.clone()).await {
            Ok(()) => return,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("documents never matched the table: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_follow_the_table_through_snapshot_stream_and_restart() {
    let url = pg_url();
    let Some(c) = connect(&url).await else { return };
    let n = Names::new(&url, 1);
    let t = n.tables[0].clone();
    c.batch_execute(&format!(
        "CREATE TABLE \"{t}\" (id int8 PRIMARY KEY, name text NOT NULL, bio text NOT NULL, score float8); \
         ALTER TABLE \"{t}\" ALTER COLUMN bio SET STORAGE EXTERNAL; \
         INSERT INTO \"{t}\" SELECT g, 'n' || g, repeat('b', 3000) || g, g * 0.5 FROM generate_series(1, 50) g"
    ))
    .await
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    let ck = Arc::new(MemoryCheckpoints::new());
    let docs = DataManager::<JsonDoc>::builder(store.clone(), "app", "users")
        .build()
        .unwrap();
    let table = TableName::new("public", t.as_str());
    let spawn = |docs: DataManager<JsonDoc>| {
        let src = PgChangeSource::new(n.config(&url).with_max_batch(7)).unwrap();
        Connector::builder(src, ck.clone(), "users")
            .table(TableMapping::columns(table.clone(), docs))
            .index_shards(4)
            .build()
            .unwrap()
            .spawn(CancellationToken::new())
    };
    let h = spawn(docs.clone());
    wait_converged(&docs, &c, &t, 1..=60).await;

    // Stream: updates that leave the TOASTed bio unchanged, deletes, inserts, a key change.
    for sql in [
        format!("UPDATE \"{t}\" SET name = 'u' || id WHERE id % 3 = 0"),
        format!("DELETE FROM \"{t}\" WHERE id % 5 = 0"),
        format!(
            "INSERT INTO \"{t}\" SELECT g, 'i' || g, 'short', NULL FROM generate_series(51, 55) g"
        ),
        // A key change of a row whose values are all inline (see the crate docs on TOAST).
        format!("UPDATE \"{t}\" SET id = 56 WHERE id = 55"),
    ] {
        c.batch_execute(&sql).await.unwrap();
    }
    wait_converged(&docs, &c, &t, 1..=60).await;

    // Kill the connector (no graceful shutdown), write while it is down, restart it.
    h.abort();
    let _ = h.join().await;
    for sql in [
        format!("UPDATE \"{t}\" SET score = 99 WHERE id = 2"),
        format!("DELETE FROM \"{t}\" WHERE id = 4"),
        format!("INSERT INTO \"{t}\" VALUES (57, 'late', 'x', 1.25)"),
    ] {
        c.batch_execute(&sql).await.unwrap();
    }
    let docs2 = DataManager::<JsonDoc>::builder(store.clone(), "app", "users")
        .build()
        .unwrap();
    let h = spawn(docs2.clone());
    wait_converged(&docs2, &c, &t, 1..=60).await;
    let st = h.stats();
    assert!(st.errors.is_empty(), "{st:?}");
    h.shutdown();
    h.join().await.unwrap();
    n.cleanup(&c).await;
}

/// The same pipeline on a private cluster killed and restarted mid-stream: the connector
/// restarts the source from its checkpoint; documents converge, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_converge_after_the_database_is_killed_and_restarted() {
    let Some(cluster) = PrivateCluster::create(7405, &["wal_level = logical"], &[]) else {
        return;
    };
    let url = cluster.url();
    let c = connect(&url).await.expect("private cluster");
    let n = Names::new(&url, 1);
    let t = n.tables[0].clone();
    c.batch_execute(&format!(
        "CREATE TABLE \"{t}\" (id int8 PRIMARY KEY, name text NOT NULL, bio text NOT NULL, score float8); \
         INSERT INTO \"{t}\" SELECT g, 'n' || g, 'b', g FROM generate_series(1, 20) g"
    ))
    .await
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    let docs = DataManager::<JsonDoc>::builder(store, "app", "users")
        .build()
        .unwrap();
    let src = PgChangeSource::new(n.config(&url)).unwrap();
    let h = Connector::builder(src, Arc::new(MemoryCheckpoints::new()), "users")
        .table(TableMapping::columns(
            TableName::new("public", t.as_str()),
            docs.clone(),
        ))
        .index_shards(4)
        .build()
        .unwrap()
        .spawn(CancellationToken::new());
    wait_converged(&docs, &c, &t, 1..=40).await;
    c.batch_execute(&format!("UPDATE \"{t}\" SET name = 'before' WHERE id <= 5"))
        .await
        .unwrap();
    wait_converged(&docs, &c, &t, 1..=40).await;
    cluster.kill();
    cluster.start();
    let c = connect(&url).await.expect("restarted cluster");
    for sql in [
        format!("UPDATE \"{t}\" SET name = 'after' WHERE id > 15"),
        format!("DELETE FROM \"{t}\" WHERE id = 3"),
        format!("INSERT INTO \"{t}\" SELECT g, 'new', 'b', NULL FROM generate_series(21, 30) g"),
    ] {
        c.batch_execute(&sql).await.unwrap();
    }
    wait_converged(&docs, &c, &t, 1..=40).await;
    let st = h.stats();
    assert!(st.starts >= 2, "the connector restarted the source: {st:?}");
    h.shutdown();
    h.join().await.unwrap();
    n.cleanup(&c).await;
    drop(cluster);
}
