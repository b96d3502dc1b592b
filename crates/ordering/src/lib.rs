//! The ordering context of Chorus: it owns orders (their lines, totals and status) and prices
//! them from its own replica of the catalogue, never from the client.
//!
//! - [`order`]: the [`Order`] aggregate, the domain. Pure `handle` and `apply`, no I/O: the
//!   prices of an order arrive in [`OrderCommand::Place`], read beforehand from the replica.
//! - [`catalogue`]: the [`CatalogueReplica`], a table in ordering's database kept from
//!   inventory's catalogue events, with ordering's own migrations.
//! - [`place`]: placing an order, the application service that prices a shopper's request
//!   from the replica, runs `Place` and schedules the order's payment deadline
//!   ([`PAYMENT_TIMEOUT`]) in the same commit.
//! - [`reactions`]: the application layer around the aggregate that makes ordering's part of
//!   the saga: it keeps the replica, and turns stock rejected, payment captured or declined,
//!   shipment dispatched and delivered, and the payment deadline into commands, in units of
//!   work of ordering's store. Ordering owns the payment deadline because the `Order` is
//!   where "paid" and "timed out" meet (ADR 0008).
//! - [`commands`]: the commands ordering answers over NATS (`place-order`, `cancel-order`).
//! - [`service`]: the service process: the reactions and the commands on a [`host::Host`].

pub mod catalogue;
pub mod commands;
pub mod order;
pub mod place;
pub mod reactions;
pub mod service;

pub use catalogue::{CatalogueReplica, ReplicaError};
pub use order::{
    MAX_ADDRESS_FIELD_CHARS, MAX_CANCEL_REASON_CHARS, MAX_LINES, MAX_PAYMENT_TOKEN_CHARS, Order,
    OrderCommand, OrderError, OrderStatus, RequestedLine,
};
pub use place::{PAYMENT_TIMEOUT, PlaceError, PlaceOrder, place_order};
