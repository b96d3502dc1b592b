//! What a projection reads: Chorus event messages from the contexts' streams, decoded into the
//! `events` enums (older schema versions upcast on the way).
//!
//! A message is *poison* when its envelope headers do not parse or its payload does not decode
//! as the event its headers name; a message of an aggregate type the projection does not apply
//! is passed over without decoding its payload.
//!
//! A rebuild reads every message of its streams, so reading one is kept lean (it was most of
//! a rebuild's time): the envelope is read in one pass over the headers, taking only what a
//! projection needs, by the rules and with the errors of `bus::Received::parse`; a payload of
//! the current schema version is decoded straight from its bytes into the event, without the
//! JSON tree `Event::from_payload` takes. Anything else (an older version to upcast, a payload
//! that does not decode) goes the way of `from_payload`, which also gives the error.

use std::borrow::Cow;
use std::fmt;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use events::inventory::{AllocationEvent, ProductEvent, StockEvent};
use events::ordering::OrderEvent;
use events::payments::PaymentEvent;
use events::shipping::ShipmentEvent;
use events::{BoundedContext, Event, headers};
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};

/// A decoded event payload.
#[derive(Debug, Clone)]
pub(crate) enum Fact {
    Order(OrderEvent),
    Product(ProductEvent),
    Stock(StockEvent),
    Allocation(AllocationEvent),
    Payment(PaymentEvent),
    Shipment(ShipmentEvent),
}

/// An event a projection applies.
#[derive(Debug, Clone)]
pub(crate) struct SourceEvent {
    pub context: BoundedContext,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    /// Position in the context's event store (0 when the publisher did not say).
    pub position: i64,
    pub occurred_at: DateTime<Utc>,
    pub event_type: String,
    pub fact: Fact,
}

/// What one message means to a projection.
#[derive(Debug)]
pub(crate) enum Read {
    /// An event to apply.
    Event(Box<SourceEvent>),
    /// An event of an aggregate type the projection does not apply.
    Ignored,
    /// A message that cannot be read, with the reason.
    Poison(String),
}

/// The envelope as a projection reads it, borrowing from the message's headers: a message the
/// projection passes over allocates nothing here.
#[derive(Debug)]
struct Envelope<'a> {
    event_type: Cow<'a, str>,
    schema_version: u32,
    aggregate_type: Cow<'a, str>,
    aggregate_id: Cow<'a, str>,
    sequence: u64,
    position: Option<i64>,
    occurred_at: Option<DateTime<Utc>>,
}

/// Header values cannot hold line breaks; other control characters have no business there.
fn clean(value: &str) -> Cow<'_, str> {
    // Printable ASCII, as the relay's values are, holds no control character: checked a byte
    // at a time, without decoding characters.
    if value.bytes().all(|b| matches!(b, b' '..=b'~')) {
        return Cow::Borrowed(value);
    }
    if value.chars().any(char::is_control) {
        Cow::Owned(value.chars().filter(|c| !c.is_control()).collect())
    } else {
        Cow::Borrowed(value)
    }
}

