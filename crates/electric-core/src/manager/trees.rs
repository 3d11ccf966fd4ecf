//! The kept JSON trees of hot documents.

use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Map, Value};

use super::{DataManager, Document};
use crate::digest::Digest;
use crate::version::Stamp;

/// The slot for a document's kept JSON tree. Only the holder of the key's lock takes or fills
/// it; the slot stays in the tree cache while its tree is out, so the cache's admission and
/// eviction see one steady entry per hot key.
pub(super) struct TreeSlot {
    /// Estimated bytes of the tree, fixed when the slot is made (see [`TREE_BYTES_PER_JSON_BYTE`]).
    pub(super) weight: u32,
    pub(super) tree: Mutex<Option<Tree>>,
}

/// How much memory a `serde_json::Value` tree takes per byte of its compact JSON text: 10.1 for
/// the order book (`cargo bench -p electric-core --bench footprint`); used to weigh kept trees.
pub(super) const TREE_BYTES_PER_JSON_BYTE: u32 = 10;

/// A document's JSON tree at one stamp, kept so the next change need not rebuild it.
pub(super) struct Tree {
    pub(super) stamp: Stamp,
    /// Whether the tree is exactly the cached value serialized (it was built from it). A tree
    /// patched by a remote delta may also hold members the type does not know; diffing a local
    /// update against such a tree would remove them, so updates only use exact trees.
    pub(super) exact: bool,
    pub(super) doc: Map<String, Value>,
    /// The digest of `doc`, computed from it (never taken on trust from the store); `None` with
    /// digests turned off.
    pub(super) digest: Option<Digest>,
}

impl<T: Document> DataManager<T> {
    /// Takes the kept JSON tree of `id`, with its digest, if it is at `stamp` (and, with
    /// `exact`, is exactly the cached value serialized). A kept tree at another stamp is dropped.
    /// Caller holds the key lock.
    pub(super) fn take_tree(
        &self,
        id: &str,
        stamp: Option<Stamp>,
        exact: bool,
    ) -> Option<(Map<String, Value>, Option<Digest>)> {
        let slot = self.inner.trees.as_ref()?.get(id)?;
        let tree = slot
            .tree
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        (Some(tree.stamp) == stamp && (tree.exact || !exact)).then_some((tree.doc, tree.digest))
    }

    /// Keeps `doc` (whose digest is `digest`) as the JSON tree of `id` at `stamp`, within
    /// [`ManagerConfig::json_cache_bytes`](super::ManagerConfig::json_cache_bytes). Caller holds
    /// the key lock. `json_len` (the document's JSON size) weighs a new slot.
    pub(super) fn keep_tree(
        &self,
        id: &str,
        stamp: Stamp,
        (doc, digest): (Map<String, Value>, Option<Digest>),
        exact: bool,
        json_len: u32,
    ) {
        let Some(trees) = &self.inner.trees else {
            return;
        };
        let tree = Some(Tree {
            stamp,
            exact,
            doc,
            digest,
        });
        let weight = json_len.saturating_mul(TREE_BYTES_PER_JSON_BYTE).max(1);
        match trees.get(id) {
            // Reuse the slot while its weight is within a factor of two of the tree's.
            Some(slot) if weight / 2 <= slot.weight && slot.weight / 2 <= weight => {
                *slot.tree.lock().unwrap_or_else(PoisonError::into_inner) = tree;
            }
            // A new slot, or one re-weighed because the document grew or shrank.
            _ => trees.insert(
                id.into(),
                Arc::new(TreeSlot {
                    weight,
                    tree: Mutex::new(tree),
                }),
            ),
        }
    }

    /// How many tree slots are held (after the cache's pending evictions have run).
    pub(super) fn tree_count(&self) -> usize {
        self.inner.trees.as_ref().map_or(0, |t| {
            t.run_pending_tasks();
            t.entry_count() as usize
        })
    }

    pub(super) fn forget_tree(&self, id: &str) {
        if let Some(trees) = &self.inner.trees {
            trees.invalidate(id);
        }
    }
}
