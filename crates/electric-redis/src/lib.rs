//! [`RedisStore`]: Electric's production [`Store`], on a single Redis node or a Redis Cluster.
//!
//! ```no_run
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use electric_core::{DataManager, SyncService};
//! use electric_redis::RedisStore;
//! use serde_json::{Map, Value};
//! use tokio_util::sync::CancellationToken;
//!
//! let store = Arc::new(RedisStore::builder("redis://127.0.0.1:6379").namespace("myapp").connect().await?);
//! let docs = DataManager::<Map<String, Value>>::builder(store, "intraday", "positions").build()?;
//! let token = CancellationToken::new();
//! let sync = SyncService::builder().manager(&docs).build()?.spawn(token.clone());
//! docs.update("PLANT-7", |d| { d.insert("qty".into(), 12.5.into()); }).await?;
//! token.cancel();
//! sync.join().await;
//! # Ok::<(), electric_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! # Layout
//!
//! See [`layout`] for every key and channel name. In short, per document: one hash
//! (`ns:{p:s:id}:doc`: `__v`, `__e`, `__t`, `__d`, and each member either whole under a `.`
//! prefix or, for arrays of objects, element by element — `#name` the count, `*<i>.name` each
//! element), one capped stream (`ns:{p:s:id}:log`, entry ids `<version>-0`) and a fence set;
//! per section one pub/sub channel (`ns:deltas:p:s`). One Lua script does the whole commit
//! (check, write only the changed elements, log, trim, publish, TTL); it is called by SHA and
//! reloaded after `NOSCRIPT`. Documents of the earlier all-whole layout load as they are and
//! migrate member by member on first write.
//!
//! # Cluster
//!
//! Give several comma-separated node URLs (or call [`RedisStoreBuilder::cluster`]). A document's
//! keys share a hash tag, so every script runs on one node. Deltas are published with plain
//! `PUBLISH`, which Redis Cluster broadcasts to every node; subscribers listen on any one node.
//! `docs/redis-cluster-fanout.md` explains the choice and its measured cost.
//!
//! # Authentication and TLS
//!
//! Credentials come from the URL (`redis://user:password@host:port`) or from
//! [`RedisStoreBuilder::username`] / [`RedisStoreBuilder::password`]. [`minimal_acl`] gives the
//! rules of the smallest ACL user the store can work as; at connect the store checks that its
//! user may run everything it needs ([`RedisStore::check_permissions`]) and otherwise refuses to
//! start, naming what is missing. `rediss://` URLs use TLS (rustls, feature `tls`, on by
//! default), verified against the system's roots or a private CA
//! ([`RedisStoreBuilder::tls_root_ca`]), optionally with a client certificate
//! ([`RedisStoreBuilder::tls_client_cert`]). A wrong or missing password, a denied command or a
//! certificate that does not verify is [`Error::AccessDenied`], which is not retryable.
//!
//! # Errors and faults
//!
//! Redis errors never leak: connection problems, timeouts and cluster redirections that could
//! not be resolved become [`Error::Unavailable`] (retryable); a key in our namespace with a
//! foreign layout, an unreadable log entry or channel message becomes [`Error::Malformed`];
//! anything else [`Error::Backend`]. Reads are retried with exponential backoff until
//! [`RedisStoreBuilder::retry_deadline`].
//!
//! Writes are not retried here. A commit or delete whose request may have reached Redis without
//! a reply (a timeout, a connection lost once the request could have been written) is
//! [`Error::Indeterminate`]; every other error means nothing was written. The commit script
//! keeps each commit's id in the change log (stream field `c`) and records creates and deletes
//! in the document's fence set, so [`Store::resolve`] (and a repeated `delete_with_id`) can tell
//! what became of such a write and fence it; `DataManager` does that itself (see its
//! `update`). A subscription ends when its connection is lost, so the sync service
//! re-subscribes and runs anti-entropy.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod acl;
pub mod checkpoints;
pub mod layout;
mod scripts;

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use electric_core::delta::{Delta, DeltaKind};
use electric_core::store::{
    Changes, Commit, CommitOutcome, Head, Members, Resolution, Snapshot, Store, Subscription,
    SubscriptionEvent,
};
use electric_core::{CommitId, Digest, Epoch, Error, Key, Result, SectionId, Stamp, Version};
use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{Cmd, IntoConnectionInfo, RedisError, RedisFuture, Script, Value as RValue};
use tokio::sync::mpsc;

pub use acl::minimal_acl;
pub use checkpoints::RedisCheckpoints;
pub use layout::Layout;
/// The Redis client crate this store is built on, for [`RedisStore::query`] callers.
pub use redis;

/// Default namespace (key prefix).
pub const DEFAULT_NAMESPACE: &str = "electric";
/// Default number of deltas kept per document log.
pub const DEFAULT_LOG_CAPACITY: usize = 1000;
/// Default number of decoded deltas buffered per subscription.
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 8192;
/// Default time a document's fence set keeps the record of a create or delete
/// ([`RedisStoreBuilder::fence_ttl`]).
pub const DEFAULT_FENCE_TTL: Duration = Duration::from_secs(3600);

/// Builder for [`RedisStore`]; see each setting for its default.
#[derive(Clone, Debug)]
pub struct RedisStoreBuilder {
    urls: Vec<String>,
    cluster: bool,
    namespace: String,
    log_capacity: usize,
    subscription_capacity: usize,
    connect_timeout: Duration,
    response_timeout: Duration,
    retry_deadline: Duration,
    tcp_nodelay: bool,
    fence_ttl: Duration,
    username: Option<String>,
    password: Option<String>,
    tls: Tls,
}

/// TLS material beyond what a `rediss://` URL says (PEM text).
#[derive(Clone, Default)]
struct Tls {
    root_ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Tls")
            .field("root_ca", &self.root_ca.is_some())
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

impl Tls {
    fn is_set(&self) -> bool {
        self.root_ca.is_some() || self.client.is_some()
    }
}

impl RedisStoreBuilder {
    /// Keys are prefixed with `ns` (default [`DEFAULT_NAMESPACE`]); the same rules as key parts.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = ns.into();
        self
    }

    /// Deltas kept per document (default [`DEFAULT_LOG_CAPACITY`]; at least 1). Older ones are
    /// trimmed and `changes_since` reports [`Changes::Trimmed`].
    pub fn log_capacity(mut self, n: usize) -> Self {
        self.log_capacity = n;
        self
    }

