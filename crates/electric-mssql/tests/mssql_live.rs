//! Against a real SQL Server — only when `ELECTRIC_TEST_MSSQL_URL` is set (an ADO.NET string,
//! e.g. `server=tcp:localhost,1433;user=sa;password=…;database=electric_test;TrustServerCertificate=true`).
//!
//! No SQL Server is a CI service (none can run on the project's machines), so without the URL
//! these tests print why they skip and pass — also under `ELECTRIC_TEST_REQUIRE_SERVICES=1`.
//! With the URL they must pass: the database needs `ALLOW_SNAPSHOT_ISOLATION ON` and change
//! tracking on (the test turns both on if it may), and the user needs `CREATE TABLE`, `ALTER`
//! on the schema and `VIEW CHANGE TRACKING`.
//!
//! These tests were written without a server to run them on: they compile and skip here.
#![cfg(feature = "tiberius")]

mod common;

use common::{key_string, sync_to, Sink};
use electric_core::cdc::{ChangeSource, Value};
use electric_mssql::{MssqlChangeSource, TiberiusBackend, TrackedTable};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

type Admin = tiberius::Client<Compat<TcpStream>>;

fn url() -> Option<String> {
    match std::env::var("ELECTRIC_TEST_MSSQL_URL") {
        Ok(u) if !u.trim().is_empty() => Some(u),
        _ => {
            eprintln!(
                "skipping: ELECTRIC_TEST_MSSQL_URL is not set; no SQL Server is a CI service, so \
                 these tests run only against a server you point them at"
            );
            None
        }
    }
}

async fn admin(url: &str) -> Admin {
    let config = tiberius::Config::from_ado_string(url).expect("ELECTRIC_TEST_MSSQL_URL parses");
    let tcp = TcpStream::connect(config.get_addr())
        .await
        .expect("ELECTRIC_TEST_MSSQL_URL is set, so the server must be reachable");
    tcp.set_nodelay(true).unwrap();
    tiberius::Client::connect(config, tcp.compat_write())
        .await
        .expect("login")
}

async fn exec(c: &mut Admin, sql: &str) {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_results()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn version(c: &mut Admin) -> u64 {
    let row = c
        .simple_query("SELECT CHANGE_TRACKING_CURRENT_VERSION()")
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap();
    row.get::<i64, _>(0).unwrap() as u64
}

async fn table_rows(c: &mut Admin, table: &str) -> std::collections::BTreeMap<String, Vec<Value>> {
    let rows = c
        .simple_query(format!("SELECT id, status, qty FROM {table} ORDER BY id"))
        .await
        .unwrap()
        .into_first_result()
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let id = i64::from(r.get::<i32, _>(0).unwrap());
            let status = r.get::<&str, _>(1).unwrap().to_string();
            let qty = i64::from(r.get::<i32, _>(2).unwrap());
            (
                key_string(&[Value::Int(id)]),
                vec![Value::Int(id), Value::Text(status), Value::Int(qty)],
            )
        })
        .collect()
}

struct Table {
    name: String,
}

