//! `PulsarBus`: the Electric message bus ([`electric_core::bus`]) on Apache Pulsar, through the
//! `pulsar` crate.
//!
//! ```no_run
//! # async fn demo() -> Result<(), electric_core::bus::BusError> {
//! use electric_core::bus::{BusClient, Codec, InitialPosition, ProducerOptions, SubscribeOptions};
//! use electric_pulsar::PulsarBus;
//! use futures_util::StreamExt;
//!
//! let bus = BusClient::new(PulsarBus::connect("pulsar://127.0.0.1:6650").await?);
//! bus.producer("trades", ProducerOptions::default().codec(Codec::Zstd)).await?;
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
//! | bus | Pulsar |
//! |---|---|
//! | topic `t` | `persistent://<tenant>/<namespace>/t` (default `public/default`); a full `persistent://…` or `non-persistent://…` name is used as it is |
//! | codec | Pulsar's own compression (the message metadata names it, so every Pulsar client decodes it): `LZ4`, `ZLIB`, `ZSTD`, `SNAPPY` (raw blocks, as the Java and C++ clients write them; see `vendor/pulsar/ELECTRIC-PATCHES.md`) |
//! | subscription kinds, initial position | `Exclusive`, `Shared`, `Failover`; `Earliest`, `Latest` — Pulsar's own |
//! | prefetch | the consumer's receiver queue, and the bound of the client-side queue in front of the reader |
//! | ack timeout | the client's unacked-message redelivery delay |
//! | key, headers | partition key, message properties |
//! | ack / nack(delay) / term | ack / redeliver after the delay / ack (Pulsar has no "terminate") |
//! | redelivery count | the broker's (shared subscriptions), or at least the nacks this consumer sent (the broker counts none on exclusive and failover subscriptions) |
//! | message id | ledger, entry, partition, batch index |
//!
//! A Pulsar consumer is acked through `&mut` in the `pulsar` crate, so each subscription runs
//! in its own task that owns the consumer; deliveries settle over a bounded channel to it.
//! A producer is shared behind an async mutex held only while a message is handed over.
//! Publishes wait when the connection's outbound queue is full (`block_queue_if_full`) rather
//! than failing with the crate's `SlowDown`. The broker de-duplicates only when
//! `brokerDeduplicationEnabled` is on; this bus does not rely on it (a publish whose receipt
//! was lost is [`BusError::Indeterminate`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use electric_core::bus::{
    headers, AckHandle, Acker, Bus, BusError, BusResult, Codec, Delivery, InitialPosition, Message,
    MessageId, OutMessage, ProducerBackend, ProducerOptions, PublishFuture, RawSubscription,
    Receipt, SubscribeOptions, SubscriptionKind,
};
use futures_util::{FutureExt, StreamExt};
use pulsar::compression::{
    Compression, CompressionLz4, CompressionSnappy, CompressionZlib, CompressionZstd,
};
use pulsar::consumer::{ConsumerOptions, InitialPosition as PulsarPosition};
use pulsar::error::{ConnectionError, ConsumerError, ProducerError};
use pulsar::message::proto::{MessageIdData, ServerError};
use pulsar::{ConnectionRetryOptions, OperationRetryOptions, SubType, TokioExecutor};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use pulsar;

/// Pulsar's default `maxMessageSize` (5 MiB).
pub const DEFAULT_BROKER_MAX_MESSAGE_BYTES: usize = 5 * 1024 * 1024;
/// Bytes of the broker's limit kept for properties and metadata.
pub const METADATA_RESERVE: usize = 16 * 1024;

type Client = pulsar::Pulsar<TokioExecutor>;
type Consumer = pulsar::Consumer<Vec<u8>, TokioExecutor>;
type Producer = pulsar::Producer<TokioExecutor>;

/// Builder of a [`PulsarBus`]; [`PulsarBus::builder`].
#[derive(Clone, Debug)]
pub struct PulsarBusBuilder {
    url: String,
    namespace: String,
    connect_deadline: Duration,
    operation_timeout: Duration,
    broker_max_message_bytes: usize,
}

impl PulsarBusBuilder {
    /// Tenant and namespace of short topic names (default `public/default`).
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long [`PulsarBus::connect`] keeps retrying an unreachable broker (default 30 s).
    #[must_use]
    pub fn connect_deadline(mut self, d: Duration) -> Self {
        self.connect_deadline = d;
        self
    }

