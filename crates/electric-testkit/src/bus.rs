//! The conformance suite every message-bus backend must pass.
//!
//! Run it with [`bus_conformance!`](crate::bus_conformance), giving an async expression that
//! yields `Option<BusUnderTest>` (`None` skips, e.g. when a server is unreachable):
//!
//! ```text
//! electric_testkit::bus_conformance!(async {
//!     Some(electric_testkit::bus::BusUnderTest::new(
//!         std::sync::Arc::new(|| Box::pin(async { Ok(BusClient::new(MemoryBus::new())) })),
//!         BusFeatures::memory(),
//!     ))
//! });
//! ```
//!
//! What a backend promises is said by [`BusFeatures`]; checks of what it does not promise are
//! skipped (with a line on stderr). Every check uses topics and subscriptions under a random
//! prefix, so suites may share a broker; `with_cleanup:` runs a future after each check to delete
//! them.

// A check fails by panicking; `unwrap` shows the error value, which is what a reader needs.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use electric_core::bus::{
    headers, BusClient, BusError, BusResult, Codec, Delivery, InitialPosition, OutMessage,
    ProducerOptions, SubscribeOptions, Subscription, SubscriptionKind, UndecodablePolicy,
};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use rand::RngCore;

use crate::orderbook::OrderBook;

/// Opens a new client on the broker under test (a new connection: another process, or the same
/// one after a restart).
pub type ConnectFn = Arc<dyn Fn() -> BoxFuture<'static, BusResult<BusClient>> + Send + Sync>;
/// Restarts the broker and returns once it accepts connections again.
pub type RestartFn = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// What a backend promises, so the suite skips what it does not.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BusFeatures {
    /// Exclusive subscriptions refuse a second consumer.
    pub exclusive: bool,
    /// Failover subscriptions deliver to one consumer and hand over when it goes.
    pub failover: bool,
    /// Shared subscriptions split messages between consumers.
    pub shared: bool,
    /// Publishes with the same [`OutMessage::id`] are stored once.
    pub dedup: bool,
    /// Acked publishes survive a broker restart (checked when [`BusUnderTest::restart`] is set).
    pub persistent: bool,
    /// A redelivery to another consumer of the subscription (after a crash) carries a
    /// redelivery count of at least 1. (Pulsar counts only on shared subscriptions.)
    pub redelivery_count_across_consumers: bool,
    /// A stalled consumer buffers at most this many times its prefetch.
    pub buffered_per_prefetch: usize,
    /// How long to wait for something that should happen (generous: loaded CI machines).
    pub patience: Duration,
}

impl BusFeatures {
    /// Everything the memory bus promises (no persistence: it is in-process).
    pub fn memory() -> Self {
        Self {
            exclusive: true,
            failover: true,
            shared: true,
            dedup: true,
            persistent: false,
            redelivery_count_across_consumers: true,
            buffered_per_prefetch: 1,
            patience: Duration::from_secs(30),
        }
    }
}

/// A bus to check.
pub struct BusUnderTest {
    /// Opens clients.
    pub connect: ConnectFn,
    /// What it promises.
    pub features: BusFeatures,
    /// Restarts the broker, for the persistence check.
    pub restart: Option<RestartFn>,
    /// Prefix of every topic and subscription the check creates.
    pub prefix: String,
}

impl BusUnderTest {
    /// A bus under test with a random prefix and no restart command.
    pub fn new(connect: ConnectFn, features: BusFeatures) -> Self {
        Self {
            connect,
            features,
            restart: None,
            prefix: crate::unique("bus"),
        }
    }

    /// Sets the restart command.
    #[must_use]
    pub fn restart(mut self, restart: RestartFn) -> Self {
        self.restart = Some(restart);
        self
    }

    /// Sets the prefix (so a cleanup knows it).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    async fn client(&self) -> BusClient {
        (self.connect)()
            .await
            .expect("connect to the bus under test")
    }

    fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }
}

