//! Core of Electric: versioned JSON documents kept in sync by JSON Patch deltas.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod delta;
pub mod error;
pub mod key;
pub mod manager;
pub mod patch;
pub mod store;
pub mod sync;
pub mod version;

pub use delta::{Delta, DeltaKind, Patch, SharedDelta};
pub use error::{Error, Result};
pub use key::{Key, SectionId};
pub use manager::{DataManager, Doc, Document, Get, UpdateOutcome};
pub use store::{
    Changes, Commit, CommitOutcome, MemoryStore, Snapshot, Store, Subscription, SubscriptionEvent,
};
pub use sync::{SyncConfig, SyncHandle, SyncService};
pub use version::{Epoch, Stamp, Version};