    /// How long one broker operation (lookup, subscribe, a publish's receipt) may take
    /// (default 30 s).
    #[must_use]
    pub fn operation_timeout(mut self, d: Duration) -> Self {
        self.operation_timeout = d;
        self
    }

    /// The broker's `maxMessageSize` (default 5 MiB). The bus's maximum payload is what still
    /// fits after [`METADATA_RESERVE`] and the worst case of any codec (Snappy grows
    /// incompressible data by a sixth): 4,479,822 bytes for the default.
    #[must_use]
    pub fn broker_max_message_bytes(mut self, n: usize) -> Self {
        self.broker_max_message_bytes = n;
        self
    }

    /// Connects, retrying with jittered exponential backoff until the connect deadline.
    ///
    /// # Errors
    ///
    /// [`BusError::InvalidUrl`], [`BusError::InvalidConfig`], [`BusError::Unavailable`].
    pub async fn connect(self) -> BusResult<PulsarBus> {
        parse_url(&self.url)?;
        if self.namespace.split('/').count() != 2 || self.namespace.contains(char::is_whitespace) {
            return Err(BusError::InvalidConfig(format!(
                "namespace {:?} is not tenant/namespace",
                self.namespace
            )));
        }
        if self.broker_max_message_bytes <= METADATA_RESERVE {
            return Err(BusError::InvalidConfig(
                "broker_max_message_bytes is too small".into(),
            ));
        }
        let deadline = tokio::time::Instant::now() + self.connect_deadline;
        let mut delay = Duration::from_millis(100);
        let client = loop {
            let attempt = Client::builder(self.url.clone(), TokioExecutor)
                .with_connection_retry_options(ConnectionRetryOptions {
                    max_retries: 0,
                    connection_timeout: Duration::from_secs(5),
                    ..ConnectionRetryOptions::default()
                })
                .with_operation_retry_options(OperationRetryOptions {
                    operation_timeout: self.operation_timeout,
                    retry_delay: Duration::from_millis(500),
                    // Bounded, so a busy exclusive subscription surfaces as an error.
                    max_retries: Some(6),
                })
                .build()
                .await;
            match attempt {
                Ok(c) => break c,
                Err(e) => {
                    if tokio::time::Instant::now() + delay > deadline {
                        return Err(BusError::Unavailable {
                            reason: format!(
                                "cannot connect to {} within {:?}: {e}",
                                self.url, self.connect_deadline
                            ),
                        });
                    }
                    tracing::warn!(url = %self.url, error = %e, retry_in = ?delay, "pulsar connect failed");
                    let jittered = delay.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
                    tokio::time::sleep(jittered).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        Ok(PulsarBus {
            inner: Arc::new(Inner {
                client,
                config: self,
                closed: CancellationToken::new(),
            }),
        })
    }
}

/// The largest payload whose compressed form fits the broker's limit with every codec: the
/// `pulsar` crate compresses inside the producer, so the worst case is assumed (Snappy:
/// `32 + n + n / 6` bytes for `n` incompressible ones).
fn max_payload(broker_max: usize) -> usize {
    (broker_max - METADATA_RESERVE - 32) / 7 * 6
}

/// `pulsar://host:port` or `pulsar+ssl://host:port`, comma-separated hosts allowed.
fn parse_url(url: &str) -> BusResult<()> {
    let bad = |reason: &str| BusError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = match url.split_once("://") {
        Some(("pulsar" | "pulsar+ssl", rest)) => rest,
        Some((scheme, _)) => return Err(bad(&format!("scheme {scheme:?} is not pulsar"))),
        None => return Err(bad("has no pulsar:// scheme")),
    };
    for host in rest.trim_end_matches('/').split(',') {
        if host.is_empty() || host.starts_with(':') {
            return Err(bad("names no host"));
        }
        if let Some((_, port)) = host.rsplit_once(':') {
            if port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()) {
                return Err(bad("has a port that is not a number"));
            }
        }
    }
    Ok(())
}

/// The message bus on Apache Pulsar. Cheap to clone (one client).
#[derive(Clone)]
pub struct PulsarBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: PulsarBusBuilder,
    closed: CancellationToken,
}

impl PulsarBus {
    /// A builder for `url` (`pulsar://host:6650`).
    pub fn builder(url: impl Into<String>) -> PulsarBusBuilder {
        PulsarBusBuilder {
            url: url.into(),
            namespace: "public/default".into(),
            connect_deadline: Duration::from_secs(30),
            operation_timeout: Duration::from_secs(30),
            broker_max_message_bytes: DEFAULT_BROKER_MAX_MESSAGE_BYTES,
        }
    }

