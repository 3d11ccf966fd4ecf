//! Broker restarts on a private Pulsar standalone (ports 7350–7352, stopped by PID): acked
//! publishes survive, and a producer and a consumer carry on across the restart. Each start
//! of the JVM takes 30–90 s on two cores, so the checks share one broker.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::PrivatePulsar;
use electric_core::bus::{
    BusClient, InitialPosition, OutMessage, ProducerOptions, SubscribeOptions,
};
use electric_pulsar::PulsarBus;
use electric_testkit::bus::{BusUnderTest, RestartFn};
use futures_util::StreamExt;
use tokio::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_publishes_survive_restarts_and_clients_carry_on() {
    let Some(server) = PrivatePulsar::start().await else {
        return;
    };
    let url = server.url();
    let server = Arc::new(Mutex::new(server));

    // The suite's persistence check.
    let restart: RestartFn = {
        let server = server.clone();
        Arc::new(move || {
            let server = server.clone();
            Box::pin(async move { server.lock().await.restart().await })
        })
    };
    let sut = BusUnderTest::new(common::connect(url.clone()), common::features()).restart(restart);
    electric_testkit::bus::acked_publishes_survive_a_broker_restart(sut).await;

    // A producer and a consumer that live through a restart.
    let bus = BusClient::new(
        PulsarBus::builder(&url)
            .operation_timeout(Duration::from_secs(20))
            .connect()
            .await
            .unwrap(),
    );
    let topic = "carry-on";
    let mut sub = bus
        .subscribe(
            SubscribeOptions::new(topic, "reader")
                .initial_position(InitialPosition::Earliest)
                .ack_timeout(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let producer = bus
        .producer(topic, ProducerOptions::default())
        .await
        .unwrap();
    let mut acked = BTreeSet::new();
    for i in 0..50 {
        producer
            .publish(OutMessage::new(format!("{i}")))
            .await
            .unwrap();
        acked.insert(i);
    }
    server.lock().await.restart().await;
    // Publishes right after the restart may fail while the client reconnects; each is retried
    // until acknowledged (a retry of an indeterminate one may store a duplicate).
    for i in 50..100 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            match producer.publish(OutMessage::new(format!("{i}"))).await {
                Ok(_) => break,
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("publish {i} after the restart: {e}"),
            }
        }
        acked.insert(i);
    }
    let mut got = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while got.len() < acked.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} after the restart",
            got.len(),
            acked.len()
        );
        match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
            Ok(Some(Ok(d))) => {
                got.insert(d.text().unwrap().parse::<u32>().unwrap());
                let _ = d.ack().await;
            }
            Ok(Some(Err(e))) => eprintln!("subscription error (it goes on): {e}"),
            Ok(None) => panic!("subscription ended"),
            Err(_) => {}
        }
    }
    assert_eq!(got, acked);
}
