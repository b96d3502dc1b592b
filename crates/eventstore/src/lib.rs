//! The write side of a bounded context, on its own PostgreSQL database.
//!
//! - [`Store`]: the event store (`events`, `outbox`, `inbox` tables; migrations embedded).
//! - [`Repository`]: runs commands against a cqrs-es [`Aggregate`](cqrs_es::Aggregate), keeping
//!   loaded aggregates in a cache so that a command costs the same whatever the history.
//! - [`UnitOfWork`]: any number of command executions, on any aggregates, plus inbox rows,
//!   committed together in one SQL statement (one round trip, one fsync); units committed at
//!   the same time by different tasks share statements too (group commit).
//!
//! - [`Ticker`]: fires due deadlines, which units of work schedule and cancel together with the
//!   events that start and end them.
//!
//! Optimistic concurrency comes from the unique `(aggregate_type, aggregate_id, sequence)`
//! key: a unit of work built on a stale aggregate fails with [`StoreError::Conflict`], the
//! stale aggregates are evicted, and the caller runs the work again.
//!
//! This crate does not talk to NATS (the relay in `bus` drains the outbox) and holds no domain
//! logic (that is in the aggregates).

mod commit;
mod deadline;
mod pool;
mod repository;
mod statistics;
mod store;
mod unit_of_work;

pub use deadline::{Deadline, DeadlineHandler, Tick, Ticker};
pub use pool::{CHECK_IDLE_AFTER, pool_options};
pub use repository::{CommandError, Committed, MAX_EVENT_BYTES, Repository};
pub use statistics::{ANALYZE_AFTER, Analyzer, analyze_grown, generic_plans};
pub use store::{OUTBOX_CHANNEL, Store, StoreError, StoredEvent};
pub use unit_of_work::{Mark, UnitOfWork};
