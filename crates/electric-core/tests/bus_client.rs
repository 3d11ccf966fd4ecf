//! `BusClient` behaviour on the memory bus: the consumer loop's handling of handler errors
//! and panics, dead-lettering, the typed consumer, the producer cache and the in-flight bound.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use electric_core::bus::{
    headers, Bus, BusClient, BusError, BusResult, ConsumeConfig, InitialPosition, MemoryBus,
    MessageId, OutMessage, ProducerBackend, ProducerOptions, PublishFuture, RawSubscription,
    Receipt, SubscribeOptions, UndecodablePolicy,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

fn earliest(topic: &str, sub: &str) -> SubscribeOptions {
    SubscribeOptions::new(topic, sub).initial_position(InitialPosition::Earliest)
}

#[test]
fn public_futures_and_streams_are_send() {
    fn send<T: Send + 'static>(_: &T) {}
    let bus = BusClient::new(MemoryBus::new());
    let f = {
        let bus = bus.clone();
        async move { bus.publish_text("t", "x").await }
    };
    send(&f);
    let s = {
        let bus = bus.clone();
        async move { bus.subscribe(SubscribeOptions::new("t", "s")).await }
    };
    send(&s);
    fn stream_send<T: futures_util::Stream + Send + 'static>() {}
    stream_send::<electric_core::bus::Subscription>();
    stream_send::<electric_core::bus::TypedSubscription<u32>>();
}

#[tokio::test]
async fn consume_retries_failures_and_panics_then_dead_letters() {
    let bus = BusClient::new(MemoryBus::new());
    let producer = bus
        .producer("jobs", ProducerOptions::default())
        .await
        .unwrap();
    for body in ["ok-1", "fails", "panics", "ok-2"] {
        producer.publish_text(body).await.unwrap();
    }
    let mut dead = bus.subscribe(earliest("jobs-dlq", "audit")).await.unwrap();
    let cancel = CancellationToken::new();
    let handled = Arc::new(AtomicU32::new(0));
    let config = ConsumeConfig::default()
        .nack_delay(Duration::from_millis(10))
        .max_deliveries(Some(3))
        .dead_letter("jobs-dlq");
    let consumer = {
        let (bus, cancel, handled) = (bus.clone(), cancel.clone(), handled.clone());
        tokio::spawn(async move {
            bus.consume(earliest("jobs", "workers"), config, cancel, move |m| {
                let handled = handled.clone();
                async move {
                    match m.text().unwrap() {
                        "fails" => Err(std::io::Error::other("handler refused")),
                        "panics" => panic!("handler bug"),
                        _ => {
                            handled.fetch_add(1, Ordering::SeqCst);
                            Ok(())
                        }
                    }
                }
            })
            .await
        })
    };
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(30), dead.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(d.headers.get(headers::DEAD_LETTER_TOPIC), Some("jobs"));
        reasons.push((
            d.text().unwrap().to_owned(),
            d.headers
                .get(headers::DEAD_LETTER_REASON)
                .unwrap()
                .to_owned(),
        ));
        d.ack().await.unwrap();
    }
    reasons.sort();
    assert_eq!(reasons[0].0, "fails");
    assert!(reasons[0].1.contains("handler refused"), "{:?}", reasons[0]);
    assert_eq!(reasons[1].0, "panics");
    assert!(reasons[1].1.contains("handler bug"), "{:?}", reasons[1]);
    cancel.cancel();
    let report = consumer.await.unwrap().unwrap();
    assert_eq!(handled.load(Ordering::SeqCst), 2);
    assert_eq!(report.handled, 2);
    assert_eq!(report.failed, 3);
    assert_eq!(report.panicked, 3);
    assert_eq!(report.dead_lettered, 2);
}

