//! End to end on the services MariaDB: `MysqlChangeSource` → the core `Connector` → documents
//! in a `MemoryStore`, with the connector aborted and restarted mid-stream: afterwards every
//! document equals its row and deleted rows have no document.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use electric_core::cdc::connector::{Connector, JsonDoc, TableMapping};
use electric_core::cdc::{MemoryCheckpoints, Position, TableName};
use electric_core::{DataManager, MemoryStore};
use electric_mysql::MysqlChangeSource;
use mysql_async::prelude::Queryable;
use tokio_util::sync::CancellationToken;

async fn wait_doc(docs: &DataManager<JsonDoc>, id: &str) {
    for _ in 0..600 {
        if docs.get(id).await.unwrap().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("document {id} never appeared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_become_documents_across_a_connector_restart() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let name = unique("cdc_conn");
    let table = format!("test.{name}");
    admin
        .query_drop(format!(
            "CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(20), n INT) \
             ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        ))
        .await
        .unwrap();
    let _g = DropTable {
        url: url(),
        table: table.clone(),
    };
    let values: Vec<String> = (1..=60).map(|i| format!("({i}, 'r{i}', {i})")).collect();
    admin
        .query_drop(format!("INSERT INTO {table} VALUES {}", values.join(",")))
        .await
        .unwrap();

    let store = Arc::new(MemoryStore::new());
    let docs = DataManager::<JsonDoc>::builder(store, "app", "rows")
        .build()
        .unwrap();
    let ck = Arc::new(MemoryCheckpoints::new());
    let sid = server_id();
    let spawn = |docs: &DataManager<JsonDoc>| {
        let source = MysqlChangeSource::builder(url())
            .table(&table)
            .server_id(sid)
            .max_batch(8)
            .build()
            .unwrap();
        Connector::builder(source, ck.clone(), "mysql-rows")
            .table(TableMapping::columns(
                TableName::new("test", name.as_str()),
                docs.clone(),
            ))
            .build()
            .unwrap()
            .spawn(CancellationToken::new())
    };
    let h = spawn(&docs);
    h.wait_for_checkpoint(&Position::from_bytes(Vec::new()))
        .await
        .unwrap();
    assert_eq!(docs.get("60").await.unwrap().unwrap()["name"], "r60");

    // Changes while the connector runs, then it is killed mid-stream and restarted.
    for i in 1..=20 {
        admin
            .query_drop(format!(
                "UPDATE {table} SET n = n + 100 WHERE id = {i}; \
                 DELETE FROM {table} WHERE id = {}; \
                 INSERT INTO {table} VALUES ({}, 'new', 0)",
                i + 40,
                i + 100
            ))
            .await
            .unwrap();
        if i == 10 {
            h.abort();
        }
    }
    let _ = h.join().await;
    let h = spawn(&docs);
    admin
        .query_drop(format!("INSERT INTO {table} VALUES (999, 'fence', 0)"))
        .await
        .unwrap();
    wait_doc(&docs, "999").await;

    // Every row is its document; deleted rows have none.
    let rows: Vec<(i64, String, i64)> = admin
        .query(format!("SELECT id, name, n FROM {table} ORDER BY id"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 60 - 20 + 20 + 1);
    for (id, name, n) in &rows {
        let d = docs
            .get(&id.to_string())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("row {id} has no document"));
        assert_eq!(d["name"], name.as_str(), "row {id}");
        assert_eq!(d["n"], *n, "row {id}");
    }
    for id in 41..=60 {
        assert!(
            docs.get(&id.to_string()).await.unwrap().is_none(),
            "deleted row {id} still has a document"
        );
    }
    let st = h.stats();
    assert_eq!(st.errors.values().sum::<u64>(), 0, "{st:?}");
    h.shutdown();
    let _ = h.join().await;
}
