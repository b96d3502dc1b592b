//! Chorus event messages on JetStream: the headers the relay writes and consumers read, and
//! the W3C trace context they carry from one hop of a saga to the next.
//!
//! The trace context an event stores is that of the span that recorded it. Each hop (the
//! gateway's request, a command, a consumed message) opens a span whose parent is the context
//! it received ([`follow_trace`]) and hands on the span's own context, so that every hop is a
//! child of the previous one and one order's saga is one trace. Without an OpenTelemetry layer
//! in the process's subscriber, spans have no trace context: the received one is handed on
//! unchanged, as it was before spans existed, and nothing is parsed or allocated for it.

use std::collections::HashMap;

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use events::{Event, Metadata, headers};
use eventstore::StoredEvent;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

use crate::consumer::HandlerError;

/// Header values cannot hold line breaks; other control characters have no business there.
fn clean(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).collect()
}

/// The headers of a stored event on JetStream (see [`events::headers`]).
pub fn event_headers(event: &StoredEvent) -> HeaderMap {
    let mut map = HeaderMap::new();
    let id = event.event_id.to_string();
    map.insert(headers::MSG_ID, id.as_str());
    map.insert(headers::EVENT_ID, id.as_str());
    map.insert(headers::EVENT_TYPE, clean(&event.event_type).as_str());
    map.insert(
        headers::SCHEMA_VERSION,
        event.schema_version.to_string().as_str(),
    );
    map.insert(
        headers::AGGREGATE_TYPE,
        clean(&event.aggregate_type).as_str(),
    );
    map.insert(headers::AGGREGATE_ID, clean(&event.aggregate_id).as_str());
    map.insert(headers::SEQUENCE, event.sequence.to_string().as_str());
    map.insert(headers::POSITION, event.position.to_string().as_str());
    map.insert(
        headers::OCCURRED_AT,
        event.recorded_at.to_rfc3339().as_str(),
    );
    let optional = [
        (headers::CORRELATION_ID, &event.metadata.correlation_id),
        (headers::CAUSATION_ID, &event.metadata.causation_id),
        (headers::TRACEPARENT, &event.metadata.traceparent),
        (headers::TRACESTATE, &event.metadata.tracestate),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            map.insert(name, clean(value).as_str());
        }
    }
    map
}

/// A Chorus event as a consumer receives it: the envelope from the headers, the payload still
/// as bytes, and where it stands in the stream.
#[derive(Debug, Clone)]
pub struct Received {
    pub subject: String,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: u64,
    /// Position in the source context's event store, when the publisher sent it.
    pub position: Option<i64>,
    pub occurred_at: Option<DateTime<Utc>>,
    pub metadata: Metadata,
    pub payload: Bytes,
    pub stream_sequence: u64,
    /// How many times JetStream has delivered this message, this time included.
    pub delivered: u32,
}

impl Received {
    /// Reads the envelope headers; a message without them cannot be handled.
    pub fn parse(message: &async_nats::jetstream::Message) -> Result<Self, String> {
        let info = message
            .info()
            .map_err(|e| format!("not a JetStream message: {e}"))?;
        let empty = HeaderMap::new();
        let map = message.headers.as_ref().unwrap_or(&empty);
        // Control characters (a NUL from a foreign publisher) could not even be stored.
        let get = |name: &str| map.get(name).map(|v| clean(v.as_str()));
        let require = |name: &str| get(name).ok_or_else(|| format!("header {name} is missing"));
        fn parse<T: std::str::FromStr>(name: &str, value: String) -> Result<T, String> {
            value
                .parse()
                .map_err(|_| format!("header {name} has an invalid value {value:?}"))
        }
        Ok(Self {
            subject: message.subject.to_string(),
            event_id: parse(headers::EVENT_ID, require(headers::EVENT_ID)?)?,
            event_type: require(headers::EVENT_TYPE)?,
            schema_version: parse(headers::SCHEMA_VERSION, require(headers::SCHEMA_VERSION)?)?,
            aggregate_type: require(headers::AGGREGATE_TYPE)?,
            aggregate_id: require(headers::AGGREGATE_ID)?,
            sequence: parse(headers::SEQUENCE, require(headers::SEQUENCE)?)?,
            position: get(headers::POSITION).and_then(|p| p.parse().ok()),
            occurred_at: get(headers::OCCURRED_AT)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc)),
            metadata: Metadata {
                correlation_id: get(headers::CORRELATION_ID),
                causation_id: get(headers::CAUSATION_ID),
                traceparent: get(headers::TRACEPARENT),
                tracestate: get(headers::TRACESTATE),
            },
            payload: message.payload.clone(),
            stream_sequence: info.stream_sequence,
            delivered: u32::try_from(info.delivered).unwrap_or(u32::MAX),
        })
    }

    /// The payload as an event of `E`, upcast to the current version. A payload that does not
    /// decode is a permanent failure: the message goes to the dead letters.
    pub fn decode<E: Event>(&self) -> Result<E, HandlerError> {
        let payload: serde_json::Value = serde_json::from_slice(&self.payload)
            .map_err(|e| HandlerError::permanent(format!("payload is not JSON: {e}")))?;
        E::from_payload(&self.event_type, self.schema_version, payload)
            .map_err(HandlerError::permanent)
    }

    /// Metadata for what this message causes: same correlation and trace, caused by this event.
    pub fn caused_metadata(&self) -> Metadata {
        Metadata::caused_by(&self.metadata, self.event_id.to_string())
    }
}

