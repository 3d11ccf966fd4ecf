//! Core of Electric: versioned JSON documents kept in sync by JSON Patch deltas.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cache;
pub mod collections;
pub mod delta;
pub mod error;
pub mod key;
pub mod patch;
pub mod pipeline;
pub mod store;
pub mod version;
pub mod worker;

pub use delta::{Delta, DeltaKind, Patch, SharedDelta};
pub use error::{Error, Result};
pub use key::{Key, SectionId};
pub use store::{
    Changes, Commit, CommitOutcome, MemoryStore, Snapshot, Store, Subscription, SubscriptionEvent,
};
pub use version::{Epoch, Stamp, Version};
