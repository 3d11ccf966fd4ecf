//! Shared helpers for the MariaDB tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use electric_core::cdc::{
    CdcError, CdcResult, ChangeItem, ChangeSource, Position, SourceEvent, Value,
};
use electric_mysql::MysqlChangeSource;
use electric_testkit::services::{service_url, skip_or_fail};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

/// `ELECTRIC_TEST_MYSQL_URL`, else `ELECTRIC_TEST_MARIADB_URL` (what `.ci/services env`
/// prints), else the default local address.
pub fn url() -> String {
    std::env::var("ELECTRIC_TEST_MYSQL_URL")
        .unwrap_or_else(|_| service_url("MARIADB", "mysql://root@127.0.0.1:3306/test"))
}

/// A connection to the shared server, or `None` (after printing why) when it is unreachable.
pub async fn admin() -> Option<Conn> {
    match tokio::time::timeout(Duration::from_secs(10), Conn::from_url(url())).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            skip_or_fail("MariaDB", &e.to_string());
            None
        }
        Err(_) => {
            skip_or_fail("MariaDB", "connect timed out");
            None
        }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A table name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{n}_{nanos:x}", std::process::id())
}

/// A unique replica server id.
pub fn server_id() -> u32 {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    1_000_000 + (std::process::id() % 100_000) * 100 + n % 100
}

/// Drops the table when the test ends (also on panic).
pub struct DropTable {
    pub url: String,
    pub table: String,
}

impl Drop for DropTable {
    fn drop(&mut self) {
        let url = self.url.clone();
        let table = self.table.clone();
        // A fresh runtime on a helper thread: Drop cannot await.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut c) = Conn::from_url(url).await {
                    let _ = c.query_drop(format!("DROP TABLE IF EXISTS {table}")).await;
                    let _ = c.disconnect().await;
                }
            });
        })
        .join();
    }
}

/// What a run of `next` collected.
#[derive(Debug, Default)]
pub struct Seen {
    pub items: Vec<ChangeItem>,
    pub events: Vec<SourceEvent>,
    /// Checkpoints, in order, with the number of items before each.
    pub checkpoints: Vec<(Position, usize)>,
    pub batch_sizes: Vec<usize>,
}

impl Seen {
    pub fn record(&mut self, ev: SourceEvent) {
        if let SourceEvent::Changes(b) = &ev {
            self.batch_sizes.push(b.items.len());
            self.items.extend(b.items.iter().cloned());
            if let Some(c) = &b.checkpoint {
                self.checkpoints.push((c.clone(), self.items.len()));
            }
        }
        self.events.push(ev);
    }

    pub fn last_checkpoint(&self) -> Option<Position> {
        self.checkpoints.last().map(|(p, _)| p.clone())
    }
}

/// Calls `next` until `done(seen)` holds; fails after `limit` without progress.
pub async fn collect_until(
    source: &mut MysqlChangeSource,
    seen: &mut Seen,
    mut done: impl FnMut(&Seen) -> bool,
) -> CdcResult<()> {
    while !done(seen) {
        match tokio::time::timeout(Duration::from_secs(30), source.next()).await {
            Ok(Ok(Some(ev))) => seen.record(ev),
            Ok(Ok(None)) => return Err(CdcError::Closed),
            Ok(Err(e)) => return Err(e),
            Err(_) => panic!("no event for 30 s; seen so far: {:?}", seen.items.len()),
        }
    }
    Ok(())
}

/// The integer value of column `c` (panics when it is not an integer).
pub fn int(row: &electric_core::cdc::Row, c: &str) -> i64 {
    match row.get(c) {
        Some(Value::Int(i)) => *i,
        other => panic!("column {c} is {other:?}, not an integer"),
    }
}

/// The `id` key of an item.
pub fn id(item: &ChangeItem) -> i64 {
    int(&item.key, "id")
}

/// Items' positions strictly increase.
pub fn assert_increasing(items: &[ChangeItem]) {
    for w in items.windows(2) {
        assert!(
            w[0].position < w[1].position,
            "positions not increasing: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
}
