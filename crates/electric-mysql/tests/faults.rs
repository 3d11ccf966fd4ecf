//! Faults on PRIVATE MariaDB servers this test starts itself (`mariadb-install-db` into a
//! temporary directory, ports 7450–7459) and kills by PID: a server killed and restarted
//! mid-stream, a purged binlog, a server without `log_bin`.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use electric_core::cdc::{CdcError, ChangeSource, SourceEvent};
use electric_mysql::MysqlChangeSource;
use electric_testkit::services::skip_or_fail;
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

struct PrivateMaria {
    dir: PathBuf,
    port: u16,
    log_bin: bool,
    child: Option<Child>,
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
}

impl PrivateMaria {
    /// Installs a data directory; `None` (after printing why) when MariaDB is not installed.
    fn install(port: u16, log_bin: bool) -> Option<Self> {
        for cmd in ["mariadb-install-db", "mariadbd", "mariadb"] {
            if !have(cmd) {
                skip_or_fail("mariadbd (private server)", &format!("{cmd} not found"));
                return None;
            }
        }
        let dir =
            std::env::temp_dir().join(format!("electric-mysql-{port}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        // Its own temporary directory: two bootstraps sharing /tmp have collided.
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let user = if is_root() {
            "root".to_string()
        } else {
            whoami()
        };
        let out = Command::new("mariadb-install-db")
            .env("TMPDIR", dir.join("tmp"))
            .arg(format!("--user={user}"))
            .arg(format!("--datadir={}", dir.join("data").display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Self {
            dir,
            port,
            log_bin,
            child: None,
        })
    }

    fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/test", self.port)
    }

    async fn start(&mut self) {
        let mut cmd = Command::new("mariadbd");
        cmd.arg("--no-defaults");
        if is_root() {
            cmd.arg("--user=root");
        }
        let d = |p: &str| self.dir.join(p).display().to_string();
        cmd.arg(format!("--datadir={}", d("data")))
            .arg(format!("--socket={}", d("sock")))
            .arg(format!("--pid-file={}", d("pid")))
            .arg(format!("--port={}", self.port))
            .arg(format!("--log-error={}", d("error.log")))
            .arg(format!("--tmpdir={}", d("tmp")))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--server-id=1",
                "--innodb-buffer-pool-size=16M",
            ]);
        if !self.log_bin {
            cmd.arg("--skip-log-bin");
        } else {
            cmd.arg(format!("--log-bin={}", d("data/binlog"))).args([
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--binlog-row-metadata=FULL",
            ]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn().unwrap());
        // Ready once the socket answers; then make root reachable over TCP and create `test`.
        for _ in 0..600 {
            let ok = Command::new("mariadb")
                .args(["--no-defaults", "-S", &d("sock"), "-u", "root", "-e"])
                .arg(
                    "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''; \
                     GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; \
                     CREATE DATABASE IF NOT EXISTS test;",
                )
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "private mariadbd on {} did not start: {}",
            self.port,
            std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
        );
    }

    /// `kill -9` of the server this test started, by its PID.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn whoami() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

impl Drop for PrivateMaria {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_unavailable_then_resumes_from_the_checkpoint() {
    let Some(mut srv) = PrivateMaria::install(7450, true) else {
        return;
    };
    srv.start().await;
    let mut admin = Conn::from_url(srv.url()).await.unwrap();
    admin
        .query_drop("CREATE TABLE test.r (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
        .await
        .unwrap();
    let url = srv.url();
    let source = || {
        MysqlChangeSource::builder(url.clone())
            .table("test.r")
            .server_id(4242)
            .heartbeat(Duration::from_millis(500))
            .build()
            .unwrap()
    };
    let mut src = source();
    src.start(None).await.unwrap();
    let mut seen = Seen::default();
    collect_until(&mut src, &mut seen, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    let first_ckpt = seen.last_checkpoint().unwrap();
    for i in 1..=5 {
        admin
            .query_drop(format!("INSERT INTO test.r VALUES ({i}, {i})"))
            .await
            .unwrap();
    }
    collect_until(&mut src, &mut seen, |s| s.items.len() >= 5)
        .await
        .unwrap();
    // The sink persisted the checkpoint after id 5; 6–8 are written but not applied.
    let ckpt = seen.last_checkpoint().unwrap();
    for i in 6..=8 {
        admin
            .query_drop(format!("INSERT INTO test.r VALUES ({i}, {i})"))
            .await
            .unwrap();
    }
    drop(admin);
    srv.kill();
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(30), src.next()).await {
            Ok(Ok(Some(ev))) => seen.record(ev),
            Ok(Ok(None)) => panic!("source ended"),
            Ok(Err(e)) => break e,
            Err(_) => panic!("the source did not notice the dead server"),
        }
    };
    assert!(
        matches!(err, CdcError::Unavailable(_)),
        "expected Unavailable, got {err:?}"
    );
    assert!(err.is_retryable());

    srv.start().await;
    let mut admin = Conn::from_url(srv.url()).await.unwrap();
    for i in 9..=10 {
        admin
            .query_drop(format!("INSERT INTO test.r VALUES ({i}, {i})"))
            .await
            .unwrap();
    }
    // What a supervisor does: start again from the persisted checkpoint, with backoff.
    let mut src = source();
    let mut tries = 0;
    while let Err(e) = src.start(Some(ckpt.clone())).await {
        assert!(e.is_retryable(), "{e:?}");
        tries += 1;
        assert!(tries < 50, "server did not come back: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut rest = Seen::default();
    collect_until(&mut src, &mut rest, |s| s.items.iter().any(|i| id(i) == 10))
        .await
        .unwrap();
    assert_eq!(
        rest.items.iter().map(id).collect::<Vec<_>>(),
        (6..=10).collect::<Vec<_>>(),
        "after the checkpoint: nothing lost, nothing repeated"
    );
    assert!(rest.items.iter().all(|i| i.position > ckpt));

    // Purge the binlog the first checkpoint points into: resuming there re-snapshots.
    admin.query_drop("FLUSH BINARY LOGS").await.unwrap();
    let current: (String, u64) = admin
        .query_first::<mysql_async::Row, _>("SHOW MASTER STATUS")
        .await
        .unwrap()
        .map(|r| (r.get(0).unwrap(), r.get(1).unwrap()))
        .unwrap();
    admin
        .query_drop(format!("PURGE BINARY LOGS TO '{}'", current.0))
        .await
        .unwrap();
    let mut src = source();
    src.start(Some(first_ckpt)).await.unwrap();
    let mut again = Seen::default();
    collect_until(&mut src, &mut again, |s| !s.checkpoints.is_empty())
        .await
        .unwrap();
    assert!(matches!(&again.events[0],
        SourceEvent::SnapshotStart { reason, .. } if &**reason == "binlog purged"));
    let mut ids: Vec<i64> = again.items.iter().map(id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=10).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_log_bin_is_a_setting_error() {
    let Some(mut srv) = PrivateMaria::install(7451, false) else {
        return;
    };
    srv.start().await;
    let mut admin = Conn::from_url(srv.url()).await.unwrap();
    admin
        .query_drop("CREATE TABLE test.n (id INT PRIMARY KEY)")
        .await
        .unwrap();
    let mut src = MysqlChangeSource::builder(srv.url())
        .table("test.n")
        .server_id(4243)
        .build()
        .unwrap();
    match src.start(None).await {
        Err(CdcError::Setting { setting, .. }) => assert_eq!(setting, "log_bin"),
        other => panic!("expected a log_bin setting error, got {other:?}"),
    }
}
