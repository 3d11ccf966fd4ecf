//! Test support for Electric: the [`conformance`] suite every [`Store`](electric_core::Store)
//! must pass, a fault-injecting store wrapper ([`faults::FaultyStore`]), service helpers for
//! tests that need a real server ([`services`]), and the order-book sample document
//! ([`orderbook::OrderBook`]) used by the demo and the benchmarks.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod bus;
pub mod bus_flows;
pub mod conformance;
pub mod faults;
pub mod orderbook;
pub mod services;

/// A random lowercase prefix, so tests sharing a backend never collide.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}
