//! [`MemoryBus`]: an in-process bus with the semantics of a durable broker.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::error::{BusError, BusResult};
use super::message::{
    headers, AckHandle, Acker, Delivery, Headers, Message, MessageId, OutMessage, Receipt,
};
use super::options::{InitialPosition, ProducerOptions, SubscribeOptions, SubscriptionKind};
use super::{Bus, ProducerBackend, PublishFuture, RawSubscription};

/// Default largest payload of a [`MemoryBus`] (1 MiB, as NATS's default).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Builder of a [`MemoryBus`].
#[derive(Clone, Debug)]
pub struct MemoryBusBuilder {
    max_message_bytes: usize,
    max_messages: usize,
    max_bytes: usize,
    publish_wait: Duration,
    dedup_ids: usize,
}

impl Default for MemoryBusBuilder {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_messages: 100_000,
            max_bytes: 256 * 1024 * 1024,
            publish_wait: Duration::from_secs(5),
            dedup_ids: 10_000,
        }
    }
}

impl MemoryBusBuilder {
    /// Largest payload (default 1 MiB).
    #[must_use]
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.max_message_bytes = n;
        self
    }

    /// Most messages a topic retains (default 100,000). See [`MemoryBus`] for what happens when
    /// a topic is full.
    #[must_use]
    pub fn max_messages(mut self, n: usize) -> Self {
        self.max_messages = n;
        self
    }

    /// Most payload bytes a topic retains (default 256 MiB).
    #[must_use]
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n;
        self
    }

    /// How long a publish to a full topic waits for room (default 5 s).
    #[must_use]
    pub fn publish_wait(mut self, d: Duration) -> Self {
        self.publish_wait = d;
        self
    }

    /// How many recent message ids a topic remembers to de-duplicate publishes (default 10,000).
    #[must_use]
    pub fn dedup_ids(mut self, n: usize) -> Self {
        self.dedup_ids = n;
        self
    }

    /// Builds the bus.
    ///
    /// # Errors
    ///
    /// [`BusError::InvalidConfig`] for a limit of 0 or a message limit above the byte limit.
    pub fn build(self) -> BusResult<MemoryBus> {
        if self.max_message_bytes == 0 || self.max_messages == 0 || self.max_bytes == 0 {
            return Err(BusError::InvalidConfig(
                "memory bus limits must be at least 1".into(),
            ));
        }
        if self.max_message_bytes > self.max_bytes {
            return Err(BusError::InvalidConfig(
                "max_message_bytes is above the topic's max_bytes".into(),
            ));
        }
        Ok(MemoryBus {
            inner: Arc::new(Shared {
                config: self,
                topics: Mutex::new(HashMap::new()),
                next_consumer: AtomicU64::new(1),
            }),
            closed: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// An in-process bus with a durable broker's semantics, for tests, single-process deployments
/// and the CLI's `memory:` URL.
///
/// Topics are bounded logs. A message is retained while some subscription still needs it
/// (not yet delivered, or delivered and not settled); once every subscription is past it, it is
/// kept only while there is room. When a topic is full of needed messages, a publish waits
/// (backpressure) up to [`MemoryBusBuilder::publish_wait`] and then fails with
/// [`BusError::Backpressure`], having stored nothing. Subscriptions are durable by name for
/// the bus's lifetime. Publishes with an [`OutMessage::id`] seen among the topic's last
/// [`MemoryBusBuilder::dedup_ids`] ids are not stored again (the receipt says `duplicate`).
/// Nothing survives the process.
///
/// A `MemoryBus` is a connection to an in-process broker: clones share the connection, and
/// [`MemoryBus::connection`] opens another to the same broker (as another process would).
/// [`Bus::close`] closes one connection (its subscriptions end, its producers refuse), not the
/// broker.
///
/// # Examples
///
/// ```
/// use electric_core::bus::{BusClient, MemoryBus, ProducerOptions};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let bus = BusClient::new(MemoryBus::builder().max_messages(1000).build()?);
/// let producer = bus.producer("events", ProducerOptions::default()).await?;
/// producer.publish_text("hello").await?;
/// # Ok::<(), electric_core::bus::BusError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct MemoryBus {
    inner: Arc<Shared>,
    /// This connection's closed flag ([`MemoryBus::connection`] makes another).
    closed: Arc<AtomicBool>,
}

struct Shared {
    config: MemoryBusBuilder,
    topics: Mutex<HashMap<String, Arc<Topic>>>,
    next_consumer: AtomicU64,
}

struct Topic {
    name: String,
    state: Mutex<TopicState>,
    /// Woken on every publish, settlement, consumer change and closed connection.
    changed: Notify,
}

struct Stored {
    headers: Headers,
    key: Option<String>,
    payload: Bytes,
}

#[derive(Default)]
struct TopicState {
    /// Messages `first_seq ..`, oldest first.
    log: VecDeque<Stored>,
    first_seq: u64,
    bytes: usize,
    ids: HashMap<String, u64>,
    id_order: VecDeque<String>,
    subs: HashMap<String, SubState>,
}

struct SubState {
    kind: SubscriptionKind,
    /// The next message never delivered to this subscription.
    cursor: u64,
    /// Delivered and not settled: seq → (consumer, redelivery count).
    pending: BTreeMap<u64, (u64, u32)>,
    /// Nacked or abandoned, to deliver again: seq → (not before, redelivery count).
    redeliver: BTreeMap<u64, (Instant, u32)>,
    /// Attached consumers in attach order, with their unsettled counts and prefetch.
    consumers: Vec<ConsumerSlot>,
}

struct ConsumerSlot {
    id: u64,
    unsettled: usize,
    prefetch: usize,
}

impl TopicState {
    fn next_seq(&self) -> u64 {
        self.first_seq + self.log.len() as u64
    }

    /// The oldest seq some subscription still needs.
    fn oldest_needed(&self) -> u64 {
        self.subs
            .values()
            .map(|s| {
                let p = s.pending.keys().next().copied().unwrap_or(u64::MAX);
                let r = s.redeliver.keys().next().copied().unwrap_or(u64::MAX);
                s.cursor.min(p).min(r)
            })
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Drops the oldest message if no subscription needs it; returns whether it did.
    fn drop_oldest(&mut self) -> bool {
        if self.log.is_empty() || self.oldest_needed() <= self.first_seq {
            return false;
        }
        if let Some(m) = self.log.pop_front() {
            self.bytes -= m.payload.len();
            self.first_seq += 1;
        }
        true
    }

    fn get(&self, seq: u64) -> Option<&Stored> {
        let at = seq.checked_sub(self.first_seq)?;
        self.log.get(usize::try_from(at).ok()?)
    }
}

impl MemoryBus {
    /// A bus with default limits.
    pub fn new() -> Self {
        Self::builder()
            .build()
            .unwrap_or_else(|e| unreachable!("default memory bus settings are valid: {e}"))
    }

    /// A builder to set limits.
    pub fn builder() -> MemoryBusBuilder {
        MemoryBusBuilder::default()
    }

    /// Another connection to the same broker: its own subscriptions and producers, the same
    /// topics.
    pub fn connection(&self) -> MemoryBus {
        MemoryBus {
            inner: self.inner.clone(),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    fn topic(&self, name: &str) -> BusResult<Arc<Topic>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        let mut topics = self
            .inner
            .topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(topics
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Topic {
                    name: name.to_owned(),
                    state: Mutex::new(TopicState {
                        first_seq: 1,
                        ..TopicState::default()
                    }),
                    changed: Notify::new(),
                })
            })
            .clone())
    }

    /// Messages `topic` retains now (0 for a topic never used).
    pub fn retained(&self, topic: &str) -> usize {
        let topics = self
            .inner
            .topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        topics.get(topic).map_or(0, |t| t.lock().log.len())
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl Topic {
    fn lock(&self) -> MutexGuard<'_, TopicState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn publish(
        &self,
        config: &MemoryBusBuilder,
        closed: &AtomicBool,
        message: OutMessage,
    ) -> BusResult<Receipt> {
        let deadline = Instant::now() + config.publish_wait;
        let size = message.payload.len();
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                if closed.load(Ordering::Acquire) {
                    return Err(BusError::Closed);
                }
                let mut state = self.lock();
                if let Some(seq) = message.id.as_ref().and_then(|id| state.ids.get(id)) {
                    return Ok(Receipt::with_duplicate(MessageId::Sequence(*seq), true));
                }
                while state.log.len() >= config.max_messages
                    || state.bytes + size > config.max_bytes
                {
                    if !state.drop_oldest() {
                        break;
                    }
                }
                if state.log.len() < config.max_messages && state.bytes + size <= config.max_bytes {
                    let seq = state.next_seq();
                    let mut headers = message.headers;
                    if let Some(id) = message.id {
                        headers.insert(headers::MSG_ID, id.clone());
                        state.ids.insert(id.clone(), seq);
                        state.id_order.push_back(id);
                        if state.id_order.len() > config.dedup_ids {
                            if let Some(old) = state.id_order.pop_front() {
                                state.ids.remove(&old);
                            }
                        }
                    }
                    state.bytes += size;
                    state.log.push_back(Stored {
                        headers,
                        key: message.key,
                        payload: message.payload,
                    });
                    drop(state);
                    self.changed.notify_waiters();
                    return Ok(Receipt::new(MessageId::Sequence(seq)));
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(BusError::Backpressure {
                    what: format!("topic {}", self.name),
                    waited: config.publish_wait,
                });
            }
        }
    }

    /// Takes the next message for consumer `consumer` of subscription `sub`, or says when to
    /// look again (`Err(None)`: on the next change).
    fn take(&self, sub: &str, consumer: u64) -> Result<(Message, u64), Option<Instant>> {
        let mut state = self.lock();
        let first_seq = state.first_seq;
        let next_seq = state.next_seq();
        let now = Instant::now();
        // Pick the message without changing anything, then record the delivery.
        let (seq, redeliveries, wake) = {
            let s = state.subs.get(sub).ok_or(None)?;
            let pos = s
                .consumers
                .iter()
                .position(|c| c.id == consumer)
                .ok_or(None)?;
            let single_active = matches!(
                s.kind,
                SubscriptionKind::Exclusive | SubscriptionKind::Failover
            );
            if (single_active && pos != 0)
                || s.consumers[pos].unsettled >= s.consumers[pos].prefetch
            {
                return Err(None);
            }
            let ready = s
                .redeliver
                .iter()
                .find(|(_, (at, _))| *at <= now)
                .map(|(seq, (_, n))| (*seq, *n));
            let wake = s.redeliver.values().map(|(at, _)| *at).min();
            match ready {
                Some((seq, n)) => (seq, n, wake),
                None => {
                    let cursor = s.cursor.max(first_seq);
                    if cursor >= next_seq {
                        return Err(wake);
                    }
                    (cursor, 0, wake)
                }
            }
        };
        let mut message = {
            // Retention never drops a message a subscription needs.
            let stored = state.get(seq).ok_or(wake)?;
            let mut m = Message::new(
                self.name.clone(),
                MessageId::Sequence(seq),
                stored.payload.clone(),
            );
            m.headers = stored.headers.clone();
            m.key = stored.key.clone();
            m
        };
        message.redelivery_count = redeliveries;
        let s = state.subs.get_mut(sub).ok_or(None)?;
        if s.redeliver.remove(&seq).is_none() {
            s.cursor = seq + 1;
        }
        s.pending.insert(seq, (consumer, redeliveries));
        if let Some(c) = s.consumers.iter_mut().find(|c| c.id == consumer) {
            c.unsettled += 1;
        }
        Ok((message, seq))
    }

    /// Settles `seq` on `sub`, as delivered to `by`: acked (`redeliver_at` `None`) or back for
    /// redelivery. An ack counts whoever holds the message now; a nack only from its holder.
    fn settle(&self, sub: &str, seq: u64, by: u64, redeliver_at: Option<Instant>) {
        let mut state = self.lock();
        let Some(s) = state.subs.get_mut(sub) else {
            return;
        };
        let holder = s.pending.get(&seq).map(|(c, _)| *c);
        if redeliver_at.is_some() && holder != Some(by) {
            return;
        }
        if let Some((consumer, n)) = s.pending.remove(&seq) {
            if let Some(c) = s.consumers.iter_mut().find(|c| c.id == consumer) {
                c.unsettled -= 1;
            }
            if let Some(at) = redeliver_at {
                s.redeliver.insert(seq, (at, n + 1));
            }
        } else if redeliver_at.is_none() {
            s.redeliver.remove(&seq);
        }
        drop(state);
        self.changed.notify_waiters();
    }

    fn detach(&self, sub: &str, consumer: u64) {
        let mut state = self.lock();
        if let Some(s) = state.subs.get_mut(sub) {
            s.consumers.retain(|c| c.id != consumer);
            let now = Instant::now();
            let abandoned: Vec<(u64, u32)> = s
                .pending
                .iter()
                .filter(|(_, (c, _))| *c == consumer)
                .map(|(seq, (_, n))| (*seq, *n))
                .collect();
            for (seq, n) in abandoned {
                s.pending.remove(&seq);
                s.redeliver.insert(seq, (now, n + 1));
            }
        }
        drop(state);
        self.changed.notify_waiters();
    }
}

#[async_trait]
impl Bus for MemoryBus {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn max_message_bytes(&self) -> usize {
        self.inner.config.max_message_bytes
    }

    async fn open_producer(
        &self,
        topic: &str,
        _options: &ProducerOptions,
    ) -> BusResult<Arc<dyn ProducerBackend>> {
        Ok(Arc::new(MemoryProducer {
            topic: self.topic(topic)?,
            bus: self.clone(),
        }))
    }

    async fn subscribe(&self, options: &SubscribeOptions) -> BusResult<RawSubscription> {
        let topic = self.topic(&options.topic)?;
        let consumer = self.inner.next_consumer.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = topic.lock();
            let next_seq = state.next_seq();
            let first_seq = state.first_seq;
            let s = state
                .subs
                .entry(options.subscription.clone())
                .or_insert_with(|| SubState {
                    kind: options.kind,
                    cursor: match options.initial_position {
                        InitialPosition::Earliest => first_seq,
                        InitialPosition::Latest => next_seq,
                    },
                    pending: BTreeMap::new(),
                    redeliver: BTreeMap::new(),
                    consumers: Vec::new(),
                });
            if !s.consumers.is_empty() {
                if s.kind != options.kind {
                    return Err(BusError::SubscriptionMismatch {
                        subscription: options.subscription.clone(),
                        reason: format!(
                            "it is {} with consumers attached, asked for {}",
                            s.kind.name(),
                            options.kind.name()
                        ),
                    });
                }
                if s.kind == SubscriptionKind::Exclusive {
                    return Err(BusError::SubscriptionBusy {
                        topic: options.topic.clone(),
                        subscription: options.subscription.clone(),
                    });
                }
            }
            s.kind = options.kind;
            s.consumers.push(ConsumerSlot {
                id: consumer,
                unsettled: 0,
                prefetch: options.prefetch,
            });
        }
        let guard = Arc::new(ConsumerGuard {
            closed: self.closed.clone(),
            topic,
            sub: options.subscription.clone(),
            consumer,
        });
        let stream = futures_util::stream::unfold(guard, |guard| async move {
            let delivery = next_delivery(&guard).await?;
            Some((Ok(delivery), guard))
        })
        .boxed();
        Ok(RawSubscription {
            stream,
            buffered: Arc::new(AtomicUsize::new(0)),
        })
    }

    async fn close(&self) -> BusResult<()> {
        self.closed.store(true, Ordering::Release);
        let topics: Vec<Arc<Topic>> = self
            .inner
            .topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for t in topics {
            t.changed.notify_waiters();
        }
        Ok(())
    }
}