impl<'a> Envelope<'a> {
    /// Reads the envelope headers, as `bus::Received::parse` does (same checks, in the same
    /// order, with the same errors).
    fn parse(message: &'a jetstream::Message) -> Result<Self, String> {
        let mut event_id = None;
        let mut event_type = None;
        let mut schema_version = None;
        let mut aggregate_type = None;
        let mut aggregate_id = None;
        let mut sequence = None;
        let mut position = None;
        let mut occurred_at = None;
        if let Some(map) = &message.headers {
            for (name, values) in map.iter() {
                let Some(value) = values.first() else {
                    continue;
                };
                let slot = match AsRef::<str>::as_ref(name) {
                    headers::EVENT_ID => &mut event_id,
                    headers::EVENT_TYPE => &mut event_type,
                    headers::SCHEMA_VERSION => &mut schema_version,
                    headers::AGGREGATE_TYPE => &mut aggregate_type,
                    headers::AGGREGATE_ID => &mut aggregate_id,
                    headers::SEQUENCE => &mut sequence,
                    headers::POSITION => &mut position,
                    headers::OCCURRED_AT => &mut occurred_at,
                    _ => continue,
                };
                *slot = Some(clean(value.as_str()));
            }
        }
        fn require<'a>(name: &str, value: Option<Cow<'a, str>>) -> Result<Cow<'a, str>, String> {
            value.ok_or_else(|| format!("header {name} is missing"))
        }
        fn parse<T: std::str::FromStr>(name: &str, value: Cow<'_, str>) -> Result<T, String> {
            value
                .parse()
                .map_err(|_| format!("header {name} has an invalid value {value:?}"))
        }
        let _: sqlx::types::Uuid = parse(headers::EVENT_ID, require(headers::EVENT_ID, event_id)?)?;
        Ok(Self {
            event_type: require(headers::EVENT_TYPE, event_type)?,
            schema_version: parse(
                headers::SCHEMA_VERSION,
                require(headers::SCHEMA_VERSION, schema_version)?,
            )?,
            aggregate_type: require(headers::AGGREGATE_TYPE, aggregate_type)?,
            aggregate_id: require(headers::AGGREGATE_ID, aggregate_id)?,
            sequence: parse(headers::SEQUENCE, require(headers::SEQUENCE, sequence)?)?,
            position: position.and_then(|p| p.parse().ok()),
            occurred_at: occurred_at
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc)),
        })
    }
}

/// Reads `message` (from `context`'s stream, which stored it at `published`, in microseconds
/// since the epoch) for a projection applying `aggregate_types`.
pub(crate) fn read(
    context: BoundedContext,
    message: &jetstream::Message,
    published: i64,
    aggregate_types: &[&str],
) -> Read {
    let received = match Envelope::parse(message) {
        Ok(received) => received,
        Err(reason) => return Read::Poison(reason),
    };
    if !aggregate_types.contains(&&*received.aggregate_type) {
        return Read::Ignored;
    }
    let Ok(sequence) = i64::try_from(received.sequence) else {
        return Read::Poison(format!("sequence {} is out of range", received.sequence));
    };
    if sequence < 1 {
        return Read::Poison("sequence 0: aggregate sequences start at 1".to_owned());
    }
    let fact = match decode(
        &received.aggregate_type,
        &received.event_type,
        received.schema_version,
        &message.payload,
    ) {
        Ok(fact) => fact,
        Err(reason) => return Read::Poison(reason),
    };
    // The relay always sends the time recorded; a foreign publisher may not: the time
    // JetStream stored the message is the next best.
    let occurred_at = received
        .occurred_at
        .unwrap_or_else(|| DateTime::from_timestamp_micros(published).unwrap_or_default());
    Read::Event(Box::new(SourceEvent {
        context,
        aggregate_type: received.aggregate_type.into_owned(),
        aggregate_id: received.aggregate_id.into_owned(),
        sequence,
        position: received.position.unwrap_or(0),
        occurred_at,
        event_type: received.event_type.into_owned(),
        fact,
    }))
}

fn decode(
    aggregate_type: &str,
    event_type: &str,
    version: u32,
    payload: &[u8],
) -> Result<Fact, String> {
    fn map<E: Event + de::DeserializeOwned>(
        event_type: &str,
        version: u32,
        payload: &[u8],
        wrap: fn(E) -> Fact,
    ) -> Result<Fact, String> {
        if let Some(event) = current::<E>(event_type, version, payload) {
            return Ok(wrap(event));
        }
        let payload: serde_json::Value =
            serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
        E::from_payload(event_type, version, payload)
            .map(wrap)
            .map_err(|e| e.to_string())
    }
    match aggregate_type {
        "order" => map(event_type, version, payload, Fact::Order),
        "product" => map(event_type, version, payload, Fact::Product),
        "stock" => map(event_type, version, payload, Fact::Stock),
        "allocation" => map(event_type, version, payload, Fact::Allocation),
        "payment" => map(event_type, version, payload, Fact::Payment),
        "shipment" => map(event_type, version, payload, Fact::Shipment),
        other => Err(format!("unknown aggregate type {other:?}")),
    }
}