/// Generates one `#[tokio::test]` per conformance check.
///
/// `bus_conformance!(with_cleanup: factory)` takes a factory yielding
/// `Option<(BusUnderTest, impl Future<Output = ()>)>`; the future runs after each check, even a
/// failing one.
#[macro_export]
macro_rules! bus_conformance {
    (@names @$mode:ident $factory:expr) => {
        $crate::bus_conformance!(@$mode $factory;
            publish_returns_ids_and_keeps_order_per_key, unacked_messages_come_back_to_a_new_consumer,
            nack_redelivers_and_term_does_not, shared_subscriptions_split_the_load,
            acked_publishes_survive_a_broker_restart, every_codec_round_trips,
            size_limit_is_exact_and_typed, stalled_consumer_stays_bounded,
            undecodable_messages_follow_the_policy, exclusive_refuses_a_second_consumer,
            failover_hands_over_when_the_active_consumer_goes, initial_position_is_honoured,
            message_ids_deduplicate_publishes, unknown_topic_is_typed);
    };
    (@plain $factory:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(sut) = $factory.await {
                    $crate::bus::$name(sut).await;
                }
            }
        )*
    };
    (@cleanup $factory:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some((sut, cleanup)) = $factory.await {
                    let outcome = ::tokio::spawn($crate::bus::$name(sut)).await;
                    cleanup.await;
                    if let Err(e) = outcome {
                        if e.is_panic() {
                            ::std::panic::resume_unwind(e.into_panic());
                        }
                        panic!("conformance check did not finish: {e}");
                    }
                }
            }
        )*
    };
    (with_cleanup: $factory:expr) => {
        $crate::bus_conformance!(@names @cleanup $factory);
    };
    ($factory:expr) => {
        $crate::bus_conformance!(@names @plain $factory);
    };
}

fn skip(check: &str, why: &str) {
    eprintln!("skipping bus check {check}: {why}");
}

/// The next delivery, failing the check after `patience`.
pub async fn next(sub: &mut Subscription, patience: Duration) -> Delivery {
    match tokio::time::timeout(patience, sub.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("subscription error: {e}"),
        Ok(None) => panic!("subscription ended"),
        Err(_) => panic!("no delivery within {patience:?}"),
    }
}

/// The next item (delivery or error), failing the check after `patience`.
async fn next_item(sub: &mut Subscription, patience: Duration) -> BusResult<Delivery> {
    match tokio::time::timeout(patience, sub.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("subscription ended"),
        Err(_) => panic!("no delivery within {patience:?}"),
    }
}

fn earliest(topic: &str, sub: &str) -> SubscribeOptions {
    SubscribeOptions::new(topic, sub).initial_position(InitialPosition::Earliest)
}

fn text(d: &Delivery) -> String {
    d.text().expect("utf-8 payload").to_owned()
}

/// Messages reach a consumer with their headers and key, in publish order per key, with the
/// ids their publishes returned.
pub async fn publish_returns_ids_and_keeps_order_per_key(sut: BusUnderTest) {
    let p = sut.features.patience;
    let bus = sut.client().await;
    let topic = sut.name("order");
    let mut sub = bus
        .subscribe(earliest(&topic, &sut.name("s")))
        .await
        .unwrap();
    let producer = bus
        .producer(&topic, ProducerOptions::default())
        .await
        .unwrap();
    let mut receipts = BTreeMap::new();
    for i in 0..60u32 {
        let key = format!("k{}", i % 3);
        let msg = OutMessage::new(format!("{key}:{i}"))
            .key(key)
            .header("x-check", i.to_string());
        let receipt = producer.publish(msg).await.unwrap();
        assert!(!receipt.duplicate);
        assert!(
            receipts.insert(receipt.id.to_string(), i).is_none(),
            "ids are unique"
        );
    }
    let mut last: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..60 {
        let d = next(&mut sub, p).await;
        let body = text(&d);
        let (key, i) = body.split_once(':').unwrap();
        let i: u32 = i.parse().unwrap();
        assert_eq!(d.key.as_deref(), Some(key));
        assert_eq!(d.headers.get("x-check"), Some(i.to_string().as_str()));
        assert_eq!(
            receipts.get(&d.id.to_string()),
            Some(&i),
            "delivery id is the receipt's"
        );
        if let Some(prev) = last.insert(key.to_owned(), i) {
            assert!(prev < i, "key {key}: {i} after {prev}");
        }
        d.ack().await.unwrap();
    }
    assert_eq!(last.len(), 3);
}

