//! The part of the published event contract this service reads, written down from
//! `events/asyncapi.yaml` and `events/schemas/` rather than taken from the publisher's code.
//!
//! It is a tolerant reader: each payload type names only the fields the service uses, so the
//! optional fields a schema version may gain pass unnoticed, and a field it does use is read
//! only if the published schema requires it (the integration tests check every [`Payload::READS`]
//! entry against the committed schema of [`Payload::SCHEMA_VERSION`], and the envelope's
//! [`HEADERS_READ`] against the AsyncAPI `EventHeaders`). Names of streams, subjects and the
//! durable consumer are built here and nowhere else in this crate.

use std::fmt;

use async_nats::HeaderMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The stream the ordering context publishes to (`x-chorus-stream` of its channels).
pub const STREAM: &str = "ORDERING";
/// This service's durable consumer on [`STREAM`], named `<reactor>-from-<source>` as the
/// contract's dead-letter channel documents (`inventory-from-ordering`).
pub const CONSUMER: &str = "notifications-from-ordering";
/// The aggregate type of every event read here: orders are keyed by their order id.
pub const AGGREGATE_TYPE: &str = "order";

/// Envelope header names (AsyncAPI `EventHeaders` and `DeadLetterHeaders`).
pub mod headers {
    pub const MSG_ID: &str = "Nats-Msg-Id";
    pub const EVENT_ID: &str = "Chorus-Event-Id";
    pub const EVENT_TYPE: &str = "Chorus-Event-Type";
    pub const SCHEMA_VERSION: &str = "Chorus-Schema-Version";
    pub const AGGREGATE_TYPE: &str = "Chorus-Aggregate-Type";
    pub const AGGREGATE_ID: &str = "Chorus-Aggregate-Id";
    pub const SEQUENCE: &str = "Chorus-Sequence";
    pub const DLQ_CONSUMER: &str = "Chorus-Dlq-Consumer";
    pub const DLQ_ERROR: &str = "Chorus-Dlq-Error";
    pub const DLQ_ATTEMPTS: &str = "Chorus-Dlq-Attempts";
    pub const DLQ_STREAM: &str = "Chorus-Dlq-Stream";
    pub const DLQ_STREAM_SEQUENCE: &str = "Chorus-Dlq-Stream-Sequence";
    pub const DLQ_SUBJECT: &str = "Chorus-Dlq-Subject";
}

/// The envelope headers [`Envelope::parse`] reads; each must be required by the contract.
pub const HEADERS_READ: &[&str] = &[
    headers::EVENT_ID,
    headers::EVENT_TYPE,
    headers::SCHEMA_VERSION,
    headers::AGGREGATE_TYPE,
    headers::AGGREGATE_ID,
    headers::SEQUENCE,
];

/// The ordering events this service reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    OrderPlaced,
    OrderConfirmed,
    OrderShipped,
}

impl EventType {
    pub const ALL: [EventType; 3] = [
        EventType::OrderPlaced,
        EventType::OrderConfirmed,
        EventType::OrderShipped,
    ];

