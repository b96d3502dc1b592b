// A test fails by panicking; helpers unwrap like the tests do.
#![allow(clippy::unwrap_used)]
mod find_nats;
mod nats_server;
mod test_database;
mod wait;
