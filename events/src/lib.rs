//! The published contract of Chorus: what crosses a context boundary.
//!
//! Everything another team needs to consume Chorus events lives here and nowhere else:
//! the [`envelope`] (event id, type, schema version, aggregate, sequence, correlation,
//! causation, trace context), the payload types of every context ([`ordering`],
//! [`inventory`], [`payments`], [`shipping`]), the value types they use ([`values`]), and
//! the stream, subject and consumer names ([`naming`]). JSON Schemas generated from these
//! types are committed under `events/schemas/` ([`schema`]), with the AsyncAPI document
//! `events/asyncapi.yaml` ([`asyncapi`]); [`compat`] keeps a published schema from breaking.
//!
//! This crate must not do I/O, depend on any other Chorus crate, or hold domain logic: it
//! describes facts, it does not decide them.

pub mod asyncapi;
pub mod command;
pub mod compat;
pub mod envelope;
pub mod health;
pub mod inventory;
pub mod naming;
pub mod ordering;
pub mod payments;
pub mod query;
pub mod schema;
pub mod shipping;
pub mod values;

pub use envelope::{DecodeError, Envelope, Event, Metadata, headers};
pub use naming::BoundedContext;

#[cfg(feature = "cqrs")]
#[doc(hidden)]
pub use cqrs_es as __cqrs;