/// The event, if `payload` is one of the current schema version of `event_type` and decodes:
/// what `Event::from_payload` gives for it, read straight from the bytes. The event enums are
/// adjacently tagged (`{"type": <event type>, "payload": <payload>}`), so the enum is
/// deserialized from a map of those two entries whose payload is read from `payload` as it
/// comes. `None` for anything else (another version, an unknown type, a payload that does not
/// decode): `from_payload` then upcasts it or says why it cannot.
fn current<E: Event + de::DeserializeOwned>(
    event_type: &str,
    version: u32,
    payload: &[u8],
) -> Option<E> {
    let mut json = serde_json::Deserializer::from_slice(payload);
    let event = E::deserialize(Tagged {
        event_type,
        payload: &mut json,
        next: Entry::Type,
    })
    .ok()?;
    json.end().ok()?;
    (event.schema_version() == version).then_some(event)
}

/// `{"type": event_type, "payload": <what `payload` holds>}`, as a serde map.
struct Tagged<'a, 'de> {
    event_type: &'a str,
    payload: &'a mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
    next: Entry,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Entry {
    Type,
    Payload,
    End,
}

#[derive(Debug)]
struct TaggedError(String);

impl fmt::Display for TaggedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TaggedError {}

impl de::Error for TaggedError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Self(message.to_string())
    }
}

