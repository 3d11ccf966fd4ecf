//! `NatsBus`: the Electric message bus ([`electric_core::bus`]) on NATS JetStream.
//!
//! ```no_run
//! # async fn demo() -> Result<(), electric_core::bus::BusError> {
//! use electric_core::bus::{BusClient, InitialPosition, ProducerOptions, SubscribeOptions};
//! use electric_nats::NatsBus;
//! use futures_util::StreamExt;
//!
//! let bus = BusClient::new(NatsBus::connect("nats://127.0.0.1:4222").await?);
//! bus.producer("trades", ProducerOptions::default()).await?;
//! let receipt = bus.publish_text("trades", "hello").await?;
//! let mut sub = bus
//!     .subscribe(SubscribeOptions::new("trades", "positions").initial_position(InitialPosition::Earliest))
//!     .await?;
//! let delivery = sub.next().await.unwrap()?;
//! assert_eq!(delivery.id, receipt.id);
//! delivery.ack().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Mapping
//!
//! | bus | JetStream |
//! |---|---|
//! | topic `t` | stream `<prefix>t` (default prefix `electric-`) on subject `<prefix>t`, created (or checked, with [`NatsBusBuilder::create_topics`] off) when first used; file storage, limits retention (7 days, 1 GiB, 10 M messages by default), discard old, a 2-minute duplicate window |
//! | subscription `s` | durable pull consumer `s` on the stream, explicit acks, `ack_wait` = [`SubscribeOptions::ack_timeout`], `max_ack_pending` = the prefetch, deliver all (earliest) or new (latest); its kind is recorded in the consumer's description and a subscribe with another kind is [`BusError::SubscriptionMismatch`] |
//! | exclusive / failover | a lease in the KV bucket `<prefix>leases` (created on first use; entries expire after [`NatsBusBuilder::lease_ttl`] unless renewed): an exclusive consumer takes it or gets [`BusError::SubscriptionBusy`]; a failover consumer waits for it. JetStream 2.9 has no exclusive pull consumers of its own. A consumer that loses its lease (it could not renew in time) ends its stream with an error |
//! | shared | every consumer pulls from the one durable consumer |
//! | message id, key, headers | `Nats-Msg-Id` (a random one when the message has none, so publish retries are de-duplicated), header `electric-key`, NATS headers |
//! | ack / nack(delay) / term | `+ACK` / `-NAK` with delay / `+TERM` |
//! | message id, redelivery count | stream sequence, the delivery count in the ack subject minus one |
//!
//! # Publishing
//!
//! A publish waits for JetStream's acknowledgement. When none comes within
//! [`NatsBusBuilder::ack_timeout`] (a server restart, a lost connection) it is sent again with
//! the same `Nats-Msg-Id` — JetStream stores it once — until [`NatsBusBuilder::publish_deadline`];
//! then it fails with [`BusError::Indeterminate`]. The connection itself reconnects without end
//! (async-nats); a publish or subscribe made while it is down waits for it up to those deadlines.
//!
//! # Consumers that go away
//!
//! A pull request JetStream 2.9 received from a consumer stays on the server until it expires
//! (30 s), even after the consumer closed. Messages the server hands to such a request, and
//! messages the client had buffered for the closed consumer, are redelivered once
//! [`SubscribeOptions::ack_timeout`] passes (the reader negatively acknowledges what it still
//! holds when it closes, so those come back at once). A new consumer of the subscription may
//! therefore see a few messages later than their neighbours: set the ack timeout to what a
//! handover may cost.
//!
//! # Start
//!
//! [`NatsBus::connect`] retries an unreachable server with jittered exponential backoff until
//! [`NatsBusBuilder::connect_deadline`], then fails with [`BusError::Unavailable`]; it also
//! checks that JetStream is enabled.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod lease;

pub use async_nats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::Acker as NatsAcker;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::AckKind;
use async_nats::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;
use electric_core::bus::{
    headers, AckHandle, Acker, Bus, BusError, BusResult, Delivery, InitialPosition, Message,
    MessageId, OutMessage, ProducerBackend, ProducerOptions, PublishFuture, RawSubscription,
    Receipt, SubscribeOptions, SubscriptionKind,
};
use futures_util::{FutureExt, StreamExt};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::lease::Lease;

