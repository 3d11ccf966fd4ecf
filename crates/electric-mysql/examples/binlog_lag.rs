//! Source-level figures for `MysqlChangeSource`: commit → change received, and throughput.
//!
//! ```text
//! cargo run --release -p electric-mysql --example binlog_lag -- \
//!     [mysql://root@127.0.0.1:3306/test] [rate/s, default 1000] [seconds, default 5] [bulk rows, default 20000]
//! ```
//!
//! 1. **Paced**: one connection inserts single-row autocommit transactions at `rate`; for each
//!    row, latency = the moment the source yields its change − the moment the client's
//!    `INSERT` returned (the commit acknowledged). p50/p90/p99/max.
//! 2. **Bulk**: `bulk` rows in 500-row transactions as fast as one connection can; throughput =
//!    rows / (last change received − first `INSERT` sent).
//! 3. **Snapshot**: the `bulk` rows read back by a fresh source's initial snapshot (rows/s).
//!
//! Measures the source alone (no store, no connector). It creates and drops its own table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use electric_core::cdc::{ChangeSource, SourceEvent, Value};
use electric_mysql::MysqlChangeSource;
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn id_of(key: &electric_core::cdc::Row) -> i64 {
    match key.get("id") {
        Some(Value::Int(i)) => *i,
        _ => -1,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args
        .first()
        .cloned()
        .unwrap_or_else(|| "mysql://root@127.0.0.1:3306/test".into());
    let rate: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let seconds: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let bulk: i64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let db = mysql_async::Opts::from_url(&url)?
        .db_name()
        .unwrap_or("test")
        .to_string();
    let table = format!("{db}.binlog_lag_{}", std::process::id());
    let mut admin = Conn::from_url(&url).await?;
    admin
        .query_drop(format!(
            "CREATE TABLE {table} (id BIGINT PRIMARY KEY, v INT, pad VARCHAR(64)) ENGINE=InnoDB"
        ))
        .await?;
    drop(admin);
    let result = run(&url, &table, rate, seconds, bulk).await;
    // A fresh connection: the first may have idled out during the run.
    let mut admin = Conn::from_url(&url).await?;
    admin.query_drop(format!("DROP TABLE {table}")).await?;
    result
}

async fn run(
    url: &str,
    table: &str,
    rate: u64,
    seconds: u64,
    bulk: i64,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut src = MysqlChangeSource::builder(url)
        .table(table)
        .max_batch(1000)
        .build()?;
    src.start(None).await?;
    // Through the (empty) snapshot's checkpoint.
    loop {
        if let Some(SourceEvent::Changes(b)) = src.next().await? {
            if b.checkpoint.is_some() {
                break;
            }
        }
    }

    // 1. Paced single-row transactions.
    let total = (rate * seconds) as i64;
    let committed: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let c2 = committed.clone();
    let (url2, table2) = (url.to_string(), table.to_string());
    let writer = tokio::spawn(async move {
        let mut c = Conn::from_url(&url2).await.expect("writer connects");
        let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        for i in 0..total {
            tick.tick().await;
            c.exec_drop(
                format!("INSERT INTO {table2} VALUES (?, ?, 'paced')"),
                (i, i),
            )
            .await
            .expect("insert");
            c2.lock().expect("lock").insert(i, Instant::now());
        }
        started.elapsed()
    });
    let mut lat = Vec::with_capacity(total as usize);
    let mut early = 0usize;
    let mut received: HashMap<i64, Instant> = HashMap::new();
    while (received.len() as i64) < total {
        if let Some(SourceEvent::Changes(b)) = src.next().await? {
            let now = Instant::now();
            for item in &b.items {
                received.insert(id_of(&item.key), now);
            }
        }
        // Match what both sides know so far.
        let done = committed.lock().expect("lock");
        received.retain(|id, at| match done.get(id) {
            Some(c) => {
                match at.checked_duration_since(*c) {
                    Some(d) => lat.push(d),
                    None => {
                        early += 1;
                        lat.push(Duration::ZERO);
                    }
                }
                false
            }
            None => true,
        });
        if lat.len() as i64 >= total {
            break;
        }
    }
    let write_time = writer.await?;
    lat.sort_unstable();
    println!(
        "paced: {} single-row transactions at a target {rate}/s (achieved {:.0}/s): commit → change \
         p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({early} changes arrived before the \
         client saw its commit, counted as 0)",
        lat.len(),
        total as f64 / write_time.as_secs_f64(),
        pct(&lat, 0.50),
        pct(&lat, 0.90),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );

    // 2. Bulk throughput.
    let base = 1_000_000_000i64;
    let t0 = Instant::now();
    let (url3, table3) = (url.to_string(), table.to_string());
    let bulk_writer = tokio::spawn(async move {
        let mut c = Conn::from_url(&url3).await.expect("connect");
        let mut i = 0;
        while i < bulk {
            let n = 500.min(bulk - i);
            let values: Vec<String> = (i..i + n)
                .map(|k| format!("({}, {k}, 'bulk')", base + k))
                .collect();
            c.query_drop(format!("INSERT INTO {table3} VALUES {}", values.join(",")))
                .await
                .expect("bulk insert");
            i += n;
        }
    });
    let mut got = 0i64;
    while got < bulk {
        if let Some(SourceEvent::Changes(b)) = src.next().await? {
            got += b.items.iter().filter(|i| id_of(&i.key) >= base).count() as i64;
        }
    }
    let bulk_time = t0.elapsed();
    bulk_writer.await?;
    println!(
        "bulk: {bulk} rows in 500-row transactions: {:.0} changes/s through the source ({:.2} s)",
        bulk as f64 / bulk_time.as_secs_f64(),
        bulk_time.as_secs_f64()
    );

    // 3. Snapshot throughput.
    let mut snap = MysqlChangeSource::builder(url)
        .table(table)
        .max_batch(1000)
        .build()?;
    let t1 = Instant::now();
    snap.start(None).await?;
    let mut rows = 0usize;
    loop {
        match snap.next().await? {
            Some(SourceEvent::Changes(b)) => {
                rows += b.items.len();
                if b.checkpoint.is_some() {
                    break;
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    let snap_time = t1.elapsed();
    println!(
        "snapshot: {rows} rows in {:.2} s: {:.0} rows/s (start included)",
        snap_time.as_secs_f64(),
        rows as f64 / snap_time.as_secs_f64()
    );
    Ok(())
}
