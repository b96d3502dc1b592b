//! Chorus on NATS JetStream: what carries events from one context's store to another's.
//!
//! - [`connect`]: a client, refusing a nats-server older than 2.12, over TLS with a private CA
//!   or a client certificate when [`Tls`] says so.
//! - [`provision`]: streams and durable consumers, created or updated from definitions in code.
//! - [`Relay`]: drains a context's outbox into its stream, with `Nats-Msg-Id` = event id, one
//!   active relay per store (a PostgreSQL advisory lock), per-aggregate order kept.
//! - [`Consumer`]: a durable pull consumer that hands messages to a [`Handler`] in batches, one
//!   unit of work (and one commit) per batch, with inbox de-duplication, retries with backoff and
//!   a dead-letter stream.
//! - [`follow_trace`], [`traced`]: the W3C trace context from one hop of a saga to the next,
//!   each hop's span a child of the previous one (the consumer opens one per message).
//! - [`RelayObserver`], [`ConsumerObserver`]: what the relay and the consumers tell whoever
//!   watches them (a service's metrics), without this crate depending on how it is measured.
//!
//! This crate holds no domain logic: handlers decide what a message means.

mod connect;
mod consumer;
mod message;
pub mod provision;
mod relay;

pub use connect::{
    MIN_SERVER_VERSION, TLS_CA_VAR, TLS_CERT_VAR, TLS_KEY_VAR, Tls, check_server_version, connect,
    connect_with, options as connect_options, redact,
};
pub use consumer::{
    Backoff, Consumer, ConsumerObserver, ConsumerSpec, Handler, HandlerError, MessageOutcome,
};
pub use message::{Received, TraceContext, event_headers, follow_trace, traced};
pub use relay::{
    Published, Relay, RelayConfig, RelayLock, RelayObserver, publish_events, relay_lock_key,
};