/// Messages a consumer received but never settled come back to the next consumer of the
/// subscription (at least once).
pub async fn unacked_messages_come_back_to_a_new_consumer(sut: BusUnderTest) {
    let p = sut.features.patience;
    let topic = sut.name("restart");
    let sub_name = sut.name("s");
    let opts = earliest(&topic, &sub_name).ack_timeout(Duration::from_secs(3));
    let first = sut.client().await;
    let mut sub = first.subscribe(opts.clone()).await.unwrap();
    let producer = first
        .producer(&topic, ProducerOptions::default())
        .await
        .unwrap();
    for i in 0..10 {
        producer.publish_text(&format!("m{i}")).await.unwrap();
    }
    let mut held = Vec::new();
    for i in 0..10 {
        let d = next(&mut sub, p).await;
        assert_eq!(text(&d), format!("m{i}"));
        if i < 5 {
            d.ack().await.unwrap();
        } else {
            held.push(d); // received, never settled: the consumer "crashes" holding them
        }
    }
    drop(sub);
    first.close().await.unwrap();

    let second = sut.client().await;
    let mut sub = second.subscribe(opts).await.unwrap();
    let mut back = BTreeSet::new();
    while back.len() < 5 {
        let d = next(&mut sub, p).await;
        let body = text(&d);
        let i: u32 = body[1..].parse().unwrap();
        if i >= 5 {
            if sut.features.redelivery_count_across_consumers {
                assert!(d.redelivery_count >= 1, "{body} is a redelivery");
            }
            back.insert(i);
        }
        d.ack().await.unwrap();
    }
    assert_eq!(back, (5..10).collect());
    drop(held);
    second.close().await.unwrap();
}

/// A nacked message comes back with a higher redelivery count; a terminated one does not.
pub async fn nack_redelivers_and_term_does_not(sut: BusUnderTest) {
    let p = sut.features.patience;
    let bus = sut.client().await;
    let topic = sut.name("nack");
    let mut sub = bus
        .subscribe(earliest(&topic, &sut.name("s")))
        .await
        .unwrap();
    let producer = bus
        .producer(&topic, ProducerOptions::default())
        .await
        .unwrap();
    producer.publish_text("again").await.unwrap();
    let d = next(&mut sub, p).await;
    assert_eq!((text(&d).as_str(), d.redelivery_count), ("again", 0));
    let id = d.id.clone();
    d.nack(Some(Duration::from_millis(100))).await.unwrap();
    let d = next(&mut sub, p).await;
    assert_eq!(text(&d), "again");
    assert_eq!(d.id, id);
    assert!(d.redelivery_count >= 1);
    d.term().await.unwrap();
    producer.publish_text("marker").await.unwrap();
    let d = next(&mut sub, p).await;
    assert_eq!(
        text(&d),
        "marker",
        "a terminated message is not delivered again"
    );
    d.ack().await.unwrap();
}

/// Two consumers of a shared subscription each get part of the messages, and together all.
pub async fn shared_subscriptions_split_the_load(sut: BusUnderTest) {
    if !sut.features.shared {
        return skip("shared_subscriptions_split_the_load", "not supported");
    }
    let p = sut.features.patience;
    let topic = sut.name("shared");
    let opts = earliest(&topic, &sut.name("s"))
        .kind(SubscriptionKind::Shared)
        .prefetch(8);
    let (a, b) = (sut.client().await, sut.client().await);
    let sub_a = a.subscribe(opts.clone()).await.unwrap();
    let sub_b = b.subscribe(opts).await.unwrap();
    let producer = a
        .producer(&topic, ProducerOptions::default())
        .await
        .unwrap();
    const N: usize = 200;
    let mut pending = Vec::new();
    for i in 0..N {
        pending.push(
            producer
                .send(OutMessage::new(format!("{i}")))
                .await
                .unwrap(),
        );
    }
    for r in pending {
        r.await.unwrap();
    }
    let seen = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let run = |mut sub: Subscription, seen: Arc<std::sync::Mutex<HashSet<String>>>| async move {
        let mut mine = 0usize;
        loop {
            if seen.lock().unwrap().len() >= N {
                return mine;
            }
            let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await
            else {
                continue;
            };
            let d = item.expect("delivery");
            tokio::time::sleep(Duration::from_millis(2)).await;
            seen.lock().unwrap().insert(text(&d));
            mine += 1;
            d.ack().await.unwrap();
        }
    };
    let both = async {
        tokio::join!(
            tokio::spawn(run(sub_a, seen.clone())),
            tokio::spawn(run(sub_b, seen.clone()))
        )
    };
    let (ra, rb) = tokio::time::timeout(p * 2, both)
        .await
        .expect("all messages consumed in time");
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(seen.lock().unwrap().len(), N);
    assert!(
        ra > 0 && rb > 0,
        "both consumers got a share: {ra} and {rb}"
    );
}

