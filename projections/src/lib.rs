//! Chorus read models: projections of the contexts' events into their own PostgreSQL
//! database, the query service that serves them over NATS, and the rebuild engine behind the
//! replay CLI.
//!
//! - [`Projection`]: the registry (`orders`, `catalogue`, `sales`), each in a schema of its
//!   own, with the streams it reads and its tables.
//! - The runtime (private `runner`): one writer per projection reads its source streams with
//!   ordered consumers from its checkpoints and commits each batch, read model and checkpoints
//!   together, in one transaction (exactly-once effect; ADR 0010).
//! - The read models (private `model`): how a batch is folded into each projection's tables,
//!   the same whatever order the source streams interleave in.
//! - The query service (private `query`; contract in [`events::query`]): the live read models
//!   over request/reply, with cursor pagination and read-your-writes waits.
//! - [`rebuild`]: rebuild into new tables and swap atomically, verify against a scratch
//!   rebuild, report positions and lag.
//! - [`service`]: the writers and the query service in one process (`chorus-projections`).
//!
//! A projection reads only its own schema: projections are rebuilt independently, so none may
//! depend on another's tables. Nothing here writes to an event store or publishes events
//! (except poison messages, copied to the dead-letter stream).

mod health;
mod metrics;
mod model;
mod projection;
mod query;
pub mod rebuild;
mod runner;
pub mod service;
mod source;

pub use projection::{Projection, Table};
pub use runner::{Counts, DEFAULT_BATCH_SIZE, DEFAULT_LINGER, NOTIFY_CHANNEL};
