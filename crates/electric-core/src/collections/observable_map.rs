//! A concurrent map that reports its changes (the original's `ConcurrentObservableDictionary`).
//!
//! Every change raises one [`MapEvent`]: `Added`, `Replaced` (only when the new value differs
//! from the old one under `PartialEq`), `Removed` or `Cleared`, and updates
//! [`ObservableMap::last_modified`]. Events go to subscribers through a bounded broadcast
//! channel ([`ObservableMapBuilder::event_capacity`]): a subscriber that falls behind by more
//! than that many events is told how many it missed ([`MapEvents::recv`] returns
//! [`Lagged`]) instead of making the map buffer without bound (the original's receiver used an
//! unbounded channel).
//!
//! [`ObservableMap::key_stream`] yields the keys present now, then every later change, with no
//! duplicates and no gaps: the snapshot and the subscription are taken under the same lock that
//! every change holds while it publishes its event. If the stream falls behind it yields
//! [`KeyEvent::Resync`] followed by a fresh snapshot, so a consumer can rebuild its view.
//!
//! Closures passed to [`ObservableMap::upsert`] and [`ObservableMap::get_or_insert_with`] run
//! under the map's write lock: keep them short and do not touch the map from them (that would
//! deadlock).
//!
//! # Examples
//!
//! ```
//! use electric_core::collections::observable_map::{KeyEvent, ObservableMap};
//! use futures_util::StreamExt;
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let map = ObservableMap::new();
//! map.insert("a", 1);
//! let mut keys = Box::pin(map.key_stream());
//! map.insert("b", 2);
//! map.insert("b", 2); // same value: no event
//! map.remove(&"a");
//! assert_eq!(keys.next().await, Some(KeyEvent::Present("a")));
//! assert_eq!(keys.next().await, Some(KeyEvent::Added("b")));
//! assert_eq!(keys.next().await, Some(KeyEvent::Removed("a")));
//! # });
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use futures_util::Stream;
use tokio::sync::broadcast;

/// A change of the map.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MapEvent<K, V> {
    /// A key was added.
    Added {
        /// The key.
        key: K,
        /// Its value.
        value: V,
    },
    /// A key's value was replaced by a different one.
    Replaced {
        /// The key.
        key: K,
        /// The previous value.
        old: V,
        /// The new value.
        new: V,
    },
    /// A key was removed.
    Removed {
        /// The key.
        key: K,
        /// Its last value.
        value: V,
    },
    /// The map was cleared.
    Cleared,
}

/// An item of [`ObservableMap::key_stream`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyEvent<K> {
    /// A key present when the stream started (or resynchronised).
    Present(K),
    /// A key was added.
    Added(K),
    /// A key's value changed.
    Replaced(K),
    /// A key was removed.
    Removed(K),
    /// The map was cleared.
    Cleared,
    /// The stream fell behind and lost events; `Present` items for every current key follow.
    Resync,
}

/// A subscriber missed this many events (it fell behind by more than the event capacity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("subscriber missed {0} map events")]
pub struct Lagged(pub u64);

/// Errors of [`ObservableMapBuilder::build`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ObservableMapError {
    /// The event capacity is zero.
    #[error("event capacity must be at least 1")]
    ZeroEventCapacity,
}

/// How [`ObservableMap::upsert`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Upsert {
    /// The key was added.
    Added,
    /// The key existed and its value changed.
    Replaced,
    /// The key existed and the update produced an equal value: no event.
    Unchanged,
}

struct State<K, V> {
    map: HashMap<K, V>,
    last_modified: Option<SystemTime>,
}

struct Inner<K, V> {
    state: RwLock<State<K, V>>,
    events: broadcast::Sender<MapEvent<K, V>>,
}

/// Builds an [`ObservableMap`].
pub struct ObservableMapBuilder<K, V> {
    event_capacity: usize,
    _types: std::marker::PhantomData<fn(K, V)>,
}

impl<K, V> fmt::Debug for ObservableMapBuilder<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObservableMapBuilder")
            .field("event_capacity", &self.event_capacity)
            .finish()
    }
}

