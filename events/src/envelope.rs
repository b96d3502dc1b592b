//! The envelope every event travels in, and the trait that ties an event enum to its
//! wire form (type name, schema version, JSON payload).
//!
//! On JetStream the message body is the payload alone (it validates against
//! `events/schemas/<context>/<Type>.v<N>.json`); the envelope travels in the [`headers`].

use std::fmt::Debug;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Header names of a Chorus event message on JetStream. Other teams read these.
pub mod headers {
    /// JetStream's de-duplication id: always the event id.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    pub const EVENT_ID: &str = "Chorus-Event-Id";
    pub const EVENT_TYPE: &str = "Chorus-Event-Type";
    pub const SCHEMA_VERSION: &str = "Chorus-Schema-Version";
    pub const AGGREGATE_TYPE: &str = "Chorus-Aggregate-Type";
    pub const AGGREGATE_ID: &str = "Chorus-Aggregate-Id";
    /// The event's sequence within its aggregate, from 1, without gaps.
    pub const SEQUENCE: &str = "Chorus-Sequence";
    /// The event's global position in its context's event store.
    pub const POSITION: &str = "Chorus-Position";
    /// RFC 3339 time at which the event was recorded.
    pub const OCCURRED_AT: &str = "Chorus-Occurred-At";
    pub const CORRELATION_ID: &str = "Chorus-Correlation-Id";
    pub const CAUSATION_ID: &str = "Chorus-Causation-Id";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";

    /// Headers added to a message copied to the dead-letter stream.
    pub const DLQ_CONSUMER: &str = "Chorus-Dlq-Consumer";
    pub const DLQ_ERROR: &str = "Chorus-Dlq-Error";
    pub const DLQ_ATTEMPTS: &str = "Chorus-Dlq-Attempts";
    pub const DLQ_STREAM: &str = "Chorus-Dlq-Stream";
    pub const DLQ_STREAM_SEQUENCE: &str = "Chorus-Dlq-Stream-Sequence";
    pub const DLQ_SUBJECT: &str = "Chorus-Dlq-Subject";
}

/// Where an event came from and why: carried from command to event to reaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Metadata {
    /// Shared by every command and event of one business flow (one order's saga).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The event id (or request id) that caused this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// W3C `traceparent` of the span that recorded the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// W3C `tracestate`, when the trace has vendor state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl Metadata {
    /// Metadata for something caused by `cause`: same correlation and trace, causation = `cause_id`.
    pub fn caused_by(cause: &Metadata, cause_id: impl Into<String>) -> Self {
        Self {
            correlation_id: cause.correlation_id.clone(),
            causation_id: Some(cause_id.into()),
            traceparent: cause.traceparent.clone(),
            tracestate: cause.tracestate.clone(),
        }
    }
}

/// A recorded event with everything known about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<E> {
    /// UUIDv7: unique, and sortable by creation time.
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Position of the event in its aggregate's history, from 1, without gaps.
    pub sequence: u64,
    /// Global position in the context's event store (0 until stored).
    pub position: i64,
    pub occurred_at: DateTime<Utc>,
    pub metadata: Metadata,
    pub payload: E,
}

/// Why a stored or received payload could not be turned into an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {event_type:?} for aggregate {aggregate_type:?}")]
    UnknownType {
        aggregate_type: &'static str,
        event_type: String,
    },
    #[error("{event_type} has schema version {version}, this build reads up to {supported}")]
    UnsupportedVersion {
        event_type: String,
        version: u32,
        supported: u32,
    },
    #[error("{event_type} v{version} payload does not match its schema: {source}")]
    Invalid {
        event_type: String,
        version: u32,
        #[source]
        source: serde_json::Error,
    },
}

/// An aggregate's event enum: one variant per event type, each wrapping its payload struct.
///
/// Implemented by [`event_enum!`](crate::event_enum); not by hand.
pub trait Event: Sized + Clone + Debug + Send + Sync + 'static {
    /// The aggregate type the events belong to, e.g. `order`; also a subject token.
    const AGGREGATE_TYPE: &'static str;

    /// The event type, e.g. `OrderPlaced`; also the last subject token.
    fn event_type(&self) -> &'static str;

    /// The schema version this build writes for this event type.
    fn schema_version(&self) -> u32;

    /// The payload as JSON (what the schema describes).
    fn to_payload(&self) -> Value;

    /// Reads a payload of any supported version, upcasting older versions.
    fn from_payload(event_type: &str, version: u32, payload: Value) -> Result<Self, DecodeError>;

    /// Every event type with its current version and JSON Schema, for the schema generator.
    fn schemas() -> Vec<(&'static str, u32, schemars::Schema)>;
}