/// Messages whose publish was acknowledged are there after the broker restarts.
pub async fn acked_publishes_survive_a_broker_restart(sut: BusUnderTest) {
    let (true, Some(restart)) = (sut.features.persistent, sut.restart.clone()) else {
        return skip(
            "acked_publishes_survive_a_broker_restart",
            "not persistent or no restart command",
        );
    };
    let p = sut.features.patience;
    let topic = sut.name("durable");
    let before = sut.client().await;
    let producer = before
        .producer(&topic, ProducerOptions::default())
        .await
        .unwrap();
    // Create the subscription first so brokers that keep messages only for subscriptions
    // keep these.
    drop(
        before
            .subscribe(earliest(&topic, &sut.name("s")))
            .await
            .unwrap(),
    );
    for i in 0..20 {
        producer.publish_text(&format!("d{i}")).await.unwrap();
    }
    before.close().await.unwrap();
    restart().await;
    let after = sut.client().await;
    let mut sub = after
        .subscribe(earliest(&topic, &sut.name("s")))
        .await
        .unwrap();
    let mut got = BTreeSet::new();
    while got.len() < 20 {
        let d = next(&mut sub, p).await;
        got.insert(text(&d));
        d.ack().await.unwrap();
    }
    assert_eq!(got, (0..20).map(|i| format!("d{i}")).collect());
    after.close().await.unwrap();
}

/// Producers with every codec share one topic; one consumer decodes everything.
pub async fn every_codec_round_trips(sut: BusUnderTest) {
    let p = sut.features.patience;
    let topic = sut.name("codecs");
    let reader = sut.client().await;
    let mut sub = reader
        .subscribe(earliest(&topic, &sut.name("s")))
        .await
        .unwrap();
    let book = serde_json::to_vec(&OrderBook::new("MCP_1", 7)).unwrap();
    let mut writers = Vec::new();
    for codec in Codec::ALL {
        let client = sut.client().await;
        let producer = client
            .producer(&topic, ProducerOptions::default().codec(codec))
            .await
            .unwrap();
        let mut payload = book.clone();
        payload.extend_from_slice(codec.name().as_bytes());
        producer
            .publish(OutMessage::new(payload).header("x-codec", codec.name()))
            .await
            .unwrap();
        producer.publish_bytes(&b""[..]).await.unwrap();
        writers.push(client);
    }
    for codec in Codec::ALL {
        let d = next(&mut sub, p).await;
        assert_eq!(d.headers.get("x-codec"), Some(codec.name()));
        assert!(d.payload().starts_with(&book), "{codec}: payload intact");
        assert!(d.payload().ends_with(codec.name().as_bytes()));
        assert_eq!(d.headers.get(headers::CONTENT_ENCODING), None);
        d.ack().await.unwrap();
        let d = next(&mut sub, p).await;
        assert!(d.payload().is_empty(), "{codec}: empty payload");
        d.ack().await.unwrap();
    }
    for client in writers {
        client.close().await.unwrap();
    }
}

