//! Producer and subscription settings.

use std::time::Duration;

use super::codec::Codec;

/// Default most publishes of one producer awaiting the broker's answer (the original's
/// `maxPendingMessages`).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 500;
/// Default prefetch of a subscription (the original's `messagePrefetchCount`).
pub const DEFAULT_PREFETCH: usize = 1000;

/// Settings of a producer (one per topic, see [`BusClient::producer`](super::BusClient::producer)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProducerOptions {
    /// How payloads are compressed (default none).
    pub codec: Codec,
    /// Most publishes awaiting the broker's answer (default 500). When that many are out,
    /// [`Producer::publish`](super::Producer::publish) and
    /// [`Producer::send`](super::Producer::send) wait for one to finish — up to
    /// [`ProducerOptions::max_wait`], then they fail with [`BusError::Backpressure`](super::BusError::Backpressure)
    /// and nothing is sent.
    pub max_in_flight: usize,
    /// How long a publish may wait for room among the in-flight publishes (default 30 s).
    pub max_wait: Duration,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        Self {
            codec: Codec::None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_wait: Duration::from_secs(30),
        }
    }
}

impl ProducerOptions {
    /// Sets the codec.
    #[must_use]
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Sets the most in-flight publishes.
    #[must_use]
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Sets how long a publish may wait for room.
    #[must_use]
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }
}

/// How the consumers of one subscription share its messages (the original's Pulsar
/// subscription types). Exhaustive on purpose: every backend must say what each kind means on
/// it, so a new kind is a breaking change rather than one a backend silently mishandles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SubscriptionKind {
    /// One consumer at a time; another is refused with
    /// [`BusError::SubscriptionBusy`](super::BusError::SubscriptionBusy).
    #[default]
    Exclusive,
    /// Every consumer gets a share of the messages (no order across consumers).
    Shared,
    /// One active consumer; the others stand by and take over when it goes.
    Failover,
}

impl SubscriptionKind {
    /// The kind's name (`exclusive`, `shared`, `failover`).
    pub fn name(self) -> &'static str {
        match self {
            SubscriptionKind::Exclusive => "exclusive",
            SubscriptionKind::Shared => "shared",
            SubscriptionKind::Failover => "failover",
        }
    }
}

/// Where a subscription that does not exist yet starts (exhaustive, as [`SubscriptionKind`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum InitialPosition {
    /// Only messages published from now on (the original's default).
    #[default]
    Latest,
    /// Every message the topic still holds.
    Earliest,
}

/// What a subscription does with a message whose payload cannot be decoded (an unknown codec,
/// a payload that does not decompress). The stream reports it as
/// [`BusError::Undecodable`](super::BusError::Undecodable) either way and goes on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UndecodablePolicy {
    /// Negatively acknowledge it after [`SubscribeOptions::nack_delay`]: it comes back (a newer
    /// consumer may know the codec), and keeps coming back.
    Nack,
    /// Terminate it: it is not delivered again.
    #[default]
    Term,
    /// Publish it unchanged, with headers saying why, to this topic, then acknowledge it.
    DeadLetter(String),
}

/// Settings of a subscription.
///
/// # Examples
///
/// ```
/// use electric_core::bus::{InitialPosition, SubscribeOptions, SubscriptionKind};
/// let opts = SubscribeOptions::new("trades", "positions")
///     .kind(SubscriptionKind::Shared)
///     .initial_position(InitialPosition::Earliest)
///     .prefetch(256);
/// assert_eq!(opts.prefetch, 256);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// The topic.
    pub topic: String,
    /// The subscription's name: consumers with one name share its position (durable).
    pub subscription: String,
    /// How its consumers share messages (default exclusive).
    pub kind: SubscriptionKind,
    /// Where a new subscription starts (default latest).
    pub initial_position: InitialPosition,
    /// Most messages delivered to this consumer and not yet settled, and most buffered in the
    /// client ahead of the reader (default 1000). A consumer that stops reading or settling
    /// makes the broker hold the rest: the client's memory stays bounded.
    pub prefetch: usize,
    /// How long the broker waits for a settlement before delivering a message again
    /// (JetStream `ack_wait`, Pulsar's ack timeout; default 30 s).
    pub ack_timeout: Duration,
    /// Delay before a nacked message comes back when the nack gives none (default 1 s).
    pub nack_delay: Duration,
    /// What happens to a payload that cannot be decoded (default: terminate it).
    pub on_undecodable: UndecodablePolicy,
}

impl SubscribeOptions {
    /// Settings for subscription `subscription` on `topic`, everything else default.
    pub fn new(topic: impl Into<String>, subscription: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            subscription: subscription.into(),
            kind: SubscriptionKind::default(),
            initial_position: InitialPosition::default(),
            prefetch: DEFAULT_PREFETCH,
            ack_timeout: Duration::from_secs(30),
            nack_delay: Duration::from_secs(1),
            on_undecodable: UndecodablePolicy::default(),
        }
    }

    /// Sets the kind.
    #[must_use]
    pub fn kind(mut self, kind: SubscriptionKind) -> Self {
        self.kind = kind;
        self
    }

    /// Sets the initial position.
    #[must_use]
    pub fn initial_position(mut self, p: InitialPosition) -> Self {
        self.initial_position = p;
        self
    }

    /// Sets the prefetch.
    #[must_use]
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
        self
    }

    /// Sets the ack timeout.
    #[must_use]
    pub fn ack_timeout(mut self, d: Duration) -> Self {
        self.ack_timeout = d;
        self
    }

    /// Sets the default nack delay.
    #[must_use]
    pub fn nack_delay(mut self, d: Duration) -> Self {
        self.nack_delay = d;
        self
    }

    /// Sets what happens to undecodable payloads.
    #[must_use]
    pub fn on_undecodable(mut self, policy: UndecodablePolicy) -> Self {
        self.on_undecodable = policy;
        self
    }
}