#[tokio::test]
async fn consume_without_dead_letter_terminates() {
    let bus = BusClient::new(MemoryBus::new());
    let producer = bus
        .producer("jobs", ProducerOptions::default())
        .await
        .unwrap();
    producer.publish_text("fails").await.unwrap();
    let cancel = CancellationToken::new();
    let config = ConsumeConfig::default()
        .nack_delay(Duration::from_millis(1))
        .max_deliveries(Some(2));
    let calls = Arc::new(AtomicU32::new(0));
    let report = {
        let (cancel2, calls) = (cancel.clone(), calls.clone());
        bus.consume(earliest("jobs", "w"), config, cancel.clone(), move |_m| {
            // The second (last allowed) failure also stops the loop once it is settled.
            if calls.fetch_add(1, Ordering::SeqCst) == 1 {
                cancel2.cancel();
            }
            async move { Err::<(), _>("no") }
        })
        .await
        .unwrap()
    };
    assert_eq!(
        (report.failed, report.terminated, report.handled),
        (2, 1, 0)
    );
    // Terminated: a new consumer of the subscription does not get it again.
    let mut sub = bus.subscribe(earliest("jobs", "w")).await.unwrap();
    producer.publish_text("marker").await.unwrap();
    let d = sub.next().await.unwrap().unwrap();
    assert_eq!(d.text().unwrap(), "marker");
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Trade {
    qty: i64,
}

#[tokio::test]
async fn typed_consumer_settles_payloads_of_the_wrong_type() {
    let bus = BusClient::new(MemoryBus::new());
    let opts = earliest("trades", "typed").on_undecodable(UndecodablePolicy::Term);
    let mut typed = bus.subscribe(opts).await.unwrap().json::<Trade>();
    bus.producer("trades", ProducerOptions::default())
        .await
        .unwrap();
    bus.publish_json("trades", &Trade { qty: 5 }).await.unwrap();
    bus.publish_text("trades", "not json").await.unwrap();
    bus.publish_json("trades", &Trade { qty: -2 })
        .await
        .unwrap();
    let (t, d) = typed.next().await.unwrap().unwrap();
    assert_eq!(t, Trade { qty: 5 });
    assert_eq!(d.headers.get(headers::CONTENT_TYPE), Some(headers::JSON));
    d.ack().await.unwrap();
    let err = typed.next().await.unwrap().unwrap_err();
    assert!(matches!(err, BusError::Undecodable { .. }), "{err}");
    let (t, d) = typed.next().await.unwrap().unwrap();
    assert_eq!(t, Trade { qty: -2 });
    d.ack().await.unwrap();
}

#[tokio::test]
async fn producers_are_cached_per_topic_and_disposed() {
    let bus = BusClient::new(MemoryBus::new());
    let a = bus
        .producer("t", ProducerOptions::default().max_in_flight(3))
        .await
        .unwrap();
    // A second registration is a no-op: the first producer (and its options) stays.
    let b = bus.producer("t", ProducerOptions::default()).await.unwrap();
    assert_eq!(b.options().max_in_flight, 3);
    assert_eq!(a.topic(), b.topic());
    assert!(bus.dispose_topic("t").await.unwrap());
    assert!(!bus.dispose_topic("t").await.unwrap());
    assert!(matches!(
        bus.publish_text("t", "x").await,
        Err(BusError::UnknownTopic { .. })
    ));
    let err = bus
        .producer("u", ProducerOptions::default().max_in_flight(0))
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::InvalidConfig(_)), "{err}");
}

/// A bus whose broker answers a publish only when the test says so.
struct HeldBus {
    release: Arc<tokio::sync::Semaphore>,
}

#[async_trait::async_trait]
impl Bus for HeldBus {
    fn backend(&self) -> &'static str {
        "held"
    }

    fn max_message_bytes(&self) -> usize {
        1024
    }

    async fn open_producer(
        &self,
        _topic: &str,
        _options: &ProducerOptions,
    ) -> BusResult<Arc<dyn ProducerBackend>> {
        Ok(Arc::new(HeldProducer(self.release.clone())))
    }

    async fn subscribe(&self, _options: &SubscribeOptions) -> BusResult<RawSubscription> {
        Err(BusError::InvalidConfig(
            "held bus has no subscriptions".into(),
        ))
    }

    async fn close(&self) -> BusResult<()> {
        Ok(())
    }
}

struct HeldProducer(Arc<tokio::sync::Semaphore>);

#[async_trait::async_trait]
impl ProducerBackend for HeldProducer {
    async fn send(&self, _message: OutMessage) -> BusResult<PublishFuture> {
        let release = self.0.clone();
        Ok(Box::pin(async move {
            release.acquire().await.unwrap().forget();
            Ok(Receipt::new(MessageId::Sequence(1)))
        }))
    }

    async fn close(&self) -> BusResult<()> {
        Ok(())
    }
}

#[tokio::test]
async fn in_flight_publishes_are_bounded() {
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let bus = BusClient::new(HeldBus {
        release: release.clone(),
    });
    let producer = bus
        .producer(
            "t",
            ProducerOptions::default()
                .max_in_flight(2)
                .max_wait(Duration::from_millis(50)),
        )
        .await
        .unwrap();
    let first = producer.send(OutMessage::new("1")).await.unwrap();
    let second = producer.send(OutMessage::new("2")).await.unwrap();
    assert_eq!(producer.in_flight(), 2);
    let err = producer.send(OutMessage::new("3")).await.unwrap_err();
    assert!(matches!(err, BusError::Backpressure { .. }), "{err}");
    // The broker answers one: its place is free even though nobody awaited the answer yet.
    release.add_permits(1);
    let third = tokio::time::timeout(Duration::from_secs(10), producer.send(OutMessage::new("3")))
        .await
        .unwrap()
        .unwrap();
    release.add_permits(2);
    for p in [first, second, third] {
        p.await.unwrap();
    }
    assert_eq!(producer.in_flight(), 0);
    let err = producer
        .send(OutMessage::new(vec![0u8; 1025]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BusError::TooLarge {
                size: 1025,
                limit: 1024
            }
        ),
        "{err}"
    );
}
