//! [`FaultyStore`]: a store wrapper that makes subscriptions lossy, repetitive, out of order and
//! slow, and writes ambiguous (a request lost, a reply lost after the write was applied, a
//! request held back and applied later), to prove that replicas converge and writes apply
//! exactly once anyway.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use electric_core::store::{
    Changes, Commit, CommitOutcome, Head, Resolution, Snapshot, Store, Subscription,
    SubscriptionEvent,
};
use electric_core::{CommitId, Error, Key, Result, SectionId, Stamp, Version};
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
    /// A write (commit, resolve or delete) never reaches the store; the caller gets
    /// [`Error::Indeterminate`].
    pub request_lost: f64,
    /// A write is applied but its reply is lost; the caller gets [`Error::Indeterminate`].
    pub reply_lost: f64,
    /// A write is held back and applied after a random time up to `max_delay` (as a request
    /// stuck in a socket buffer would be); the caller gets [`Error::Indeterminate`] at once.
    pub request_delayed: f64,
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
    /// Writes that never reached the store.
    pub requests_lost: AtomicU64,
    /// Writes applied whose reply was lost.
    pub replies_lost: AtomicU64,
    /// Writes held back and sent later.
    pub requests_delayed: AtomicU64,
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

    /// `(requests lost, replies lost, requests delayed)`.
    pub fn writes(&self) -> (u64, u64, u64) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            g(&self.requests_lost),
            g(&self.replies_lost),
            g(&self.requests_delayed),
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
    writes: std::sync::Mutex<SmallRng>,
}

/// What happens to one write.
enum WriteFate {
    Delivered,
    RequestLost,
    ReplyLost,
    Delayed(Duration),
}

impl FaultyStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, config: FaultConfig) -> Self {
        // Writes draw from their own generator, so adding write faults to a configuration does
        // not change which deltas its subscriptions lose.
        let writes = SmallRng::seed_from_u64(config.seed ^ 0x7772_6974_6573);
        FaultyStore {
            inner,
            config,
            subscriptions: AtomicU64::new(0),
            counts: Arc::default(),
            writes: std::sync::Mutex::new(writes),
        }
    }

    /// The faults injected so far.
    pub fn counts(&self) -> &FaultCounts {
        &self.counts
    }

    fn fate(&self) -> WriteFate {
        let c = &self.config;
        let mut rng = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let roll: f64 = rng.gen();
        let (lost, reply, delayed) = (
            c.request_lost.clamp(0.0, 1.0),
            c.reply_lost.clamp(0.0, 1.0),
            c.request_delayed.clamp(0.0, 1.0),
        );
        if roll < lost {
            self.counts.requests_lost.fetch_add(1, Ordering::Relaxed);
            WriteFate::RequestLost
        } else if roll < lost + reply {
            self.counts.replies_lost.fetch_add(1, Ordering::Relaxed);
            WriteFate::ReplyLost
        } else if roll < lost + reply + delayed {
            self.counts.requests_delayed.fetch_add(1, Ordering::Relaxed);
            let nanos = rng.gen_range(0..=c.max_delay.as_nanos() as u64);
            WriteFate::Delayed(Duration::from_nanos(nanos))
        } else {
            WriteFate::Delivered
        }
    }

    /// Runs `write` through a fault: `send` performs it on the inner store.
    async fn write<R, F, Fut>(&self, key: &Key, id: CommitId, send: F) -> Result<R>
    where
        F: FnOnce(Arc<dyn Store>) -> Fut,
        Fut: std::future::Future<Output = Result<R>> + Send + 'static,
        R: Send + 'static,
    {
        let lost = |what: &str| Error::Indeterminate {
            key: key.clone(),
            commit: id,
            reason: format!("injected fault: {what}"),
        };
        match self.fate() {
            WriteFate::Delivered => send(self.inner.clone()).await,
            WriteFate::RequestLost => Err(lost("request lost")),
            WriteFate::ReplyLost => {
                let _ = send(self.inner.clone()).await;
                Err(lost("reply lost"))
            }
            WriteFate::Delayed(d) => {
                let late = send(self.inner.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let _ = late.await;
                });
                Err(lost("request held back"))
            }
        }
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
    async fn commit(&self, commit: &Commit) -> Result<CommitOutcome> {
        let owned = commit.clone();
        self.write(&commit.key, commit.id, move |s| async move {
            s.commit(&owned).await
        })
        .await
    }
    async fn resolve(&self, commit: &Commit) -> Result<Resolution> {
        let owned = commit.clone();
        self.write(&commit.key, commit.id, move |s| async move {
            s.resolve(&owned).await
        })
        .await
    }
    async fn changes_since(&self, key: &Key, after: Version) -> Result<Changes> {
        self.inner.changes_since(key, after).await
    }
    async fn stamps(&self, keys: &[Key]) -> Result<Vec<Option<Stamp>>> {
        self.inner.stamps(keys).await
    }
    async fn heads(&self, keys: &[Key]) -> Result<Vec<Option<Head>>> {
        self.inner.heads(keys).await
    }
    async fn delete_with_id(&self, key: &Key, origin: &str, id: CommitId) -> Result<bool> {
        let (k, o) = (key.clone(), origin.to_string());
        self.write(key, id, move |s| async move {
            s.delete_with_id(&k, &o, id).await
        })
        .await
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