/// Bytes of the server's `max_payload` kept for headers and codec overhead; the rest is the
/// bus's [`Bus::max_message_bytes`].
pub const HEADER_RESERVE: usize = 16 * 1024;

/// The header carrying [`OutMessage::key`].
pub const KEY_HEADER: &str = "electric-key";

const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// How long an exclusive subscribe waits for a lease that is held: a consumer closed a moment
/// ago releases its lease in the background.
const EXCLUSIVE_GRACE: Duration = Duration::from_secs(2);

/// Builder of a [`NatsBus`]; [`NatsBus::builder`].
#[derive(Clone, Debug)]
pub struct NatsBusBuilder {
    url: String,
    prefix: String,
    create_topics: bool,
    connect_deadline: Duration,
    ack_timeout: Duration,
    publish_deadline: Duration,
    max_age: Duration,
    max_bytes: i64,
    max_messages: i64,
    duplicate_window: Duration,
    lease_ttl: Duration,
    name: Option<String>,
}

impl NatsBusBuilder {
    /// Prefix of stream, subject and bucket names (default `electric-`).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Whether a topic's stream is created when missing (default true). Off, a missing stream
    /// is [`BusError::UnknownTopic`].
    #[must_use]
    pub fn create_topics(mut self, yes: bool) -> Self {
        self.create_topics = yes;
        self
    }

    /// How long [`NatsBus::connect`] keeps retrying an unreachable server (default 30 s).
    #[must_use]
    pub fn connect_deadline(mut self, d: Duration) -> Self {
        self.connect_deadline = d;
        self
    }

    /// How long one publish attempt, and one JetStream API request, waits for the server
    /// (default 5 s).
    #[must_use]
    pub fn ack_timeout(mut self, d: Duration) -> Self {
        self.ack_timeout = d;
        self
    }

    /// How long a publish keeps retrying before [`BusError::Indeterminate`] (default 30 s; at
    /// most the duplicate window, or a late retry could be stored twice).
    #[must_use]
    pub fn publish_deadline(mut self, d: Duration) -> Self {
        self.publish_deadline = d;
        self
    }

    /// Retention of created streams: the oldest messages go past this age (default 7 days).
    #[must_use]
    pub fn max_age(mut self, d: Duration) -> Self {
        self.max_age = d;
        self
    }

    /// Retention of created streams: the oldest messages go past this size (default 1 GiB).
    #[must_use]
    pub fn max_bytes(mut self, n: i64) -> Self {
        self.max_bytes = n;
        self
    }

    /// Retention of created streams: the oldest messages go past this count (default 10 M).
    #[must_use]
    pub fn max_messages(mut self, n: i64) -> Self {
        self.max_messages = n;
        self
    }

    /// De-duplication window of created streams (default 2 minutes).
    #[must_use]
    pub fn duplicate_window(mut self, d: Duration) -> Self {
        self.duplicate_window = d;
        self
    }

    /// How long an exclusive or failover lease lasts unless renewed (default 10 s; renewed
    /// every third of it). A crashed holder's subscription is free again after this.
    #[must_use]
    pub fn lease_ttl(mut self, d: Duration) -> Self {
        self.lease_ttl = d;
        self
    }

