//! Faults and bad input on NATS: a server restarted mid-run (private `nats-server`s on ports
//! 7310–7349, stopped by PID), a server down at start, unknown URLs, topics and settings.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::PrivateNats;
use electric_core::bus::{
    BusClient, BusError, InitialPosition, OutMessage, ProducerOptions, SubscribeOptions,
    SubscriptionKind,
};
use electric_nats::NatsBus;
use electric_testkit::bus::{BusUnderTest, RestartFn};
use futures_util::StreamExt;
use tokio::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_publishes_survive_a_private_server_restart() {
    let Some(server) = PrivateNats::start().await else {
        return;
    };
    let url = server.url();
    let server = Arc::new(Mutex::new(server));
    let restart: RestartFn = Arc::new(move || {
        let server = server.clone();
        Box::pin(async move { server.lock().await.restart().await })
    });
    let sut = BusUnderTest::new(common::connect(url), common::features()).restart(restart);
    electric_testkit::bus::acked_publishes_survive_a_broker_restart(sut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_run_loses_and_duplicates_nothing() {
    let Some(mut server) = PrivateNats::start().await else {
        return;
    };
    let bus = NatsBus::builder(server.url())
        .ack_timeout(Duration::from_secs(1))
        .publish_deadline(Duration::from_secs(60))
        .connect()
        .await
        .unwrap();
    let client = BusClient::new(bus.clone());
    let topic = "midrun";
    let producer = client
        .producer(topic, ProducerOptions::default().max_in_flight(32))
        .await
        .unwrap();
    let mut sub = client
        .subscribe(
            SubscribeOptions::new(topic, "reader")
                .initial_position(InitialPosition::Earliest)
                .ack_timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    const N: usize = 400;
    let publisher = tokio::spawn(async move {
        let mut pending = Vec::new();
        for i in 0..N {
            // Every message carries its own id, so a retry after the restart is stored once.
            let msg = OutMessage::new(format!("{i}")).id(format!("midrun-{i}"));
            pending.push(producer.send(msg).await.unwrap());
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let mut ok = 0;
        for p in pending {
            p.await.unwrap();
            ok += 1;
        }
        ok
    });
    let mut got = BTreeSet::new();
    let mut restarted = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while got.len() < N {
        assert!(
            tokio::time::Instant::now() < deadline,
            "got {} of {N}",
            got.len()
        );
        if !restarted && got.len() >= N / 4 {
            server.restart().await;
            restarted = true;
        }
        match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
            Ok(Some(Ok(d))) => {
                got.insert(d.text().unwrap().parse::<usize>().unwrap());
                let _ = d.ack().await;
            }
            Ok(Some(Err(e))) => eprintln!("subscription error (retried): {e}"),
            Ok(None) => panic!("subscription ended"),
            Err(_) => {}
        }
    }
    assert!(restarted);
    assert_eq!(
        publisher.await.unwrap(),
        N,
        "every publish was acknowledged"
    );
    assert_eq!(got, (0..N).collect(), "every message was delivered");
    let info = bus
        .jetstream()
        .get_stream(bus.stream_name(topic))
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.state.messages, N as u64, "retries were de-duplicated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_at_start_is_retried_until_the_deadline() {
    let Some(mut server) = PrivateNats::start().await else {
        return;
    };
    let url = server.url();
    server.stop();
    let err = NatsBus::builder(&url)
        .connect_deadline(Duration::from_secs(1))
        .connect()
        .await
        .err()
        .expect("no server");
    assert!(matches!(err, BusError::Unavailable { .. }), "{err}");
    assert!(err.is_retryable());

    // A server that comes up within the deadline is found.
    let connecting = tokio::spawn(async move {
        NatsBus::builder(url)
            .connect_deadline(Duration::from_secs(60))
            .connect()
            .await
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.restart().await;
    let bus = connecting.await.unwrap().unwrap();
    let client = BusClient::new(bus);
    client
        .producer("late", ProducerOptions::default())
        .await
        .unwrap();
    client.publish_text("late", "made it").await.unwrap();
}

#[tokio::test]
async fn urls_of_other_schemes_are_refused() {
    for url in ["pulsar://127.0.0.1:6650", "memory:", "", "nats://"] {
        let err = NatsBus::connect(url).await.err().expect("refused");
        assert!(matches!(err, BusError::InvalidUrl { .. }), "{url}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topics_and_mismatched_subscriptions_are_typed() {
    let Some(url) = common::shared_url().await else {
        return;
    };
    let prefix = electric_testkit::unique("nf");
    let strict = BusClient::new(
        NatsBus::builder(&url)
            .create_topics(false)
            .connect()
            .await
            .unwrap(),
    );
    let topic = format!("{prefix}-missing");
    let err = strict
        .producer(&topic, ProducerOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::UnknownTopic { .. }), "{err}");
    let err = strict
        .subscribe(SubscribeOptions::new(&topic, "s"))
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::UnknownTopic { .. }), "{err}");
    let err = strict
        .producer("has.dots", ProducerOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::InvalidName { .. }), "{err}");

    let bus = BusClient::new(NatsBus::connect(&url).await.unwrap());
    let topic = format!("{prefix}-kinds");
    let _shared = bus
        .subscribe(SubscribeOptions::new(&topic, "s").kind(SubscriptionKind::Shared))
        .await
        .unwrap();
    let err = bus
        .subscribe(SubscribeOptions::new(&topic, "s").kind(SubscriptionKind::Exclusive))
        .await
        .unwrap_err();
    assert!(
        matches!(err, BusError::SubscriptionMismatch { .. }),
        "{err}"
    );
    common::delete_streams(&url, &prefix).await;
}
