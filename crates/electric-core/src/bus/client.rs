//! [`BusClient`]: producers cached per topic, codecs, limits, helpers and the consumer loop.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::codec::{Codec, DecodeError};
use super::error::{BusError, BusResult};
use super::message::{headers, Delivery, Message, OutMessage, Receipt};
use super::options::{ProducerOptions, SubscribeOptions, UndecodablePolicy};
use super::{validate_name, Bus, ProducerBackend, MAX_HEADER_BYTES};
use crate::collections::{panic_message, BoxError};

/// An application's handle on a bus: cheap to clone, shared by every task.
///
/// It keeps one [`Producer`] per topic (created by [`BusClient::producer`], idempotent), so
/// [`BusClient::publish`] and friends can be called with a topic name alone, as the original's
/// `WriteBytes(topic, …)` was.
#[derive(Clone)]
pub struct BusClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    bus: Arc<dyn Bus>,
    producers: Mutex<HashMap<String, Producer>>,
    /// Serialises producer creation, so concurrent first calls for a topic open one producer;
    /// lookups never wait on it.
    creating: tokio::sync::Mutex<()>,
}

impl fmt::Debug for BusClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusClient")
            .field("backend", &self.inner.bus.backend())
            .finish_non_exhaustive()
    }
}

impl BusClient {
    /// A client on `bus`.
    pub fn new(bus: impl Bus) -> Self {
        Self::from_arc(Arc::new(bus))
    }

