//! The message bus: publish and consume messages on topics, with explicit acknowledgements,
//! compression named in a header, bounded publishing and prefetch (the original's Pulsar
//! module, `SmartpulsePulsarClient`).
//!
//! Two layers:
//!
//! - [`Bus`] is what a backend implements, object safe (`Arc<dyn Bus>`): open a producer for a
//!   topic ([`ProducerBackend::send`] hands one message to the client and returns a future of
//!   the broker's [`Receipt`]), and open a subscription (a stream of [`Delivery`]s, each settled
//!   explicitly). [`MemoryBus`] is the in-process one; `electric-nats` (JetStream) and
//!   `electric-pulsar` provide the others. Every backend passes the conformance suite in
//!   `electric-testkit`.
//! - [`BusClient`] is what applications use: a per-topic producer cache (the original's
//!   idempotent `CreateTopicToProduce`), compression, the size limit and the in-flight bound
//!   applied the same way on every backend, text and JSON helpers, a typed consumer, and
//!   [`BusClient::consume`], a handler loop that settles every message (errors and panics
//!   nack or dead-letter it).
//!
//! Where the original did worse: its `WriteBytes` printed send errors and returned a null
//! message id; here every publish returns the broker's id or a typed [`BusError`] that says
//! whether anything may have been stored ([`BusError::Indeterminate`]).
//!
//! | original | here |
//! |---|---|
//! | `CreateTopicToProduce(topic, …, maxPendingMessages, compressionType)` | [`BusClient::producer`] with [`ProducerOptions`] |
//! | `WriteBytes` / `WriteText` / `WriteObj` | [`Producer::publish`] / [`Producer::publish_text`] / [`Producer::publish_json`] (or [`BusClient::publish`]) |
//! | `CreateTopicConsumerRawAsync` / `CreateTopicConsumerAsync` / `<T>` | [`BusClient::subscribe`] / [`Message::text`] / [`Subscription::json`] |
//! | subscription type, initial position, prefetch | [`SubscriptionKind`], [`InitialPosition`], [`SubscribeOptions::prefetch`] |
//! | `DisposeTopic` / `DisposeAsync` | [`BusClient::dispose_topic`] / [`BusClient::close`] |
//!
//! # Delivery guarantees
//!
//! At least once: a message is delivered until a consumer [acks](Delivery::ack) it (or
//! [terminates](Delivery::term) it). A nacked or dropped delivery, and every delivery a lost
//! consumer held, comes back with a higher [`Message::redelivery_count`]. Within one
//! subscription, messages reach an exclusive or failover consumer in publish order (per topic on
//! the memory bus and JetStream, per key on Pulsar); shared consumers split the load without
//! order. Handlers must therefore be idempotent; [`Message::msg_id`] is a natural key for that.
//!
//! # Examples
//!
//! ```
//! use electric_core::bus::{BusClient, Codec, InitialPosition, MemoryBus, ProducerOptions, SubscribeOptions};
//! use futures_util::StreamExt;
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let bus = BusClient::new(MemoryBus::new());
//! let mut sub = bus
//!     .subscribe(SubscribeOptions::new("trades", "positions").initial_position(InitialPosition::Earliest))
//!     .await?;
//! bus.producer("trades", ProducerOptions::default().codec(Codec::Zstd)).await?;
//! let receipt = bus.publish_json("trades", &serde_json::json!({"qty": 5})).await?;
//!
//! let delivery = sub.next().await.unwrap()?;
//! assert_eq!(delivery.id, receipt.id);
//! assert_eq!(delivery.json::<serde_json::Value>()?["qty"], 5);
//! delivery.ack().await?;
//! # Ok::<(), electric_core::bus::BusError>(())
//! # }).unwrap();
//! ```

mod client;
pub mod codec;
mod error;
pub mod export;
mod memory;
mod message;
mod options;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

