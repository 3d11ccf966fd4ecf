//! Bad input and faults on Pulsar that need no broker restart: a broker down at start, URLs
//! of other schemes, topic names Pulsar cannot carry, a second exclusive consumer.

mod common;

use std::time::Duration;

use electric_core::bus::{BusClient, BusError, ProducerOptions};
use electric_pulsar::PulsarBus;

#[tokio::test]
async fn a_broker_down_at_start_is_retried_until_the_deadline() {
    // Nothing listens on 7353 (the private-Pulsar range's spare port).
    let started = std::time::Instant::now();
    let err = PulsarBus::builder("pulsar://127.0.0.1:7353")
        .connect_deadline(Duration::from_secs(2))
        .connect()
        .await
        .err()
        .expect("no broker");
    assert!(matches!(err, BusError::Unavailable { .. }), "{err}");
    assert!(err.is_retryable());
    // It retried rather than failing on the first refusal (a bound, not a timing goal).
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn urls_of_other_schemes_are_refused() {
    for url in [
        "nats://127.0.0.1:4222",
        "memory:",
        "127.0.0.1:6650",
        "pulsar://",
    ] {
        let err = PulsarBus::connect(url).await.err().expect("refused");
        assert!(matches!(err, BusError::InvalidUrl { .. }), "{url}: {err}");
    }
}

#[tokio::test]
async fn topic_names_pulsar_cannot_carry_are_typed() {
    let Some(url) = common::shared_url().await else {
        return;
    };
    let bus = BusClient::new(PulsarBus::connect(&url).await.unwrap());
    for bad in ["a/b", "a b", "x?y"] {
        let err = bus
            .producer(bad, ProducerOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, BusError::InvalidName { .. }), "{bad}: {err}");
    }
    bus.close().await.unwrap();
}