impl<K, V> ObservableMapBuilder<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + PartialEq + Send + Sync + 'static,
{
    /// Events buffered per subscriber before it lags (default 1,024).
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n;
        self
    }

    /// Builds the map.
    ///
    /// # Errors
    ///
    /// [`ObservableMapError::ZeroEventCapacity`].
    pub fn build(self) -> Result<ObservableMap<K, V>, ObservableMapError> {
        if self.event_capacity == 0 {
            return Err(ObservableMapError::ZeroEventCapacity);
        }
        let (events, _) = broadcast::channel(self.event_capacity);
        Ok(ObservableMap {
            inner: Arc::new(Inner {
                state: RwLock::new(State {
                    map: HashMap::new(),
                    last_modified: None,
                }),
                events,
            }),
        })
    }
}

/// A concurrent map with change events. Cheap to clone (clones share the map). See the
/// [module docs](self).
pub struct ObservableMap<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for ObservableMap<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> fmt::Debug for ObservableMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObservableMap")
            .field("subscribers", &self.inner.events.receiver_count())
            .finish_non_exhaustive()
    }
}

impl<K, V> Default for ObservableMap<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + PartialEq + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> ObservableMap<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + PartialEq + Send + Sync + 'static,
{
    /// An empty map buffering 1,024 events per subscriber.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                state: RwLock::new(State {
                    map: HashMap::new(),
                    last_modified: None,
                }),
                events,
            }),
        }
    }

    /// A builder.
    pub fn builder() -> ObservableMapBuilder<K, V> {
        ObservableMapBuilder {
            event_capacity: 1024,
            _types: std::marker::PhantomData,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State<K, V>> {
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State<K, V>> {
        self.inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes while the write lock is held, so events are totally ordered with snapshots.
    fn publish(&self, st: &mut State<K, V>, event: MapEvent<K, V>) {
        st.last_modified = Some(SystemTime::now());
        // An error only means there is no subscriber.
        let _ = self.inner.events.send(event);
    }

    /// A clone of `key`'s value.
    pub fn get(&self, key: &K) -> Option<V> {
        self.read().map.get(key).cloned()
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &K) -> bool {
        self.read().map.contains_key(key)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.read().map.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.read().map.is_empty()
    }

    /// The current keys.
    pub fn keys(&self) -> Vec<K> {
        self.read().map.keys().cloned().collect()
    }

    /// When the map last changed (`None` if never).
    pub fn last_modified(&self) -> Option<SystemTime> {
        self.read().last_modified
    }

    /// Sets `key` to `value` and returns the previous value. Raises `Added`, or `Replaced` if
    /// the value differs from the previous one.
    pub fn insert(&self, key: K, value: V) -> Option<V> {
        let mut st = self.write();
        match st.map.insert(key.clone(), value.clone()) {
            None => {
                self.publish(&mut st, MapEvent::Added { key, value });
                None
            }
            Some(old) => {
                if old != value {
                    let event = MapEvent::Replaced {
                        key,
                        old: old.clone(),
                        new: value,
                    };
                    self.publish(&mut st, event);
                }
                Some(old)
            }
        }
    }

    /// Adds `key` only if absent; hands `value` back otherwise.
    ///
    /// # Errors
    ///
    /// The value, if the key was present.
    pub fn try_insert(&self, key: K, value: V) -> Result<(), V> {
        let mut st = self.write();
        if st.map.contains_key(&key) {
            return Err(value);
        }
        st.map.insert(key.clone(), value.clone());
        self.publish(&mut st, MapEvent::Added { key, value });
        Ok(())
    }

    /// Sets `key` to `add()` if absent, or to `update(&current)`; returns the new value and what
    /// happened. The closures run under the write lock.
    pub fn upsert(
        &self,
        key: K,
        add: impl FnOnce() -> V,
        update: impl FnOnce(&V) -> V,
    ) -> (V, Upsert) {
        let mut st = self.write();
        match st.map.get(&key) {
            None => {
                let value = add();
                st.map.insert(key.clone(), value.clone());
                self.publish(
                    &mut st,
                    MapEvent::Added {
                        key,
                        value: value.clone(),
                    },
                );
                (value, Upsert::Added)
            }
            Some(old) => {
                let new = update(old);
                if *old == new {
                    return (new, Upsert::Unchanged);
                }
                let old = st.map.insert(key.clone(), new.clone());
                if let Some(old) = old {
                    self.publish(
                        &mut st,
                        MapEvent::Replaced {
                            key,
                            old,
                            new: new.clone(),
                        },
                    );
                }
                (new, Upsert::Replaced)
            }
        }
    }

    /// `key`'s value, adding `make()` first if absent; the flag tells whether it was added.
    pub fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> (V, bool) {
        if let Some(v) = self.get(&key) {
            return (v, false);
        }
        let mut st = self.write();
        if let Some(v) = st.map.get(&key) {
            return (v.clone(), false);
        }
        let value = make();
        st.map.insert(key.clone(), value.clone());
        self.publish(
            &mut st,
            MapEvent::Added {
                key,
                value: value.clone(),
            },
        );
        (value, true)
    }

    /// Replaces `key`'s value with `new` only if it currently equals `expected`.
    pub fn update_if(&self, key: &K, new: V, expected: &V) -> bool {
        let mut st = self.write();
        match st.map.get_mut(key) {
            Some(cur) if cur == expected => {
                if *cur != new {
                    let old = std::mem::replace(cur, new.clone());
                    self.publish(
                        &mut st,
                        MapEvent::Replaced {
                            key: key.clone(),
                            old,
                            new,
                        },
                    );
                }
                true
            }
            _ => false,
        }
    }

    /// Removes `key`, returning its value. Raises `Removed`.
    pub fn remove(&self, key: &K) -> Option<V> {
        let mut st = self.write();
        let value = st.map.remove(key)?;
        self.publish(
            &mut st,
            MapEvent::Removed {
                key: key.clone(),
                value: value.clone(),
            },
        );
        Some(value)
    }

    /// Removes every entry. Raises `Cleared` (once, even if the map was empty).
    pub fn clear(&self) {
        let mut st = self.write();
        st.map.clear();
        self.publish(&mut st, MapEvent::Cleared);
    }

    /// Subscribes to the events raised from now on.
    pub fn subscribe(&self) -> MapEvents<K, V> {
        MapEvents(self.inner.events.subscribe())
    }

    /// The keys present now, then every later change; see the [module docs](self).
    ///
    /// The stream ends when every handle to the map is dropped. Dropping the stream unsubscribes.
    pub fn key_stream(&self) -> impl Stream<Item = KeyEvent<K>> + Send + 'static {
        let (snapshot, rx) = self.snapshot_and_subscribe();
        let weak = Arc::downgrade(&self.inner);
        let state = KeyStreamState {
            pending: snapshot.into_iter().map(KeyEvent::Present).collect(),
            rx,
            map: weak,
        };
        futures_util::stream::unfold(state, |mut s| async move {
            loop {
                if let Some(k) = s.pending.pop_front() {
                    return Some((k, s));
                }
                match s.rx.recv().await {
                    Ok(e) => return Some((key_event(e), s)),
                    Err(broadcast::error::RecvError::Closed) => return None,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let map = ObservableMap {
                            inner: s.map.upgrade()?,
                        };
                        let (snapshot, rx) = map.snapshot_and_subscribe();
                        s.rx = rx;
                        s.pending.push_back(KeyEvent::Resync);
                        s.pending
                            .extend(snapshot.into_iter().map(KeyEvent::Present));
                    }
                }
            }
        })
    }

    /// The current keys and a receiver of every later event, taken atomically: writers publish
    /// under the write lock, and this holds the read lock.
    fn snapshot_and_subscribe(&self) -> (Vec<K>, broadcast::Receiver<MapEvent<K, V>>) {
        let st = self.read();
        let keys = st.map.keys().cloned().collect();
        let rx = self.inner.events.subscribe();
        drop(st);
        (keys, rx)
    }
}

struct KeyStreamState<K, V> {
    pending: VecDeque<KeyEvent<K>>,
    rx: broadcast::Receiver<MapEvent<K, V>>,
    map: std::sync::Weak<Inner<K, V>>,
}

fn key_event<K, V>(e: MapEvent<K, V>) -> KeyEvent<K> {
    match e {
        MapEvent::Added { key, .. } => KeyEvent::Added(key),
        MapEvent::Replaced { key, .. } => KeyEvent::Replaced(key),
        MapEvent::Removed { key, .. } => KeyEvent::Removed(key),
        MapEvent::Cleared => KeyEvent::Cleared,
    }
}

/// A subscription to an [`ObservableMap`]'s events.
#[derive(Debug)]
pub struct MapEvents<K, V>(broadcast::Receiver<MapEvent<K, V>>);

impl<K: Clone, V: Clone> MapEvents<K, V> {
    /// The next event; `Ok(None)` once every map handle is dropped.
    ///
    /// # Errors
    ///
    /// [`Lagged`] if events were lost because this subscriber fell behind; the next call
    /// returns the oldest event still buffered.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn recv(&mut self) -> Result<Option<MapEvent<K, V>>, Lagged> {
        match self.0.recv().await {
            Ok(e) => Ok(Some(e)),
            Err(broadcast::error::RecvError::Closed) => Ok(None),
            Err(broadcast::error::RecvError::Lagged(n)) => Err(Lagged(n)),
        }
    }
}