pub use client::{
    BusClient, ConsumeConfig, ConsumeReport, PendingPublish, Producer, Subscription,
    TypedSubscription,
};
pub use codec::{Codec, DecodeError};
pub use error::{BusError, BusResult};
pub use memory::{MemoryBus, MemoryBusBuilder};
pub use message::{
    headers, AckHandle, Acker, Delivery, Headers, Message, MessageId, OutMessage, Receipt,
};
pub use options::{
    InitialPosition, ProducerOptions, SubscribeOptions, SubscriptionKind, UndecodablePolicy,
    DEFAULT_MAX_IN_FLIGHT, DEFAULT_PREFETCH,
};

/// Most bytes of headers one message may carry (names and values); more is
/// [`BusError::TooLarge`].
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// The broker's answer to one publish, awaited separately from handing the message over so
/// that many publishes can be in flight at once.
pub type PublishFuture = BoxFuture<'static, BusResult<Receipt>>;

/// A backend's stream of deliveries, and a gauge of how many messages it buffers ahead of the
/// reader.
pub struct RawSubscription {
    /// The deliveries. An `Err` item reports one message or event that could not be delivered;
    /// the stream goes on. It ends when the bus is closed.
    pub stream: BoxStream<'static, BusResult<Delivery>>,
    /// Messages received from the broker and not yet taken by the reader.
    pub buffered: Arc<AtomicUsize>,
}

/// A message-bus backend. Object safe: [`BusClient`] holds an `Arc<dyn Bus>`, so the backend
/// can be picked at run time.
///
/// # What every implementation provides
///
/// - A producer publishes each message once per successful [`ProducerBackend::send`] (plus
///   broker-side duplicates only where documented) and answers with the broker's id; an error
///   says whether the outcome is unknown ([`BusError::Indeterminate`]).
/// - A subscription is durable by name: its position and its unsettled messages outlive its
///   consumers. Deliveries are settled with [`AckHandle`]; unsettled ones come back.
/// - [`SubscriptionKind`], [`InitialPosition`] and [`SubscribeOptions::prefetch`] behave as
///   documented, or the backend refuses the options with [`BusError::InvalidConfig`].
/// - Nothing the client holds grows without bound: buffered deliveries stay within the
///   prefetch.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// The backend's name: `memory`, `nats`, `pulsar`.
    fn backend(&self) -> &'static str;

    /// The largest payload (uncompressed) this bus carries.
    fn max_message_bytes(&self) -> usize;

    /// Whether the backend compresses payloads itself (Pulsar, whose message metadata names the
    /// codec for every Pulsar client). Then the client hands it the codec in
    /// [`ProducerOptions`] and uncompressed payloads, and writes no
    /// [`headers::CONTENT_ENCODING`]; otherwise the client compresses and writes the header.
    fn native_compression(&self) -> bool {
        false
    }

    /// Opens a producer for `topic`. [`BusClient`] calls it once per topic and caches it.
    async fn open_producer(
        &self,
        topic: &str,
        options: &ProducerOptions,
    ) -> BusResult<Arc<dyn ProducerBackend>>;

    /// Opens a consumer on a subscription, creating the subscription if it does not exist.
    async fn subscribe(&self, options: &SubscribeOptions) -> BusResult<RawSubscription>;

    /// Closes the connection: producers and subscriptions end.
    async fn close(&self) -> BusResult<()>;
}

/// One topic's producer in a backend.
#[async_trait]
pub trait ProducerBackend: Send + Sync + 'static {
    /// Hands `message` to the client. `Ok` means it is on its way and the returned future
    /// yields the broker's answer; an `Err` means nothing was sent.
    async fn send(&self, message: OutMessage) -> BusResult<PublishFuture>;

    /// Closes the producer after its in-flight publishes finished.
    async fn close(&self) -> BusResult<()>;
}

/// Checks a topic or subscription name for what every backend refuses: empty, over 255
/// bytes, whitespace or control characters. Backends check their own rules on top.
///
/// # Errors
///
/// [`BusError::InvalidName`].
pub fn validate_name(what: &'static str, name: &str) -> BusResult<()> {
    let reason = if name.is_empty() {
        Some("is empty")
    } else if name.len() > 255 {
        Some("is longer than 255 bytes")
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("holds whitespace or control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(BusError::InvalidName {
            what,
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}