    /// The connection's name, as the server shows it.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Connects, retrying until the connect deadline, and checks JetStream.
    ///
    /// # Errors
    ///
    /// [`BusError::InvalidUrl`], [`BusError::InvalidConfig`], [`BusError::Unavailable`] when
    /// the server stayed unreachable or JetStream is not enabled.
    pub async fn connect(self) -> BusResult<NatsBus> {
        let invalid = |reason: &str| BusError::InvalidConfig(reason.to_owned());
        if self.publish_deadline > self.duplicate_window {
            return Err(invalid(
                "publish_deadline must not exceed the duplicate window",
            ));
        }
        if self.ack_timeout.is_zero() || self.lease_ttl < Duration::from_secs(1) {
            return Err(invalid(
                "ack_timeout must be positive and lease_ttl at least 1 s",
            ));
        }
        if !self
            .prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                "prefix may hold only ASCII letters, digits, - and _",
            ));
        }
        let addr = parse_url(&self.url)?;
        let deadline = tokio::time::Instant::now() + self.connect_deadline;
        let mut delay = Duration::from_millis(100);
        let client = loop {
            let mut options = async_nats::ConnectOptions::new()
                .connection_timeout(self.ack_timeout)
                .request_timeout(Some(self.ack_timeout));
            if let Some(name) = &self.name {
                options = options.name(name);
            }
            match options.connect(addr.as_str()).await {
                Ok(c) => break c,
                Err(e) => {
                    let now = tokio::time::Instant::now();
                    if now + delay > deadline {
                        return Err(BusError::Unavailable {
                            reason: format!(
                                "cannot connect to {} within {:?}: {e}",
                                self.url, self.connect_deadline
                            ),
                        });
                    }
                    tracing::warn!(url = %self.url, error = %e, retry_in = ?delay, "nats connect failed");
                    let jittered = delay.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
                    tokio::time::sleep(jittered).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(self.ack_timeout)
            .max_ack_inflight(65_536)
            .backpressure_on_inflight(true)
            .build(client.clone());
        // `Context::query_account` cannot parse a 2.9 server's answer; ask directly.
        check_jetstream(&client, &self.url).await?;
        let max_payload = client.server_info().max_payload;
        if max_payload <= HEADER_RESERVE {
            return Err(invalid("server max_payload is too small"));
        }
        Ok(NatsBus {
            inner: Arc::new(Inner {
                max_message_bytes: max_payload - HEADER_RESERVE,
                client,
                js,
                config: self,
                streams: Mutex::new(HashMap::new()),
                closed: CancellationToken::new(),
                leases: tokio::sync::OnceCell::new(),
            }),
        })
    }
}

/// Fails unless the server answers JetStream's account-info request without an error.
async fn check_jetstream(client: &async_nats::Client, url: &str) -> BusResult<()> {
    let unavailable = |why: String| BusError::Unavailable {
        reason: format!("jetstream is not available on {url}: {why}"),
    };
    let reply = client
        .request("$JS.API.INFO", Bytes::new())
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let info: serde_json::Value =
        serde_json::from_slice(&reply.payload).map_err(|e| unavailable(e.to_string()))?;
    match info.get("error") {
        Some(error) => Err(unavailable(error.to_string())),
        None => Ok(()),
    }
}

/// `nats://host:port` (or `host:port`) → the address async-nats takes. Several URLs may be
/// comma-separated.
fn parse_url(url: &str) -> BusResult<String> {
    let bad = |reason: &str| BusError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    if url.trim().is_empty() {
        return Err(bad("is empty"));
    }
    for part in url.split(',') {
        let part = part.trim();
        let rest = match part.split_once("://") {
            Some(("nats" | "tls" | "ws" | "wss", rest)) => rest,
            Some((scheme, _)) => {
                return Err(bad(&format!("scheme {scheme:?} is not nats")));
            }
            None => part,
        };
        if rest.is_empty() || rest.starts_with(':') {
            return Err(bad("names no host"));
        }
        if let Some((_, port)) = rest.rsplit_once(':') {
            if port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()) {
                return Err(bad("has a port that is not a number"));
            }
        }
    }
    Ok(url.to_owned())
}

/// The message bus on NATS JetStream. Cheap to clone (one connection).
#[derive(Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    config: NatsBusBuilder,
    max_message_bytes: usize,
    /// Streams known to exist, by topic.
    streams: Mutex<HashMap<String, String>>,
    closed: CancellationToken,
    leases: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
}

impl NatsBus {
    /// A builder for `url` (`nats://host:4222`, comma-separated for a cluster).
    pub fn builder(url: impl Into<String>) -> NatsBusBuilder {
        NatsBusBuilder {
            url: url.into(),
            prefix: "electric-".into(),
            create_topics: true,
            connect_deadline: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(5),
            publish_deadline: Duration::from_secs(30),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 1 << 30,
            max_messages: 10_000_000,
            duplicate_window: Duration::from_secs(120),
            lease_ttl: Duration::from_secs(10),
            name: None,
        }
    }

    /// Connects with default settings.
    ///
    /// # Errors
    ///
    /// As [`NatsBusBuilder::connect`].
    pub async fn connect(url: impl Into<String>) -> BusResult<NatsBus> {
        Self::builder(url).connect().await
    }