    /// Decoded deltas buffered per subscription (default [`DEFAULT_SUBSCRIPTION_CAPACITY`]).
    /// When the consumer falls further behind, newer deltas are dropped and counted, and the
    /// consumer receives [`SubscriptionEvent::Lagged`] once it catches up.
    pub fn subscription_capacity(mut self, n: usize) -> Self {
        self.subscription_capacity = n;
        self
    }

    /// Treat the URLs as seed nodes of a Redis Cluster (implied by several URLs).
    pub fn cluster(mut self, yes: bool) -> Self {
        self.cluster = yes;
        self
    }

    /// Longest wait for the first connection (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Longest wait for one reply (default 2 s).
    pub fn response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d;
        self
    }

    /// How long reads keep retrying transient failures (default 3 s).
    pub fn retry_deadline(mut self, d: Duration) -> Self {
        self.retry_deadline = d;
        self
    }

    /// How long a document's fence set keeps the record of a create or a delete (default
    /// [`DEFAULT_FENCE_TTL`], one hour; at least one second). The record is what refuses a late
    /// copy of that request (one stuck in a socket buffer or being retransmitted) once the
    /// writer has resolved it, so it must outlive any request still in flight: far longer than
    /// the kernel's TCP retransmission limit (about 15 minutes by default). Each record is a
    /// few dozen bytes; a set expires an hour after its last record.
    pub fn fence_ttl(mut self, d: Duration) -> Self {
        self.fence_ttl = d;
        self
    }

    /// Set `TCP_NODELAY` on every connection (default on). The `redis` crate leaves Nagle's
    /// algorithm on unless asked; with it, the last segment of a command that spans several
    /// waits for the earlier ones to be acknowledged, which the peer may delay by up to 40 ms.
    /// Nagle's batching is worth throughput only where nothing is split: on loopback, turning it
    /// back on (`false`) gave 11–19 % more `update` and load throughput, while across a link
    /// with a 1,500-byte MTU raw commits were 15–32 % slower with it (BENCHMARKS.md).
    pub fn tcp_nodelay(mut self, yes: bool) -> Self {
        self.tcp_nodelay = yes;
        self
    }

    /// The ACL user to authenticate as (default: the URL's user name, else `default`).
    /// [`minimal_acl`] gives the smallest set of permissions the store needs.
    pub fn username(mut self, user: impl Into<String>) -> Self {
        self.username = Some(user.into());
        self
    }

    /// The password to authenticate with (default: the URL's password, else none), so it need
    /// not appear in a URL. A wrong one makes [`connect`](Self::connect) fail with
    /// [`Error::AccessDenied`].
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Trust the certificate authority in `pem` (instead of the system's roots) for `rediss://`
    /// URLs, e.g. a private CA the servers' certificates are issued by.
    pub fn tls_root_ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.root_ca = Some(pem.into());
        self
    }

    /// Present this client certificate and private key (PEM) on `rediss://` connections, for
    /// servers started with `tls-auth-clients yes`.
    pub fn tls_client_cert(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Validates the settings, connects and loads the scripts.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a bad URL, namespace or capacity, or TLS settings with a
    /// plain `redis://` URL; [`Error::AccessDenied`] for a wrong password, an ACL user that may
    /// not run what the store needs, or a server certificate that does not verify;
    /// [`Error::Unavailable`] when no connection could be made before the connect timeout.
    pub async fn connect(self) -> Result<RedisStore> {
        electric_core::key::validate_part("id", &self.namespace)
            .map_err(|e| Error::InvalidConfig(format!("namespace {:?}: {e}", self.namespace)))?;
        if self.log_capacity == 0 || self.subscription_capacity == 0 || self.urls.is_empty() {
            return Err(Error::InvalidConfig(
                "redis store needs a url and capacities of at least 1".into(),
            ));
        }
        if self.fence_ttl < Duration::from_secs(1) {
            return Err(Error::InvalidConfig(
                "redis store fence_ttl must be at least 1 s".into(),
            ));
        }
        let invalid = |e: RedisError| Error::InvalidConfig(format!("redis url: {e}"));
        let tcp = TcpSettings::default().set_nodelay(self.tcp_nodelay);
        let infos = self
            .urls
            .iter()
            .map(|u| {
                let info = u.as_str().into_connection_info().map_err(invalid)?;
                if self.tls.is_set() && !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. })
                {
                    return Err(Error::InvalidConfig(format!(
                        "tls certificates are set but {u:?} is not a rediss:// url"
                    )));
                }
                let mut settings = info.redis_settings().clone();
                if let Some(user) = &self.username {
                    settings = settings.set_username(user);
                }
                if let Some(password) = &self.password {
                    settings = settings.set_password(password);
                }
                Ok(info
                    .set_tcp_settings(tcp.clone())
                    .set_redis_settings(settings))
            })
            .collect::<Result<Vec<_>>>()?;
        let clients = infos
            .iter()
            .map(|i| self.client(i.clone()))
            .collect::<Result<Vec<_>>>()?;
        let cluster = self.cluster || self.urls.len() > 1;
        let timeout = self.connect_timeout;
        let conn = if cluster {
            let mut builder = redis::cluster::ClusterClient::builder(infos)
                .tcp_settings(tcp)
                .connection_timeout(self.connect_timeout)
                .response_timeout(self.response_timeout)
                .retries(3);
            if let Some(user) = &self.username {
                builder = builder.username(user);
            }
            if let Some(password) = &self.password {
                builder = builder.password(password);
            }
            if self.tls.is_set() {
                builder = builder.certs(self.tls_certificates()?);
            }
            let client = builder.build().map_err(invalid)?;
            let c = tokio::time::timeout(timeout, client.get_async_connection())
                .await
                .map_err(|_| unavailable_timeout("cluster connect"))?
                .map_err(map_err)?;
            Conn::Cluster(c)
        } else {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(Some(self.response_timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            let c = tokio::time::timeout(
                timeout,
                clients[0].get_connection_manager_with_config(config),
            )
            .await
            .map_err(|_| unavailable_timeout("connect"))?
            .map_err(map_err)?;
            Conn::Single(c)
        };
        let store = RedisStore {
            inner: Arc::new(Inner {
                conn,
                clients,
                cluster,
                layout: Layout::new(self.namespace),
                log_capacity: self.log_capacity,
                subscription_capacity: self.subscription_capacity,
                response_timeout: self.response_timeout,
                retry_deadline: self.retry_deadline,
                fence_ttl: self.fence_ttl,
                commit: Script::new(scripts::COMMIT),
                delete: Script::new(scripts::DELETE),
                changes: Script::new(scripts::CHANGES),
                expire: Script::new(scripts::EXPIRE),
                stats: Stats::default(),
            }),
        };
        store.load_scripts().await?;
        store.check_permissions().await?;
        Ok(store)
    }

    /// A client for one node, with this builder's TLS material when it has any.
    fn client(&self, info: redis::ConnectionInfo) -> Result<redis::Client> {
        let invalid = |e: RedisError| Error::InvalidConfig(format!("redis url: {e}"));
        if !self.tls.is_set() {
            return redis::Client::open(info).map_err(invalid);
        }
        #[cfg(feature = "tls")]
        return redis::Client::build_with_tls(info, self.tls_certificates()?).map_err(invalid);
        #[cfg(not(feature = "tls"))]
        Err(Error::InvalidConfig(
            "tls certificates need electric-redis's `tls` feature".into(),
        ))
    }

    #[cfg(feature = "tls")]
    fn tls_certificates(&self) -> Result<redis::TlsCertificates> {
        Ok(redis::TlsCertificates {
            client_tls: self
                .tls
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.tls.root_ca.clone(),
        })
    }

    #[cfg(not(feature = "tls"))]
    fn tls_certificates(&self) -> Result<std::convert::Infallible> {
        Err(Error::InvalidConfig(
            "tls certificates need electric-redis's `tls` feature".into(),
        ))
    }
}

