//! Ordering's application layer against a real PostgreSQL (a database per test): the
//! catalogue replica, placing orders, and the reactions, with messages built as the consumer
//! runtime hands them over; and the service itself, over a private nats-server.

// A test fails by panicking; helpers unwrap like the tests do.
#![allow(clippy::unwrap_used)]

mod catalogue;
mod deadline;
mod place;
mod reactions;
mod service;
mod support;
