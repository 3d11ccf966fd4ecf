//! Crash test: `electric cdc connector` (PostgreSQL → Redis, and MariaDB → Redis) is killed with SIGKILL at least 5
//! times while a writer changes rows, and restarted each time. Afterwards every document equals
//! its row and no change was applied twice: the mapping bumps a document's `applied` member on
//! every application, and each row's `counter` is bumped by every update, so a document must
//! hold `applied == counter + 1`.
//!
//! The same on MariaDB (binlog source). Runs against the services' PostgreSQL, MariaDB and Redis
//! (`ELECTRIC_TEST_PG_URL`, `ELECTRIC_TEST_MARIADB_URL`, `ELECTRIC_TEST_REDIS_URL`); skips when they are unreachable unless
//! `ELECTRIC_TEST_REQUIRE_SERVICES=1`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use electric::cdc::connector::JsonDoc;
use electric::redis::RedisStore;
use electric::DataManager;
use electric_postgres::{PgChangeSource, PgSourceConfig, TableConfig};
use electric_testkit::services::{service_url, skip_or_fail};
use mysql_async::prelude::Queryable;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value as Json;

const KEYS: i64 = 150;
const KILLS: usize = 6;

struct Connector {
    args: Vec<String>,
    log: std::path::PathBuf,
    child: Option<Child>,
}

impl Connector {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_electric"))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the connector starts");
        self.child = Some(child);
    }

    /// SIGKILL (std's `Child::kill` on Unix), then reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn wait_file(path: &Path, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if path.exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

type Rows = BTreeMap<i64, (i64, String)>;

/// The database under the connector.
enum Db {
    Pg(tokio_postgres::Client),
    My(mysql_async::Pool),
}

impl Db {
    async fn connect(kind: &str, url: &str) -> Result<Self, String> {
        if kind == "pg" {
            let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Db::Pg(c))
        } else {
            let pool = mysql_async::Pool::new(
                mysql_async::Opts::from_url(url).map_err(|e| e.to_string())?,
            );
            pool.get_conn().await.map_err(|e| e.to_string())?;
            Ok(Db::My(pool))
        }
    }

    fn quote(&self, table: &str) -> String {
        match self {
            Db::Pg(_) => format!("\"{table}\""),
            Db::My(_) => format!("`{table}`"),
        }
    }

    /// Runs `stmts` in one transaction.
    async fn txn(&self, stmts: &[String]) {
        match self {
            Db::Pg(c) => {
                let sql = if stmts.len() == 1 {
                    stmts[0].clone()
                } else {
                    format!("BEGIN; {}; COMMIT", stmts.join("; "))
                };
                c.batch_execute(&sql).await.unwrap();
            }
            Db::My(p) => {
                let mut c = p.get_conn().await.unwrap();
                let mut tx = c
                    .start_transaction(mysql_async::TxOpts::default())
                    .await
                    .unwrap();
                for st in stmts {
                    tx.query_drop(st).await.unwrap();
                }
                tx.commit().await.unwrap();
            }
        }
    }

    async fn rows(&self, table: &str) -> Rows {
        let sql = format!("SELECT id, counter, val FROM {}", self.quote(table));
        match self {
            Db::Pg(c) => c
                .query(&sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r.get::<_, i64>(0),
                        (r.get::<_, i64>(1), r.get::<_, String>(2)),
                    )
                })
                .collect(),
            Db::My(p) => {
                let mut c = p.get_conn().await.unwrap();
                let rows: Vec<(i64, i64, String)> = c.query(sql).await.unwrap();
                rows.into_iter().map(|(i, n, v)| (i, (n, v))).collect()
            }
        }
    }
}

