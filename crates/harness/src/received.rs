//! Messages as the consumer runtime hands them to a handler, for tests that drive a context's
//! reactions directly, without a nats-server.
//!
//! A reaction reads a [`Received`]: the envelope the relay put in the headers and the payload
//! as bytes. Building one by hand in every test crate repeated the envelope each time, and
//! each copy had to follow every change of `Received`; [`received`] is the one place.

use bus::Received;
use events::naming::StreamName;
use events::{Event, Metadata};

/// `event` of the aggregate `aggregate_id` as a first delivery would bring it: a fresh event
/// id, sequence 1 of its aggregate, the payload as the relay publishes it (current schema
/// version), no correlation, on a subject of a `test` stream.
///
/// Set what a test needs to differ with struct update syntax, e.g. a later event of the
/// aggregate, delivered a third time:
///
/// ```
/// # use bus::Received;
/// # use events::ordering::{OrderCancelled, OrderEvent};
/// # let order_id = events::values::OrderId::new();
/// # let event = OrderEvent::from(OrderCancelled { order_id, reason: None });
/// let message = Received {
///     sequence: 2,
///     delivered: 3,
///     ..harness::received(event, order_id)
/// };
/// # assert_eq!(message.sequence, 2);
/// ```
pub fn received<E: Event>(event: E, aggregate_id: impl std::fmt::Display) -> Received {
    let aggregate_id = aggregate_id.to_string();
    let event_type = event.event_type();
    // An id that cannot be a subject token (a test of how a reaction refuses it) still gets a
    // subject: the reaction reads the envelope, not the subject.
    let subject = StreamName::for_context("test")
        .event_subject(E::AGGREGATE_TYPE, &aggregate_id, event_type)
        .unwrap_or_else(|_| format!("test.{}.{aggregate_id}.{event_type}", E::AGGREGATE_TYPE));
    Received {
        subject,
        event_id: uuid::Uuid::now_v7(),
        event_type: event_type.to_owned(),
        schema_version: event.schema_version(),
        aggregate_type: E::AGGREGATE_TYPE.to_owned(),
        aggregate_id,
        sequence: 1,
        position: None,
        occurred_at: None,
        metadata: Metadata::default(),
        payload: event.to_payload().to_string().into(),
        stream_sequence: 1,
        delivered: 1,
    }
}