/// One attached consumer; detaching (on drop) hands its unsettled messages back.
struct ConsumerGuard {
    closed: Arc<AtomicBool>,
    topic: Arc<Topic>,
    sub: String,
    consumer: u64,
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        self.topic.detach(&self.sub, self.consumer);
    }
}

async fn next_delivery(guard: &Arc<ConsumerGuard>) -> Option<Delivery> {
    let topic = &guard.topic;
    loop {
        let changed = topic.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if guard.closed.load(Ordering::Acquire) {
            return None;
        }
        match topic.take(&guard.sub, guard.consumer) {
            Ok((message, seq)) => {
                let handle = MemoryAck {
                    topic: guard.topic.clone(),
                    sub: guard.sub.clone(),
                    consumer: guard.consumer,
                    seq,
                };
                return Some(Delivery::new(message, Acker::new(Box::new(handle))));
            }
            Err(Some(at)) => {
                let _ = tokio::time::timeout_at(at, changed).await;
            }
            Err(None) => changed.await,
        }
    }
}

/// Settles one delivery. It does not keep the consumer attached: a consumer that goes hands
/// its unsettled messages back, and a late ack of one of them still counts.
struct MemoryAck {
    topic: Arc<Topic>,
    sub: String,
    consumer: u64,
    seq: u64,
}