/// Every document against its row; `Err` names the first difference. Also returns the number of
/// documents whose `applied` exceeds `counter + 1` (changes applied twice).
async fn check(store: &Arc<RedisStore>, section: &str, rows: &Rows) -> Result<(), String> {
    // A fresh manager: no cache, every read from Redis.
    let m = DataManager::<JsonDoc>::builder(store.clone(), "cdc", section)
        .build()
        .unwrap();
    for id in 0..KEYS {
        let doc = m.get(&id.to_string()).await.map_err(|e| e.to_string())?;
        match (doc, rows.get(&id)) {
            (None, None) => {}
            (Some(_), None) => return Err(format!("document {id} exists, its row does not")),
            (None, Some(_)) => return Err(format!("row {id} has no document")),
            (Some(d), Some((counter, val))) => {
                let d = d.value();
                let got_counter = d.get("counter").and_then(Json::as_i64);
                let got_val = d.get("val").and_then(Json::as_str);
                let applied = d.get("applied").and_then(Json::as_i64);
                if got_counter != Some(*counter) || got_val != Some(val.as_str()) {
                    return Err(format!(
                        "document {id}: counter {got_counter:?} val {got_val:?}, row ({counter}, {val})"
                    ));
                }
                if applied != Some(counter + 1) {
                    return Err(format!(
                        "document {id}: applied {applied:?} times, its row changed {} times \
                         (a change applied twice or lost)",
                        counter + 1
                    ));
                }
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_connector_killed_repeatedly_applies_every_change_exactly_once() {
    crash_run("pg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_the_connector_killed_repeatedly_applies_every_change_exactly_once() {
    crash_run("mysql").await;
}

async fn crash_run(kind: &str) {
    let pg_url = if kind == "pg" {
        service_url("PG", "postgres://postgres@127.0.0.1:5432/test")
    } else {
        service_url("MARIADB", "mysql://root@127.0.0.1:3306/test")
    };
    let redis_url = service_url("REDIS", "redis://127.0.0.1:6379");
    let service = if kind == "pg" {
        "PostgreSQL"
    } else {
        "MariaDB"
    };
    let pg = match Db::connect(kind, &pg_url).await {
        Ok(db) => db,
        Err(e) => return skip_or_fail(service, &format!("{pg_url}: {e}")),
    };
    let namespace = electric_testkit::unique("cdc-crash");
    let store = match RedisStore::builder(&redis_url)
        .namespace(&namespace)
        .connect()
        .await
    {
        Ok(s) => Arc::new(s),
        Err(e) => return skip_or_fail("Redis", &format!("{redis_url}: {e}")),
    };
    let table = format!("cdc_crash_{:08x}", rand::random::<u32>());
    let (slot, publication) = (format!("s_{table}"), format!("p_{table}"));
    let q = pg.quote(&table);
    pg.txn(&[format!(
        "CREATE TABLE {q} (id BIGINT PRIMARY KEY, counter BIGINT NOT NULL, val VARCHAR(32) NOT NULL, \
         ts_us BIGINT NOT NULL)"
    )])
    .await;
    let dir = std::env::temp_dir().join(format!("electric-{table}"));
    let _ = std::fs::remove_dir_all(&dir);
    let flag = if kind == "pg" { "--pg" } else { "--mysql" };
    let mut conn = Connector {
        args: [
            "cdc",
            "connector",
            flag,
            &pg_url,
            "--redis",
            &redis_url,
            "--table",
            &table,
            "--checkpoint",
            dir.to_str().unwrap(),
            "--slot",
            &slot,
            "--publication",
            &publication,
            "--namespace",
            &namespace,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        log: std::env::temp_dir().join(format!("electric-{table}.log")),
        child: None,
    };
    conn.start();
    // The first checkpoint (the empty initial snapshot) is stored before any write, so every
    // restart resumes from a checkpoint and never re-snapshots.
    let cp_file = dir.join(format!("{table}.ckpt"));
    let first = wait_file(&cp_file, Duration::from_secs(60)).await;
    let result = async {
        if !first {
            return Err(format!(
                "no checkpoint file {} within 60 s; log:\n{}",
                cp_file.display(),
                std::fs::read_to_string(&conn.log).unwrap_or_default()
            ));
        }
        // The writer: random inserts, updates (counter + 1) and deletes in 1–5-change
        // transactions, as fast as one connection goes (paced a little).
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let writer = {
            let (stop, written, url, q) =
                (stop.clone(), written.clone(), pg_url.clone(), q.clone());
            let kind = kind.to_string();
            tokio::spawn(async move {
                let db = Db::connect(&kind, &url).await.unwrap();
                let mut rng = SmallRng::seed_from_u64(13);
                let mut live = vec![false; KEYS as usize];
                while !stop.load(Ordering::Relaxed) {
                    let n = rng.gen_range(1..=5);
                    let mut stmts = Vec::new();
                    let mut next = live.clone();
                    for _ in 0..n {
                        let id = rng.gen_range(0..KEYS);
                        let v = rng.gen_range(0..1_000_000u32);
                        let i = id as usize;
                        stmts.push(if !next[i] {
                            next[i] = true;
                            format!("INSERT INTO {q} VALUES ({id}, 0, 'v{v}', 0)")
                        } else if rng.gen_bool(0.1) {
                            next[i] = false;
                            format!("DELETE FROM {q} WHERE id = {id}")
                        } else {
                            format!(
                                "UPDATE {q} SET counter = counter + 1, val = 'v{v}' WHERE id = {id}"
                            )
                        });
                    }
                    db.txn(&stmts).await;
                    live = next;
                    written.fetch_add(n, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        let mut rng = SmallRng::seed_from_u64(99);
        for k in 0..KILLS {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(700..1500))).await;
            conn.kill();
            eprintln!(
                "kill {} after {} changes written",
                k + 1,
                written.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(rng.gen_range(50..400))).await;
            conn.start();
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        stop.store(true, Ordering::Relaxed);
        writer.await.map_err(|e| e.to_string())?;
        let total = written.load(Ordering::Relaxed);
        let truth = pg.rows(&table).await;
        // Converge: the restarted connector catches up.
        let end = Instant::now() + Duration::from_secs(90);
        let mut last = Err(String::new());
        while Instant::now() < end {
            last = check(&store, &table, &truth).await;
            if last.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!(
            "{total} changes written, {} rows at the end, {KILLS} kills",
            truth.len()
        );
        last.map(|()| (total, truth.len()))
    }
    .await;
    conn.kill();
    let log = std::fs::read_to_string(&conn.log).unwrap_or_default();
    // Cleanup: slot, publication, table, namespace, files.
    let dropped = if kind == "pg" {
        let mut src = PgChangeSource::new(PgSourceConfig::new(
            &pg_url,
            &slot,
            &publication,
            vec![TableConfig::new("public", &table)],
        ))
        .unwrap();
        src.drop_slot_and_publication().await
    } else {
        Ok(())
    };
    pg.txn(&[format!("DROP TABLE IF EXISTS {q}")]).await;
    let _ = store.purge_namespace().await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&conn.log);
    let (total, live_rows) = result.unwrap_or_else(|e| panic!("{e}\nconnector log:\n{log}"));
    dropped.unwrap();
    assert!(total > 500, "the writer wrote only {total} changes");
    assert!(live_rows > 0);
    // What the runs did (the last counters each run printed): replays skipped as duplicates show
    // the kills landed between an application and its checkpoint.
    let dups: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("connector: seen"))
        .filter_map(|l| l.split(" duplicates ").nth(1))
        .filter_map(|r| r.split(' ').next())
        .collect();
    eprintln!(
        "duplicates skipped (per status line, last): {:?}",
        dups.last()
    );
    let starts = log.matches("connector cdc_crash").count();
    assert_eq!(starts, KILLS + 1, "connector starts in the log:\n{log}");
}