    /// The JetStream stream name of `topic`.
    pub fn stream_name(&self, topic: &str) -> String {
        format!("{}{topic}", self.inner.config.prefix)
    }

    /// The underlying JetStream context (for what the bus does not cover).
    pub fn jetstream(&self) -> &async_nats::jetstream::Context {
        &self.inner.js
    }

    /// Deletes `topic`'s stream with its messages and subscriptions. Returns whether it existed.
    ///
    /// # Errors
    ///
    /// [`BusError::Unavailable`] when the server did not answer.
    pub async fn delete_topic(&self, topic: &str) -> BusResult<bool> {
        let name = self.stream_name(topic);
        self.inner
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(topic);
        match self.inner.js.delete_stream(&name).await {
            Ok(_) => Ok(true),
            Err(e) if e.to_string().contains("not found") => Ok(false),
            Err(e) => Err(unavailable("delete stream", e)),
        }
    }

    fn validate_topic(topic: &str) -> BusResult<()> {
        electric_core::bus::validate_name("topic", topic)?;
        if !topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(BusError::InvalidName {
                what: "topic",
                name: topic.to_owned(),
                reason: "may hold only ASCII letters, digits, - and _ on NATS",
            });
        }
        Ok(())
    }

    /// The stream of `topic`, created (or checked) once per topic.
    async fn ensure_stream(&self, topic: &str) -> BusResult<String> {
        Self::validate_topic(topic)?;
        if let Some(s) = self
            .inner
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
        {
            return Ok(s.clone());
        }
        let name = self.stream_name(topic);
        let c = &self.inner.config;
        let result = if c.create_topics {
            self.inner
                .js
                .get_or_create_stream(stream::Config {
                    name: name.clone(),
                    subjects: vec![name.clone()],
                    retention: RetentionPolicy::Limits,
                    discard: DiscardPolicy::Old,
                    storage: StorageType::File,
                    max_age: c.max_age,
                    max_bytes: c.max_bytes,
                    max_messages: c.max_messages,
                    max_message_size: -1,
                    duplicate_window: c.duplicate_window,
                    description: Some(format!("electric bus topic {topic}")),
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|e| unavailable("create stream", e))
        } else {
            match self.inner.js.get_stream(&name).await {
                Ok(_) => Ok(()),
                Err(e) if e.to_string().contains("not found") => Err(BusError::UnknownTopic {
                    topic: topic.to_owned(),
                }),
                Err(e) => Err(unavailable("look up stream", e)),
            }
        };
        result?;
        self.inner
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic.to_owned(), name.clone());
        Ok(name)
    }

    async fn leases(&self) -> BusResult<&async_nats::jetstream::kv::Store> {
        let c = &self.inner.config;
        self.inner
            .leases
            .get_or_try_init(|| async {
                // `create_key_value` cannot parse a 2.9 server's answer; create the bucket's
                // stream as the key-value convention (ADR-8) lays it out, then open it.
                let bucket = format!("{}leases", c.prefix);
                self.inner
                    .js
                    .get_or_create_stream(stream::Config {
                        name: format!("KV_{bucket}"),
                        subjects: vec![format!("$KV.{bucket}.>")],
                        description: Some("electric bus subscription leases".into()),
                        max_messages_per_subject: 1,
                        max_age: c.lease_ttl,
                        storage: StorageType::File,
                        allow_rollup: true,
                        deny_delete: true,
                        allow_direct: true,
                        discard: DiscardPolicy::New,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| unavailable("create lease bucket", e))?;
                self.inner
                    .js
                    .get_key_value(&bucket)
                    .await
                    .map_err(|e| unavailable("open lease bucket", e))
            })
            .await
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable {
        reason: format!("{what}: {e}"),
    }
}

fn kind_description(kind: SubscriptionKind) -> String {
    format!("electric subscription kind={}", kind.name())
}

#[async_trait]
impl Bus for NatsBus {
    fn backend(&self) -> &'static str {
        "nats"
    }

    fn max_message_bytes(&self) -> usize {
        self.inner.max_message_bytes
    }

    async fn open_producer(
        &self,
        topic: &str,
        _options: &ProducerOptions,
    ) -> BusResult<Arc<dyn ProducerBackend>> {
        let subject = self.ensure_stream(topic).await?;
        Ok(Arc::new(NatsProducer {
            bus: self.clone(),
            topic: topic.to_owned(),
            subject,
        }))
    }

    async fn subscribe(&self, options: &SubscribeOptions) -> BusResult<RawSubscription> {
        if self.inner.closed.is_cancelled() {
            return Err(BusError::Closed);
        }
        let stream_name = self.ensure_stream(&options.topic).await?;
        let name = &options.subscription;
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(BusError::InvalidName {
                what: "subscription",
                name: name.clone(),
                reason: "may hold only ASCII letters, digits, - and _ on NATS",
            });
        }
        let stream = self
            .inner
            .js
            .get_stream_no_info(&stream_name)
            .await
            .map_err(|e| unavailable("look up stream", e))?;
        let prefetch = i64::try_from(options.prefetch).unwrap_or(i64::MAX);
        let config = pull::Config {
            durable_name: Some(name.clone()),
            description: Some(kind_description(options.kind)),
            ack_policy: AckPolicy::Explicit,
            ack_wait: options.ack_timeout,
            deliver_policy: match options.initial_position {
                InitialPosition::Earliest => DeliverPolicy::All,
                InitialPosition::Latest => DeliverPolicy::New,
            },
            max_ack_pending: match options.kind {
                // One client reads: its prefetch bounds what the server hands out.
                SubscriptionKind::Exclusive | SubscriptionKind::Failover => prefetch,
                // Many clients share the consumer's limit.
                SubscriptionKind::Shared => prefetch.saturating_mul(64),
            },
            ..Default::default()
        };
        let consumer = stream
            .get_or_create_consumer(name, config)
            .await
            .map_err(|e| unavailable("create consumer", e))?;
        let info = consumer.cached_info();
        let want = kind_description(options.kind);
        if info.config.description.as_deref() != Some(want.as_str()) {
            return Err(BusError::SubscriptionMismatch {
                subscription: name.clone(),
                reason: format!(
                    "it exists as {:?}, asked for {want:?}",
                    info.config.description.as_deref().unwrap_or("")
                ),
            });
        }
        let cancel = self.inner.closed.child_token();
        let lease = match options.kind {
            SubscriptionKind::Shared => None,
            kind => {
                let store = self.leases().await?.clone();
                let key = format!("{stream_name}.{name}");
                let lease = Lease::new(store, key, self.inner.config.lease_ttl, cancel.clone());
                if kind == SubscriptionKind::Exclusive
                    && !lease.try_acquire_within(EXCLUSIVE_GRACE).await?
                {
                    return Err(BusError::SubscriptionBusy {
                        topic: options.topic.clone(),
                        subscription: name.clone(),
                    });
                }
                Some(lease)
            }
        };
        let (tx, rx) = mpsc::channel(options.prefetch);
        let buffered = Arc::new(AtomicUsize::new(0));
        let reader = Reader {
            consumer,
            topic: options.topic.clone(),
            batch: options.prefetch,
            tx,
            buffered: buffered.clone(),
            cancel: cancel.clone(),
        };
        tokio::spawn(reader.run(lease));
        let gauge = buffered.clone();
        let guard = cancel.drop_guard();
        let stream = tokio_stream_from(rx)
            .map(move |item| {
                let _keep = &guard;
                gauge.fetch_sub(1, Ordering::Relaxed);
                item
            })
            .boxed();
        Ok(RawSubscription { stream, buffered })
    }

    async fn close(&self) -> BusResult<()> {
        self.inner.closed.cancel();
        self.inner
            .client
            .flush()
            .await
            .map_err(|e| unavailable("flush", e))
    }
}

