//! The store conformance suite against a single Redis node and a Redis Cluster.
//!
//! Single node: `ELECTRIC_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`).
//! Cluster: `ELECTRIC_TEST_REDIS_CLUSTER_URL` (comma-separated seed URLs; `.ci/services up` starts a
//! three-master cluster on ports 7101-7103, the default). Each check uses a fresh namespace and
//! deletes it afterwards.

mod common;

const LOG_CAPACITY: usize = 8;

mod single {
    use super::*;
    electric_testkit::store_conformance!(with_cleanup: async {
        common::conformance_subject(common::single(LOG_CAPACITY).await, LOG_CAPACITY)
    });
}

mod cluster {
    use super::*;
    electric_testkit::store_conformance!(with_cleanup: async {
        common::conformance_subject(common::cluster(LOG_CAPACITY).await, LOG_CAPACITY)
    });
}
