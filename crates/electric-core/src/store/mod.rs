//! The [`Store`] trait: where documents, their change logs and their delta channels live.
//!
//! A store is the single source of truth. It applies commits atomically against an expected
//! [`Stamp`] (optimistic concurrency across processes), keeps a capped per-key change log so late
//! or disconnected replicas can catch up, and publishes every committed delta on its section's
//! channel. [`MemoryStore`] is the embedded implementation; `electric-redis` provides the
//! production one. Every implementation must pass the conformance suite in `electric-testkit`.

mod members;
mod memory;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::delta::{DeltaKind, Patch, SharedDelta};
use crate::digest::Digest;
use crate::error::Result;
use crate::key::{Key, SectionId};
use crate::version::{CommitId, Epoch, Stamp, Version};

pub use members::{Members, MembersError};
pub use memory::{
    MemoryStore, MemoryStoreBuilder, DEFAULT_CHANNEL_CAPACITY, DEFAULT_FENCE_TTL,
    DEFAULT_LOG_CAPACITY,
};

/// A whole document as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Epoch and version of this state.
    pub stamp: Stamp,
    /// Change time of the last commit, milliseconds since the Unix epoch.
    pub change_time: u64,
    /// The document's top-level members, as the JSON text the store holds.
    pub doc: Members,
    /// The digest the writer of this version gave it (`None`: the writer gave none).
    pub digest: Option<Digest>,
}

/// Where a key stands, as [`Store::heads`] reports it: its stamp and its version's digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Epoch and version.
    pub stamp: Stamp,
    /// The digest of that version (`None`: its writer gave none).
    pub digest: Option<Digest>,
}

/// A member written (`Some`, its JSON text) or removed (`None`), as [`Commit::fields`] lists them.
pub type MemberWrite = (String, Option<Box<RawValue>>);

/// One atomic change to submit to [`Store::commit`].
#[derive(Clone, Debug)]
pub struct Commit {
    /// Identifies this commit: the store keeps it with the delta, so [`Store::resolve`] can tell
    /// whether the commit was applied. Use a fresh [`CommitId::random`] for every commit; a
    /// commit that creates the key gives the new lifetime the epoch `Epoch::from(id)`.
    pub id: CommitId,
    /// The document.
    pub key: Key,
    /// What the writer believes the store holds: `None` means "the key does not exist".
    pub expected: Option<Stamp>,
    /// Top-level members to write (`Some`, as JSON text) or remove (`None`). Together they turn
    /// the expected document into the new one. [`Commit::member`] builds an entry. Ignored when
    /// [`doc`](Commit::doc) is set.
    pub fields: Vec<(String, Option<Box<RawValue>>)>,
    /// The new document as a JSON tree, when the writer holds one (`DataManager::update` does,
    /// and then leaves `fields` empty). A store takes what it writes from here: for a `Patch`,
    /// the members `ops` touch (a touched member `doc` lacks is removed), for a `Snapshot`
    /// the whole document, replacing every member. This lets a store write less than whole
    /// members: the Redis store writes only the array elements `ops` change.
    /// [`Commit::member_writes`] turns it into `fields`' form.
    pub doc: Option<Arc<Map<String, Value>>>,
    /// `Patch` or `Snapshot` (never `Delete`; use [`Store::delete`]).
    pub kind: DeltaKind,
    /// The RFC 6902 patch from the expected document to the new one, as logged and published.
    pub ops: Patch,
    /// Who is writing; copied into the delta.
    pub origin: String,
    /// When set, the key (document and log) expires this long after the commit.
    pub ttl: Option<Duration>,
    /// The digest of the new document, kept with the version and carried in the delta.
    pub digest: Option<Digest>,
}

impl Commit {
    /// A [`Commit::fields`] entry writing member `name` as `value` serialized.
    ///
    /// # Errors
    ///
    /// `value` does not serialize (a map with non-string keys, a failing `Serialize`).
    pub fn member(
        name: impl Into<String>,
        value: &(impl Serialize + ?Sized),
    ) -> serde_json::Result<(String, Option<Box<RawValue>>)> {
        Ok((name.into(), Some(serde_json::value::to_raw_value(value)?)))
    }

