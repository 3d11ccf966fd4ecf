//! The bus's error type.

use std::time::Duration;

/// A `Result` whose error defaults to [`BusError`].
pub type BusResult<T, E = BusError> = std::result::Result<T, E>;

/// Everything that can go wrong on a message bus.
///
/// Errors are classified by [`BusError::is_retryable`]. A publish that *failed* was not
/// accepted by the broker; a publish whose outcome is unknown (the broker may have stored it) is
/// [`BusError::Indeterminate`], never a plain failure. Backends map their client's errors onto
/// these variants and never leak the client's types.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// A bus URL does not parse or names no backend this build knows.
    #[error("invalid bus url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// A topic or subscription name is empty, too long, or holds characters the backend
    /// cannot carry.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// `topic` or `subscription`.
        what: &'static str,
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Publishing to a topic that has no producer registered
    /// ([`BusClient::producer`](super::BusClient::producer) first), or subscribing to a topic
    /// that does not exist on a backend told not to create topics.
    #[error("unknown topic {topic:?}")]
    UnknownTopic {
        /// The topic.
        topic: String,
    },
    /// A message's payload is larger than the bus's maximum; nothing was sent.
    #[error("message of {size} bytes is over the maximum of {limit}")]
    TooLarge {
        /// The payload's size in bytes.
        size: usize,
        /// The maximum in bytes.
        limit: usize,
    },
    /// A received message could not be turned back into its payload: it names a codec this
    /// build does not know, does not decompress, or decompresses to more than the maximum. The
    /// message was handled as the subscription's [`UndecodablePolicy`](super::UndecodablePolicy)
    /// says; the stream goes on.
    #[error("message {id} on {topic:?} cannot be decoded: {reason}")]
    Undecodable {
        /// The topic.
        topic: String,
        /// The message's id.
        id: String,
        /// What was wrong with it.
        reason: String,
    },
    /// Compressing a payload failed; nothing was sent.
    #[error("payload does not compress as {codec}: {reason}")]
    Encode {
        /// The codec's name.
        codec: &'static str,
        /// What the compressor reported.
        reason: String,
    },
    /// A payload does not (de)serialize as the type asked for.
    #[error("payload does not (de)serialize: {reason}")]
    Serde {
        /// The serde error message.
        reason: String,
    },
    /// A bounded queue stayed full for longer than allowed; nothing was sent.
    #[error("{what} is full (waited {waited:?})")]
    Backpressure {
        /// Which queue (`topic orders`, `in-flight publishes`…).
        what: String,
        /// How long the call waited before giving up.
        waited: Duration,
    },
    /// The subscription is exclusive and another consumer holds it.
    #[error("subscription {subscription:?} on {topic:?} is held by another consumer")]
    SubscriptionBusy {
        /// The topic.
        topic: String,
        /// The subscription's name.
        subscription: String,
    },
    /// The subscription exists with a different kind or topic than asked for.
    #[error("subscription {subscription:?} exists with other settings: {reason}")]
    SubscriptionMismatch {
        /// The subscription's name.
        subscription: String,
        /// What differs.
        reason: String,
    },
    /// The broker could not be reached (or was lost) and the deadline passed; nothing was done.
    #[error("broker unavailable: {reason}")]
    Unavailable {
        /// What the client reported.
        reason: String,
    },
    /// A publish was sent but its outcome is unknown (no acknowledgement before the deadline,
    /// or the connection was lost after sending): the broker may hold the message. Retrying
    /// with the same message id is safe on a broker that de-duplicates.
    #[error("publish to {topic:?} has an unknown outcome: {reason}")]
    Indeterminate {
        /// The topic.
        topic: String,
        /// What happened.
        reason: String,
    },
    /// The broker refused the call for a reason retrying will not fix.
    #[error("broker refused: {reason}")]
    Rejected {
        /// What the broker reported.
        reason: String,
    },
    /// A setting is out of range or a combination is not supported by this backend.
    #[error("invalid bus configuration: {0}")]
    InvalidConfig(String),
    /// The bus, producer or subscription was closed.
    #[error("bus is closed")]
    Closed,
}

impl BusError {
    /// Whether the same call may succeed later.
    ///
    /// `Indeterminate` is retryable only with the same message id (the broker de-duplicates
    /// it); callers that cannot reuse the id must treat it as "maybe published".
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            BusError::Unavailable { .. }
                | BusError::Backpressure { .. }
                | BusError::Indeterminate { .. }
                | BusError::SubscriptionBusy { .. }
        )
    }

    /// Whether the outcome of the call is unknown (it may have taken effect).
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, BusError::Indeterminate { .. })
    }

    pub(crate) fn serde(err: impl std::fmt::Display) -> Self {
        BusError::Serde {
            reason: err.to_string(),
        }
    }
}
