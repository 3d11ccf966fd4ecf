//! Messages: what is published, what the broker answers, and what a subscription delivers.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::error::{BusError, BusResult};

/// Header names with a meaning on every backend.
pub mod headers {
    /// The payload's media type (`application/json`, `text/plain; charset=utf-8`…).
    pub const CONTENT_TYPE: &str = "content-type";
    /// The [`Codec`](crate::bus::Codec) the payload is compressed with (absent: none).
    pub const CONTENT_ENCODING: &str = "content-encoding";
    /// The publisher's id for the message, used by brokers that de-duplicate publish retries
    /// (JetStream's `Nats-Msg-Id`).
    pub const MSG_ID: &str = "electric-msg-id";
    /// W3C trace context, passed through untouched.
    pub const TRACEPARENT: &str = "traceparent";
    /// On a dead-lettered message: why it was dead-lettered.
    pub const DEAD_LETTER_REASON: &str = "electric-dead-letter-reason";
    /// On a dead-lettered message: the topic it came from.
    pub const DEAD_LETTER_TOPIC: &str = "electric-dead-letter-topic";
    /// On a dead-lettered message that could not be decoded: the codec it named. The payload
    /// is the undecodable bytes as received, so [`CONTENT_ENCODING`] is moved here.
    pub const DEAD_LETTER_CONTENT_ENCODING: &str = "electric-dead-letter-content-encoding";
    /// On a dead-lettered message: its id on the topic it came from.
    pub const DEAD_LETTER_ID: &str = "electric-dead-letter-id";
    /// The media type [`publish_json`](crate::bus::Producer::publish_json) writes.
    pub const JSON: &str = "application/json";
    /// The media type [`publish_text`](crate::bus::Producer::publish_text) writes.
    pub const TEXT: &str = "text/plain; charset=utf-8";
}

/// Message headers (Pulsar properties, NATS headers): names map to one value each, kept in
/// insertion order. Names are compared exactly; the bus's own are lowercase ([`headers`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name` to `value`, replacing an earlier value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let (name, value) = (name.into(), value.into());
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let at = self.0.iter().position(|(n, _)| n == name)?;
        Some(self.0.remove(at).1)
    }

    /// The headers in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// How many headers are set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no header is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes the headers take as names and values (an estimate of their wire size).
    pub fn byte_len(&self) -> usize {
        self.0.iter().map(|(n, v)| n.len() + v.len() + 4).sum()
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut h = Headers::new();
        for (n, v) in iter {
            h.insert(n, v);
        }
        h
    }
}

/// A message to publish.
///
/// # Examples
///
/// ```
/// use electric_core::bus::OutMessage;
/// let msg = OutMessage::new(&b"{\"qty\":5}"[..])
///     .header("content-type", "application/json")
///     .key("PLANT-7")
///     .id("trade-1001");
/// assert_eq!(msg.key.as_deref(), Some("PLANT-7"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutMessage {
    /// The payload, uncompressed (the producer applies its codec).
    pub payload: Bytes,
    /// Headers to send with it.
    pub headers: Headers,
    /// The ordering key: messages with one key are delivered in publish order to a consumer
    /// (Pulsar's partition and ordering key; carried as a header on NATS).
    pub key: Option<String>,
    /// The publisher's id for the message. Brokers that de-duplicate (JetStream within its
    /// duplicate window) store a message once however often it is published with this id, so a
    /// publish whose outcome was unknown can be retried. Sent as [`headers::MSG_ID`].
    pub id: Option<String>,
}

impl OutMessage {
    /// A message with this payload and nothing else.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self {
            payload: payload.into(),
            ..Self::default()
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Sets the ordering key.
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the message id used for de-duplication.
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// The id a broker gave a stored message.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum MessageId {
    /// A position in a topic's log: the memory bus's offset, JetStream's stream sequence.
    Sequence(u64),
    /// A Pulsar message id.
    Pulsar {
        /// The ledger.
        ledger_id: u64,
        /// The entry in the ledger.
        entry_id: u64,
        /// The partition (-1: not partitioned).
        partition: i32,
        /// The index in a batch (-1: not batched).
        batch_index: i32,
    },
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageId::Sequence(n) => write!(f, "{n}"),
            MessageId::Pulsar {
                ledger_id,
                entry_id,
                partition,
                batch_index,
            } => write!(f, "{ledger_id}:{entry_id}:{partition}:{batch_index}"),
        }
    }
}

/// What the broker answered to a publish.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipt {
    /// The stored message's id.
    pub id: MessageId,
    /// The broker already held a message with this [`OutMessage::id`] and did not store it
    /// again (`id` is then the earlier message's).
    pub duplicate: bool,
}

impl Receipt {
    /// A receipt for a newly stored message.
    pub fn new(id: MessageId) -> Self {
        Self {
            id,
            duplicate: false,
        }
    }

    /// A receipt saying whether the broker found a duplicate.
    pub fn with_duplicate(id: MessageId, duplicate: bool) -> Self {
        Self { id, duplicate }
    }
}

