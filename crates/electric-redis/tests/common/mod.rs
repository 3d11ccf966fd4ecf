//! Helpers shared by the Redis tests.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use electric_redis::RedisStore;
use electric_testkit::conformance::StoreUnderTest;
use electric_testkit::services;

/// The single-node URL under test.
pub fn redis_url() -> String {
    services::service_url("REDIS", "redis://127.0.0.1:6379")
}

/// The cluster seed URLs under test (comma-separated), if configured.
pub fn cluster_url() -> Option<String> {
    std::env::var("ELECTRIC_TEST_REDIS_CLUSTER_URL")
        .ok()
        .filter(|s| !s.is_empty())
}

/// A store in a fresh namespace on `url`, or `None` (skipping, or failing when services are
/// required) when the server is unreachable.
pub async fn store_at(url: &str, service: &str, log_capacity: usize) -> Option<RedisStore> {
    let result = RedisStore::builder(url)
        .namespace(electric_testkit::unique("electric-test"))
        .log_capacity(log_capacity)
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await;
    match result {
        Ok(s) => Some(s),
        Err(e) => {
            services::skip_or_fail(service, &format!("{url}: {e}"));
            None
        }
    }
}

/// A single-node store in a fresh namespace.
pub async fn single(log_capacity: usize) -> Option<RedisStore> {
    store_at(&redis_url(), "redis", log_capacity).await
}

/// A cluster store in a fresh namespace.
pub async fn cluster(log_capacity: usize) -> Option<RedisStore> {
    match cluster_url() {
        Some(url) => store_at(&url, "redis cluster", log_capacity).await,
        None => {
            services::skip_or_fail(
                "redis cluster",
                "ELECTRIC_TEST_REDIS_CLUSTER_URL is not set (.ci/run starts one)",
            );
            None
        }
    }
}

/// A conformance subject plus the cleanup deleting its namespace.
pub fn conformance_subject(
    store: Option<RedisStore>,
    log_capacity: usize,
) -> Option<(StoreUnderTest, impl Future<Output = ()>)> {
    let store = store?;
    let sut = StoreUnderTest {
        store: Arc::new(store.clone()),
        log_capacity,
    };
    Some((sut, async move {
        let _ = store.purge_namespace().await;
    }))
}