    /// The top-level members `ops` change (the members of their paths and of their `from`
    /// paths), sorted and without repeats; `None` when an operation replaces the root.
    pub fn touched_members(&self) -> Option<Vec<String>> {
        use json_patch::PatchOperation as Op;
        let mut names = Vec::with_capacity(self.ops.0.len());
        for op in &self.ops.0 {
            let from = match op {
                Op::Move(m) => Some(&m.from),
                Op::Copy(c) => Some(&c.from),
                _ => None,
            };
            for p in std::iter::once(op.path()).chain(from.map(|p| &**p)) {
                names.push(p.first()?.decoded().into_owned());
            }
        }
        names.sort_unstable();
        names.dedup();
        Some(names)
    }

    /// The members this commit writes, in [`fields`](Commit::fields)' form, and whether they
    /// replace the whole document (every member not listed is dropped). Without
    /// [`doc`](Commit::doc): `fields` as they are, not replacing. With it: for a `Snapshot` (or a
    /// patch replacing the root) every member of `doc`, replacing; otherwise the members `ops`
    /// touch, serialized from `doc`, and `None` for those it lacks.
    ///
    /// # Errors
    ///
    /// A member of `doc` does not serialize (it always does: its keys are strings).
    pub fn member_writes(&self) -> serde_json::Result<(bool, Cow<'_, [MemberWrite]>)> {
        let Some(doc) = &self.doc else {
            return Ok((false, Cow::Borrowed(&self.fields)));
        };
        let text = |v: &Value| serde_json::value::to_raw_value(v).map(Some);
        let touched = match self.kind {
            DeltaKind::Snapshot => None,
            _ => self.touched_members(),
        };
        let writes = match &touched {
            None => doc
                .iter()
                .map(|(n, v)| Ok((n.clone(), text(v)?)))
                .collect::<serde_json::Result<Vec<_>>>()?,
            Some(names) => names
                .iter()
                .map(|n| Ok((n.clone(), doc.get(n).map(text).transpose()?.flatten())))
                .collect::<serde_json::Result<Vec<_>>>()?,
        };
        Ok((touched.is_none(), Cow::Owned(writes)))
    }
}

/// The result of [`Store::commit`].
#[derive(Clone, Debug)]
#[must_use]
pub enum CommitOutcome {
    /// Applied; the delta carries the new version, the epoch and the change time.
    Committed(SharedDelta),
    /// Rejected: the store holds `actual` (`None`: the key does not exist).
    Conflict {
        /// What the store holds.
        actual: Option<Stamp>,
    },
}

/// The result of [`Store::resolve`]: what became of a commit whose reply was lost.
#[derive(Clone, Debug)]
#[must_use]
pub enum Resolution {
    /// The commit is applied, exactly once: here is its delta (applied earlier, or by this
    /// call because the store still held the expected stamp).
    Committed(SharedDelta),
    /// The commit was not applied and no copy of it can apply any more; the store holds
    /// `actual`.
    NotApplied {
        /// What the store holds.
        actual: Option<Stamp>,
    },
    /// The store no longer holds what would tell (the key's lifetime ended, or its log moved on
    /// past the commit's version); no copy of the commit can apply any more.
    Unknown {
        /// What is missing.
        reason: String,
    },
}

/// The result of [`Store::changes_since`].
#[derive(Clone, Debug)]
pub enum Changes {
    /// Every delta after the requested version, in order (empty when up to date).
    Deltas {
        /// The key's current epoch.
        epoch: Epoch,
        /// The deltas, oldest first.
        deltas: Vec<SharedDelta>,
    },
    /// The log no longer reaches back that far.
    Trimmed {
        /// The key's current epoch.
        epoch: Epoch,
        /// The oldest version still in the log.
        earliest: Version,
    },
    /// The key does not exist.
    Missing,
}

/// An item of a section subscription.
#[derive(Clone, Debug)]
pub enum SubscriptionEvent {
    /// A committed delta.
    Delta(SharedDelta),
    /// The subscriber fell behind and `missed` deltas were dropped for it; it must resynchronise.
    Lagged {
        /// How many deltas were lost (0 when the backend cannot tell).
        missed: u64,
    },
}

/// A live stream of a section's deltas. It ends when the subscription is lost; an `Err` item
/// reports a message that could not be read (the stream goes on).
pub type Subscription = BoxStream<'static, Result<SubscriptionEvent>>;

