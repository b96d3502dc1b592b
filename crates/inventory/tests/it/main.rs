//! Inventory against real services: its reactions on a PostgreSQL database per test (the
//! messages built as the consumer runtime hands them over), and the whole service with a private
//! nats-server, driven by commands over NATS.

// A test fails by panicking; helpers unwrap like the tests do.
#![allow(clippy::unwrap_used)]

mod reactions;
mod service;
