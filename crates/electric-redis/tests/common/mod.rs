//! Helpers shared by the Redis tests.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use electric_redis::RedisStore;
use electric_testkit::conformance::StoreUnderTest;
use electric_testkit::services;

/// The single-node URL under test.
pub fn redis_url() -> String {
    services::service_url("REDIS", "redis://127.0.0.1:6379")
}

/// The cluster seed URLs under test (comma-separated): `ELECTRIC_TEST_REDIS_CLUSTER_URL`, or the
/// cluster `.ci/services up` starts on 7101-7103.
pub fn cluster_url() -> String {
    services::service_url(
        "REDIS_CLUSTER",
        "redis://127.0.0.1:7101,redis://127.0.0.1:7102,redis://127.0.0.1:7103",
    )
}

/// A store in a fresh namespace on `url`, or `None` (skipping, or failing when services are
/// required) when the server is unreachable.
pub async fn store_at(url: &str, service: &str, log_capacity: usize) -> Option<RedisStore> {
    let result = RedisStore::builder(url)
        .namespace(electric_testkit::unique("electric-test"))
        .log_capacity(log_capacity)
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await;
    match result {
        Ok(s) => Some(s),
        Err(e) => {
            services::skip_or_fail(service, &format!("{url}: {e}"));
            None
        }
    }
}

/// A single-node store in a fresh namespace.
pub async fn single(log_capacity: usize) -> Option<RedisStore> {
    store_at(&redis_url(), "redis", log_capacity).await
}

/// A cluster store in a fresh namespace.
pub async fn cluster(log_capacity: usize) -> Option<RedisStore> {
    store_at(&cluster_url(), "redis cluster", log_capacity).await
}

/// A conformance subject plus the cleanup deleting its namespace.
pub fn conformance_subject(
    store: Option<RedisStore>,
    log_capacity: usize,
) -> Option<(StoreUnderTest, impl Future<Output = ()>)> {
    let store = store?;
    let sut = StoreUnderTest {
        store: Arc::new(store.clone()),
        log_capacity,
    };
    Some((sut, async move {
        let _ = store.purge_namespace().await;
    }))
}

/// A redis-server started by a test on its own port (so it may be flushed, killed and have its
/// clients killed without touching anyone else's data); stopped by PID when dropped.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
    /// Extra `redis-server` arguments (e.g. `--requirepass`).
    extra: Vec<String>,
    /// Whether `port` is a TLS port (the plain port is then off).
    tls: bool,
    /// With persistence: the directory of its append-only file (removed when dropped).
    dir: Option<std::path::PathBuf>,
}

impl PrivateRedis {
    /// Starts one, or `None` (skip, or fail when services are required) without `redis-server`.
    pub async fn start() -> Option<PrivateRedis> {
        Self::start_with(Vec::new(), false).await
    }

    /// Starts one that keeps its data across [`restart`](Self::restart): an append-only file
    /// synced on every write, in a directory of its own.
    pub async fn start_persistent() -> Option<PrivateRedis> {
        let dir = std::env::temp_dir().join(electric_testkit::unique("electric-aof"));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            services::skip_or_fail("a temporary directory", &e.to_string());
            return None;
        }
        // Later arguments override the defaults `spawn` gives first.
        let extra = ["--appendonly", "yes", "--appendfsync", "always", "--dir"]
            .into_iter()
            .map(String::from)
            .chain([dir.display().to_string()])
            .collect();
        let mut r = Self::start_with(extra, false).await?;
        r.dir = Some(dir);
        Some(r)
    }

    /// Starts one with extra `redis-server` arguments; with `tls`, its port is a TLS port (the
    /// arguments must then name the certificate files) and the plain port is off.
    pub async fn start_with(extra: Vec<String>, tls: bool) -> Option<PrivateRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut r = PrivateRedis {
            port,
            child: None,
            extra,
            tls,
            dir: None,
        };
        if let Err(e) = r.spawn().await {
            services::skip_or_fail("redis-server binary", &e);
            return None;
        }
        Some(r)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the server runs");
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// The server's URL (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let ports = if self.tls {
            vec!["--port", "0", "--tls-port", &port]
        } else {
            vec!["--port", &port]
        };
        let child = std::process::Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir", "/tmp"])
            .args(&self.extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("redis-server did not start listening".into())
    }

    /// Stops the server (by PID, `SIGKILL`: with persistence, only what was synced survives).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port: empty, or, when persistent, with what it had synced.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await.expect("restart redis-server");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Runs `body` on `store`, then deletes the store's namespace even if `body` panicked.
pub async fn with_cleanup<F, Fut>(store: RedisStore, body: F)
where
    F: FnOnce(RedisStore) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let outcome = tokio::spawn(body(store.clone())).await;
    let _ = store.purge_namespace().await;
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("test body did not finish: {e}");
    }
}

/// A private three-master Redis Cluster started by a test with `.ci/redis-cluster` on random
/// ports; its servers are stopped by PID when dropped.
pub struct PrivateCluster {
    pids: Vec<String>,
    urls: Vec<String>,
    dir: std::path::PathBuf,
}

impl PrivateCluster {
    /// Starts one, or `None` (skip, or fail when services are required).
    pub async fn start() -> Option<PrivateCluster> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.ci/redis-cluster");
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        let base = (0..50)
            .map(|_| 20_000 + (rand::random::<u16>() % 20_000))
            .find(|&b| (0..3).all(|i| free(b + i) && free(b + i + 10_000)))
            .expect("free ports");
        let dir = std::env::temp_dir().join(electric_testkit::unique("electric-cluster"));
        let out = tokio::process::Command::new(script)
            .arg("start")
            .arg(base.to_string())
            .arg(&dir)
            .output()
            .await;
        let out = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).to_string(),
            Ok(o) => {
                services::skip_or_fail(
                    "private redis cluster",
                    &String::from_utf8_lossy(&o.stderr),
                );
                return None;
            }
            Err(e) => {
                services::skip_or_fail("private redis cluster", &e.to_string());
                return None;
            }
        };
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_default()
                .to_string()
        };
        Some(PrivateCluster {
            pids: field("PIDS ")
                .split_whitespace()
                .map(String::from)
                .collect(),
            urls: field("URL ").split(',').map(String::from).collect(),
            dir,
        })
    }

    /// The seed URLs, comma-separated.
    pub fn url(&self) -> String {
        self.urls.join(",")
    }

    /// Runs `cmd` on every node; returns the sum of integer replies.
    pub async fn on_each(&self, cmd: &redis::Cmd) -> u64 {
        let mut sum = 0;
        for url in &self.urls {
            let client = redis::Client::open(url.as_str()).expect("node url");
            let mut c = client
                .get_multiplexed_async_connection()
                .await
                .expect("node connection");
            let v: redis::Value = cmd.query_async(&mut c).await.expect("node command");
            if let redis::Value::Int(n) = v {
                sum += n as u64;
            }
        }
        sum
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.ci/redis-cluster");
        let _ = std::process::Command::new(script)
            .arg("stop")
            .args(&self.pids)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