#[cfg(all(test, electric_loom))]
mod loom_tests {
    //! A model of the snapshot / subscribe hand-off with loom's primitives: the map's writers
    //! publish into subscriber queues while holding the map lock, and a subscriber registers its
    //! queue under the same lock as it takes its snapshot. (tokio's broadcast channel is not
    //! loom-instrumented, so the model uses a queue per subscriber in its place.)
    use crate::collections::sync::{lock, Arc, Mutex};
    use std::collections::{BTreeSet, VecDeque};

    #[derive(Clone, Debug, PartialEq)]
    enum Ev {
        Added(u8),
        Removed(u8),
    }

    struct Map {
        state: Mutex<(BTreeSet<u8>, Vec<Arc<Mutex<VecDeque<Ev>>>>)>,
    }

    impl Map {
        fn insert(&self, k: u8) {
            let mut st = lock(&self.state);
            if st.0.insert(k) {
                for s in &st.1 {
                    lock(s).push_back(Ev::Added(k));
                }
            }
        }
        fn remove(&self, k: u8) {
            let mut st = lock(&self.state);
            if st.0.remove(&k) {
                for s in &st.1 {
                    lock(s).push_back(Ev::Removed(k));
                }
            }
        }
        fn snapshot_and_subscribe(&self) -> (BTreeSet<u8>, Arc<Mutex<VecDeque<Ev>>>) {
            let mut st = lock(&self.state);
            let q = Arc::new(Mutex::new(VecDeque::new()));
            st.1.push(q.clone());
            (st.0.clone(), q)
        }
    }