impl<'de> de::Deserializer<'de> for Tagged<'_, 'de> {
    type Error = TaggedError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_map(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de> MapAccess<'de> for Tagged<'_, 'de> {
    type Error = TaggedError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let key = match self.next {
            Entry::Type => "type",
            Entry::Payload => "payload",
            Entry::End => return Ok(None),
        };
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        match self.next {
            Entry::Type => {
                self.next = Entry::Payload;
                seed.deserialize(self.event_type.into_deserializer())
            }
            Entry::Payload => {
                self.next = Entry::End;
                seed.deserialize(&mut *self.payload)
                    .map_err(|e| TaggedError(e.to_string()))
            }
            Entry::End => Err(TaggedError("no more entries".to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::ordering::{Address, OrderConfirmed, OrderLine, OrderPlaced};
    use events::payments::{DeclineCode, PaymentDeclined};
    use events::values::{CustomerId, Money, OrderId};

    fn placed() -> OrderEvent {
        let eur = "EUR".parse().unwrap();
        OrderPlaced {
            order_id: OrderId::new(),
            customer_id: CustomerId::new(),
            lines: vec![OrderLine {
                sku: "BOOK".parse().unwrap(),
                quantity: 2.try_into().unwrap(),
                unit_price: Money::new(1_250, eur),
            }],
            total: Money::new(2_500, eur),
            shipping_address: Address {
                name: "Ada \"the Countess\" Lovelace".to_owned(),
                line1: "12 St James's Square\n(back door)".to_owned(),
                line2: None,
                city: "London".to_owned(),
                postal_code: "SW1Y 4JH".to_owned(),
                country: "GB".to_owned(),
            },
            payment_token: "tok_success".to_owned(),
        }
        .into()
    }

    /// What `decode` made of the payload before it read current versions from the bytes.
    fn through_json<E: Event>(event_type: &str, version: u32, payload: &[u8]) -> Result<E, String> {
        let value: serde_json::Value =
            serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
        E::from_payload(event_type, version, value).map_err(|e| e.to_string())
    }

    fn bytes<E: Event>(event: &E) -> Vec<u8> {
        event.to_payload().to_string().into_bytes()
    }

    #[test]
    fn a_current_payload_is_read_from_its_bytes_as_from_payload_reads_it() {
        let order_id = OrderId::new();
        let declined: PaymentEvent = PaymentDeclined {
            order_id,
            code: DeclineCode::Refused,
            detail: "insufficient funds".to_owned(),
        }
        .into();
        let confirmed: OrderEvent = OrderConfirmed {
            order_id,
            shipping_address: match placed() {
                OrderEvent::OrderPlaced(p) => p.shipping_address,
                _ => unreachable!(),
            },
        }
        .into();
        for event in [placed(), confirmed] {
            let payload = bytes(&event);
            let (event_type, version) = (event.event_type(), event.schema_version());
            let fast = current::<OrderEvent>(event_type, version, &payload);
            assert_eq!(fast.as_ref(), Some(&event));
            assert_eq!(fast, through_json(event_type, version, &payload).ok());
        }
        let payload = bytes(&declined);
        let fast = current::<PaymentEvent>("PaymentDeclined", 2, &payload);
        assert_eq!(fast.as_ref(), Some(&declined));
    }

    #[test]
    fn anything_but_a_current_payload_that_decodes_is_left_to_from_payload() {
        let event = placed();
        let payload = bytes(&event);
        // Another version, an unknown type.
        assert_eq!(current::<OrderEvent>("OrderPlaced", 2, &payload), None);
        assert_eq!(current::<OrderEvent>("OrderLost", 1, &payload), None);
        // Another type takes what it knows of the payload, as from_payload does.
        assert_eq!(
            current::<OrderEvent>("OrderConfirmed", 1, &payload),
            through_json("OrderConfirmed", 1, &payload).ok()
        );
        // Not JSON, or JSON with more after it, or with a key twice.
        let mut trailing = payload.clone();
        trailing.extend_from_slice(b" {}");
        assert_eq!(current::<OrderEvent>("OrderPlaced", 1, &trailing), None);
        assert!(
            decode("order", "OrderPlaced", 1, &trailing)
                .unwrap_err()
                .starts_with("payload is not JSON")
        );
        let injected = br#"{"order_id":"x"},"payload":{}"#;
        assert_eq!(current::<OrderEvent>("OrderPlaced", 1, injected), None);
        let text = String::from_utf8(payload.clone()).unwrap();
        let twice = text.replacen('{', r#"{"payment_token":"tok_other","#, 1);
        assert_eq!(
            current::<OrderEvent>("OrderPlaced", 1, twice.as_bytes()),
            None
        );
        let Ok(Fact::Order(read)) = decode("order", "OrderPlaced", 1, twice.as_bytes()) else {
            panic!("a payload with a key twice decodes as before");
        };
        assert_eq!(
            Ok(read),
            through_json::<OrderEvent>("OrderPlaced", 1, twice.as_bytes())
        );
        // A version 1 decline is upcast, as from_payload does.
        let v1 = br#"{"order_id":"0192f0c4-6a7e-7cc1-8a6e-3c2b1d0e9f11","reason":"card declined"}"#;
        assert_eq!(current::<PaymentEvent>("PaymentDeclined", 1, v1), None);
        let Ok(Fact::Payment(PaymentEvent::PaymentDeclined(upcast))) =
            decode("payment", "PaymentDeclined", 1, v1)
        else {
            panic!("a version 1 decline is read");
        };
        assert_eq!(upcast.code, DeclineCode::Unclassified);
        assert_eq!(upcast.detail, "card declined");
        // Errors are from_payload's.
        let bad = br#"{"order_id":"not an order"}"#;
        assert_eq!(
            decode("order", "OrderPlaced", 1, bad).unwrap_err(),
            through_json::<OrderEvent>("OrderPlaced", 1, bad).unwrap_err()
        );
    }

    #[test]
    fn control_characters_are_taken_out_of_header_values() {
        assert!(matches!(clean("order"), Cow::Borrowed("order")));
        assert_eq!(clean("ord\u{0}er\u{7f}"), "order");
        // Beyond ASCII: letters stay, C1 controls go.
        assert!(matches!(clean("Zürich"), Cow::Borrowed("Zürich")));
        assert_eq!(clean("Zü\u{85}rich\u{9f}"), "Zürich");
    }
}
