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

    /// Inserts `entry`, then, while over `capacity`, evicts the entry with the oldest `touched`
    /// reading of a sample of 32 (never `id` itself): approximately least-recently-used. Calls
    /// `evicted` with each victim's id.
    pub(crate) fn insert_bounded(
        &self,
        id: &str,
        entry: Arc<E>,
        capacity: usize,
        touched: impl Fn(&E) -> u64,
        mut evicted: impl FnMut(&str),
    ) {
        self.insert(id, entry);
        while self.len() > capacity {
            let victim = self
                .sample(32, id)
                .into_iter()
                .min_by_key(|(_, e)| touched(e));
            let Some((victim, _)) = victim else { break };
            if self.remove(&victim) {
                evicted(&victim);
            }
        }
    }

    pub(crate) fn remove(&self, id: &str) -> bool {
        self.map.pin().remove(id).is_some()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Keeps only the entries `keep` accepts; returns how many were dropped.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&str, &E) -> bool) -> usize {
        let map = self.map.pin();
        let before = map.len();
        map.retain(|id, e| keep(id, e));
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