    /// Connects with default settings.
    ///
    /// # Errors
    ///
    /// As [`PulsarBusBuilder::connect`].
    pub async fn connect(url: impl Into<String>) -> BusResult<PulsarBus> {
        Self::builder(url).connect().await
    }

    /// The full Pulsar name of `topic`.
    ///
    /// # Errors
    ///
    /// [`BusError::InvalidName`] for a name Pulsar cannot carry.
    pub fn topic_name(&self, topic: &str) -> BusResult<String> {
        electric_core::bus::validate_name("topic", topic)?;
        if topic.starts_with("persistent://") || topic.starts_with("non-persistent://") {
            return Ok(topic.to_owned());
        }
        if !topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '='))
        {
            return Err(BusError::InvalidName {
                what: "topic",
                name: topic.to_owned(),
                reason: "may hold only ASCII letters, digits, - _ . = on Pulsar (or be a full persistent:// name)",
            });
        }
        Ok(format!(
            "persistent://{}/{topic}",
            self.inner.config.namespace
        ))
    }

    /// The underlying client (for what the bus does not cover).
    pub fn client(&self) -> &pulsar::Pulsar<TokioExecutor> {
        &self.inner.client
    }
}

/// Maps a `pulsar` crate error onto the bus's.
fn classify(what: &str, e: pulsar::Error) -> BusError {
    use pulsar::Error as E;
    let connection = match &e {
        E::Connection(c) => Some(c),
        E::Consumer(ConsumerError::Connection(c)) => Some(c),
        E::Producer(ProducerError::Connection(c)) => Some(c),
        _ => None,
    };
    match connection {
        Some(ConnectionError::PulsarError(Some(ServerError::ConsumerBusy), _)) => {
            BusError::SubscriptionBusy {
                topic: String::new(),
                subscription: String::new(),
            }
        }
        Some(ConnectionError::SlowDown) => BusError::Backpressure {
            what: "pulsar connection outbound queue".into(),
            waited: Duration::ZERO,
        },
        Some(
            ConnectionError::PulsarError(
                Some(
                    ServerError::AuthorizationError
                    | ServerError::AuthenticationError
                    | ServerError::InvalidTopicName
                    | ServerError::TopicNotFound
                    | ServerError::IncompatibleSchema
                    | ServerError::NotAllowedError,
                ),
                _,
            )
            | ConnectionError::Encoding(_),
        ) => BusError::Rejected {
            reason: format!("{what}: {e}"),
        },
        _ => BusError::Unavailable {
            reason: format!("{what}: {e}"),
        },
    }
}

fn compression(codec: Codec) -> Compression {
    match codec {
        Codec::Lz4 => Compression::Lz4(CompressionLz4::default()),
        Codec::Zstd => Compression::Zstd(CompressionZstd::default()),
        Codec::Snappy => Compression::Snappy(CompressionSnappy::default()),
        Codec::Zlib => Compression::Zlib(CompressionZlib::default()),
        _ => Compression::None,
    }
}

fn message_id(id: &MessageIdData) -> MessageId {
    MessageId::Pulsar {
        ledger_id: id.ledger_id,
        entry_id: id.entry_id,
        partition: id.partition.unwrap_or(-1),
        batch_index: id.batch_index.unwrap_or(-1),
    }
}

