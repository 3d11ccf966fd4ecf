//! The seed's bus flows on the shared Pulsar standalone: a section exported to a topic across
//! an exporter restart, and a bus → pipeline → data-manager consumer across a crash.

mod common;

use std::time::Duration;

use electric_testkit::bus_flows;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_resumes_after_restart() {
    let Some(url) = common::shared_url().await else {
        return;
    };
    let prefix = electric_testkit::unique("flow");
    bus_flows::exporter_resumes_after_restart(
        common::connect(url),
        &prefix,
        Duration::from_secs(60),
    )
    .await;
    common::delete_topics(&common::admin_url(), &prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_pipeline_is_idempotent_across_a_crash() {
    let Some(url) = common::shared_url().await else {
        return;
    };
    let prefix = electric_testkit::unique("flow");
    bus_flows::consumer_pipeline_is_idempotent_across_a_crash(
        common::connect(url),
        &prefix,
        Duration::from_secs(120),
    )
    .await;
    common::delete_topics(&common::admin_url(), &prefix);
}