/// A W3C trace context, as headers carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

/// Makes the received trace context (`traceparent`, `tracestate`) the parent of `span`, then
/// returns the span's own context, to be handed on. `None` when the span has no trace context:
/// the process exports no traces (or the span is filtered out), and the caller hands on what
/// it received. Call it before `span` is first entered: a started span keeps its parent.
///
/// A missing or malformed `traceparent` leaves `span` the root of a new trace.
pub fn follow_trace(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> Option<TraceContext> {
    if span.is_disabled() {
        return None;
    }
    let propagator = TraceContextPropagator::new();
    if let Some(traceparent) = traceparent {
        let mut carrier = HashMap::with_capacity(2);
        carrier.insert(headers::TRACEPARENT.to_owned(), traceparent.to_owned());
        if let Some(tracestate) = tracestate {
            carrier.insert(headers::TRACESTATE.to_owned(), tracestate.to_owned());
        }
        let parent = propagator.extract(&carrier);
        if parent.span().span_context().is_valid() && span.set_parent(parent).is_err() {
            // No OpenTelemetry layer: nothing to hand on but what was received.
            return None;
        }
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
    propagator.inject_context(&context, &mut carrier);
    Some(TraceContext {
        traceparent: carrier.remove(headers::TRACEPARENT)?,
        tracestate: carrier
            .remove(headers::TRACESTATE)
            .filter(|state| !state.is_empty()),
    })
}

/// `metadata` as seen from inside `span`: [`follow_trace`] on its trace context, and the same
/// metadata carrying the span's context instead. `None` when the span has no trace context
/// (the metadata is then handed on as it is).
pub fn traced(span: &tracing::Span, metadata: &Metadata) -> Option<Metadata> {
    let context = follow_trace(
        span,
        metadata.traceparent.as_deref(),
        metadata.tracestate.as_deref(),
    )?;
    Some(Metadata {
        traceparent: Some(context.traceparent),
        tracestate: context.tracestate,
        ..metadata.clone()
    })
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    const RECEIVED: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    /// Runs `f` with an OpenTelemetry layer (no exporter) as this thread's subscriber.
    fn traced_by_otel<T>(f: impl FnOnce() -> T) -> T {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn a_span_continues_the_received_trace_and_hands_on_its_own_context() {
        let (handed_on, same) = traced_by_otel(|| {
            let span = tracing::info_span!("hop");
            let metadata = Metadata {
                correlation_id: Some("c".to_owned()),
                traceparent: Some(RECEIVED.to_owned()),
                ..Metadata::default()
            };
            let handed_on = traced(&span, &metadata).unwrap();
            let context = span.context();
            let own = context.span().span_context().span_id().to_string();
            (handed_on, own)
        });
        let traceparent = handed_on.traceparent.unwrap();
        let parts: Vec<_> = traceparent.split('-').collect();
        assert_eq!(parts[1], "0af7651916cd43dd8448eb211c80319c");
        assert_ne!(parts[2], "b7ad6b7169203331");
        assert_eq!(parts[2], same);
        assert_eq!(handed_on.correlation_id.as_deref(), Some("c"));
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace() {
        let handed_on = traced_by_otel(|| {
            let span = tracing::info_span!("hop");
            follow_trace(&span, Some("00-not-a-trace-01"), None).unwrap()
        });
        assert!(!handed_on.traceparent.contains("not"));
        assert_eq!(handed_on.traceparent.split('-').count(), 4);
    }

    #[test]
    fn without_opentelemetry_the_received_context_is_kept() {
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("hop");
            assert_eq!(follow_trace(&span, Some(RECEIVED), None), None);
            let metadata = Metadata {
                traceparent: Some(RECEIVED.to_owned()),
                ..Metadata::default()
            };
            assert_eq!(traced(&span, &metadata), None);
        });
        // No subscriber at all: the span is disabled.
        assert_eq!(
            follow_trace(&tracing::Span::none(), Some(RECEIVED), None),
            None
        );
    }
}