#[async_trait]
impl Bus for PulsarBus {
    fn backend(&self) -> &'static str {
        "pulsar"
    }

    fn max_message_bytes(&self) -> usize {
        max_payload(self.inner.config.broker_max_message_bytes)
    }

    fn native_compression(&self) -> bool {
        true
    }

    async fn open_producer(
        &self,
        topic: &str,
        options: &ProducerOptions,
    ) -> BusResult<Arc<dyn ProducerBackend>> {
        let name = self.topic_name(topic)?;
        let producer = self
            .inner
            .client
            .producer()
            .with_topic(&name)
            .with_options(pulsar::ProducerOptions {
                compression: Some(compression(options.codec)),
                block_queue_if_full: true,
                ..Default::default()
            })
            .build()
            .await
            .map_err(|e| classify("create producer", e))?;
        Ok(Arc::new(PulsarProducer {
            topic: topic.to_owned(),
            producer: tokio::sync::Mutex::new(producer),
            closed: self.inner.closed.clone(),
        }))
    }

    async fn subscribe(&self, options: &SubscribeOptions) -> BusResult<RawSubscription> {
        if self.inner.closed.is_cancelled() {
            return Err(BusError::Closed);
        }
        let name = self.topic_name(&options.topic)?;
        let consumer = build_consumer(&self.inner.client, &name, options).await?;
        let (tx, rx) = mpsc::channel(options.prefetch);
        // One command per delivery handed out, which the prefetch bounds on the broker's side
        // only loosely (deliveries held unsettled by the reader do not count), so the channel
        // is generously sized; when it is full a dropped delivery's redelivery request is
        // skipped and the ack timeout redelivers it instead.
        let (cmd_tx, cmd_rx) = mpsc::channel(options.prefetch.saturating_mul(4).max(256));
        let buffered = Arc::new(AtomicUsize::new(0));
        let cancel = self.inner.closed.child_token();
        let actor = ConsumerActor {
            consumer,
            client: self.inner.client.clone(),
            options: options.clone(),
            nacked: HashMap::new(),
            topic: options.topic.clone(),
            pulsar_topic: name,
            cmd_rx,
            cmd_tx,
            buffered: buffered.clone(),
            cancel: cancel.clone(),
        };
        tokio::spawn(actor.run(tx));
        let gauge = buffered.clone();
        let guard = cancel.drop_guard();
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|v| (v, rx)) },
            )
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
        Ok(())
    }
}

/// Subscribes a consumer of `options` on the Pulsar topic `name`.
async fn build_consumer(
    client: &Client,
    name: &str,
    options: &SubscribeOptions,
) -> BusResult<Consumer> {
    let prefetch = u32::try_from(options.prefetch).unwrap_or(u32::MAX);
    client
        .consumer()
        .with_topic(name)
        .with_subscription(&options.subscription)
        .with_subscription_type(match options.kind {
            SubscriptionKind::Exclusive => SubType::Exclusive,
            SubscriptionKind::Shared => SubType::Shared,
            SubscriptionKind::Failover => SubType::Failover,
        })
        .with_batch_size(prefetch)
        .with_unacked_message_resend_delay(Some(options.ack_timeout))
        .with_options(ConsumerOptions {
            durable: Some(true),
            receiver_queue_size: Some(prefetch),
            initial_position: match options.initial_position {
                InitialPosition::Earliest => PulsarPosition::Earliest,
                InitialPosition::Latest => PulsarPosition::Latest,
            },
            ..Default::default()
        })
        .build()
        .await
        .map_err(|e| match classify("subscribe", e) {
            BusError::SubscriptionBusy { .. } => BusError::SubscriptionBusy {
                topic: options.topic.clone(),
                subscription: options.subscription.clone(),
            },
            other => other,
        })
}

enum Command {
    Ack(MessageIdData),
    Nack(MessageIdData),
}

/// Owns one consumer: reads into the subscription's bounded queue and applies settlements.
struct ConsumerActor {
    consumer: Consumer,
    /// To subscribe again when the consumer ends (the broker went away for longer than the
    /// crate's own reconnection tries).
    client: Client,
    options: SubscribeOptions,
    /// Nacks this consumer sent, per message not yet acked: the broker counts redeliveries
    /// only on shared subscriptions. Bounded by [`MAX_LOCAL_COUNTS`].
    nacked: HashMap<(u64, u64, i32, i32), u32>,
    topic: String,
    pulsar_topic: String,
    cmd_rx: mpsc::Receiver<Command>,
    cmd_tx: mpsc::Sender<Command>,
    buffered: Arc<AtomicUsize>,
    cancel: CancellationToken,
}

/// Receive errors in a row after which a consumer is replaced by a new subscription.
const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// Most messages whose nacks a consumer counts itself; past it the counts start over (a
/// redelivery count then reads low, never high).
const MAX_LOCAL_COUNTS: usize = 65_536;

