//! Shared helpers: the services' PostgreSQL, private clusters, draining a source.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use electric_core::cdc::{CdcError, ChangeItem, ChangeSource, Position, SourceEvent};
use electric_postgres::{PgChangeSource, PgSourceConfig, TableConfig};
use electric_testkit::services::{service_url, skip_or_fail};
use tokio_postgres::{Client, NoTls};

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn pg_url() -> String {
    service_url("PG", DEFAULT_URL)
}

pub async fn connect(url: &str) -> Option<Client> {
    match tokio_postgres::connect(url, NoTls).await {
        Ok((c, conn)) => {
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Some(c)
        }
        Err(e) => {
            skip_or_fail("PostgreSQL", &format!("{url}: {e}"));
            None
        }
    }
}

/// A unique lower-case name for slots, publications and tables.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    )
}

/// Names of one test's objects, dropped by `cleanup`.
pub struct Names {
    pub url: String,
    pub slot: String,
    pub publication: String,
    pub tables: Vec<String>,
}

impl Names {
    pub fn new(url: &str, tables: usize) -> Self {
        let base = unique("t");
        Self {
            url: url.to_string(),
            slot: format!("s{base}"),
            publication: format!("p{base}"),
            tables: (0..tables).map(|i| format!("{base}_{i}")).collect(),
        }
    }

    pub fn config(&self, url: &str) -> PgSourceConfig {
        PgSourceConfig::new(
            url,
            &self.slot,
            &self.publication,
            self.tables
                .iter()
                .map(|t| TableConfig::new("public", t))
                .collect(),
        )
    }

    /// Drops this test's slot, publication and tables; also run on drop (a failed test must
    /// not leave a slot retaining WAL). Errors are ignored there (a private cluster may be gone).
    pub async fn cleanup(&self, client: &Client) {
        self.try_cleanup(client).await.unwrap();
    }

    async fn try_cleanup(&self, client: &Client) -> Result<(), tokio_postgres::Error> {
        for _ in 0..50 {
            let r = client
                .query_opt(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                    &[&self.slot],
                )
                .await?;
            match r.map(|r| r.get::<_, Option<i32>>(0)) {
                Some(Some(pid)) => {
                    let _ = client
                        .execute("SELECT pg_terminate_backend($1)", &[&pid])
                        .await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => break,
            }
        }
        client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await?;
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS \"{}\"",
                self.publication
            ))
            .await?;
        for t in &self.tables {
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS \"{t}\""))
                .await?;
        }
        Ok(())
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        let me = Names {
            url: std::mem::take(&mut self.url),
            slot: std::mem::take(&mut self.slot),
            publication: std::mem::take(&mut self.publication),
            tables: std::mem::take(&mut self.tables),
        };
        if me.slot.is_empty() {
            return;
        }
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let connect = tokio_postgres::connect(&me.url, NoTls);
                if let Ok(Ok((c, conn))) =
                    tokio::time::timeout(Duration::from_secs(5), connect).await
                {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    let _ = tokio::time::timeout(Duration::from_secs(10), me.try_cleanup(&c)).await;
                }
                // `me` has been cleaned; its own drop must not recurse.
                std::mem::forget(me);
            });
        })
        .join();
    }
}

/// What a source yielded, in order.
#[derive(Debug, Default)]
pub struct Seen {
    pub items: Vec<ChangeItem>,
    pub snapshot_starts: Vec<String>,
    pub snapshot_ends: usize,
    pub checkpoints: Vec<Position>,
    pub batches: usize,
}

/// The next event, or a panic after `patience` (no test asserts on timing; this only turns a
/// hang into a failure).
pub async fn next_event(
    src: &mut PgChangeSource,
    patience: Duration,
) -> Result<SourceEvent, CdcError> {
    match tokio::time::timeout(patience, src.next()).await {
        Ok(Ok(Some(ev))) => Ok(ev),
        Ok(Ok(None)) => panic!("source ended"),
        Ok(Err(e)) => Err(e),
        Err(_) => panic!("no event within {patience:?}"),
    }
}

/// Reads events, acking every checkpoint, until `done(seen)` holds.
pub async fn drain_until(
    src: &mut PgChangeSource,
    seen: &mut Seen,
    done: impl Fn(&Seen) -> bool,
) -> Result<(), CdcError> {
    while !done(seen) {
        match next_event(src, Duration::from_secs(60)).await? {
            SourceEvent::Changes(b) => {
                seen.batches += 1;
                seen.items.extend(b.items);
                if let Some(c) = b.checkpoint {
                    src.ack(&c).await?;
                    seen.checkpoints.push(c);
                }
            }
            SourceEvent::SnapshotStart { reason, .. } => {
                seen.snapshot_starts.push(reason.to_string())
            }
            SourceEvent::SnapshotEnd { .. } => seen.snapshot_ends += 1,
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Private clusters
// ---------------------------------------------------------------------------------------------

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// `program` run as the `postgres` user when we are root (initdb refuses root), as
/// `.ci/services` does.
fn command(program: PathBuf) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn pg_bin(name: &str) -> Option<PathBuf> {
    ["/usr/local/bin", "/usr/lib/postgresql/15/bin"]
        .iter()
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.exists())
}

/// A PostgreSQL cluster this test owns: initdb'd into a temp dir, started on `port`, killed by
/// its postmaster PID on drop.
pub struct PrivateCluster {
    pub dir: PathBuf,
    pub port: u16,
    pub conf: Vec<String>,
}

impl PrivateCluster {
    /// `None` (after skip_or_fail) when the binaries are missing.
    pub fn create(port: u16, conf: &[&str], initdb_args: &[&str]) -> Option<Self> {
        let (Some(initdb), Some(_)) = (pg_bin("initdb"), pg_bin("pg_ctl")) else {
            skip_or_fail("PostgreSQL binaries", "initdb/pg_ctl not found");
            return None;
        };
        let dir = std::env::temp_dir().join(unique(&format!("electric_pg_{port}")));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let st = Command::new("chown")
                .arg("postgres")
                .arg(&dir)
                .status()
                .unwrap();
            assert!(st.success());
        }
        let data = dir.join("data");
        let out = command(initdb)
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .args(initdb_args)
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self {
            dir,
            port,
            conf: conf.iter().map(|s| s.to_string()).collect(),
        };
        cluster.write_conf();
        cluster.start();
        Some(cluster)
    }

    fn write_conf(&self) {
        let mut c = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n\
             max_wal_senders = 10\nmax_replication_slots = 10\n",
            self.port,
            self.dir.display()
        );
        for l in &self.conf {
            c.push_str(l);
            c.push('\n');
        }
        std::fs::write(self.dir.join("data/postgresql.auto.conf"), c).unwrap();
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn start(&self) {
        let out = command(pg_bin("pg_ctl").unwrap())
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    /// The postmaster's PID (first line of postmaster.pid).
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Immediate shutdown of this cluster only (SIGQUIT to its postmaster), waiting until gone.
    pub fn kill(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-QUIT", &pid.to_string()])
                .status();
            for _ in 0..300 {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// A new setting (appended) applied by a restart.
    pub fn set(&mut self, line: &str) {
        self.conf.push(line.to_string());
        self.write_conf();
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