/// Storage for versioned documents. Object safe: use it as `Arc<dyn Store>`.
///
/// # Semantics every implementation provides
///
/// - `commit` is atomic: it checks the expected stamp, writes the fields, bumps the version
///   (a created key gets version 1 and a fresh random epoch), sets the change time, appends the
///   delta to the key's capped log, publishes it on the section channel and refreshes the TTL — or
///   does nothing and reports the actual stamp.
/// - Readers never observe half a commit.
/// - `changes_since(key, v)` returns every logged delta with a version above `v`, or says the log
///   was trimmed past `v`.
/// - A subscriber that cannot keep up is told ([`SubscriptionEvent::Lagged`]), never silently
///   starved.
/// - A write whose reply may have been lost is [`Error::Indeterminate`](crate::Error); every
///   other error from `commit`, `resolve` and `delete_with_id` means nothing was written.
/// - Commits are idempotent by id: a commit that was already applied reports `Committed` with
///   its logged delta instead of conflicting (a client library that re-sends a request after a
///   dropped connection cannot apply it twice). [`Store::resolve`] finishes a commit whose
///   outcome is unknown, and fences it: once it has answered, no copy of the commit still in
///   flight can apply. A commit that names an expected stamp is fenced by that stamp, which
///   never comes back; a create, whose expected state ("no key") does come back after a
///   delete, is fenced by a record the store keeps for its fence lifetime.
/// - `delete_with_id` is idempotent by id the same way: repeating it returns the first
///   outcome and deletes nothing more.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Loads the whole document, or `None` if the key does not exist.
    async fn load(&self, key: &Key) -> Result<Option<Snapshot>>;

    /// Atomically applies `commit` if the store holds `commit.expected`. A commit with this id
    /// that was applied already is reported as `Committed` with its logged delta.
    ///
    /// # Errors
    ///
    /// [`Error::Indeterminate`](crate::Error) when the request may have reached the store but
    /// no reply came (a timeout, a connection lost after sending); any other error means the
    /// commit was not applied.
    async fn commit(&self, commit: &Commit) -> Result<CommitOutcome>;

    /// Finishes `commit`, whose [`commit`](Store::commit) ended in `Indeterminate`: applies it
    /// now if the store still holds `commit.expected` and it was not applied, and says what
    /// became of it. Safe to call again (for example after it too timed out). After it returns
    /// `Ok`, no copy of the commit can apply any more (see the trait docs).
    ///
    /// The default says [`Resolution::Unknown`]: a store that cannot resolve commits leaves every
    /// lost reply indeterminate.
    ///
    /// # Errors
    ///
    /// As [`commit`](Store::commit).
    async fn resolve(&self, commit: &Commit) -> Result<Resolution> {
        let _ = commit;
        Ok(Resolution::Unknown {
            reason: "this store cannot resolve commits".into(),
        })
    }

    /// The logged deltas after version `after`.
    async fn changes_since(&self, key: &Key, after: Version) -> Result<Changes>;

    /// The current stamps of many keys at once (`None`: missing), in the order asked.
    async fn stamps(&self, keys: &[Key]) -> Result<Vec<Option<Stamp>>>;

    /// The current stamps and digests of many keys at once (`None`: missing), in the order
    /// asked. The default reports the stamps with no digest.
    async fn heads(&self, keys: &[Key]) -> Result<Vec<Option<Head>>> {
        Ok(self
            .stamps(keys)
            .await?
            .into_iter()
            .map(|s| {
                s.map(|stamp| Head {
                    stamp,
                    digest: None,
                })
            })
            .collect())
    }

    /// Deletes the document and its log and publishes a `delete` delta carrying `id`. Returns
    /// whether it existed. Repeating the call with the same `id` returns the first call's answer
    /// and deletes nothing (so a delete whose reply was lost is resolved by sending it again).
    ///
    /// # Errors
    ///
    /// As [`commit`](Store::commit).
    async fn delete_with_id(&self, key: &Key, origin: &str, id: CommitId) -> Result<bool>;

    /// [`delete_with_id`](Store::delete_with_id) with a fresh id: a one-off delete whose lost
    /// reply cannot be resolved later.
    async fn delete(&self, key: &Key, origin: &str) -> Result<bool> {
        self.delete_with_id(key, origin, CommitId::random()).await
    }

    /// Sets the key to expire after `ttl`. Returns whether the key exists.
    async fn expire(&self, key: &Key, ttl: Duration) -> Result<bool>;

    /// The time left before the key expires: `Ok(None)` if it has no expiry or does not exist.
    async fn ttl(&self, key: &Key) -> Result<Option<Duration>>;

    /// Subscribes to every delta committed in `section` from now on.
    async fn subscribe(&self, section: &SectionId) -> Result<Subscription>;
}