fn id_key(id: &MessageIdData) -> (u64, u64, i32, i32) {
    (
        id.ledger_id,
        id.entry_id,
        id.partition.unwrap_or(-1),
        id.batch_index.unwrap_or(-1),
    )
}

impl ConsumerActor {
    async fn apply(&mut self, cmd: Command) {
        let result = match cmd {
            Command::Ack(id) => {
                self.nacked.remove(&id_key(&id));
                self.consumer.ack_with_id(&self.pulsar_topic, id).await
            }
            Command::Nack(id) => {
                if self.nacked.len() >= MAX_LOCAL_COUNTS {
                    self.nacked.clear();
                }
                *self.nacked.entry(id_key(&id)).or_default() += 1;
                self.consumer.nack_with_id(&self.pulsar_topic, id).await
            }
        };
        if let Err(e) = result {
            tracing::warn!(topic = %self.topic, error = %e, "pulsar settlement failed; the ack timeout redelivers");
        }
    }

    async fn run(mut self, tx: mpsc::Sender<BusResult<Delivery>>) {
        let mut failures = 0u32;
        'outer: loop {
            // Room in the reader's queue first, so nothing is taken from the broker that the
            // queue could not hold.
            let permit = loop {
                tokio::select! {
                    () = self.cancel.cancelled() => break 'outer,
                    Some(cmd) = self.cmd_rx.recv() => self.apply(cmd).await,
                    p = tx.reserve() => match p {
                        Ok(p) => break p,
                        Err(_) => break 'outer,
                    },
                }
            };
            let next = loop {
                tokio::select! {
                    () = self.cancel.cancelled() => break 'outer,
                    // The reader went: close now, so the broker hands a failover subscription
                    // to the standby at once rather than after the next message arrives here.
                    () = tx.closed() => break 'outer,
                    Some(cmd) = self.cmd_rx.recv() => self.apply(cmd).await,
                    m = self.consumer.next() => break m,
                }
            };
            let item = match next {
                Some(Ok(m)) => {
                    failures = 0;
                    Ok(self.delivery(m))
                }
                Some(Err(e)) => {
                    failures += 1;
                    if failures >= MAX_CONSECUTIVE_FAILURES {
                        // The crate's consumer does not always recover from a broker restart
                        // (streamnative/pulsar-rs#189): start a new one.
                        self.buffered.fetch_add(1, Ordering::Relaxed);
                        permit.send(Err(classify("receive", e)));
                        failures = 0;
                        if !self.resubscribe().await {
                            break;
                        }
                        continue;
                    }
                    Err(classify("receive", e))
                }
                None => {
                    self.buffered.fetch_add(1, Ordering::Relaxed);
                    permit.send(Err(BusError::Unavailable {
                        reason: format!(
                            "pulsar consumer of {} ended; subscribing again",
                            self.topic
                        ),
                    }));
                    if !self.resubscribe().await {
                        break;
                    }
                    continue;
                }
            };
            self.buffered.fetch_add(1, Ordering::Relaxed);
            permit.send(item);
        }
        // Settle what the reader settled before it went, then close.
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            self.apply(cmd).await;
        }
        if let Err(e) = self.consumer.close().await {
            tracing::debug!(topic = %self.topic, error = %e, "pulsar consumer close failed");
        }
    }

    /// Subscribes again with backoff until it works (`true`) or the subscription closes
    /// (`false`). What the old consumer had not acked the broker redelivers to the new one.
    async fn resubscribe(&mut self) -> bool {
        let mut delay = Duration::from_millis(200);
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return false,
                () = tokio::time::sleep(delay) => {}
            }
            match build_consumer(&self.client, &self.pulsar_topic, &self.options).await {
                Ok(c) => {
                    let mut old = std::mem::replace(&mut self.consumer, c);
                    let _ = old.close().await;
                    tracing::info!(topic = %self.topic, "pulsar consumer subscribed again");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, retry_in = ?delay, "pulsar resubscribe failed");
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn delivery(&self, m: pulsar::consumer::Message<Vec<u8>>) -> Delivery {
        let id = m.message_id.id.clone();
        let metadata = &m.payload.metadata;
        let mut message = Message::new(self.topic.clone(), message_id(&id), m.payload.data.clone());
        let local = self.nacked.get(&id_key(&id)).copied().unwrap_or(0);
        message.redelivery_count = m.redelivery_count.max(local);
        message.key = metadata.partition_key.clone();
        for kv in &metadata.properties {
            message.headers.insert(kv.key.clone(), kv.value.clone());
        }
        let handle = PulsarAck {
            id,
            cmd: self.cmd_tx.clone(),
        };
        Delivery::new(message, Acker::new(Box::new(handle)))
    }
}