    /// A client on a shared bus.
    pub fn from_arc(bus: Arc<dyn Bus>) -> Self {
        Self {
            inner: Arc::new(ClientInner {
                bus,
                producers: Mutex::new(HashMap::new()),
                creating: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The backend.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.inner.bus
    }

    /// The largest payload the bus carries.
    pub fn max_message_bytes(&self) -> usize {
        self.inner.bus.max_message_bytes()
    }

    /// The producer for `topic`, opening it with `options` if there is none yet. A second
    /// call for a topic returns the first producer unchanged (its options stay).
    ///
    /// # Errors
    ///
    /// [`BusError::InvalidName`], [`BusError::InvalidConfig`] (`max_in_flight` of 0), or the
    /// backend's error opening the producer.
    pub async fn producer(&self, topic: &str, options: ProducerOptions) -> BusResult<Producer> {
        if let Some(p) = self.cached_producer(topic) {
            return Ok(p);
        }
        validate_name("topic", topic)?;
        if options.max_in_flight == 0 {
            return Err(BusError::InvalidConfig(
                "max_in_flight must be at least 1".into(),
            ));
        }
        let _creating = self.inner.creating.lock().await;
        if let Some(p) = self.cached_producer(topic) {
            return Ok(p);
        }
        let bus = &self.inner.bus;
        let backend = bus.open_producer(topic, &options).await?;
        let producer = Producer(Arc::new(ProducerInner {
            topic: topic.to_owned(),
            backend,
            codec_in_client: !bus.native_compression(),
            limit: bus.max_message_bytes(),
            permits: Arc::new(Semaphore::new(options.max_in_flight)),
            options,
        }));
        self.lock_producers()
            .insert(topic.to_owned(), producer.clone());
        Ok(producer)
    }

    /// The producer for `topic`, if one was opened.
    pub fn cached_producer(&self, topic: &str) -> Option<Producer> {
        self.lock_producers().get(topic).cloned()
    }

    fn lock_producers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Producer>> {
        self.inner
            .producers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn registered(&self, topic: &str) -> BusResult<Producer> {
        self.cached_producer(topic)
            .ok_or_else(|| BusError::UnknownTopic {
                topic: topic.to_owned(),
            })
    }

    /// Publishes on `topic`'s producer and waits for the broker's answer.
    ///
    /// # Errors
    ///
    /// [`BusError::UnknownTopic`] when no producer was opened for `topic`; otherwise as
    /// [`Producer::publish`].
    pub async fn publish(&self, topic: &str, message: OutMessage) -> BusResult<Receipt> {
        self.registered(topic)?.publish(message).await
    }

    /// Publishes bytes on `topic`'s producer.
    ///
    /// # Errors
    ///
    /// As [`BusClient::publish`].
    pub async fn publish_bytes(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> BusResult<Receipt> {
        self.publish(topic, OutMessage::new(payload)).await
    }

    /// Publishes UTF-8 text on `topic`'s producer (`content-type: text/plain; charset=utf-8`).
    ///
    /// # Errors
    ///
    /// As [`BusClient::publish`].
    pub async fn publish_text(&self, topic: &str, text: &str) -> BusResult<Receipt> {
        self.registered(topic)?.publish_text(text).await
    }

    /// Publishes `value` as JSON on `topic`'s producer (`content-type: application/json`).
    ///
    /// # Errors
    ///
    /// [`BusError::Serde`] when `value` does not serialize; otherwise as [`BusClient::publish`].
    pub async fn publish_json<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> BusResult<Receipt> {
        self.registered(topic)?.publish_json(value).await
    }

    /// Closes and forgets `topic`'s producer. Returns whether there was one.
    ///
    /// # Errors
    ///
    /// The backend's error closing it (it is forgotten either way).
    pub async fn dispose_topic(&self, topic: &str) -> BusResult<bool> {
        let producer = self.lock_producers().remove(topic);
        match producer {
            Some(p) => p.0.backend.close().await.map(|()| true),
            None => Ok(false),
        }
    }

    /// Opens a consumer on a subscription (created if it does not exist).
    ///
    /// # Errors
    ///
    /// [`BusError::InvalidName`], [`BusError::InvalidConfig`] (a prefetch of 0),
    /// [`BusError::SubscriptionBusy`] for an exclusive subscription held elsewhere, or the
    /// backend's error.
    pub async fn subscribe(&self, options: SubscribeOptions) -> BusResult<Subscription> {
        validate_name("topic", &options.topic)?;
        validate_name("subscription", &options.subscription)?;
        if options.prefetch == 0 {
            return Err(BusError::InvalidConfig(
                "prefetch must be at least 1".into(),
            ));
        }
        if let UndecodablePolicy::DeadLetter(dlq) = &options.on_undecodable {
            validate_name("topic", dlq)?;
        }
        let raw = self.inner.bus.subscribe(&options).await?;
        let decoder = Arc::new(Decoder {
            client: self.clone(),
            limit: self.max_message_bytes(),
            options,
        });
        let stream = {
            let decoder = decoder.clone();
            raw.stream
                .then(move |item| {
                    let decoder = decoder.clone();
                    async move { decoder.process(item).await }
                })
                .boxed()
        };
        Ok(Subscription {
            stream,
            buffered: raw.buffered,
            decoder,
        })
    }

    /// Runs `handler` on every message of a subscription until `cancel` fires or the
    /// subscription ends, settling each message: acked when the handler returns `Ok`, nacked
    /// after [`ConsumeConfig::nack_delay`] when it returns an error or panics — until it was
    /// delivered [`ConsumeConfig::max_deliveries`] times; then it is published to
    /// [`ConsumeConfig::dead_letter`] (with headers saying why) and acked, or terminated
    /// when there is no dead-letter topic. A message the subscription could not decode is
    /// handled by its [`UndecodablePolicy`] and counted. The handler never sees it.
    ///
    /// Messages are handled one at a time, in delivery order; run several consumers on a
    /// shared subscription for parallelism.
    ///
    /// # Errors
    ///
    /// The subscription could not be opened.
    pub async fn consume<F, Fut, E>(
        &self,
        options: SubscribeOptions,
        config: ConsumeConfig,
        cancel: CancellationToken,
        mut handler: F,
    ) -> BusResult<ConsumeReport>
    where
        F: FnMut(Message) -> Fut + Send,
        Fut: Future<Output = Result<(), E>> + Send,
        E: Into<BoxError>,
    {
        if let Some(dlq) = &config.dead_letter {
            validate_name("topic", dlq)?;
            self.producer(dlq, ProducerOptions::default()).await?;
        }
        let mut sub = self.subscribe(options).await?;
        let mut report = ConsumeReport::default();
        loop {
            let item = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                item = sub.next() => item,
            };
            let delivery = match item {
                None => break,
                Some(Ok(d)) => d,
                Some(Err(BusError::Undecodable { .. })) => {
                    report.undecodable += 1;
                    continue;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "bus subscription error");
                    report.errors += 1;
                    continue;
                }
            };
            let (message, acker) = delivery.into_parts();
            let deliveries = message.redelivery_count + 1;
            let kept = message.clone();
            let outcome = AssertUnwindSafe(handler(message)).catch_unwind().await;
            let failure = match outcome {
                Ok(Ok(())) => {
                    report.handled += 1;
                    if let Err(e) = acker.ack().await {
                        tracing::warn!(error = %e, topic = %kept.topic, id = %kept.id, "ack failed; the message will come again");
                        report.errors += 1;
                    }
                    continue;
                }
                Ok(Err(e)) => {
                    report.failed += 1;
                    e.into().to_string()
                }
                Err(panic) => {
                    report.panicked += 1;
                    format!("handler panicked: {}", panic_message(&*panic))
                }
            };
            tracing::warn!(topic = %kept.topic, id = %kept.id, deliveries, reason = %failure, "bus handler failed");
            let exhausted = config.max_deliveries.is_some_and(|max| deliveries >= max);
            let settled = match (&config.dead_letter, exhausted) {
                (_, false) => acker.nack(Some(config.nack_delay)).await,
                (Some(dlq), true) => match self.dead_letter(dlq, &kept, &failure).await {
                    Ok(_) => {
                        report.dead_lettered += 1;
                        acker.ack().await
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "dead-letter publish failed; nacking");
                        acker.nack(Some(config.nack_delay)).await
                    }
                },
                (None, true) => {
                    report.terminated += 1;
                    acker.term().await
                }
            };
            if let Err(e) = settled {
                tracing::warn!(error = %e, "settling a failed message failed; it will come again");
                report.errors += 1;
            }
        }
        Ok(report)
    }

    /// Publishes `message` unchanged to `dlq` with headers saying where it came from and why.
    async fn dead_letter(&self, dlq: &str, message: &Message, reason: &str) -> BusResult<Receipt> {
        let producer = self.producer(dlq, ProducerOptions::default()).await?;
        let mut out = OutMessage::new(message.payload.clone());
        out.headers = message.headers.clone();
        out.key = message.key.clone();
        if let Some(codec) = out.headers.remove(headers::CONTENT_ENCODING) {
            out.headers
                .insert(headers::DEAD_LETTER_CONTENT_ENCODING, codec);
        }
        out.headers
            .insert(headers::DEAD_LETTER_REASON, truncate(reason, 1024));
        out.headers
            .insert(headers::DEAD_LETTER_TOPIC, message.topic.clone());
        out.headers
            .insert(headers::DEAD_LETTER_ID, message.id.to_string());
        // Not the original's id: the broker would de-duplicate it against the original topic's
        // history on brokers that scope ids per stream, and a second dead-lettering of a
        // redelivered message is better than none.
        producer.publish(out).await
    }

    /// Closes every producer, then the bus.
    ///
    /// # Errors
    ///
    /// The first error met (everything is closed regardless).
    pub async fn close(&self) -> BusResult<()> {
        let producers: Vec<Producer> = self.lock_producers().drain().map(|(_, p)| p).collect();
        let mut first = None;
        for p in producers {
            if let Err(e) = p.0.backend.close().await {
                first.get_or_insert(e);
            }
        }
        if let Err(e) = self.inner.bus.close().await {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Settings of [`BusClient::consume`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumeConfig {
    /// Delay before a failed message comes back (default 1 s).
    pub nack_delay: Duration,
    /// Deliveries after which a failing message is given up (default 5; `None`: never).
    pub max_deliveries: Option<u32>,
    /// Where given-up messages go (default none: they are terminated).
    pub dead_letter: Option<String>,
}

impl Default for ConsumeConfig {
    fn default() -> Self {
        Self {
            nack_delay: Duration::from_secs(1),
            max_deliveries: Some(5),
            dead_letter: None,
        }
    }
}

impl ConsumeConfig {
    /// Sets the nack delay.
    #[must_use]
    pub fn nack_delay(mut self, d: Duration) -> Self {
        self.nack_delay = d;
        self
    }

    /// Sets the most deliveries of a failing message.
    #[must_use]
    pub fn max_deliveries(mut self, n: Option<u32>) -> Self {
        self.max_deliveries = n;
        self
    }

    /// Sets the dead-letter topic.
    #[must_use]
    pub fn dead_letter(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter = Some(topic.into());
        self
    }
}

/// What [`BusClient::consume`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumeReport {
    /// Messages the handler handled (acked).
    pub handled: u64,
    /// Handler calls that returned an error.
    pub failed: u64,
    /// Handler calls that panicked.
    pub panicked: u64,
    /// Messages given up and published to the dead-letter topic.
    pub dead_lettered: u64,
    /// Messages given up and terminated (no dead-letter topic).
    pub terminated: u64,
    /// Messages the subscription could not decode.
    pub undecodable: u64,
    /// Other errors: the subscription's, or settling that did not reach the broker.
    pub errors: u64,
}

/// Decodes what a backend delivers and applies the undecodable policy.
struct Decoder {
    client: BusClient,
    limit: usize,
    options: SubscribeOptions,
}

impl Decoder {
    async fn process(&self, item: BusResult<Delivery>) -> BusResult<Delivery> {
        let mut delivery = item?;
        let Some(name) = delivery.headers.get(headers::CONTENT_ENCODING) else {
            return Ok(delivery);
        };
        let decoded = match Codec::from_name(name) {
            None => Err(DecodeError::UnknownCodec(name.to_owned())),
            Some(Codec::None) => Ok(None),
            Some(codec) => codec.decode(&delivery.payload, self.limit).map(Some),
        };
        match decoded {
            Ok(payload) => {
                let message = delivery.message_mut();
                message.headers.remove(headers::CONTENT_ENCODING);
                if let Some(payload) = payload {
                    message.payload = Bytes::from(payload);
                }
                Ok(delivery)
            }
            Err(e) => Err(self.undecodable(delivery, e.to_string()).await),
        }
    }

    /// Settles an undecodable delivery per the policy and returns the error to report.
    async fn undecodable(&self, delivery: Delivery, reason: String) -> BusError {
        let err = BusError::Undecodable {
            topic: delivery.topic.clone(),
            id: delivery.id.to_string(),
            reason: reason.clone(),
        };
        tracing::warn!(error = %err, policy = ?self.options.on_undecodable, "undecodable message");
        let settled = match &self.options.on_undecodable {
            UndecodablePolicy::Nack => delivery.nack(Some(self.options.nack_delay)).await,
            UndecodablePolicy::Term => delivery.term().await,
            UndecodablePolicy::DeadLetter(dlq) => {
                let (message, acker) = delivery.into_parts();
                match self.client.dead_letter(dlq, &message, &reason).await {
                    Ok(_) => acker.ack().await,
                    Err(e) => {
                        tracing::warn!(error = %e, "dead-letter publish failed; nacking");
                        acker.nack(Some(self.options.nack_delay)).await
                    }
                }
            }
        };
        if let Err(e) = settled {
            tracing::warn!(error = %e, "settling an undecodable message failed");
        }
        err
    }
}

/// A consumer on a subscription: a stream of [`Delivery`]s with payloads decoded.
///
/// An `Err` item reports one message that could not be delivered (for instance
/// [`BusError::Undecodable`], already settled by the subscription's policy); the stream goes
/// on. It ends when the bus closes. Dropping it closes the consumer: unsettled messages go
/// back to the subscription.
pub struct Subscription {
    stream: BoxStream<'static, BusResult<Delivery>>,
    buffered: Arc<AtomicUsize>,
    decoder: Arc<Decoder>,
}

impl Subscription {
    /// Messages received from the broker and not yet taken by this reader (bounded by the
    /// prefetch).
    pub fn buffered_len(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }

    /// This subscription as a stream of `(T, Delivery)`, the payload deserialized from JSON.
    /// A payload that is not JSON for `T` is settled like an undecodable one (the
    /// subscription's [`UndecodablePolicy`]) and reported as [`BusError::Undecodable`].
    pub fn json<T: DeserializeOwned + Send + 'static>(self) -> TypedSubscription<T> {
        let decoder = self.decoder;
        let stream = self
            .stream
            .then(move |item| {
                let decoder = decoder.clone();
                async move {
                    let delivery = item?;
                    match delivery.json::<T>() {
                        Ok(value) => Ok((value, delivery)),
                        Err(e) => Err(decoder
                            .undecodable(delivery, format!("not JSON for the expected type: {e}"))
                            .await),
                    }
                }
            })
            .boxed();
        TypedSubscription {
            stream,
            buffered: self.buffered,
            _type: PhantomData,
        }
    }
}

impl Stream for Subscription {
    type Item = BusResult<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.poll_next_unpin(cx)
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("buffered", &self.buffered_len())
            .finish_non_exhaustive()
    }
}

/// A typed consumer ([`Subscription::json`]).
pub struct TypedSubscription<T> {
    stream: BoxStream<'static, BusResult<(T, Delivery)>>,
    buffered: Arc<AtomicUsize>,
    _type: PhantomData<fn() -> T>,
}

impl<T> TypedSubscription<T> {
    /// See [`Subscription::buffered_len`].
    pub fn buffered_len(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }
}

impl<T> Stream for TypedSubscription<T> {
    type Item = BusResult<(T, Delivery)>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.poll_next_unpin(cx)
    }
}

/// One topic's producer: compression, the size limit and the in-flight bound on top of the
/// backend's. Cheap to clone.
#[derive(Clone)]
pub struct Producer(Arc<ProducerInner>);

struct ProducerInner {
    topic: String,
    backend: Arc<dyn ProducerBackend>,
    options: ProducerOptions,
    codec_in_client: bool,
    limit: usize,
    permits: Arc<Semaphore>,
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("topic", &self.0.topic)
            .field("options", &self.0.options)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.0.topic
    }

    /// The options it was opened with.
    pub fn options(&self) -> &ProducerOptions {
        &self.0.options
    }

    /// Publishes in flight now (awaiting the broker's answer).
    pub fn in_flight(&self) -> usize {
        self.0.options.max_in_flight - self.0.permits.available_permits()
    }

    /// Publishes `message` and waits for the broker's answer.
    ///
    /// # Errors
    ///
    /// [`BusError::TooLarge`] (nothing sent), [`BusError::Backpressure`] when the in-flight
    /// bound stayed full for [`ProducerOptions::max_wait`] (nothing sent),
    /// [`BusError::Indeterminate`] when the outcome is unknown, or the backend's error.
    pub async fn publish(&self, message: OutMessage) -> BusResult<Receipt> {
        self.send(message).await?.await
    }

    /// Hands `message` to the client once there is room among the in-flight publishes, and
    /// returns the pending answer; await it (or drop it: the message is still sent). Use this
    /// to keep many publishes in flight from one task. Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// As [`Producer::publish`], for the part before the message is on its way.
    ///
    /// # Cancel safety
    ///
    /// Cancelling the returned future before it resolves sends nothing.
    pub async fn send(&self, mut message: OutMessage) -> BusResult<PendingPublish> {
        let inner = &*self.0;
        let size = message.payload.len();
        if size > inner.limit {
            return Err(BusError::TooLarge {
                size,
                limit: inner.limit,
            });
        }
        let header_bytes = message.headers.byte_len();
        if header_bytes > MAX_HEADER_BYTES {
            return Err(BusError::TooLarge {
                size: header_bytes,
                limit: MAX_HEADER_BYTES,
            });
        }
        let permit = match inner.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => tokio::time::timeout(
                inner.options.max_wait,
                inner.permits.clone().acquire_owned(),
            )
            .await
            .map_err(|_| BusError::Backpressure {
                what: format!("in-flight publishes of topic {}", inner.topic),
                waited: inner.options.max_wait,
            })?
            .map_err(|_| BusError::Closed)?,
        };
        let codec = inner.options.codec;
        if inner.codec_in_client && codec != Codec::None {
            let encoded = codec
                .encode(&message.payload)
                .map_err(|e| BusError::Encode {
                    codec: codec.name(),
                    reason: e.to_string(),
                })?;
            // Compression that does not shrink the payload is skipped (so the wire size never
            // exceeds the payload's): the message goes uncompressed, without the header.
            if encoded.len() < message.payload.len() {
                message.payload = Bytes::from(encoded);
                message
                    .headers
                    .insert(headers::CONTENT_ENCODING, codec.name());
            }
        }
        let answer = inner.backend.send(message).await?;
        // The answer is awaited on its own task, so the in-flight place is given back when the
        // broker answers, whether or not (or however late) the caller awaits it.
        let topic = inner.topic.clone();
        let task = tokio::spawn(async move {
            let receipt = answer.await;
            drop(permit);
            receipt
        });
        Ok(PendingPublish { task, topic })
    }