    #[test]
    fn snapshot_then_events_has_no_gap_or_duplicate() {
        loom::model(|| {
            let map = Arc::new(Map {
                state: Mutex::new((BTreeSet::from([1]), Vec::new())),
            });
            let m1 = map.clone();
            let w1 = loom::thread::spawn(move || {
                m1.insert(2);
                m1.remove(1);
            });
            let m2 = map.clone();
            let w2 = loom::thread::spawn(move || m2.insert(3));
            let (mut view, q) = map.snapshot_and_subscribe();
            w1.join().expect("w1");
            w2.join().expect("w2");
            for e in lock(&q).drain(..) {
                match e {
                    // No duplicate: an Added key was not in the view yet.
                    Ev::Added(k) => assert!(view.insert(k), "duplicate add {k}"),
                    // No gap: a Removed key was in the view.
                    Ev::Removed(k) => assert!(view.remove(&k), "remove of unseen {k}"),
                }
            }
            assert_eq!(view, lock(&map.state).0);
        });
    }
}

#[cfg(all(test, not(electric_loom)))]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::collections::HashSet;

    #[test]
    fn events_only_when_values_change() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        rt.block_on(async {
            let map = ObservableMap::new();
            let mut ev = map.subscribe();
            assert_eq!(map.last_modified(), None);
            assert_eq!(map.insert(1, "a"), None);
            assert_eq!(map.insert(1, "a"), Some("a"));
            assert_eq!(map.insert(1, "b"), Some("a"));
            assert_eq!(map.try_insert(1, "c"), Err("c"));
            assert_eq!(map.upsert(1, || "x", |_| "b"), ("b", Upsert::Unchanged));
            assert_eq!(map.upsert(2, || "x", |_| "y"), ("x", Upsert::Added));
            assert_eq!(map.get_or_insert_with(2, || "z"), ("x", false));
            assert!(!map.update_if(&2, "q", &"nope"));
            assert!(map.update_if(&2, "q", &"x"));
            assert_eq!(map.remove(&1), Some("b"));
            assert_eq!(map.remove(&1), None);
            map.clear();
            assert!(map.last_modified().is_some());
            let mut got = Vec::new();
            while let Some(Ok(Some(e))) = futures_util::FutureExt::now_or_never(ev.recv()) {
                got.push(e);
            }
            assert_eq!(
                got,
                vec![
                    MapEvent::Added { key: 1, value: "a" },
                    MapEvent::Replaced {
                        key: 1,
                        old: "a",
                        new: "b"
                    },
                    MapEvent::Added { key: 2, value: "x" },
                    MapEvent::Replaced {
                        key: 2,
                        old: "x",
                        new: "q"
                    },
                    MapEvent::Removed { key: 1, value: "b" },
                    MapEvent::Cleared,
                ]
            );
        });
    }

    #[test]
    fn zero_capacity_is_refused() {
        let e = ObservableMap::<u8, u8>::builder().event_capacity(0).build();
        assert_eq!(e.err(), Some(ObservableMapError::ZeroEventCapacity));
    }

    /// Replays a key stream into a set.
    fn apply(view: &mut HashSet<u32>, e: KeyEvent<u32>) {
        match e {
            KeyEvent::Present(k) | KeyEvent::Added(k) => {
                assert!(view.insert(k), "duplicate {k}");
            }
            KeyEvent::Removed(k) => assert!(view.remove(&k), "gap: removed unseen {k}"),
            KeyEvent::Replaced(k) => assert!(view.contains(&k)),
            KeyEvent::Cleared => view.clear(),
            KeyEvent::Resync => view.clear(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn key_stream_reconstructs_the_map_under_concurrent_writes() {
        let map = ObservableMap::<u32, u32>::builder()
            .event_capacity(100_000)
            .build()
            .expect("map");
        for k in 0..50 {
            map.insert(k, 0);
        }
        let writers: Vec<_> = (0..2u32)
            .map(|w| {
                let map = map.clone();
                tokio::spawn(async move {
                    for i in 0..2000u32 {
                        let k = (i * 7 + w) % 100;
                        if i % 3 == 0 {
                            map.remove(&k);
                        } else {
                            map.insert(k, i);
                        }
                        if i % 100 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        tokio::task::yield_now().await;
        let mut stream = Box::pin(map.key_stream());
        for w in writers {
            w.await.expect("writer");
        }
        map.insert(1000, 0); // a marker: once seen, everything before it was seen
        let mut view = HashSet::new();
        while let Some(e) = stream.next().await {
            let done = e == KeyEvent::Added(1000);
            apply(&mut view, e);
            if done {
                break;
            }
        }
        let mut expected: Vec<_> = map.keys();
        let mut got: Vec<_> = view.into_iter().collect();
        expected.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn lagging_stream_resyncs() {
        let map = ObservableMap::<u32, u32>::builder()
            .event_capacity(2)
            .build()
            .expect("map");
        let mut stream = Box::pin(map.key_stream());
        for k in 0..10 {
            map.insert(k, k);
        }
        map.remove(&0);
        assert_eq!(stream.next().await, Some(KeyEvent::Resync));
        let mut view = HashSet::new();
        for _ in 0..9 {
            apply(&mut view, stream.next().await.expect("item"));
        }
        assert_eq!(view.len(), 9);
        map.insert(42, 0);
        assert_eq!(stream.next().await, Some(KeyEvent::Added(42)));
        drop(map);
        assert_eq!(stream.next().await, None, "ends when the map is gone");
    }
}