/// Counters of what a [`RedisStore`] repaired or dropped.
#[derive(Debug, Default)]
pub struct Stats {
    /// Read calls retried after a transient failure.
    pub retries: AtomicU64,
    /// Channel messages that could not be decoded (reported to the subscriber as errors).
    pub malformed_messages: AtomicU64,
    /// Deltas dropped because a subscriber's buffer was full (reported as `Lagged`).
    pub lagged: AtomicU64,
    /// Subscriptions that ended because their connection was lost.
    pub subscriptions_lost: AtomicU64,
    /// Commits that found a change log reaching past the document (a foreign writer) and
    /// dropped it before appending.
    pub log_repairs: AtomicU64,
    /// Array members a commit found stored whole (the layout before element cells, or a
    /// foreign writer) and so wrote again element by element.
    pub members_migrated: AtomicU64,
}

/// The production store: documents, change logs and delta channels in Redis. Cheap to clone.
///
/// See the [crate docs](crate) for the layout and fault handling.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    clients: Vec<redis::Client>,
    cluster: bool,
    layout: Layout,
    log_capacity: usize,
    subscription_capacity: usize,
    response_timeout: Duration,
    retry_deadline: Duration,
    fence_ttl: Duration,
    commit: Script,
    delete: Script,
    changes: Script,
    expire: Script,
    stats: Stats,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.inner.layout.namespace())
            .field("cluster", &self.inner.cluster)
            .field("log_capacity", &self.inner.log_capacity)
            .finish_non_exhaustive()
    }
}

/// One connection handle, single node or cluster; both multiplex concurrent requests.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, RValue> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<RValue>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

fn unavailable_timeout(what: &str) -> Error {
    Error::Unavailable {
        reason: format!("redis {what} timed out"),
    }
}

/// Maps a redis error to ours: refused credentials, ACL denials and certificates that do not
/// verify are `AccessDenied`; transient ones are `Unavailable`; our scripts' layout checks and
/// `WRONGTYPE` are `Malformed`; the rest `Backend`.
pub(crate) fn map_err(e: RedisError) -> Error {
    let code = e.code().unwrap_or_default();
    if code == "ELECTRIC_MALFORMED" || code == "WRONGTYPE" {
        return Error::Malformed {
            what: "document",
            reason: e.to_string(),
        };
    }
    if let Some(reason) = access_denied(&e) {
        return Error::AccessDenied { reason };
    }
    if e.is_timeout() || e.is_io_error() || e.is_connection_dropped() || e.is_cluster_error() {
        return Error::Unavailable {
            reason: e.to_string(),
        };
    }
    match e.retry_method() {
        redis::RetryMethod::NoRetry => Error::Backend {
            reason: e.to_string(),
        },
        _ => Error::Unavailable {
            reason: e.to_string(),
        },
    }
}

/// Maps an error of a write (a commit, a resolution, a delete) to ours. A request that may have
/// reached Redis without its reply coming back — a timeout, a connection that broke once the
/// request could have been written — is [`Error::Indeterminate`]: the write may have been
/// applied. A reply from Redis (even an error), a connection that was never made, or a cluster
/// that could not route the request means nothing was written and maps as for reads.
pub(crate) fn write_err(e: RedisError, key: &Key, id: CommitId) -> Error {
    let never_sent =
        e.is_connection_refusal() || e.kind() == redis::ErrorKind::ClusterConnectionNotFound;
    // A reply that could not be parsed was a reply: the request ran.
    let lost_reply = e.is_timeout()
        || e.is_connection_dropped()
        || e.is_io_error()
        || e.kind() == redis::ErrorKind::Parse;
    if !never_sent && e.code().is_none() && lost_reply {
        return Error::Indeterminate {
            key: key.clone(),
            commit: id,
            reason: e.to_string(),
        };
    }
    map_err(e)
}

/// What the commit script replied.
enum Reply {
    Committed(electric_core::SharedDelta),
    Conflict(Option<Stamp>),
    Unknown(String),
}

/// Why `e` is a refusal that retrying cannot fix, if it is one: a wrong password (`WRONGPASS`,
/// or the client's own authentication failure), a missing one (`NOAUTH`), an ACL denial
/// (`NOPERM`, also when a script's command was denied), or a TLS certificate that does not
/// verify.
fn access_denied(e: &RedisError) -> Option<String> {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return Some(format!("redis refused the credentials: {e}"));
    }
    let code = e.code().unwrap_or_default();
    if matches!(code, "WRONGPASS" | "NOAUTH" | "NOPERM") {
        return Some(format!("redis: {e}"));
    }
    // A command a script runs is checked against the caller's ACL too; Redis 7 reports the
    // refusal as the script's error ("The user executing the script can't run this command…",
    // "…can't publish to the channel…"), without naming the command.
    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
        && e.detail()
            .is_some_and(|d| d.contains("The user executing the script can't"))
    {
        return Some(format!("redis refused a command of a script (ACL): {e}"));
    }
    #[cfg(feature = "tls")]
    if let Some(tls) = rustls_error(e) {
        if matches!(
            tls,
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::AlertReceived(_)
        ) {
            return Some(format!("redis tls: {tls}"));
        }
    }
    None
}

