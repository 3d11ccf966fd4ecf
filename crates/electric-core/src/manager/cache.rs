//! The manager's document cache: a concurrent map from id to shared entry.

use std::sync::Arc;

use compact_str::CompactString;

/// Keys are `CompactString`s: ids up to 24 bytes live inside the map's slot, so a hit compares the
/// key without chasing another allocation.
pub(crate) struct DocCache<E> {
    map: papaya::HashMap<CompactString, Arc<E>, foldhash::fast::RandomState>,
}

impl<E: Send + Sync> DocCache<E> {
    pub(crate) fn new() -> Self {
        DocCache {
            map: papaya::HashMap::builder()
                .hasher(foldhash::fast::RandomState::default())
                .build(),
        }
    }

    /// The entry for `id`; never blocks.
    #[inline]
    pub(crate) fn get(&self, id: &str) -> Option<Arc<E>> {
        self.map.pin().get(id).cloned()
    }

    pub(crate) fn insert(&self, id: &str, entry: Arc<E>) {
        self.map.pin().insert(CompactString::from(id), entry);
    }

    pub(crate) fn remove(&self, id: &str) -> bool {
        self.map.pin().remove(id).is_some()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Keeps only the entries `keep` accepts; returns how many were dropped.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&E) -> bool) -> usize {
        let map = self.map.pin();
        let before = map.len();
        map.retain(|_, e| keep(e));
        before.saturating_sub(map.len())
    }

    /// Up to `n` entries other than `except`, in map order (which is hash order, so effectively a
    /// random sample).
    pub(crate) fn sample(&self, n: usize, except: &str) -> Vec<(CompactString, Arc<E>)> {
        self.map
            .pin()
            .iter()
            .filter(|(k, _)| k.as_str() != except)
            .take(n)
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// Every id with its entry.
    pub(crate) fn entries(&self) -> Vec<(CompactString, Arc<E>)> {
        self.map
            .pin()
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }
}