/// A payload of exactly the maximum passes (incompressible, with every codec's worst case);
/// one byte more is [`BusError::TooLarge`] and sends nothing.
pub async fn size_limit_is_exact_and_typed(sut: BusUnderTest) {
    let p = sut.features.patience;
    let bus = sut.client().await;
    let max = bus.max_message_bytes();
    let topic = sut.name("size");
    let mut sub = bus
        .subscribe(earliest(&topic, &sut.name("s")))
        .await
        .unwrap();
    let mut big = vec![0u8; max];
    rand::thread_rng().fill_bytes(&mut big);
    for codec in Codec::ALL {
        let client = sut.client().await;
        let producer = client
            .producer(&topic, ProducerOptions::default().codec(codec))
            .await
            .unwrap();
        producer.publish_bytes(big.clone()).await.unwrap();
        let err = producer
            .publish_bytes(vec![1u8; max + 1])
            .await
            .unwrap_err();
        assert!(
            matches!(err, BusError::TooLarge { size, limit } if size == max + 1 && limit == max),
            "{err}"
        );
        assert!(!err.is_retryable());
        client.close().await.unwrap();
    }
    for _ in Codec::ALL {
        let d = next(&mut sub, p).await;
        assert_eq!(d.payload().len(), max);
        assert!(d.payload()[..] == big[..]);
        d.ack().await.unwrap();
    }
    let producer = bus
        .producer(&topic, ProducerOptions::default())
        .await
        .unwrap();
    producer.publish_text("marker").await.unwrap();
    let d = next(&mut sub, p).await;
    assert_eq!(text(&d), "marker", "the refused messages were not sent");
    d.ack().await.unwrap();
}

/// A consumer that stops reading buffers no more than its prefetch allows; nothing is lost.
pub async fn stalled_consumer_stays_bounded(sut: BusUnderTest) {
    let p = sut.features.patience;
    let bus = sut.client().await;
    let topic = sut.name("stall");
    let prefetch = 16;
    let mut sub = bus
        .subscribe(earliest(&topic, &sut.name("s")).prefetch(prefetch))
        .await
        .unwrap();
    let producer = bus
        .producer(&topic, ProducerOptions::default())
        .await
        .unwrap();
    const N: usize = 400;
    let mut pending = Vec::new();
    for i in 0..N {
        pending.push(
            producer
                .send(OutMessage::new(format!("{i}")))
                .await
                .unwrap(),
        );
    }
    for r in pending {
        r.await.unwrap();
    }
    // Give the client time to fill its buffers as far as it would.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let limit = prefetch * sut.features.buffered_per_prefetch;
    assert!(
        sub.buffered_len() <= limit,
        "{} buffered behind a stalled consumer, limit {limit}",
        sub.buffered_len()
    );
    let mut got = BTreeSet::new();
    while got.len() < N {
        let d = next(&mut sub, p).await;
        assert!(sub.buffered_len() <= limit);
        got.insert(text(&d).parse::<usize>().unwrap());
        d.ack().await.unwrap();
    }
    assert_eq!(got, (0..N).collect());
}