fn tokio_stream_from<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

/// Pulls from the durable consumer into the subscription's bounded channel.
struct Reader {
    consumer: async_nats::jetstream::consumer::Consumer<pull::Config>,
    topic: String,
    batch: usize,
    tx: mpsc::Sender<BusResult<Delivery>>,
    buffered: Arc<AtomicUsize>,
    cancel: CancellationToken,
}

impl Reader {
    async fn run(self, lease: Option<Lease>) {
        let _stop = self.cancel.clone().drop_guard();
        if let Some(lease) = &lease {
            // Failover: stand by until the lease is ours (exclusive already holds it).
            if !lease.acquire().await {
                return;
            }
        }
        let lost = lease.as_ref().map(Lease::lost);
        let mut delay = Duration::from_millis(100);
        loop {
            let messages = tokio::select! {
                () = self.cancel.cancelled() => return,
                m = self.consumer.stream().max_messages_per_batch(self.batch).heartbeat(Duration::from_secs(5)).messages() => m,
            };
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "nats pull failed; retrying");
                    tokio::select! {
                        () = self.cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            delay = Duration::from_millis(100);
            let stop = self.pump(&mut messages, &lost).await;
            // Messages the client already received for this reader go back at once; left
            // alone they would wait out the ack timeout.
            release(&mut messages).await;
            if stop {
                return;
            }
        }
    }