#[async_trait]
impl AckHandle for MemoryAck {
    async fn ack(self: Box<Self>) -> BusResult<()> {
        self.topic.settle(&self.sub, self.seq, self.consumer, None);
        Ok(())
    }

    async fn nack(self: Box<Self>, delay: Option<Duration>) -> BusResult<()> {
        let at = Instant::now() + delay.unwrap_or(Duration::ZERO);
        self.topic
            .settle(&self.sub, self.seq, self.consumer, Some(at));
        Ok(())
    }

    async fn term(self: Box<Self>) -> BusResult<()> {
        self.topic.settle(&self.sub, self.seq, self.consumer, None);
        Ok(())
    }

    fn dropped(self: Box<Self>) {
        self.topic
            .settle(&self.sub, self.seq, self.consumer, Some(Instant::now()));
    }
}

struct MemoryProducer {
    topic: Arc<Topic>,
    bus: MemoryBus,
}

#[async_trait]
impl ProducerBackend for MemoryProducer {
    async fn send(&self, message: OutMessage) -> BusResult<PublishFuture> {
        // The memory bus stores synchronously: the answer is ready once the publish returns.
        let receipt = self
            .topic
            .publish(&self.bus.inner.config, &self.bus.closed, message)
            .await;
        Ok(async move { receipt }.boxed())
    }

