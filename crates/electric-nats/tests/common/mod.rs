//! Helpers for the NATS tests: the shared server's URL, private `nats-server`s, cleanup.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::sync::Arc;

use electric_core::bus::BusClient;
use electric_nats::NatsBus;
use electric_testkit::bus::{BusFeatures, ConnectFn};
use electric_testkit::services::{service_url, skip_or_fail};
use futures_util::StreamExt;

/// The shared server's URL, or `None` (after printing why) when it is unreachable.
pub async fn shared_url() -> Option<String> {
    let url = service_url("NATS", "nats://127.0.0.1:4222");
    match NatsBus::builder(&url)
        .connect_deadline(Duration::from_secs(2))
        .connect()
        .await
    {
        Ok(bus) => {
            drop(bus);
            Some(url)
        }
        Err(e) => {
            skip_or_fail("NATS", &format!("{url}: {e}"));
            None
        }
    }
}

/// Deletes every stream whose name starts with `electric-<prefix>`.
pub async fn delete_streams(url: &str, prefix: &str) {
    let Ok(bus) = NatsBus::connect(url).await else {
        return;
    };
    let full = bus.stream_name(prefix);
    let names: Vec<String> = bus
        .jetstream()
        .stream_names()
        .filter_map(|n| async move { n.ok() })
        .collect()
        .await;
    for name in names.into_iter().filter(|n| n.starts_with(&full)) {
        let _ = bus.jetstream().delete_stream(&name).await;
    }
    let _ = BusClient::new(bus).close().await;
}

/// A private `nats-server` with JetStream on its own port (7310–7349) and data directory,
/// stopped (by its PID) on drop.
pub struct PrivateNats {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl PrivateNats {
    /// Starts one, or returns `None` (after printing why) when `nats-server` is not installed.
    pub async fn start() -> Option<Self> {
        if Command::new("nats-server")
            .arg("--version")
            .output()
            .is_err()
        {
            skip_or_fail("nats-server", "not on the PATH");
            return None;
        }
        let port = (7310..7350)
            .cycle()
            .skip(rand::random::<usize>() % 40)
            .take(40)
            .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .expect("a free port in 7310-7349");
        let dir =
            std::env::temp_dir().join(format!("electric-nats-{port}-{:x}", rand::random::<u32>()));
        let mut me = Self {
            child: None,
            port,
            dir,
        };
        me.spawn().await;
        Some(me)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "private nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server (SIGKILL, by PID) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port and data directory.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What JetStream promises.
pub fn features() -> BusFeatures {
    let mut f = BusFeatures::memory();
    f.persistent = true;
    f
}

/// Opens clients on `url`.
pub fn connect(url: String) -> ConnectFn {
    Arc::new(move || {
        let url = url.clone();
        Box::pin(async move {
            NatsBus::builder(url)
                .lease_ttl(Duration::from_secs(2))
                .connect()
                .await
                .map(BusClient::new)
        })
    })
}