    /// Moves deliveries from `messages` to the subscription until it must be re-created
    /// (`false`) or the reader must stop (`true`).
    async fn pump(&self, messages: &mut pull::Stream, lost: &Option<CancellationToken>) -> bool {
        loop {
            let next = tokio::select! {
                () = self.cancel.cancelled() => return true,
                () = wait_lost(lost) => {
                    self.buffered.fetch_add(1, Ordering::Relaxed);
                    let _ = self.tx.send(Err(BusError::SubscriptionBusy {
                        topic: self.topic.clone(),
                        subscription: self.consumer.cached_info().name.clone(),
                    })).await;
                    return true;
                }
                n = messages.next() => n,
            };
            let item = match next {
                None => return false,
                Some(Ok(m)) => Ok(self.delivery(m)),
                Some(Err(e)) => {
                    use async_nats::jetstream::consumer::pull::MessagesErrorKind as K;
                    match e.kind() {
                        // Transient: the stream recovers (or is re-created).
                        K::MissingHeartbeat | K::Pull | K::Other => {
                            tracing::debug!(topic = %self.topic, error = %e, "nats pull interrupted");
                            continue;
                        }
                        _ => {
                            tracing::warn!(topic = %self.topic, error = %e, "nats consumer stream failed; re-creating");
                            return false;
                        }
                    }
                }
            };
            self.buffered.fetch_add(1, Ordering::Relaxed);
            // Fails only when the subscription was dropped; the delivery, dropped with the
            // error, asks for its redelivery.
            if self.tx.send(item).await.is_err() {
                self.buffered.fetch_sub(1, Ordering::Relaxed);
                return true;
            }
        }
    }

    fn delivery(&self, m: async_nats::jetstream::Message) -> Delivery {
        let (seq, delivered) = m
            .info()
            .map(|i| (i.stream_sequence, i.delivered))
            .unwrap_or((0, 1));
        let (msg, acker) = m.split();
        let mut message = Message::new(self.topic.clone(), MessageId::Sequence(seq), msg.payload);
        message.redelivery_count = u32::try_from(delivered.saturating_sub(1)).unwrap_or(u32::MAX);
        if let Some(h) = msg.headers {
            for (name, values) in h.iter() {
                let Some(value) = values.first() else {
                    continue;
                };
                let (name, value) = (name.as_ref(), value.as_str());
                match name {
                    NATS_MSG_ID => message.headers.insert(headers::MSG_ID, value),
                    KEY_HEADER => message.key = Some(value.to_owned()),
                    n if n.starts_with("Nats-") => {}
                    n => message.headers.insert(n, value),
                }
            }
        }
        Delivery::new(message, Acker::new(Box::new(NatsAck(acker))))
    }
}

/// Negatively acknowledges what `messages` already holds, without waiting for more (bounded:
/// at most a batch is buffered, and the naks get one second).
async fn release(messages: &mut pull::Stream) {
    let mut naks = Vec::new();
    while let Some(Some(Ok(m))) = messages.next().now_or_never() {
        naks.push(async move { m.ack_with(AckKind::Nak(None)).await });
    }
    if !naks.is_empty() {
        let _ = tokio::time::timeout(Duration::from_secs(1), futures_util::future::join_all(naks))
            .await;
    }
}

