//! Integration tests of the event store against a real PostgreSQL (one database per test).

// A test fails by panicking; helpers unwrap like the tests do.
#![allow(clippy::unwrap_used)]

mod deadlines;
mod pool;
mod statistics;
mod store;