struct PulsarAck {
    id: MessageIdData,
    cmd: mpsc::Sender<Command>,
}

fn closed(_: impl std::fmt::Display) -> BusError {
    BusError::Closed
}

#[async_trait]
impl AckHandle for PulsarAck {
    async fn ack(self: Box<Self>) -> BusResult<()> {
        self.cmd.send(Command::Ack(self.id)).await.map_err(closed)
    }

    async fn nack(self: Box<Self>, delay: Option<Duration>) -> BusResult<()> {
        match delay {
            None | Some(Duration::ZERO) => {
                self.cmd.send(Command::Nack(self.id)).await.map_err(closed)
            }
            Some(d) => {
                // Pulsar redelivers a nacked message at once; wait here for the delay.
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let _ = self.cmd.send(Command::Nack(self.id)).await;
                });
                Ok(())
            }
        }
    }

    async fn term(self: Box<Self>) -> BusResult<()> {
        self.cmd.send(Command::Ack(self.id)).await.map_err(closed)
    }

    fn dropped(self: Box<Self>) {
        let _ = self.cmd.try_send(Command::Nack(self.id));
    }
}

struct PulsarProducer {
    topic: String,
    producer: tokio::sync::Mutex<Producer>,
    closed: CancellationToken,
}

#[async_trait]
impl ProducerBackend for PulsarProducer {
    async fn send(&self, message: OutMessage) -> BusResult<PublishFuture> {
        if self.closed.is_cancelled() {
            return Err(BusError::Closed);
        }
        let mut properties: HashMap<String, String> = message
            .headers
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        if let Some(id) = &message.id {
            properties.insert(headers::MSG_ID.to_owned(), id.clone());
        }
        let msg = pulsar::producer::Message {
            payload: message.payload.to_vec(),
            properties,
            partition_key: message.key.clone(),
            ..Default::default()
        };
        let receipt = {
            let mut producer = self.producer.lock().await;
            producer
                .send_non_blocking(msg)
                .await
                .map_err(|e| classify("publish", e))?
        };
        let topic = self.topic.clone();
        Ok(async move {
            match receipt.await {
                Ok(r) => match r.message_id {
                    Some(id) => Ok(Receipt::new(message_id(&id))),
                    None => Err(BusError::Indeterminate {
                        topic,
                        reason: "the broker's receipt has no message id".into(),
                    }),
                },
                Err(e) => Err(BusError::Indeterminate {
                    topic,
                    reason: format!("no receipt: {e}"),
                }),
            }
        }
        .boxed())
    }

    async fn close(&self) -> BusResult<()> {
        self.producer
            .lock()
            .await
            .close()
            .await
            .map_err(|e| classify("close producer", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        for good in [
            "pulsar://127.0.0.1:6650",
            "pulsar+ssl://a:6651,b:6651",
            "pulsar://host",
        ] {
            assert!(parse_url(good).is_ok(), "{good}");
        }
        for bad in [
            "nats://x:4222",
            "127.0.0.1:6650",
            "pulsar://",
            "pulsar://:6650",
            "pulsar://h:x",
        ] {
            assert!(
                matches!(parse_url(bad), Err(BusError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_maximum_payload_fits_with_any_codec() {
        let max = max_payload(DEFAULT_BROKER_MAX_MESSAGE_BYTES);
        assert_eq!(max, 4_479_822);
        assert!(32 + max + max / 6 + METADATA_RESERVE <= DEFAULT_BROKER_MAX_MESSAGE_BYTES);
    }

    #[test]
    fn every_codec_maps_to_pulsar_compression() {
        for codec in Codec::ALL {
            let c = compression(codec);
            assert_eq!(
                matches!(c, Compression::None),
                codec == Codec::None,
                "{codec}"
            );
        }
    }
}
