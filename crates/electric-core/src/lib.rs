//! Core of Electric: versioned JSON documents kept in sync by JSON Patch deltas.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use electric_core::{DataManager, Document, Key, MemoryStore, UpdateOutcome};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Default, Serialize, Deserialize)]
//! struct Depth { bids: Vec<(f64, f64)>, seq: u64 }
//!
//! impl Document for Depth {
//!     fn empty(_key: &Key) -> Option<Self> { Some(Self::default()) }
//! }
//!
//! let store = Arc::new(MemoryStore::new());
//! let depths = DataManager::<Depth>::builder(store, "intraday", "depths").build()?;
//! let UpdateOutcome::Changed { delta, .. } = depths
//!     .update("MCP_1", |d| { d.bids.push((101.5, 20.0)); d.seq += 1 })
//!     .await?
//! else { unreachable!() };
//! assert_eq!(delta.version, 1);
//! // Every replica applies the same delta; its JSON encoding is documented in `delta`.
//! assert!(String::from_utf8(delta.encode()).unwrap().starts_with(r#"{"v":1,"#));
//! assert_eq!(depths.get("MCP_1").await?.unwrap().seq, 1);
//! # Ok::<(), electric_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`key`] | [`Key`] `{partition, section, id}` and [`SectionId`], validated |
//! | [`version`] | [`Version`], [`Epoch`], [`Stamp`] |
//! | [`delta`] | [`Delta`] and its versioned JSON encoding |
//! | [`patch`] | JSON Patch diff and apply |
//! | [`store`] | the [`Store`] trait and [`MemoryStore`] |
//! | [`manager`] | [`DataManager`]: typed, cached, optimistically concurrent documents |
//! | [`sync`] | [`SyncService`]: keeps managers in step with their stores |
//! | [`bus`] | the message bus: [`bus::BusClient`], codecs, [`bus::MemoryBus`] |
//! | [`cdc`] | change data capture: [`cdc::ChangeSource`], checkpoints, [`cdc::TableTracker`], the [`cdc::Connector`], [`cdc::MemoryDatabase`] |
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod bus;
pub mod cache;
pub mod cdc;
pub mod collections;
pub mod delta;
pub mod digest;
pub mod error;
pub mod key;
pub mod manager;
pub mod patch;
pub mod pipeline;
pub mod store;
pub mod sync;
pub mod version;
pub mod worker;

pub use delta::{Delta, DeltaKind, Patch, SharedDelta};
pub use digest::Digest;
pub use error::{Error, Result};
pub use key::{Key, SectionId};
pub use manager::{DataManager, Doc, Document, Get, UpdateOutcome};
pub use store::{
    Changes, Commit, CommitOutcome, Members, MembersError, MemoryStore, Snapshot, Store,
    Subscription, SubscriptionEvent,
};
pub use sync::{SyncConfig, SyncHandle, SyncService};
pub use version::{CommitId, Epoch, Stamp, Version};
