//! `electric bench --compare nats-kv`: NATS JetStream KV — the closest public model of our store
//! (revision compare-and-set `update(key, value, revision)` plus `watch`; whole values, no
//! deltas) — run on the same workload as Electric, and a byte-counting proxy for both systems.
//!
//! The bucket is created as its `KV_<bucket>` stream directly, with the settings
//! `create_key_value` would give it: async-nats 0.51's `create_key_value` first asks for account
//! information fields that nats-server 2.9 does not send, and fails there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use async_nats::jetstream::{self, kv, stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A KV bucket on a NATS server, deleted with [`NatsKv::delete`].
pub struct NatsKv {
    /// The client (also for core-NATS publishes to the bucket's subjects).
    pub client: async_nats::Client,
    /// The JetStream context.
    pub js: jetstream::Context,
    /// The bucket.
    pub kv: kv::Store,
    /// The bucket's name.
    pub bucket: String,
}

impl NatsKv {
    /// Connects to `url` and creates bucket `bucket` (history 1) with `storage`.
    pub async fn create(
        url: &str,
        bucket: &str,
        storage: stream::StorageType,
    ) -> anyhow::Result<Self> {
        let client = async_nats::connect(url)
            .await
            .with_context(|| format!("connecting to nats at {url}"))?;
        let js = jetstream::new(client.clone());
        js.create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            storage,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating the stream of bucket {bucket}"))?;
        let kv = js
            .get_key_value(bucket)
            .await
            .with_context(|| format!("opening bucket {bucket}"))?;
        Ok(NatsKv {
            client,
            js,
            kv,
            bucket: bucket.to_string(),
        })
    }

    /// Opens the bucket again on another connection (e.g. one through a [`CountingProxy`]).
    pub async fn open(url: &str, bucket: &str) -> anyhow::Result<Self> {
        let client = async_nats::connect(url)
            .await
            .with_context(|| format!("connecting to nats at {url}"))?;
        let js = jetstream::new(client.clone());
        let kv = js.get_key_value(bucket).await?;
        Ok(NatsKv {
            client,
            js,
            kv,
            bucket: bucket.to_string(),
        })
    }

    /// The subject a key's values are stored under.
    pub fn subject(&self, key: &str) -> String {
        format!("$KV.{}.{key}", self.bucket)
    }

    /// Deletes the bucket's stream.
    pub async fn delete(&self) -> anyhow::Result<()> {
        self.js.delete_stream(format!("KV_{}", self.bucket)).await?;
        Ok(())
    }
}

/// A TCP proxy on loopback that counts the bytes it forwards each way, to measure what a client
/// sends and receives per operation (no server counters, which other clients would disturb).
/// It serves until dropped.
pub struct CountingProxy {
    /// Where clients connect.
    pub addr: std::net::SocketAddr,
    /// Bytes client → server.
    pub up: Arc<AtomicU64>,
    /// Bytes server → client.
    pub down: Arc<AtomicU64>,
    token: CancellationToken,
}

impl CountingProxy {
    /// Starts a proxy to `target` (`host:port`).
    pub async fn start(target: String) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let token = CancellationToken::new();
        let (u, d, t) = (up.clone(), down.clone(), token.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = t.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, u.clone(), t.clone()));
                tokio::spawn(pump(sr, cw, d.clone(), t.clone()));
            }
        });
        Ok(CountingProxy {
            addr,
            up,
            down,
            token,
        })
    }

    /// Bytes forwarded so far: (client → server, server → client).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
    token: CancellationToken,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            _ = token.cancelled() => return,
            n = from.read(&mut buf) => n,
        };
        match n {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
