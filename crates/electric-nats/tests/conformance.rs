//! The bus conformance suite against the shared nats-server (`ELECTRIC_TEST_NATS_URL`,
//! default `nats://127.0.0.1:4222`); the persistence check restarts a private server instead
//! (`faults.rs`).

mod common;

use electric_testkit::bus::BusUnderTest;

electric_testkit::bus_conformance!(with_cleanup: async {
    let url = common::shared_url().await?;
    let sut = BusUnderTest::new(
        common::connect(url.clone()),
        common::features(),
    );
    let prefix = sut.prefix.clone();
    Some((sut, async move { common::delete_streams(&url, &prefix).await }))
});