/// A payload naming an unknown codec, or not decompressing, is reported as
/// [`BusError::Undecodable`] and settled per policy; the stream goes on.
pub async fn undecodable_messages_follow_the_policy(sut: BusUnderTest) {
    let p = sut.features.patience;
    let bus = sut.client().await;
    let topic = sut.name("undecodable");
    let dlq = sut.name("dlq");
    let opts = earliest(&topic, &sut.name("s"))
        .on_undecodable(UndecodablePolicy::DeadLetter(dlq.clone()))
        .nack_delay(Duration::from_millis(100));
    let mut dead = bus
        .subscribe(earliest(&dlq, &sut.name("dlq-s")))
        .await
        .unwrap();
    let mut sub = bus.subscribe(opts).await.unwrap();
    let producer = bus
        .producer(&topic, ProducerOptions::default())
        .await
        .unwrap();
    producer
        .publish(OutMessage::new(&b"abc"[..]).header(headers::CONTENT_ENCODING, "brotli"))
        .await
        .unwrap();
    producer
        .publish(OutMessage::new(&b"\x00not zstd"[..]).header(headers::CONTENT_ENCODING, "zstd"))
        .await
        .unwrap();
    producer.publish_text("good").await.unwrap();
    for want in ["unknown codec", "does not decompress"] {
        match next_item(&mut sub, p).await {
            Err(BusError::Undecodable {
                reason, topic: t, ..
            }) => {
                assert!(reason.contains(want), "{reason}");
                assert_eq!(t, topic);
            }
            other => panic!("expected undecodable, got {other:?}"),
        }
    }
    let d = next(&mut sub, p).await;
    assert_eq!(text(&d), "good");
    d.ack().await.unwrap();
    for payload in [&b"abc"[..], &b"\x00not zstd"[..]] {
        let d = next(&mut dead, p).await;
        assert_eq!(&d.payload()[..], payload);
        assert_eq!(
            d.headers.get(headers::DEAD_LETTER_TOPIC),
            Some(topic.as_str())
        );
        assert!(d.headers.get(headers::DEAD_LETTER_REASON).is_some());
        d.ack().await.unwrap();
    }

    // Nack policy: the message keeps coming back (a newer consumer might know the codec).
    let topic2 = sut.name("undecodable-nack");
    let mut sub = bus
        .subscribe(
            earliest(&topic2, &sut.name("s2"))
                .on_undecodable(UndecodablePolicy::Nack)
                .nack_delay(Duration::from_millis(50)),
        )
        .await
        .unwrap();
    let producer = bus
        .producer(&topic2, ProducerOptions::default())
        .await
        .unwrap();
    producer
        .publish(OutMessage::new(&b"abc"[..]).header(headers::CONTENT_ENCODING, "brotli"))
        .await
        .unwrap();
    for _ in 0..2 {
        assert!(matches!(
            next_item(&mut sub, p).await,
            Err(BusError::Undecodable { .. })
        ));
    }
}

