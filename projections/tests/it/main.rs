//! Integration tests of the projections: the runtime, the read models, the query service and
//! the rebuild engine, on a private nats-server and private PostgreSQL databases.
//!
//! - `workload`: the four context services driven through every path of the saga; the read
//!   models checked against the event stores; rebuilds (in several interleavings, while orders
//!   flow, from a point in time) and recreated streams checked against the live models.
//! - `runtime`: a writer killed inside a batch, poison messages, an interrupted rebuild.
//! - `observe`: health over NATS and HTTP, metrics and spans as an order is projected and
//!   queried, not ready without the database.
//! - `queries`: pagination, filters, refusals, read-your-writes.
//! - `recovery`: a rebuild whose batch fails in the middle goes on and gives the live model.
//! - `writers`: two instances at once, one writer per projection: the standby takes over when
//!   the first stops or loses its lock, and the models end as one writer would leave them.

// A test fails by panicking; helpers unwrap like the tests do.
#![allow(clippy::unwrap_used)]

mod observe;
mod queries;
mod recovery;
mod runtime;
mod support;
mod workload;
mod writers;
