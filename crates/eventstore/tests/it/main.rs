//! Integration tests of the event store against a real PostgreSQL (one database per test).

mod store;