async fn create(c: &mut Admin) -> Table {
    // Settings (ignored when already on or not permitted; start() then names what is missing).
    for s in [
        "ALTER DATABASE CURRENT SET ALLOW_SNAPSHOT_ISOLATION ON",
        "IF NOT EXISTS (SELECT 1 FROM sys.change_tracking_databases WHERE database_id = DB_ID()) \
         ALTER DATABASE CURRENT SET CHANGE_TRACKING = ON (CHANGE_RETENTION = 2 DAYS, AUTO_CLEANUP = ON)",
    ] {
        if let Ok(s) = c.simple_query(s).await {
            let _ = s.into_results().await;
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!(
        "electric_ct_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000
    );
    exec(
        c,
        &format!(
            "CREATE TABLE dbo.{name} (id INT NOT NULL PRIMARY KEY, status NVARCHAR(20) NOT NULL, qty INT NOT NULL); \
             ALTER TABLE dbo.{name} ENABLE CHANGE_TRACKING"
        ),
    )
    .await;
    Table { name }
}

async fn drop_table(c: &mut Admin, t: &Table) {
    exec(c, &format!("DROP TABLE IF EXISTS dbo.{}", t.name)).await;
}

#[tokio::test]
async fn live_snapshot_stream_truncate_and_restart() {
    let Some(url) = url() else { return };
    let mut c = admin(&url).await;
    let t = create(&mut c).await;
    let full = format!("dbo.{}", t.name);
    exec(
        &mut c,
        &format!("INSERT INTO {full} VALUES (1, 'open', 1), (2, 'open', 2), (3, 'open', 3)"),
    )
    .await;

    let build = || {
        MssqlChangeSource::builder(TiberiusBackend::from_ado_string(&url).unwrap())
            .name("live")
            .batch_size(2)
            .table(TrackedTable::new(&full).unwrap())
            .build()
            .unwrap()
    };
    let mut src = build();
    src.start(None).await.unwrap();
    let mut sink = Sink::default();
    let v = version(&mut c).await;
    sync_to(&mut src, &mut sink, v).await;
    assert_eq!(sink.rows(&full), table_rows(&mut c, &full).await);

    exec(
        &mut c,
        &format!(
            "UPDATE {full} SET qty = 20 WHERE id = 2; DELETE FROM {full} WHERE id = 3; \
             INSERT INTO {full} VALUES (4, 'open', 4)"
        ),
    )
    .await;
    let v = version(&mut c).await;
    sync_to(&mut src, &mut sink, v).await;
    assert_eq!(sink.rows(&full), table_rows(&mut c, &full).await);

    // Restart from the checkpoint, with changes while down.
    drop(src);
    exec(
        &mut c,
        &format!("UPDATE {full} SET status = 'closed' WHERE id = 1"),
    )
    .await;
    let mut src = build();
    sink.restarted();
    src.start(sink.checkpoint.clone()).await.unwrap();
    let v = version(&mut c).await;
    sync_to(&mut src, &mut sink, v).await;
    assert_eq!(sink.rows(&full), table_rows(&mut c, &full).await);

    // TRUNCATE raises the minimum valid version: a resync (open question in the notes: does
    // it also move the version? this assertion settles it on a real server).
    exec(
        &mut c,
        &format!("TRUNCATE TABLE {full}; INSERT INTO {full} VALUES (9, 'open', 9)"),
    )
    .await;
    let v = version(&mut c).await;
    sync_to(&mut src, &mut sink, v).await;
    assert_eq!(sink.rows(&full), table_rows(&mut c, &full).await);
    assert!(sink.resyncs.len() >= 2, "{:?}", sink.resyncs);
    drop_table(&mut c, &t).await;
}

/// A committer racing the poller: settles the open question whether anything is lost when
/// commits land between `CURRENT_VERSION()` and `CHANGETABLE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_racing_writer_loses_nothing() {
    let Some(url) = url() else { return };
    let mut c = admin(&url).await;
    let t = create(&mut c).await;
    let full = format!("dbo.{}", t.name);
    let mut src = MssqlChangeSource::builder(TiberiusBackend::from_ado_string(&url).unwrap())
        .batch_size(50)
        .table(TrackedTable::new(&full).unwrap())
        .backoff(electric_mssql::PollBackoff::Fixed(
            std::time::Duration::from_millis(1),
        ))
        .build()
        .unwrap();
    src.start(None).await.unwrap();
    let mut sink = Sink::default();
    let v = version(&mut c).await;
    sync_to(&mut src, &mut sink, v).await;

    let writer = {
        let url = url.clone();
        let full = full.clone();
        tokio::spawn(async move {
            let mut w = admin(&url).await;
            for i in 0..2000 {
                let id = i % 97;
                exec(
                    &mut w,
                    &format!(
                        "MERGE {full} AS t USING (SELECT {id} AS id) AS s ON t.id = s.id \
                         WHEN MATCHED AND {i} % 5 = 0 THEN DELETE \
                         WHEN MATCHED THEN UPDATE SET qty = {i} \
                         WHEN NOT MATCHED THEN INSERT VALUES ({id}, 'open', {i});"
                    ),
                )
                .await;
            }
        })
    };
    while !writer.is_finished() {
        if let Ok(Ok(Some(ev))) =
            tokio::time::timeout(std::time::Duration::from_millis(200), src.next()).await
        {
            sink.apply(&mut src, ev).await;
        }
    }
    writer.await.unwrap();
    let v = version(&mut c).await;
    sync_to(&mut src, &mut sink, v).await;
    assert_eq!(sink.rows(&full), table_rows(&mut c, &full).await);
    drop_table(&mut c, &t).await;
}

#[tokio::test]
async fn live_rejects_hostile_names_before_sending_anything() {
    let Some(url) = url() else { return };
    let _ = TiberiusBackend::from_ado_string(&url).unwrap();
    assert!(TrackedTable::new("dbo.t]; DROP TABLE x--").is_err());
}