/// A received message: its data, without the means to acknowledge it (see [`Delivery`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Message {
    /// The topic it came from.
    pub topic: String,
    /// The broker's id for it.
    pub id: MessageId,
    /// Its headers ([`headers::CONTENT_ENCODING`] removed once the payload is decoded).
    pub headers: Headers,
    /// Its ordering key.
    pub key: Option<String>,
    /// The payload, decompressed.
    pub payload: Bytes,
    /// How many times it was delivered before this delivery (0 the first time).
    pub redelivery_count: u32,
}

impl Message {
    /// A message; backends build these.
    pub fn new(topic: impl Into<String>, id: MessageId, payload: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            id,
            headers: Headers::new(),
            key: None,
            payload: payload.into(),
            redelivery_count: 0,
        }
    }

    /// The publisher's id ([`OutMessage::id`]), if it set one.
    pub fn msg_id(&self) -> Option<&str> {
        self.headers.get(headers::MSG_ID)
    }

    /// The payload as UTF-8 text.
    ///
    /// # Errors
    ///
    /// [`BusError::Serde`] when it is not UTF-8.
    pub fn text(&self) -> BusResult<&str> {
        std::str::from_utf8(&self.payload).map_err(BusError::serde)
    }

    /// The payload deserialized from JSON.
    ///
    /// # Errors
    ///
    /// [`BusError::Serde`] when it is not JSON for `T`.
    pub fn json<T: DeserializeOwned>(&self) -> BusResult<T> {
        serde_json::from_slice(&self.payload).map_err(BusError::serde)
    }
}

/// A backend's handle for settling one delivered message. Implemented by bus backends; users
/// call [`Delivery::ack`] and friends.
#[async_trait]
pub trait AckHandle: Send + Sync + 'static {
    /// The message was handled: do not deliver it again.
    async fn ack(self: Box<Self>) -> BusResult<()>;
    /// The message was not handled: deliver it again, after `delay` if given.
    async fn nack(self: Box<Self>, delay: Option<Duration>) -> BusResult<()>;
    /// The message can never be handled: do not deliver it again (and do not count it handled).
    async fn term(self: Box<Self>) -> BusResult<()>;
    /// The delivery was dropped unsettled: arrange a redelivery without waiting (best effort;
    /// the broker's ack timeout redelivers it otherwise).
    fn dropped(self: Box<Self>);
}

/// Settles one delivered message. Dropping it unsettled asks for a redelivery.
pub struct Acker(Option<Box<dyn AckHandle>>);

impl Acker {
    /// Wraps a backend's handle.
    pub fn new(handle: Box<dyn AckHandle>) -> Self {
        Self(Some(handle))
    }

    fn take(&mut self) -> BusResult<Box<dyn AckHandle>> {
        self.0.take().ok_or(BusError::Closed)
    }

    /// Acknowledges the message: it is not delivered again.
    ///
    /// # Errors
    ///
    /// The acknowledgement did not reach the broker: the message will be delivered again
    /// (at-least-once), so handlers must be idempotent.
    pub async fn ack(mut self) -> BusResult<()> {
        self.take()?.ack().await
    }

    /// Negatively acknowledges the message: it is delivered again, after `delay` if given.
    ///
    /// # Errors
    ///
    /// The request did not reach the broker; the broker's ack timeout redelivers the message.
    pub async fn nack(mut self, delay: Option<Duration>) -> BusResult<()> {
        self.take()?.nack(delay).await
    }

    /// Terminates the message: it is not delivered again. Pulsar has no such command, so
    /// there it is acknowledged.
    ///
    /// # Errors
    ///
    /// The request did not reach the broker: the message may be delivered again.
    pub async fn term(mut self) -> BusResult<()> {
        self.take()?.term().await
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.dropped();
        }
    }
}

impl fmt::Debug for Acker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acker")
            .field("settled", &self.0.is_none())
            .finish()
    }
}

/// A delivered message and the means to settle it.
///
/// Settle every delivery with [`ack`](Delivery::ack), [`nack`](Delivery::nack) or
/// [`term`](Delivery::term). One dropped unsettled is redelivered.
#[derive(Debug)]
pub struct Delivery {
    message: Message,
    acker: Acker,
}

impl Delivery {
    /// A delivery; backends build these.
    pub fn new(message: Message, acker: Acker) -> Self {
        Self { message, acker }
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The message, for changing it before handing it on (the core bus decodes payloads so).
    pub fn message_mut(&mut self) -> &mut Message {
        &mut self.message
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// Splits the delivery so the message can be handed to one task and the acker to another.
    pub fn into_parts(self) -> (Message, Acker) {
        (self.message, self.acker)
    }

    /// See [`Acker::ack`].
    ///
    /// # Errors
    ///
    /// See [`Acker::ack`].
    pub async fn ack(self) -> BusResult<()> {
        self.acker.ack().await
    }

    /// See [`Acker::nack`].
    ///
    /// # Errors
    ///
    /// See [`Acker::nack`].
    pub async fn nack(self, delay: Option<Duration>) -> BusResult<()> {
        self.acker.nack(delay).await
    }

    /// See [`Acker::term`].
    ///
    /// # Errors
    ///
    /// See [`Acker::term`].
    pub async fn term(self) -> BusResult<()> {
        self.acker.term().await
    }
}

impl std::ops::Deref for Delivery {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.message
    }
}
