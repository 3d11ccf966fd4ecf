//! Exclusive and failover subscriptions: a renewed lease in a JetStream key-value bucket.
//!
//! The holder writes its random id under the subscription's key with `create` (which fails if
//! someone holds it) and renews it with `update` against the revision it last wrote, every
//! third of the bucket's `max_age`. Entries older than `max_age` expire, so a crashed holder's
//! lease frees itself. A renewal refused for a wrong revision, or none succeeding for a whole
//! `max_age`, means the lease is lost: the holder's stream ends with an error rather than
//! reading alongside a new holder — unless the bucket still holds this holder's id (a renewal
//! applied whose reply was lost, as across a server restart), then the holder goes on with the
//! entry's revision. On release the holder deletes the key if it still holds it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Store, UpdateErrorKind};
use bytes::Bytes;
use electric_core::bus::{BusError, BusResult};
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub(crate) struct Lease(Arc<Inner>);

struct Inner {
    store: Store,
    key: String,
    holder: Bytes,
    ttl: Duration,
    /// The subscription's token: cancelled when it closes, which releases the lease.
    done: CancellationToken,
    /// Cancelled when the lease is lost.
    lost: CancellationToken,
    revision: Mutex<Option<u64>>,
}

impl Lease {
    pub(crate) fn new(store: Store, key: String, ttl: Duration, done: CancellationToken) -> Self {
        Self(Arc::new(Inner {
            store,
            key,
            holder: Bytes::from(format!("{:032x}", rand::random::<u128>())),
            ttl,
            done,
            lost: CancellationToken::new(),
            revision: Mutex::new(None),
        }))
    }

    fn revision(&self) -> Option<u64> {
        *self
            .0
            .revision
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn set_revision(&self, r: Option<u64>) {
        *self
            .0
            .revision
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = r;
    }

    /// Takes the lease if it is free. Returns whether it is now held.
    pub(crate) async fn try_acquire(&self) -> BusResult<bool> {
        if self.revision().is_some() {
            return Ok(true);
        }
        match self
            .0
            .store
            .create(&self.0.key, self.0.holder.clone())
            .await
        {
            Ok(rev) => {
                self.set_revision(Some(rev));
                tokio::spawn(self.clone().renew());
                Ok(true)
            }
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(BusError::Unavailable {
                reason: format!("take subscription lease: {e}"),
            }),
        }
    }

    /// Takes the lease if it is free or becomes free within `grace`.
    pub(crate) async fn try_acquire_within(&self, grace: Duration) -> BusResult<bool> {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            if self.try_acquire().await? {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the lease is ours (`true`) or the subscription closes (`false`).
    pub(crate) async fn acquire(&self) -> bool {
        loop {
            match self.try_acquire().await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => tracing::debug!(key = %self.0.key, error = %e, "lease attempt failed"),
            }
            tokio::select! {
                () = self.0.done.cancelled() => return false,
                () = tokio::time::sleep(self.0.ttl / 4) => {}
            }
        }
    }

    /// A token cancelled when the lease is lost.
    pub(crate) fn lost(&self) -> CancellationToken {
        self.0.lost.clone()
    }

    /// The lease entry's current revision if it still names this holder.
    async fn still_ours(&self) -> Option<u64> {
        match self.0.store.entry(&self.0.key).await {
            Ok(Some(entry)) if entry.value == self.0.holder => Some(entry.revision),
            _ => None,
        }
    }

    async fn renew(self) {
        let inner = &*self.0;
        let every = inner.ttl / 3;
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = inner.done.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
            let Some(rev) = self.revision() else { break };
            match inner
                .store
                .update(&inner.key, inner.holder.clone(), rev)
                .await
            {
                Ok(rev) => {
                    self.set_revision(Some(rev));
                    last_ok = tokio::time::Instant::now();
                }
                Err(e) => {
                    // A renewal whose reply was lost (the server restarted, the connection
                    // dropped) may still have been applied: the revision we know is then stale
                    // although the lease is ours. Ask the bucket before giving the lease up.
                    let wrong_revision = e.kind() == UpdateErrorKind::WrongLastRevision;
                    if let Some(rev) = self.still_ours().await {
                        tracing::debug!(key = %inner.key, "subscription lease renewal applied; its reply was lost");
                        self.set_revision(Some(rev));
                        last_ok = tokio::time::Instant::now();
                        continue;
                    }
                    if wrong_revision {
                        tracing::warn!(key = %inner.key, "subscription lease taken by another consumer");
                    } else {
                        tracing::warn!(key = %inner.key, error = %e, "subscription lease renewal failed");
                    }
                    if wrong_revision || last_ok.elapsed() >= inner.ttl {
                        self.set_revision(None);
                        inner.lost.cancel();
                        return;
                    }
                }
            }
        }
        if let Some(rev) = self.revision() {
            if let Err(e) = inner
                .store
                .delete_expect_revision(&inner.key, Some(rev))
                .await
            {
                tracing::debug!(key = %inner.key, error = %e, "lease release failed; it expires");
            }
        }
    }
}
