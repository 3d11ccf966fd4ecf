//! # Electric
//!
//! Versioned JSON documents stored in a shared store, cached in every process, updated with
//! optimistic concurrency and kept in sync by JSON Patch deltas, with a per-key change log so
//! late or disconnected replicas catch up and version gaps are repaired.
//!
//! This is the facade crate: it re-exports [`electric_core`]. Backend adapters are enabled by
//! features: `redis` adds `redis::RedisStore`, `nats` adds `nats::NatsBus`, `pulsar` adds
//! `pulsar::PulsarBus`; PostgreSQL will follow.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use electric::{DataManager, Document, Key, MemoryStore, SyncService};
//! use serde::{Deserialize, Serialize};
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(Clone, Default, Serialize, Deserialize)]
//! struct Position { qty: f64, trades: u32 }
//!
//! impl Document for Position {
//!     fn empty(_key: &Key) -> Option<Self> { Some(Self::default()) }
//! }
//!
//! let store = Arc::new(MemoryStore::new());
//! let token = CancellationToken::new();
//! // Two replicas, as two processes would have.
//! let a = DataManager::<Position>::builder(store.clone(), "intraday", "positions").build()?;
//! let b = DataManager::<Position>::builder(store.clone(), "intraday", "positions").build()?;
//! let sync = SyncService::builder().manager(&b).build()?.spawn(token.clone());
//!
//! let written = a.update("PLANT-7", |p| { p.qty += 12.5; p.trades += 1 }).await?;
//! // Read-your-writes on the other replica:
//! let seen = b.get_at_least("PLANT-7", written.version()).await?;
//! assert_eq!(seen.qty, 12.5);
//!
//! token.cancel();
//! sync.join().await;
//! # Ok::<(), electric::Error>(())
//! # }).unwrap();
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use electric_core::*;

/// The NATS JetStream bus (feature `nats`): re-exports [`electric_nats`].
#[cfg(feature = "nats")]
pub mod nats {
    pub use electric_nats::*;
}

/// The Apache Pulsar bus (feature `pulsar`): re-exports [`electric_pulsar`].
#[cfg(feature = "pulsar")]
pub mod pulsar {
    pub use electric_pulsar::*;
}

/// The Redis store (feature `redis`): re-exports [`electric_redis`].
#[cfg(feature = "redis")]
pub mod redis {
    pub use electric_redis::*;
}

/// The README's code blocks, compiled and run as doc tests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