    /// Publishes bytes.
    ///
    /// # Errors
    ///
    /// As [`Producer::publish`].
    pub async fn publish_bytes(&self, payload: impl Into<Bytes>) -> BusResult<Receipt> {
        self.publish(OutMessage::new(payload)).await
    }

    /// Publishes UTF-8 text (`content-type: text/plain; charset=utf-8`).
    ///
    /// # Errors
    ///
    /// As [`Producer::publish`].
    pub async fn publish_text(&self, text: &str) -> BusResult<Receipt> {
        self.publish(
            OutMessage::new(Bytes::copy_from_slice(text.as_bytes()))
                .header(headers::CONTENT_TYPE, headers::TEXT),
        )
        .await
    }

    /// Publishes `value` as JSON (`content-type: application/json`).
    ///
    /// # Errors
    ///
    /// [`BusError::Serde`] when `value` does not serialize; otherwise as [`Producer::publish`].
    pub async fn publish_json<T: Serialize + ?Sized>(&self, value: &T) -> BusResult<Receipt> {
        let payload = serde_json::to_vec(value).map_err(BusError::serde)?;
        self.publish(OutMessage::new(payload).header(headers::CONTENT_TYPE, headers::JSON))
            .await
    }
}

/// A publish handed to the client, awaiting the broker's answer ([`Producer::send`]). The
/// answer is awaited in the background: the publish holds one of the producer's in-flight
/// places until the broker answers, and dropping this only forgoes the answer.
pub struct PendingPublish {
    task: tokio::task::JoinHandle<BusResult<Receipt>>,
    topic: String,
}

impl Future for PendingPublish {
    type Output = BusResult<Receipt>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.task.poll_unpin(cx).map(|joined| {
            joined.unwrap_or_else(|e| {
                Err(BusError::Indeterminate {
                    topic: self.topic.clone(),
                    reason: format!("the task awaiting the answer ended: {e}"),
                })
            })
        })
    }
}

impl fmt::Debug for PendingPublish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingPublish").finish_non_exhaustive()
    }
}
