//! The bus conformance suite against the shared Pulsar standalone (`ELECTRIC_TEST_PULSAR_URL`,
//! default `pulsar://127.0.0.1:6650`; topics deleted through `ELECTRIC_TEST_PULSAR_ADMIN_URL`).

mod common;

use electric_testkit::bus::BusUnderTest;

electric_testkit::bus_conformance!(with_cleanup: async {
    let url = common::shared_url().await?;
    let sut = BusUnderTest::new(common::connect(url), common::features());
    let prefix = sut.prefix.clone();
    Some((sut, async move { common::delete_topics(&common::admin_url(), &prefix) }))
});
