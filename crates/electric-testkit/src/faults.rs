//! [`FaultyStore`]: a store wrapper that makes subscriptions lossy, repetitive, out of order and
//! slow, to prove that replicas converge anyway.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use electric_core::store::{
    Changes, Commit, CommitOutcome, Snapshot, Store, Subscription, SubscriptionEvent,
};
use electric_core::{Key, Result, SectionId, Stamp, Version};
use futures_util::StreamExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Probabilities (0.0–1.0) of each fault, applied to every delta a subscription delivers.
#[derive(Clone, Debug, Default)]
pub struct FaultConfig {
    /// The delta is never delivered.
    pub drop: f64,
    /// The delta is delivered twice.
    pub duplicate: f64,
    /// The delta is held back and delivered after the next one.
    pub reorder: f64,
    /// Delivery waits a random time up to `max_delay` first.
    pub delay: f64,
    /// Longest injected delay.
    pub max_delay: Duration,
    /// Seed of the fault generator (each subscription derives its own).
    pub seed: u64,
}

/// How many faults were injected so far.
#[derive(Debug, Default)]
pub struct FaultCounts {
    /// Deltas dropped.
    pub dropped: AtomicU64,
    /// Deltas delivered twice.
    pub duplicated: AtomicU64,
    /// Deltas delivered out of order.
    pub reordered: AtomicU64,
    /// Deltas delayed.
    pub delayed: AtomicU64,
}

impl FaultCounts {
    /// `(dropped, duplicated, reordered, delayed)`.
    pub fn get(&self) -> (u64, u64, u64, u64) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            g(&self.dropped),
            g(&self.duplicated),
            g(&self.reordered),
            g(&self.delayed),
        )
    }
}

/// Wraps a store; every call passes through unchanged except subscriptions, whose deltas suffer
/// the configured faults.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    config: FaultConfig,
    subscriptions: AtomicU64,
    counts: Arc<FaultCounts>,
}

impl FaultyStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, config: FaultConfig) -> Self {
        FaultyStore {
            inner,
            config,
            subscriptions: AtomicU64::new(0),
            counts: Arc::default(),
        }
    }

    /// The faults injected so far.
    pub fn counts(&self) -> &FaultCounts {
        &self.counts
    }
}

struct FaultState {
    inner: Subscription,
    rng: SmallRng,
    config: FaultConfig,
    counts: Arc<FaultCounts>,
    held: Option<SubscriptionEvent>,
    out: VecDeque<Result<SubscriptionEvent>>,
}

#[async_trait]
impl Store for FaultyStore {
    async fn load(&self, key: &Key) -> Result<Option<Snapshot>> {
        self.inner.load(key).await
    }
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
        self.inner.commit(commit).await
    }
    async fn changes_since(&self, key: &Key, after: Version) -> Result<Changes> {
        self.inner.changes_since(key, after).await
    }
    async fn stamps(&self, keys: &[Key]) -> Result<Vec<Option<Stamp>>> {
        self.inner.stamps(keys).await
    }
    async fn delete(&self, key: &Key, origin: &str) -> Result<bool> {
        self.inner.delete(key, origin).await
    }
    async fn expire(&self, key: &Key, ttl: Duration) -> Result<bool> {
        self.inner.expire(key, ttl).await
    }
    async fn ttl(&self, key: &Key) -> Result<Option<Duration>> {
        self.inner.ttl(key).await
    }

    async fn subscribe(&self, section: &SectionId) -> Result<Subscription> {
        let n = self.subscriptions.fetch_add(1, Ordering::Relaxed);
        let state = FaultState {
            inner: self.inner.subscribe(section).await?,
            rng: SmallRng::seed_from_u64(self.config.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            config: self.config.clone(),
            counts: self.counts.clone(),
            held: None,
            out: VecDeque::new(),
        };
        let stream = futures_util::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(item) = st.out.pop_front() {
                    return Some((item, st));
                }
                let item = st.inner.next().await?;
                let event = match item {
                    Ok(SubscriptionEvent::Delta(d)) => SubscriptionEvent::Delta(d),
                    other => {
                        st.out.push_back(other);
                        continue;
                    }
                };
                let c = &st.config;
                if st.rng.gen_bool(c.drop.clamp(0.0, 1.0)) {
                    st.counts.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if c.max_delay > Duration::ZERO && st.rng.gen_bool(c.delay.clamp(0.0, 1.0)) {
                    st.counts.delayed.fetch_add(1, Ordering::Relaxed);
                    let nanos = st.rng.gen_range(0..=c.max_delay.as_nanos() as u64);
                    tokio::time::sleep(Duration::from_nanos(nanos)).await;
                }
                if st.held.is_none() && st.rng.gen_bool(c.reorder.clamp(0.0, 1.0)) {
                    st.counts.reordered.fetch_add(1, Ordering::Relaxed);
                    st.held = Some(event);
                    continue;
                }
                if st.rng.gen_bool(c.duplicate.clamp(0.0, 1.0)) {
                    st.counts.duplicated.fetch_add(1, Ordering::Relaxed);
                    st.out.push_back(Ok(event.clone()));
                }
                st.out.push_back(Ok(event));
                if let Some(held) = st.held.take() {
                    st.out.push_back(Ok(held));
                }
            }
        });
        Ok(stream.boxed())
    }
}