    /// The name in `Chorus-Event-Type` and the subject's last token.
    pub fn name(self) -> &'static str {
        match self {
            EventType::OrderPlaced => "OrderPlaced",
            EventType::OrderConfirmed => "OrderConfirmed",
            EventType::OrderShipped => "OrderShipped",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The payload schema version this service understands for the type.
    pub fn schema_version(self) -> u32 {
        match self {
            EventType::OrderPlaced => OrderPlaced::SCHEMA_VERSION,
            EventType::OrderConfirmed => OrderConfirmed::SCHEMA_VERSION,
            EventType::OrderShipped => OrderShipped::SCHEMA_VERSION,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The consumer's filter: one subject per event type read, every order.
pub fn filter_subjects() -> Vec<String> {
    EventType::ALL
        .iter()
        .map(|t| format!("ordering.{AGGREGATE_TYPE}.*.{t}"))
        .collect()
}

/// The subject of one order's events of one type: `ordering.order.<order id>.<event type>`.
pub fn event_subject(order: &OrderId, event_type: EventType) -> String {
    format!("ordering.{AGGREGATE_TYPE}.{order}.{event_type}")
}

/// Where this consumer copies the messages it gives up on (channel `deadLetters`).
pub fn dead_letter_subject() -> String {
    format!("deadletter.{CONSUMER}")
}

/// A UUID in its canonical text form (8-4-4-4-12 hex digits), as the contract's `format: uuid`
/// ids are. Checking the shape once here is what makes ids safe as subject tokens and as
/// key-value keys.
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Identifies an order across every context; the order aggregate's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrderId(String);

impl OrderId {
    pub fn parse(text: &str) -> Result<Self, String> {
        if is_uuid(text) {
            Ok(Self(text.to_owned()))
        } else {
            Err(format!("{text:?} is not a UUID"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for OrderId {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl From<OrderId> for String {
    fn from(id: OrderId) -> String {
        id.0
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An event's id (`Chorus-Event-Id`): what deduplication goes by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventId(String);

impl EventId {
    pub fn parse(text: &str) -> Result<Self, String> {
        if is_uuid(text) {
            Ok(Self(text.to_owned()))
        } else {
            Err(format!("{text:?} is not a UUID"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a message's envelope cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the message has no {0} header")]
    Missing(&'static str),
    #[error("header {header}: {reason}")]
    Invalid {
        header: &'static str,
        reason: String,
    },
    #[error("subject {subject} does not match its envelope (expected {expected})")]
    SubjectMismatch { subject: String, expected: String },
    /// An event type this service does not read: not an error of the message, the consumer's
    /// filter should have kept it away.
    #[error("event type {0} is not one this service reads")]
    NotRead(String),
}

/// The envelope of one event, from its headers: what this service needs to deduplicate, order
/// and route it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub event_id: EventId,
    pub event_type: EventType,
    pub schema_version: u32,
    pub order_id: OrderId,
    /// The event's sequence within its order, from 1 without gaps.
    pub sequence: u64,
}

impl Envelope {
    /// Reads the envelope of a message received on `subject`, checking that the subject is the
    /// one the contract gives an event with these headers.
    pub fn parse(subject: &str, headers: Option<&HeaderMap>) -> Result<Self, EnvelopeError> {
        let header = |name: &'static str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str())
                .ok_or(EnvelopeError::Missing(name))
        };
        let invalid =
            |header: &'static str| move |reason: String| EnvelopeError::Invalid { header, reason };
        let type_name = header(headers::EVENT_TYPE)?;
        let event_type = EventType::from_name(type_name)
            .ok_or_else(|| EnvelopeError::NotRead(type_name.to_owned()))?;
        let event_id =
            EventId::parse(header(headers::EVENT_ID)?).map_err(invalid(headers::EVENT_ID))?;
        let schema_version =
            positive(header(headers::SCHEMA_VERSION)?).map_err(invalid(headers::SCHEMA_VERSION))?;
        let schema_version = u32::try_from(schema_version)
            .map_err(|_| format!("{schema_version} is out of range"))
            .map_err(invalid(headers::SCHEMA_VERSION))?;
        let aggregate_type = header(headers::AGGREGATE_TYPE)?;
        if aggregate_type != AGGREGATE_TYPE {
            return Err(EnvelopeError::Invalid {
                header: headers::AGGREGATE_TYPE,
                reason: format!("{aggregate_type:?} is not {AGGREGATE_TYPE:?}"),
            });
        }
        let order_id = OrderId::parse(header(headers::AGGREGATE_ID)?)
            .map_err(invalid(headers::AGGREGATE_ID))?;
        let sequence = positive(header(headers::SEQUENCE)?).map_err(invalid(headers::SEQUENCE))?;
        let expected = event_subject(&order_id, event_type);
        if subject != expected {
            return Err(EnvelopeError::SubjectMismatch {
                subject: subject.to_owned(),
                expected,
            });
        }
        Ok(Self {
            event_id,
            event_type,
            schema_version,
            order_id,
            sequence,
        })
    }
}

/// A header holding a positive integer (`^[1-9][0-9]*$` in the contract).
fn positive(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if n > 0 && !text.starts_with(['0', '+']) => Ok(n),
        _ => Err(format!("{text:?} is not a positive integer")),
    }
}

/// The JSON type of a field as the published schema states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    String,
    Integer,
}

impl JsonType {
    /// The name JSON Schema gives the type.
    pub fn schema_name(self) -> &'static str {
        match self {
            JsonType::String => "string",
            JsonType::Integer => "integer",
        }
    }
}

/// A payload this service reads, in the version it understands.
pub trait Payload: DeserializeOwned {
    const EVENT_TYPE: EventType;
    /// The `Chorus-Schema-Version` the type is written against.
    const SCHEMA_VERSION: u32;
    /// Every field the type reads, as a path of property names joined by `/`, with the JSON
    /// type it expects. Objects on the way are read too: each segment must be required.
    const READS: &'static [(&'static str, JsonType)];
}

/// An amount in integer minor units of a currency (schema `Money`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: String,
}

/// What is read of a shipping address: whom to greet.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Address {
    pub name: String,
}

/// `OrderPlaced` v1: who ordered, whom it goes to, and for how much.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OrderPlaced {
    pub order_id: OrderId,
    pub customer_id: String,
    pub shipping_address: Address,
    pub total: Money,
}

impl Payload for OrderPlaced {
    const EVENT_TYPE: EventType = EventType::OrderPlaced;
    const SCHEMA_VERSION: u32 = 1;
    const READS: &'static [(&'static str, JsonType)] = &[
        ("order_id", JsonType::String),
        ("customer_id", JsonType::String),
        ("shipping_address/name", JsonType::String),
        ("total/amount_minor", JsonType::Integer),
        ("total/currency", JsonType::String),
    ];
}

/// `OrderConfirmed` v1: only which order; the rest was learnt from its `OrderPlaced`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OrderConfirmed {
    pub order_id: OrderId,
}

impl Payload for OrderConfirmed {
    const EVENT_TYPE: EventType = EventType::OrderConfirmed;
    const SCHEMA_VERSION: u32 = 1;
    const READS: &'static [(&'static str, JsonType)] = &[("order_id", JsonType::String)];
}

/// `OrderShipped` v1: only which order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OrderShipped {
    pub order_id: OrderId,
}

impl Payload for OrderShipped {
    const EVENT_TYPE: EventType = EventType::OrderShipped;
    const SCHEMA_VERSION: u32 = 1;
    const READS: &'static [(&'static str, JsonType)] = &[("order_id", JsonType::String)];
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0190f5c2-7d3e-7c1a-9a57-5b8f0e3c2a11";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, *value);
        }
        map
    }

    fn valid() -> Vec<(&'static str, &'static str)> {
        vec![
            (headers::EVENT_ID, "0190f5c2-7d3e-7c1a-9a57-000000000001"),
            (headers::EVENT_TYPE, "OrderConfirmed"),
            (headers::SCHEMA_VERSION, "1"),
            (headers::AGGREGATE_TYPE, "order"),
            (headers::AGGREGATE_ID, ID),
            (headers::SEQUENCE, "4"),
        ]
    }

    #[test]
    fn reads_a_contract_envelope() {
        let subject = format!("ordering.order.{ID}.OrderConfirmed");
        let envelope = Envelope::parse(&subject, Some(&headers(&valid()))).unwrap();
        assert_eq!(envelope.event_type, EventType::OrderConfirmed);
        assert_eq!(envelope.order_id.as_str(), ID);
        assert_eq!(envelope.sequence, 4);
        assert_eq!(envelope.schema_version, 1);
    }

    #[test]
    fn refuses_envelopes_the_contract_does_not_allow() {
        let subject = format!("ordering.order.{ID}.OrderConfirmed");
        let cases: Vec<(&str, &str, &str)> = vec![
            (headers::SEQUENCE, "0", "sequence 0"),
            (headers::SEQUENCE, "04", "a leading zero"),
            (
                headers::SCHEMA_VERSION,
                "one",
                "a version that is no number",
            ),
            (
                headers::EVENT_ID,
                "not-a-uuid",
                "an event id that is no UUID",
            ),
            (headers::AGGREGATE_ID, "a.b", "an order id that is no UUID"),
            (headers::AGGREGATE_TYPE, "payment", "another aggregate type"),
        ];
        for (name, value, what) in cases {
            let mut pairs = valid();
            pairs.retain(|(n, _)| *n != name);
            pairs.push((name, value));
            assert!(
                Envelope::parse(&subject, Some(&headers(&pairs))).is_err(),
                "accepted {what}"
            );
        }
        let mut pairs = valid();
        pairs.retain(|(n, _)| *n != headers::SEQUENCE);
        assert_eq!(
            Envelope::parse(&subject, Some(&headers(&pairs))),
            Err(EnvelopeError::Missing(headers::SEQUENCE))
        );
        let other = format!("ordering.order.{ID}.OrderShipped");
        assert!(matches!(
            Envelope::parse(&other, Some(&headers(&valid()))),
            Err(EnvelopeError::SubjectMismatch { .. })
        ));
        assert_eq!(
            Envelope::parse(&subject, None),
            Err(EnvelopeError::Missing(headers::EVENT_TYPE))
        );
    }

    #[test]
    fn an_event_type_it_does_not_read_is_told_apart() {
        let mut pairs = valid();
        pairs.retain(|(n, _)| *n != headers::EVENT_TYPE);
        pairs.push((headers::EVENT_TYPE, "OrderCancelled"));
        let subject = format!("ordering.order.{ID}.OrderCancelled");
        assert_eq!(
            Envelope::parse(&subject, Some(&headers(&pairs))),
            Err(EnvelopeError::NotRead("OrderCancelled".to_owned()))
        );
    }

    #[test]
    fn subjects_follow_the_contract() {
        assert_eq!(
            filter_subjects(),
            [
                "ordering.order.*.OrderPlaced",
                "ordering.order.*.OrderConfirmed",
                "ordering.order.*.OrderShipped"
            ]
        );
        let id = OrderId::parse(ID).unwrap();
        assert_eq!(
            event_subject(&id, EventType::OrderShipped),
            format!("ordering.order.{ID}.OrderShipped")
        );
        assert_eq!(
            dead_letter_subject(),
            "deadletter.notifications-from-ordering"
        );
    }
}
