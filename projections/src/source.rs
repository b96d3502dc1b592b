//! What a projection reads: Chorus event messages from the contexts' streams, decoded into the
//! `events` enums (older schema versions upcast on the way).
//!
//! A message is *poison* when its envelope headers do not parse or its payload does not decode
//! as the event its headers name; a message of an aggregate type the projection does not apply
//! is passed over without decoding its payload.

use async_nats::jetstream;
use bus::Received;
use chrono::{DateTime, Utc};
use events::inventory::{AllocationEvent, ProductEvent, StockEvent};
use events::ordering::OrderEvent;
use events::payments::PaymentEvent;
use events::shipping::ShipmentEvent;
use events::{BoundedContext, Event};

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

/// Reads `message` (from `context`'s stream) for a projection applying `aggregate_types`.
pub(crate) fn read(
    context: BoundedContext,
    message: &jetstream::Message,
    aggregate_types: &[&str],
) -> Read {
    let received = match Received::parse(message) {
        Ok(received) => received,
        Err(reason) => return Read::Poison(reason),
    };
    if !aggregate_types.contains(&received.aggregate_type.as_str()) {
        return Read::Ignored;
    }
    let Ok(sequence) = i64::try_from(received.sequence) else {
        return Read::Poison(format!("sequence {} is out of range", received.sequence));
    };
    if sequence < 1 {
        return Read::Poison("sequence 0: aggregate sequences start at 1".to_owned());
    }
    let payload: serde_json::Value = match serde_json::from_slice(&received.payload) {
        Ok(payload) => payload,
        Err(e) => return Read::Poison(format!("payload is not JSON: {e}")),
    };
    let fact = match decode(
        &received.aggregate_type,
        &received.event_type,
        received.schema_version,
        payload,
    ) {
        Ok(fact) => fact,
        Err(reason) => return Read::Poison(reason),
    };
    // The relay always sends the time recorded; a foreign publisher may not: the time
    // JetStream stored the message is the next best.
    let occurred_at = received.occurred_at.unwrap_or_else(|| {
        message
            .info()
            .ok()
            .and_then(|info| {
                DateTime::from_timestamp_micros(
                    i64::try_from(info.published.unix_timestamp_nanos() / 1_000).unwrap_or(0),
                )
            })
            .unwrap_or_default()
    });
    Read::Event(Box::new(SourceEvent {
        context,
        aggregate_type: received.aggregate_type,
        aggregate_id: received.aggregate_id,
        sequence,
        position: received.position.unwrap_or(0),
        occurred_at,
        event_type: received.event_type,
        fact,
    }))
}

fn decode(
    aggregate_type: &str,
    event_type: &str,
    version: u32,
    payload: serde_json::Value,
) -> Result<Fact, String> {
    fn map<E: Event>(
        event_type: &str,
        version: u32,
        payload: serde_json::Value,
        wrap: fn(E) -> Fact,
    ) -> Result<Fact, String> {
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