/// A second consumer of an exclusive subscription is refused while the first is attached.
pub async fn exclusive_refuses_a_second_consumer(sut: BusUnderTest) {
    if !sut.features.exclusive {
        return skip("exclusive_refuses_a_second_consumer", "not supported");
    }
    let (a, b) = (sut.client().await, sut.client().await);
    let opts = earliest(&sut.name("excl"), &sut.name("s"));
    let first = a.subscribe(opts.clone()).await.unwrap();
    let err = b.subscribe(opts.clone()).await.unwrap_err();
    assert!(matches!(err, BusError::SubscriptionBusy { .. }), "{err}");
    drop(first);
    a.close().await.unwrap();
    // Once the holder is gone the subscription is free again.
    let deadline = tokio::time::Instant::now() + sut.features.patience;
    loop {
        match b.subscribe(opts.clone()).await {
            Ok(_) => break,
            Err(BusError::SubscriptionBusy { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("subscription not released: {e}"),
        }
    }
}

/// Of two failover consumers one receives everything; when it goes, the other takes over.
pub async fn failover_hands_over_when_the_active_consumer_goes(sut: BusUnderTest) {
    if !sut.features.failover {
        return skip(
            "failover_hands_over_when_the_active_consumer_goes",
            "not supported",
        );
    }
    let p = sut.features.patience;
    let topic = sut.name("failover");
    // A short ack timeout: what the server was sending the consumer that goes may come back
    // only after it (JetStream).
    let opts = earliest(&topic, &sut.name("s"))
        .kind(SubscriptionKind::Failover)
        .ack_timeout(Duration::from_secs(3));
    let (a, b) = (sut.client().await, sut.client().await);
    let mut sub_a = a.subscribe(opts.clone()).await.unwrap();
    let mut sub_b = b.subscribe(opts).await.unwrap();
    let producer = a
        .producer(&topic, ProducerOptions::default())
        .await
        .unwrap();
    for i in 0..5 {
        producer.publish_text(&format!("f{i}")).await.unwrap();
    }
    // Whichever is active gets all five in order; the standby gets nothing meanwhile.
    let (active, mut standby, active_client) = tokio::select! {
        Some(Ok(d)) = sub_a.next() => { assert_eq!(text(&d), "f0"); d.ack().await.unwrap(); (sub_a, sub_b, a.clone()) }
        Some(Ok(d)) = sub_b.next() => { assert_eq!(text(&d), "f0"); d.ack().await.unwrap(); (sub_b, sub_a, b.clone()) }
    };
    let mut active = active;
    for i in 1..5 {
        let d = next(&mut active, p).await;
        assert_eq!(text(&d), format!("f{i}"));
        d.ack().await.unwrap();
    }
    drop(active);
    let _ = active_client;
    for i in 5..8 {
        producer.publish_text(&format!("f{i}")).await.unwrap();
    }
    // The standby takes over: everything after the handover reaches it (at least once; in
    // order except for messages the old consumer had been sent, which come back later).
    let mut got = BTreeSet::new();
    while got.len() < 3 {
        let d = next(&mut standby, p).await;
        got.insert(text(&d));
        d.ack().await.unwrap();
    }
    assert_eq!(got, (5..8).map(|i| format!("f{i}")).collect());
}

/// `Latest` starts after what the topic holds; `Earliest` at the oldest message.
pub async fn initial_position_is_honoured(sut: BusUnderTest) {
    let p = sut.features.patience;
    let bus = sut.client().await;
    let topic = sut.name("position");
    // Create the topic (and one subscription so brokers keep the messages) before publishing.
    let mut keeper = bus
        .subscribe(earliest(&topic, &sut.name("keeper")))
        .await
        .unwrap();
    let producer = bus
        .producer(&topic, ProducerOptions::default())
        .await
        .unwrap();
    for i in 0..3 {
        producer.publish_text(&format!("old{i}")).await.unwrap();
    }
    let d = next(&mut keeper, p).await;
    assert_eq!(text(&d), "old0");
    let mut latest = bus
        .subscribe(SubscribeOptions::new(&topic, sut.name("latest")))
        .await
        .unwrap();
    let mut first = bus
        .subscribe(earliest(&topic, &sut.name("earliest")))
        .await
        .unwrap();
    producer.publish_text("new").await.unwrap();
    let d = next(&mut latest, p).await;
    assert_eq!(text(&d), "new");
    d.ack().await.unwrap();
    for want in ["old0", "old1", "old2", "new"] {
        let d = next(&mut first, p).await;
        assert_eq!(text(&d), want);
        d.ack().await.unwrap();
    }
}

/// Publishing twice with one message id stores it once; the second receipt says so.
pub async fn message_ids_deduplicate_publishes(sut: BusUnderTest) {
    if !sut.features.dedup {
        return skip("message_ids_deduplicate_publishes", "not supported");
    }
    let p = sut.features.patience;
    let bus = sut.client().await;
    let topic = sut.name("dedup");
    let mut sub = bus
        .subscribe(earliest(&topic, &sut.name("s")))
        .await
        .unwrap();
    let producer = bus
        .producer(&topic, ProducerOptions::default())
        .await
        .unwrap();
    let a = producer
        .publish(OutMessage::new("once").id("m-1"))
        .await
        .unwrap();
    let b = producer
        .publish(OutMessage::new("once").id("m-1"))
        .await
        .unwrap();
    assert!(!a.duplicate && b.duplicate);
    assert_eq!(a.id, b.id);
    producer.publish_text("marker").await.unwrap();
    let d = next(&mut sub, p).await;
    assert_eq!((text(&d).as_str(), d.msg_id()), ("once", Some("m-1")));
    d.ack().await.unwrap();
    let d = next(&mut sub, p).await;
    assert_eq!(text(&d), "marker", "the duplicate was not stored");
    d.ack().await.unwrap();
}

/// Publishing on a topic with no producer, or to a bad name, is a typed error.
pub async fn unknown_topic_is_typed(sut: BusUnderTest) {
    let bus = sut.client().await;
    let err = bus
        .publish_text(&sut.name("nobody"), "x")
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::UnknownTopic { .. }), "{err}");
    let err = bus
        .producer("has space", ProducerOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::InvalidName { .. }), "{err}");
    let err = bus
        .subscribe(SubscribeOptions::new("", "s"))
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::InvalidName { .. }), "{err}");
}

/// Runs `f` until it returns `Some`, every 100 ms, up to `patience`.
pub async fn eventually<T, F, Fut>(patience: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
