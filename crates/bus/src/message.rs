//! Chorus event messages on JetStream: the headers the relay writes and consumers read.

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use events::{Event, Metadata, headers};
use eventstore::StoredEvent;
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
