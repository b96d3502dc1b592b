//! Inventory's reactions against a real PostgreSQL (a database per test): the messages are
//! built as the consumer runtime hands them over.

// A test fails by panicking; helpers unwrap like the tests do.
#![allow(clippy::unwrap_used)]

mod reactions;