/// Declares an aggregate's event enum from its payload structs and implements [`Event`] for it
/// (and cqrs-es's `DomainEvent` with the `cqrs` feature).
///
/// ```text
/// event_enum! {
///     /// Events of the Order aggregate.
///     pub enum OrderEvent: "order" {
///         OrderPlaced = 1,
///         OrderConfirmed = 2 (upcast with upcast_confirmed_v1),
///     }
/// }
/// ```
/// The crate that uses it needs `serde`, `serde_json` and `schemars` as dependencies.
/// A payload of an older version is passed to the upcaster as JSON (with its version) and must
/// come back as JSON of the current version.
#[macro_export]
macro_rules! event_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident : $agg:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $version:literal $( (upcast with $upcast:path) )? ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(tag = "type", content = "payload")]
        pub enum $name {
            $( $(#[$vmeta])* $variant($variant), )+
        }

        $(
            impl From<$variant> for $name {
                fn from(payload: $variant) -> Self {
                    Self::$variant(payload)
                }
            }
        )+

        impl $crate::Event for $name {
            const AGGREGATE_TYPE: &'static str = $agg;

            fn event_type(&self) -> &'static str {
                match self {
                    $( Self::$variant(_) => stringify!($variant), )+
                }
            }

            fn schema_version(&self) -> u32 {
                match self {
                    $( Self::$variant(_) => $version, )+
                }
            }

            fn to_payload(&self) -> ::serde_json::Value {
                let value = match self {
                    $( Self::$variant(payload) => ::serde_json::to_value(payload), )+
                };
                // Payload types are plain data (no maps with non-string keys), so this holds.
                value.expect("event payloads always serialize to JSON")
            }

            fn from_payload(
                event_type: &str,
                version: u32,
                payload: ::serde_json::Value,
            ) -> Result<Self, $crate::DecodeError> {
                match event_type {
                    $(
                        stringify!($variant) => {
                            let payload = if version == $version {
                                payload
                            } else {
                                $crate::event_enum!(@upcast $variant, $version, version, payload $(, $upcast)?)
                            };
                            ::serde_json::from_value::<$variant>(payload)
                                .map(Self::$variant)
                                .map_err(|source| $crate::DecodeError::Invalid {
                                    event_type: event_type.to_owned(),
                                    version,
                                    source,
                                })
                        }
                    )+
                    other => Err($crate::DecodeError::UnknownType {
                        aggregate_type: $agg,
                        event_type: other.to_owned(),
                    }),
                }
            }

            fn schemas() -> Vec<(&'static str, u32, ::schemars::Schema)> {
                vec![ $( (stringify!($variant), $version, ::schemars::schema_for!($variant)), )+ ]
            }
        }

        $crate::__impl_domain_event!($name);
    };
    (@upcast $variant:ident, $current:literal, $version:ident, $payload:ident) => {
        return Err($crate::DecodeError::UnsupportedVersion {
            event_type: stringify!($variant).to_owned(),
            version: $version,
            supported: $current,
        })
    };
    (@upcast $variant:ident, $current:literal, $version:ident, $payload:ident, $upcast:path) => {
        if $version < $current {
            $upcast($version, $payload)
        } else {
            return Err($crate::DecodeError::UnsupportedVersion {
                event_type: stringify!($variant).to_owned(),
                version: $version,
                supported: $current,
            });
        }
    };
}

/// cqrs-es's `DomainEvent` for an event enum, when this crate is built with the `cqrs` feature.
#[cfg(feature = "cqrs")]
#[doc(hidden)]
#[macro_export]
macro_rules! __impl_domain_event {
    ($name:ident) => {
        impl $crate::__cqrs::DomainEvent for $name {
            fn event_type(&self) -> String {
                <Self as $crate::Event>::event_type(self).to_owned()
            }
            fn event_version(&self) -> String {
                <Self as $crate::Event>::schema_version(self).to_string()
            }
        }
    };
}

#[cfg(not(feature = "cqrs"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __impl_domain_event {
    ($name:ident) => {};
}
