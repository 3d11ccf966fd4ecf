//! The Store conformance suite against MemoryStore.

use std::sync::Arc;

use electric_core::MemoryStore;
use electric_testkit::conformance::StoreUnderTest;

electric_testkit::store_conformance!(async {
    Some(StoreUnderTest {
        store: Arc::new(MemoryStore::builder().log_capacity(8).build().unwrap()),
        log_capacity: 8,
    })
});