/// The rustls error behind `e`, if the connection failed in the TLS handshake. redis keeps the
/// I/O error as an `Arc<dyn Error>` (whose own `source` skips the I/O error), and the I/O error
/// holds the rustls error as its payload.
#[cfg(feature = "tls")]
fn rustls_error(e: &RedisError) -> Option<&rustls::Error> {
    type Shared = Arc<dyn std::error::Error + Send + Sync>;
    let cause = std::error::Error::source(e)?;
    let inner: &(dyn std::error::Error + 'static) = match cause.downcast_ref::<Shared>() {
        Some(shared) => &**shared,
        None => cause,
    };
    inner
        .downcast_ref::<std::io::Error>()?
        .get_ref()?
        .downcast_ref::<rustls::Error>()
}

fn malformed(what: &'static str, reason: impl Into<String>) -> Error {
    Error::Malformed {
        what,
        reason: reason.into(),
    }
}

fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    // Keys, strings, patches and JSON values always serialize.
    serde_json::to_string(v).unwrap_or_default()
}

fn as_str(v: &RValue) -> Option<&str> {
    match v {
        RValue::BulkString(b) => std::str::from_utf8(b).ok(),
        RValue::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn as_u64(v: &RValue) -> Option<u64> {
    match v {
        RValue::Int(i) => u64::try_from(*i).ok(),
        other => as_str(other)?.parse().ok(),
    }
}

fn parse_epoch(v: &RValue) -> Result<Epoch> {
    as_str(v)
        .ok_or_else(|| malformed("document", "epoch is not a string"))?
        .parse()
        .map_err(|e: String| malformed("document", e))
}

fn parse_stamp(epoch: &RValue, version: &RValue) -> Result<Stamp> {
    Ok(Stamp {
        epoch: parse_epoch(epoch)?,
        version: as_u64(version).ok_or_else(|| malformed("document", "version is not a number"))?,
    })
}

impl RedisStore {
    /// A builder for a store at `url`: one `redis://` URL, or several comma-separated ones for a
    /// cluster's seed nodes.
    pub fn builder(url: &str) -> RedisStoreBuilder {
        RedisStoreBuilder {
            urls: url
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            cluster: false,
            namespace: DEFAULT_NAMESPACE.into(),
            log_capacity: DEFAULT_LOG_CAPACITY,
            subscription_capacity: DEFAULT_SUBSCRIPTION_CAPACITY,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(2),
            retry_deadline: Duration::from_secs(3),
            tcp_nodelay: true,
            fence_ttl: DEFAULT_FENCE_TTL,
            username: None,
            password: None,
            tls: Tls::default(),
        }
    }

    /// Connects with default settings.
    ///
    /// # Errors
    ///
    /// As [`RedisStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<RedisStore> {
        Self::builder(url).connect().await
    }

    /// Key and channel names.
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// Whether this store talks to a cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.cluster
    }

    /// The log capacity.
    pub fn log_capacity(&self) -> usize {
        self.inner.log_capacity
    }

    /// What the store repaired or dropped so far.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// The SHA1 of the commit script (for callers that invoke it directly, e.g. benchmarks).
    pub fn commit_script_sha(&self) -> &str {
        self.inner.commit.get_hash()
    }

    /// Loads every script (done at connect; the store also reloads after `NOSCRIPT`).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] / [`Error::Backend`].
    pub async fn load_scripts(&self) -> Result<()> {
        let i = &self.inner;
        for s in [&i.commit, &i.delete, &i.changes, &i.expire] {
            let mut conn = i.conn.clone();
            s.prepare_invoke()
                .load_async(&mut conn)
                .await
                .map_err(map_err)?;
        }
        Ok(())
    }

    /// Checks that the store's Redis user may run every command the store needs on its keys and
    /// channels (see [`minimal_acl`]); done at connect.
    ///
    /// # Errors
    ///
    /// [`Error::AccessDenied`] naming every command refused; [`Error::Unavailable`] /
    /// [`Error::Backend`].
    pub async fn check_permissions(&self) -> Result<()> {
        let l = &self.inner.layout;
        let probe = Key::new("acl", "probe", "probe")?;
        let mut conn = self.inner.conn.clone();
        let denied: Vec<String> = Script::new(acl::PROBE)
            .key(l.doc_key(&probe))
            .key(l.log_key(&probe))
            .key(l.fence_key(&probe))
            .arg(l.channel(&probe.section_id()))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| match map_err(e) {
                Error::AccessDenied { reason } => Error::AccessDenied {
                    reason: format!(
                        "the redis user may not use namespace {:?} ({reason})",
                        l.namespace()
                    ),
                },
                other => other,
            })?;
        if denied.is_empty() {
            return Ok(());
        }
        Err(Error::AccessDenied {
            reason: format!(
                "the redis user may not run {} (electric_redis::minimal_acl lists what the store needs)",
                denied.join(", ")
            ),
        })
    }

    /// Runs a raw command (through the cluster routing when on a cluster), mapping errors.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] / [`Error::Backend`] / [`Error::Malformed`].
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        let mut conn = self.inner.conn.clone();
        cmd.query_async(&mut conn).await.map_err(map_err)
    }

    /// Calls the commit script exactly as [`Store::commit`] does, with pre-built arguments, and
    /// returns the raw reply (for benchmarks measuring the script itself).
    ///
    /// # Errors
    ///
    /// As [`Store::commit`], except that an outcome the store cannot tell is `Unavailable`.
    pub async fn commit_raw(&self, keys: &[String], args: &[impl AsRef<str>]) -> Result<RValue> {
        self.invoke_commit(keys, args).await.map_err(map_err)
    }

    async fn invoke_commit(
        &self,
        keys: &[String],
        args: &[impl AsRef<str>],
    ) -> std::result::Result<RValue, RedisError> {
        let mut inv = self.inner.commit.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(a.as_ref());
        }
        let mut conn = self.inner.conn.clone();
        inv.invoke_async(&mut conn).await
    }

    /// The commit script's `(KEYS, ARGV)` for `commit` (see `scripts.rs` for their meaning).
    /// Member texts are borrowed from `commit`, not copied.
    ///
    /// # Errors
    ///
    /// [`Error::Serde`] when a member of [`Commit::doc`] does not serialize.
    pub fn commit_args<'c>(&self, commit: &'c Commit) -> Result<(Vec<String>, Vec<Cow<'c, str>>)> {
        self.script_args(commit, "c", &[])
    }

    fn script_args<'c>(
        &self,
        commit: &'c Commit,
        mode: &'static str,
        whole: &[String],
    ) -> Result<(Vec<String>, Vec<Cow<'c, str>>)> {
        let l = &self.inner.layout;
        let (ee, ev) = match commit.expected {
            Some(s) => (s.epoch.to_string(), s.version.to_string()),
            None => (String::new(), "0".to_string()),
        };
        let ttl = commit.ttl.map_or(0, |d| d.as_millis().max(1));
        let kind = match commit.kind {
            DeltaKind::Patch => "patch",
            DeltaKind::Snapshot => "snapshot",
            DeltaKind::Delete => "delete",
        };
        let mut args: Vec<Cow<'c, str>> = Vec::with_capacity(24);
        args.extend(
            [
                ee,
                ev,
                commit.id.to_string(),
                self.inner.log_capacity.to_string(),
                ttl.to_string(),
                l.channel(&commit.key.section_id()),
                json(&commit.key),
                json(&commit.origin),
            ]
            .map(Cow::Owned),
        );
        args.push(Cow::Borrowed(kind));
        args.push(Cow::Owned(json(&commit.ops)));
        args.push(Cow::Owned(
            commit.digest.map(|d| d.to_string()).unwrap_or_default(),
        ));
        args.push(Cow::Borrowed(mode));
        args.push(Cow::Owned(self.fence_ms().to_string()));
        let serde = |e: serde_json::Error| Error::Serde {
            key: commit.key.clone(),
            reason: e.to_string(),
        };
        match &commit.doc {
            None => {
                args.push(Cow::Borrowed("0"));
                for (name, value) in &commit.fields {
                    match value {
                        Some(v) => args.extend([
                            Cow::Borrowed("w"),
                            Cow::Borrowed(name.as_str()),
                            Cow::Borrowed(v.get()),
                        ]),
                        None => args.extend([Cow::Borrowed("d"), Cow::Borrowed(name.as_str())]),
                    }
                }
            }
            Some(doc) => {
                let touched = match commit.kind {
                    DeltaKind::Snapshot => None,
                    _ => commit.touched_members(),
                };
                match touched {
                    None => {
                        args.push(Cow::Borrowed("1"));
                        for (name, value) in doc.iter() {
                            layout::push_member(&mut args, name, value, None).map_err(serde)?;
                        }
                    }
                    Some(names) => {
                        args.push(Cow::Borrowed("0"));
                        for name in &names {
                            match doc.get(name) {
                                None => args.extend([Cow::Borrowed("d"), Cow::Owned(name.clone())]),
                                Some(value) => {
                                    let cells = if whole.contains(name) {
                                        None
                                    } else {
                                        layout::changed_cells(&commit.ops, name, value)
                                    };
                                    layout::push_member(&mut args, name, value, cells)
                                        .map_err(serde)?;
                                }
                            }
                        }
                    }
                }
            }
        }
        let keys = vec![
            l.doc_key(&commit.key),
            l.log_key(&commit.key),
            l.fence_key(&commit.key),
        ];
        Ok((keys, args))
    }

    fn fence_ms(&self) -> u128 {
        self.inner.fence_ttl.as_millis()
    }

    /// Runs the commit script for `commit` in `mode` and reads its reply.
    async fn run_commit(&self, commit: &Commit, mode: &'static str) -> Result<Reply> {
        let bad = |r: &str| Error::Backend {
            reason: format!("commit script replied {r}"),
        };
        // Members to write whole (every element) because the store does not hold them element
        // by element the way this commit's cells expect: written whole by an earlier layout,
        // or reshaped by a writer that did not say so. The script refuses such a commit before
        // writing anything and names them; sent again with those members whole, it migrates
        // them. Each round adds at least one member, so this ends.
        let mut whole: Vec<String> = Vec::new();
        let items = loop {
            let (keys, args) = self.script_args(commit, mode, &whole)?;
            let reply = self
                .invoke_commit(&keys, &args)
                .await
                .map_err(|e| write_err(e, &commit.key, commit.id))?;
            let RValue::Array(items) = reply else {
                return Err(bad("a non-array"));
            };
            if items.first().and_then(as_u64) != Some(5) {
                break items;
            }
            let before = whole.len();
            for name in &items[1..] {
                let name = as_str(name).ok_or_else(|| bad("a member name that is not text"))?;
                if !whole.iter().any(|w| w == name) {
                    whole.push(name.to_string());
                }
            }
            if whole.len() == before {
                return Err(bad("the same members to write whole twice"));
            }
            self.inner
                .stats
                .members_migrated
                .fetch_add((whole.len() - before) as u64, Ordering::Relaxed);
        };
        let delta = |stamp: Stamp, change_time: u64| {
            Arc::new(Delta {
                key: commit.key.clone(),
                epoch: stamp.epoch,
                base: stamp.version - 1,
                version: stamp.version,
                change_time,
                origin: commit.origin.clone(),
                kind: commit.kind,
                ops: commit.ops.clone(),
                commit: Some(commit.id),
                digest: commit.digest,
            })
        };
        Ok(match (items.first().and_then(as_u64), items.as_slice()) {
            (Some(0), [_]) => Reply::Conflict(None),
            (Some(0), [_, e, v]) => Reply::Conflict(Some(parse_stamp(e, v)?)),
            (Some(1), [_, e, v, t, repaired]) => {
                if as_u64(repaired) == Some(1) {
                    self.inner.stats.log_repairs.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(key = %commit.key, "dropped a change log reaching past its document");
                }
                let change_time = as_u64(t).ok_or_else(|| bad("a bad time"))?;
                Reply::Committed(delta(parse_stamp(e, v)?, change_time))
            }
            (Some(2), [_, text]) => {
                let bytes = match text {
                    RValue::BulkString(b) => b.as_slice(),
                    _ => return Err(bad("a logged delta that is not a string")),
                };
                let d = Delta::decode(bytes)
                    .map_err(|e| malformed("log entry", format!("{}: {e}", commit.key)))?;
                if d.key != commit.key || d.commit != Some(commit.id) {
                    return Err(malformed(
                        "log entry",
                        format!("{}: entry of another key or commit", commit.key),
                    ));
                }
                Reply::Committed(Arc::new(d))
            }
            (Some(3), [_, t]) => {
                let change_time = as_u64(t).ok_or_else(|| bad("a bad time"))?;
                let stamp = Stamp {
                    epoch: Epoch::from(commit.id),
                    version: 1,
                };
                Reply::Committed(delta(stamp, change_time))
            }
            (Some(4), [_, reason]) => Reply::Unknown(as_str(reason).unwrap_or_default().into()),
            _ => return Err(bad("an unexpected shape")),
        })
    }

    /// Retries `op` on transient errors with exponential backoff (10 ms doubling to 500 ms,
    /// full jitter) until the retry deadline.
    async fn read<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.inner.retry_deadline;
        let mut backoff = Duration::from_millis(10);
        loop {
            match op(self.inner.conn.clone()).await {
                Err(e) if e.is_retryable() && tokio::time::Instant::now() + backoff < deadline => {
                    self.inner.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "redis read failed; retrying");
                    let jitter = rand::random::<f64>();
                    tokio::time::sleep(backoff.mul_f64(0.5 + jitter / 2.0)).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    /// Deletes every key of this store's namespace (for tests and tools; O(keys), uses `SCAN`).
    /// Returns how many keys were deleted.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] / [`Error::Backend`].
    pub async fn purge_namespace(&self) -> Result<u64> {
        let pattern = self.inner.layout.pattern();
        let mut deleted = 0;
        for client in &self.inner.clients {
            let mut node = client
                .get_multiplexed_async_connection()
                .await
                .map_err(map_err)?;
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut node)
                    .await
                    .map_err(map_err)?;
                for k in keys {
                    // Through the store's connection, so the cluster routes it to its owner.
                    deleted += self.query::<u64>(redis::cmd("DEL").arg(&k)).await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            if !self.inner.cluster {
                break;
            }
        }
        Ok(deleted)
    }

    fn decode_entry(key: &Key, entry: &RValue) -> Result<Delta> {
        let bad = |r: &str| malformed("log entry", format!("{key}: {r}"));
        let RValue::Array(parts) = entry else {
            return Err(bad("not an array"));
        };
        let [id, RValue::Array(fields)] = parts.as_slice() else {
            return Err(bad("not [id, fields]"));
        };
        let id = as_str(id).ok_or_else(|| bad("id is not a string"))?;
        let version: Version = id
            .split('-')
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("bad id"))?;
        let data = fields
            .chunks(2)
            .find(|c| as_str(&c[0]) == Some(layout::LOG_FIELD))
            .and_then(|c| match c.get(1) {
                Some(RValue::BulkString(b)) => Some(b.as_slice()),
                _ => None,
            })
            .ok_or_else(|| bad("no delta field"))?;
        let delta = Delta::decode(data).map_err(|e| bad(&e.to_string()))?;
        if delta.key != *key || delta.version != version {
            return Err(bad("entry belongs to another key or version"));
        }
        Ok(delta)
    }

    fn parse_snapshot(key: &Key, fields: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Option<Snapshot>> {
        if fields.is_empty() {
            return Ok(None);
        }
        let bad = |r: String| malformed("document", format!("{key}: {r}"));
        let (mut version, mut epoch, mut time) = (None, None, None);
        let mut digest = None;
        // Member texts are handed over unparsed: the reader deserializes its type straight from
        // them, and text that is not JSON is reported then (see `Members`).
        let mut doc = Members::with_capacity(fields.len());
        // Array members stored element by element: name → (count, cells).
        type Split = Vec<(String, Option<usize>, Vec<(usize, Vec<u8>)>)>;
        let mut split: Split = Vec::new();
        fn split_entry(split: &mut Split, name: &str) -> usize {
            match split.iter().position(|(n, _, _)| n == name) {
                Some(i) => i,
                None => {
                    split.push((name.to_string(), None, Vec::new()));
                    split.len() - 1
                }
            }
        }
        for (mut name, value) in fields {
            if name.starts_with(layout::MEMBER_PREFIX.as_bytes()) {
                name.drain(..layout::MEMBER_PREFIX.len());
                let member =
                    String::from_utf8(name).map_err(|_| bad("member name is not UTF-8".into()))?;
                doc.push(member, value);
                continue;
            }
            let name =
                String::from_utf8(name).map_err(|_| bad("field name is not UTF-8".into()))?;
            if let Some(cell) = name.strip_prefix(layout::CELL_PREFIX) {
                let (index, member) = cell
                    .split_once('.')
                    .and_then(|(i, m)| Some((i.parse::<usize>().ok()?, m)))
                    .ok_or_else(|| bad(format!("bad element field {name:?}")))?;
                let i = split_entry(&mut split, member);
                split[i].2.push((index, value));
                continue;
            }
            let text = String::from_utf8(value).map_err(|_| bad(format!("{name} is not UTF-8")))?;
            if let Some(member) = name.strip_prefix(layout::COUNT_PREFIX) {
                let n = text
                    .parse::<usize>()
                    .map_err(|_| bad(format!("bad element count {name:?}")))?;
                let i = split_entry(&mut split, member);
                split[i].1 = Some(n);
                continue;
            }
            match name.as_str() {
                layout::VERSION_FIELD => version = text.parse::<u64>().ok(),
                layout::EPOCH_FIELD => epoch = text.parse::<Epoch>().ok(),
                layout::TIME_FIELD => time = text.parse::<u64>().ok(),
                layout::DIGEST_FIELD => {
                    digest = Some(text.parse::<Digest>().map_err(&bad)?);
                }
                n if n.starts_with("__") => {} // reserved for future layouts
                n => return Err(bad(format!("foreign field {n:?}"))),
            }
        }
        for (name, count, mut cells) in split {
            let Some(count) = count else {
                return Err(bad(format!("elements of member {name:?} without a count")));
            };
            if doc.get(&name).is_some() {
                return Err(bad(format!(
                    "member {name:?} is stored both whole and element by element"
                )));
            }
            cells.sort_unstable_by_key(|(i, _)| *i);
            if cells.len() != count || cells.iter().enumerate().any(|(k, (i, _))| k != *i) {
                return Err(bad(format!(
                    "member {name:?} has {} element fields for a count of {count}",
                    cells.len()
                )));
            }
            let len = 1 + cells.iter().map(|(_, t)| t.len() + 1).sum::<usize>();
            let mut text = Vec::with_capacity(len);
            text.push(b'[');
            for (k, (_, t)) in cells.iter().enumerate() {
                if k > 0 {
                    text.push(b',');
                }
                text.extend_from_slice(t);
            }
            text.push(b']');
            doc.push(name, text);
        }
        match (version, epoch, time) {
            (Some(version), Some(epoch), Some(change_time)) => Ok(Some(Snapshot {
                stamp: Stamp { epoch, version },
                change_time,
                doc,
                digest,
            })),
            _ => Err(bad("missing or invalid __v, __e or __t".into())),
        }
    }

    async fn pubsub(&self) -> Result<redis::aio::PubSub> {
        // On a cluster, PUBLISH reaches every node: any reachable one will do.
        let mut last = None;
        for client in &self.inner.clients {
            match tokio::time::timeout(self.inner.response_timeout, client.get_async_pubsub()).await
            {
                Ok(Ok(p)) => return Ok(p),
                Ok(Err(e)) => last = Some(map_err(e)),
                Err(_) => last = Some(unavailable_timeout("pubsub connect")),
            }
        }
        Err(last.unwrap_or_else(|| unavailable_timeout("pubsub connect")))
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn load(&self, key: &Key) -> Result<Option<Snapshot>> {
        let doc_key = self.inner.layout.doc_key(key);
        let fields = self
            .read(|mut c| {
                let doc_key = &doc_key;
                async move {
                    redis::cmd("HGETALL")
                        .arg(doc_key)
                        .query_async::<Vec<(Vec<u8>, Vec<u8>)>>(&mut c)
                        .await
                        .map_err(map_err)
                }
            })
            .await?;
        Self::parse_snapshot(key, fields)
    }

    async fn commit(&self, commit: &Commit) -> Result<CommitOutcome> {
        if commit.kind == DeltaKind::Delete {
            return Err(Error::InvalidConfig(
                "commit kind must be patch or snapshot; use delete()".into(),
            ));
        }
        match self.run_commit(commit, "c").await? {
            Reply::Committed(delta) => Ok(CommitOutcome::Committed(delta)),
            Reply::Conflict(actual) => Ok(CommitOutcome::Conflict { actual }),
            Reply::Unknown(reason) => Err(Error::Backend {
                reason: format!("commit of {}: {reason}", commit.key),
            }),
        }
    }

    async fn resolve(&self, commit: &Commit) -> Result<Resolution> {
        if commit.kind == DeltaKind::Delete {
            return Err(Error::InvalidConfig(
                "commit kind must be patch or snapshot; use delete()".into(),
            ));
        }
        Ok(match self.run_commit(commit, "r").await? {
            Reply::Committed(delta) => Resolution::Committed(delta),
            Reply::Conflict(actual) => Resolution::NotApplied { actual },
            Reply::Unknown(reason) => Resolution::Unknown { reason },
        })
    }

    async fn changes_since(&self, key: &Key, after: Version) -> Result<Changes> {
        let l = &self.inner.layout;
        let (doc_key, log_key) = (l.doc_key(key), l.log_key(key));
        let reply: RValue = self
            .read(|mut c| {
                let mut inv = self.inner.changes.key(&doc_key);
                inv.key(&log_key).arg(after);
                async move { inv.invoke_async(&mut c).await.map_err(map_err) }
            })
            .await?;
        let bad = |r: &str| malformed("log", format!("{key}: {r}"));
        let RValue::Array(items) = reply else {
            return Err(bad("script replied a non-array"));
        };
        match (items.first().and_then(as_u64), items.as_slice()) {
            (Some(0), _) => Ok(Changes::Missing),
            (Some(2), [_, v, e, earliest]) => Ok(Changes::Trimmed {
                epoch: parse_stamp(e, v)?.epoch,
                earliest: as_u64(earliest).ok_or_else(|| bad("bad earliest"))?,
            }),
            (Some(1), [_, v, e, RValue::Array(entries)]) => {
                let stamp = parse_stamp(e, v)?;
                let mut deltas = Vec::with_capacity(entries.len());
                for entry in entries {
                    let d = Self::decode_entry(key, entry)?;
                    if d.epoch != stamp.epoch {
                        return Err(bad("log entry from another epoch"));
                    }
                    deltas.push(Arc::new(d));
                }
                Ok(Changes::Deltas {
                    epoch: stamp.epoch,
                    deltas,
                })
            }
            _ => Err(bad("script replied an unexpected shape")),
        }
    }

    async fn stamps(&self, keys: &[Key]) -> Result<Vec<Option<Stamp>>> {
        Ok(self
            .heads(keys)
            .await?
            .into_iter()
            .map(|h| h.map(|h| h.stamp))
            .collect())
    }

    async fn heads(&self, keys: &[Key]) -> Result<Vec<Option<Head>>> {
        type Fields = (Option<String>, Option<String>, Option<String>);
        let doc_keys: Vec<String> = keys.iter().map(|k| self.inner.layout.doc_key(k)).collect();
        let replies: Vec<Fields> = self
            .read(|c| {
                // Concurrent requests on a multiplexed connection are pipelined; on a cluster
                // each goes to its slot's node.
                let futs = doc_keys.iter().map(|k| {
                    let mut c = c.clone();
                    async move {
                        redis::cmd("HMGET")
                            .arg(k)
                            .arg(layout::VERSION_FIELD)
                            .arg(layout::EPOCH_FIELD)
                            .arg(layout::DIGEST_FIELD)
                            .query_async::<Fields>(&mut c)
                            .await
                            .map_err(map_err)
                    }
                });
                futures_util::future::try_join_all(futs)
            })
            .await?;
        // A hash without both fields looks missing to HMGET: tell a foreign layout apart.
        for (k, r) in doc_keys.iter().zip(&replies) {
            if (&r.0, &r.1) == (&None, &None)
                && self.query::<bool>(redis::cmd("EXISTS").arg(k)).await?
            {
                return Err(malformed("document", format!("{k} lacks __v and __e")));
            }
        }
        keys.iter()
            .zip(replies)
            .map(|(key, r)| match r {
                (Some(v), Some(e), d) => Ok(Some(Head {
                    stamp: Stamp {
                        version: v
                            .parse()
                            .map_err(|_| malformed("document", format!("{key}: bad __v")))?,
                        epoch: e
                            .parse()
                            .map_err(|e: String| malformed("document", format!("{key}: {e}")))?,
                    },
                    digest: d
                        .map(|d| d.parse())
                        .transpose()
                        .map_err(|e: String| malformed("document", format!("{key}: {e}")))?,
                })),
                (None, None, _) => Ok(None),
                _ => Err(malformed("document", format!("{key}: lacks __v or __e"))),
            })
            .collect()
    }

    async fn delete_with_id(&self, key: &Key, origin: &str, id: CommitId) -> Result<bool> {
        let l = &self.inner.layout;
        let mut inv = self.inner.delete.key(l.doc_key(key));
        inv.key(l.log_key(key))
            .key(l.fence_key(key))
            .arg(l.channel(&key.section_id()))
            .arg(json(key))
            .arg(json(origin))
            .arg(id.to_string())
            .arg(self.fence_ms().to_string());
        let mut conn = self.inner.conn.clone();
        let n: u64 = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| write_err(e, key, id))?;
        Ok(n > 0)
    }

    async fn expire(&self, key: &Key, ttl: Duration) -> Result<bool> {
        let l = &self.inner.layout;
        let (doc_key, log_key) = (l.doc_key(key), l.log_key(key));
        let ms = ttl.as_millis().max(1) as u64;
        let n: u64 = self
            .read(|mut c| {
                let mut inv = self.inner.expire.key(&doc_key);
                inv.key(&log_key).arg(ms);
                async move { inv.invoke_async(&mut c).await.map_err(map_err) }
            })
            .await?;
        Ok(n == 1)
    }

    async fn ttl(&self, key: &Key) -> Result<Option<Duration>> {
        let doc_key = self.inner.layout.doc_key(key);
        let ms: i64 = self
            .read(|mut c| {
                let doc_key = &doc_key;
                async move {
                    redis::cmd("PTTL")
                        .arg(doc_key)
                        .query_async(&mut c)
                        .await
                        .map_err(map_err)
                }
            })
            .await?;
        Ok((ms >= 0).then(|| Duration::from_millis(ms as u64)))
    }

    async fn subscribe(&self, section: &SectionId) -> Result<Subscription> {
        let mut pubsub = self.pubsub().await?;
        let channel = self.inner.layout.channel(section);
        tokio::time::timeout(self.inner.response_timeout, pubsub.subscribe(&channel))
            .await
            .map_err(|_| unavailable_timeout("subscribe"))?
            .map_err(map_err)?;
        let (tx, rx) = mpsc::channel(self.inner.subscription_capacity);
        let store = self.clone();
        let section = section.clone();
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            let stats = &store.inner.stats;
            let mut missed = 0u64;
            loop {
                let msg = tokio::select! {
                    _ = tx.closed() => return,
                    m = messages.next() => m,
                };
                let Some(msg) = msg else {
                    stats.subscriptions_lost.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%section, "redis subscription lost");
                    return;
                };
                let item = match Delta::decode(msg.get_payload_bytes()) {
                    Ok(d) if d.key.in_section(&section) => {
                        Ok(SubscriptionEvent::Delta(Arc::new(d)))
                    }
                    Ok(d) => Err(malformed(
                        "delta",
                        format!("{} published on the channel of {section}", d.key),
                    )),
                    Err(e) => Err(e),
                };
                if item.is_err() {
                    stats.malformed_messages.fetch_add(1, Ordering::Relaxed);
                }
                if missed > 0 {
                    match tx.try_send(Ok(SubscriptionEvent::Lagged { missed })) {
                        Ok(()) => missed = 0,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            missed += 1;
                            stats.lagged.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                match tx.try_send(item) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        missed += 1;
                        stats.lagged.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        });
        Ok(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_without_leaking_redis_types() {
        let io = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert!(matches!(map_err(io), Error::Unavailable { .. }));
        let client = RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad"));
        assert!(matches!(map_err(client), Error::Backend { .. }));
        let auth = RedisError::from((redis::ErrorKind::AuthenticationFailed, "wrong"));
        assert!(matches!(map_err(auth), Error::AccessDenied { .. }));
        let script = RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "denied",
            "The user executing the script can't run this command or subcommand".to_string(),
        ));
        assert!(matches!(map_err(script), Error::AccessDenied { .. }));
    }

    #[test]
    fn snapshots_parse_members_and_reject_foreign_fields() {
        let key = Key::new("p", "s", "x").unwrap();
        let f = |n: &str, v: &str| (n.as_bytes().to_vec(), v.as_bytes().to_vec());
        let good = vec![
            f("__v", "3"),
            f("__e", "00000000000000aa"),
            f("__t", "1700000000000"),
            f(".a", "[1,2]"),
            f(".__v", "\"member\""),
        ];
        let snap = RedisStore::parse_snapshot(&key, good.clone())
            .unwrap()
            .unwrap();
        assert_eq!(snap.stamp.version, 3);
        assert_eq!(snap.doc.get("a"), Some(&b"[1,2]"[..]));
        assert_eq!(snap.doc.value("__v").unwrap(), Some("member".into()));
        assert!(RedisStore::parse_snapshot(&key, Vec::new())
            .unwrap()
            .is_none());
        // Member texts are not parsed here: a broken one is found when it is read.
        let mut fields = good.clone();
        fields.push(f(".b", "{"));
        let snap = RedisStore::parse_snapshot(&key, fields).unwrap().unwrap();
        assert_eq!(snap.doc.to_map().unwrap_err().member.as_deref(), Some("b"));
        for bad in [f("plain", "1"), f("__v", "x")] {
            let mut fields = good.clone();
            fields.push(bad);
            assert!(matches!(
                RedisStore::parse_snapshot(&key, fields),
                Err(Error::Malformed { .. })
            ));
        }
    }
}
