//! Integration tests of the projections: the runtime, the read models, the query service and
//! the rebuild engine, on a private nats-server and private PostgreSQL databases.
//!
//! - `workload`: the four context services driven through every path of the saga; the read
//!   models checked against the event stores; rebuilds (in several interleavings, while orders
//!   flow, from a point in time) and recreated streams checked against the live models.
//! - `runtime`: a writer killed inside a batch, poison messages, an interrupted rebuild.
//! - `queries`: pagination, filters, refusals, read-your-writes.

// A test fails by panicking; helpers unwrap like the tests do.
#![allow(clippy::unwrap_used)]

mod queries;
mod runtime;
mod support;
mod workload;