async fn wait_lost(lost: &Option<CancellationToken>) {
    match lost {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

struct NatsAck(NatsAcker);

fn ack_error(e: impl std::fmt::Display) -> BusError {
    unavailable("acknowledge", e)
}

#[async_trait]
impl AckHandle for NatsAck {
    async fn ack(self: Box<Self>) -> BusResult<()> {
        self.0.ack().await.map_err(ack_error)
    }

    async fn nack(self: Box<Self>, delay: Option<Duration>) -> BusResult<()> {
        self.0
            .ack_with(AckKind::Nak(delay))
            .await
            .map_err(ack_error)
    }

    async fn term(self: Box<Self>) -> BusResult<()> {
        self.0.ack_with(AckKind::Term).await.map_err(ack_error)
    }

    fn dropped(self: Box<Self>) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = self.0.ack_with(AckKind::Nak(None)).await;
            });
        }
    }
}

struct NatsProducer {
    bus: NatsBus,
    topic: String,
    subject: String,
}

impl NatsProducer {
    fn build(&self, message: &OutMessage, id: &str) -> PublishMessage {
        let mut h = HeaderMap::new();
        for (name, value) in message.headers.iter() {
            if name != headers::MSG_ID {
                h.insert(name, value);
            }
        }
        if let Some(key) = &message.key {
            h.insert(KEY_HEADER, key.as_str());
        }
        PublishMessage::build()
            .payload(message.payload.clone())
            .headers(h)
            .message_id(id)
    }
}

fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[async_trait]
impl ProducerBackend for NatsProducer {
    async fn send(&self, message: OutMessage) -> BusResult<PublishFuture> {
        if self.bus.inner.closed.is_cancelled() {
            return Err(BusError::Closed);
        }
        let id = message.id.clone().unwrap_or_else(random_id);
        let js = self.bus.inner.js.clone();
        let first = js
            .send_publish(self.subject.clone(), self.build(&message, &id))
            .await
            .map_err(|e| match e.kind() {
                PublishErrorKind::MaxPayloadExceeded => BusError::TooLarge {
                    size: message.payload.len(),
                    limit: self.bus.inner.max_message_bytes,
                },
                _ => unavailable("publish", e),
            })?;
        let deadline = tokio::time::Instant::now() + self.bus.inner.config.publish_deadline;
        let (topic, subject) = (self.topic.clone(), self.subject.clone());
        let publish = self.build(&message, &id);
        Ok(async move {
            let mut pending = Some(first);
            loop {
                let attempt = match pending.take() {
                    Some(f) => f.await,
                    None => match js.send_publish(subject.clone(), publish.clone()).await {
                        Ok(f) => f.await,
                        Err(e) => Err(e),
                    },
                };
                match attempt {
                    Ok(ack) => {
                        return Ok(Receipt::with_duplicate(
                            MessageId::Sequence(ack.sequence),
                            ack.duplicate,
                        ))
                    }
                    Err(e) => {
                        let retry = matches!(
                            e.kind(),
                            PublishErrorKind::TimedOut
                                | PublishErrorKind::BrokenPipe
                                | PublishErrorKind::StreamNotFound
                                | PublishErrorKind::Other
                        );
                        // `StreamNotFound` is "no responders": during a restart the stream is
                        // there but not yet loaded. `Other` covers a connection lost mid-send.
                        if !retry {
                            return Err(BusError::Rejected {
                                reason: format!("publish to {topic}: {e}"),
                            });
                        }
                        if tokio::time::Instant::now() >= deadline {
                            return Err(BusError::Indeterminate {
                                topic,
                                reason: format!("no acknowledgement before the deadline: {e}"),
                            });
                        }
                        tracing::debug!(%topic, error = %e, "nats publish unacknowledged; retrying with the same id");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        .boxed())
    }

    async fn close(&self) -> BusResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(parse_url("nats://127.0.0.1:4222").is_ok());
        assert!(parse_url("127.0.0.1:4222").is_ok());
        assert!(parse_url("nats://a:1,nats://b:2").is_ok());
        for bad in [
            "",
            "pulsar://x:6650",
            "nats://",
            "nats://:4222",
            "memory:",
            "h:x",
        ] {
            assert!(
                matches!(parse_url(bad), Err(BusError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn topics_with_subject_tokens_are_refused() {
        for bad in ["a.b", "a*", "a>", "a b", ""] {
            assert!(NatsBus::validate_topic(bad).is_err(), "{bad}");
        }
        assert!(NatsBus::validate_topic("orders-EU_1").is_ok());
    }
}