    async fn close(&self) -> BusResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{BusClient, Codec};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn a_full_topic_makes_publishers_wait_then_refuses() {
        rt().block_on(async {
            let bus = BusClient::new(
                MemoryBus::builder()
                    .max_messages(3)
                    .publish_wait(Duration::from_secs(2))
                    .build()
                    .unwrap(),
            );
            let _sub = bus
                .subscribe(SubscribeOptions::new("t", "s"))
                .await
                .unwrap();
            let p = bus.producer("t", ProducerOptions::default()).await.unwrap();
            for _ in 0..3 {
                p.publish_bytes(&b"x"[..]).await.unwrap();
            }
            let err = p.publish_bytes(&b"x"[..]).await.unwrap_err();
            assert!(matches!(err, BusError::Backpressure { .. }), "{err}");
            assert!(err.is_retryable());
        });
    }

    #[test]
    fn without_subscriptions_old_messages_make_room() {
        rt().block_on(async {
            let mem = MemoryBus::builder().max_messages(3).build().unwrap();
            let bus = BusClient::new(mem.clone());
            let p = bus.producer("t", ProducerOptions::default()).await.unwrap();
            for _ in 0..10 {
                p.publish_bytes(&b"x"[..]).await.unwrap();
            }
            assert_eq!(mem.retained("t"), 3);
        });
    }

    #[test]
    fn message_ids_deduplicate_publishes() {
        rt().block_on(async {
            let bus = BusClient::new(MemoryBus::new());
            let p = bus
                .producer("t", ProducerOptions::default().codec(Codec::Lz4))
                .await
                .unwrap();
            let a = p
                .publish(OutMessage::new(&b"1"[..]).id("m1"))
                .await
                .unwrap();
            let b = p
                .publish(OutMessage::new(&b"1"[..]).id("m1"))
                .await
                .unwrap();
            assert!(!a.duplicate);
            assert!(b.duplicate);
            assert_eq!(a.id, b.id);
        });
    }

    #[test]
    fn closing_ends_streams_and_refuses_publishes() {
        rt().block_on(async {
            let bus = BusClient::new(MemoryBus::new());
            let mut sub = bus
                .subscribe(SubscribeOptions::new("t", "s"))
                .await
                .unwrap();
            let p = bus.producer("t", ProducerOptions::default()).await.unwrap();
            bus.bus().close().await.unwrap();
            assert!(sub.next().await.is_none());
            assert!(matches!(
                p.publish_bytes(&b"x"[..]).await,
                Err(BusError::Closed)
            ));
        });
    }
}
