//! Helpers for tests that talk to real servers.
//!
//! Tests read `ELECTRIC_TEST_<NAME>_URL` (e.g. `ELECTRIC_TEST_REDIS_URL`) and fall back to the
//! default local address. When the server is unreachable they print why and skip — unless
//! `ELECTRIC_TEST_REQUIRE_SERVICES=1` (CI sets it), where they fail.

/// Whether missing services must fail tests instead of skipping them.
pub fn services_required() -> bool {
    std::env::var("ELECTRIC_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// The URL of service `name` (e.g. `REDIS`): `ELECTRIC_TEST_<NAME>_URL` or `default`.
pub fn service_url(name: &str, default: &str) -> String {
    std::env::var(format!("ELECTRIC_TEST_{name}_URL")).unwrap_or_else(|_| default.to_string())
}

/// Reports an unreachable service: panics when services are required, else prints and returns.
///
/// # Panics
///
/// When `ELECTRIC_TEST_REQUIRE_SERVICES=1`.
pub fn skip_or_fail(service: &str, why: &str) {
    if services_required() {
        panic!("{service} is required (ELECTRIC_TEST_REQUIRE_SERVICES=1) but unavailable: {why}");
    }
    eprintln!("skipping: {service} unavailable: {why}");
}
