//! The seed's bus flows on the memory bus: a section exported to a topic across an exporter
//! restart, and a bus → pipeline → data-manager consumer across a crash.

use std::sync::Arc;
use std::time::Duration;

use electric_core::bus::{BusClient, MemoryBus};
use electric_testkit::bus::ConnectFn;
use electric_testkit::bus_flows;

fn memory() -> ConnectFn {
    let broker = MemoryBus::new();
    Arc::new(move || {
        let connection = broker.connection();
        Box::pin(async move { Ok(BusClient::new(connection)) })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_resumes_after_restart() {
    bus_flows::exporter_resumes_after_restart(memory(), "mem", Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_pipeline_is_idempotent_across_a_crash() {
    bus_flows::consumer_pipeline_is_idempotent_across_a_crash(
        memory(),
        "mem",
        Duration::from_secs(60),
    )
    .await;
}
