//! The bus conformance suite against [`MemoryBus`].

use std::sync::Arc;

use electric_core::bus::{BusClient, MemoryBus};
use electric_testkit::bus::{BusFeatures, BusUnderTest};

electric_testkit::bus_conformance!(async {
    // One broker per check; every client of the check is a connection to it, as processes
    // share a broker.
    let bus = MemoryBus::builder()
        .max_message_bytes(64 * 1024)
        .build()
        .unwrap();
    Some(BusUnderTest::new(
        Arc::new(move || {
            let connection = bus.connection();
            Box::pin(async move { Ok(BusClient::new(connection)) })
        }),
        BusFeatures::memory(),
    ))
});
