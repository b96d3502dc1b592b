//! The shipping context: one `Shipment` per order, which owns the delivery address and the
//! parcel's status (scheduled, dispatched, delivered or cancelled).
//!
//! - [`Shipment`] (`shipment`, one per order, keyed by the order id): pure domain. Its
//!   aggregate, commands and errors do no I/O (no database, no NATS, no clock).
//! - [`reactions`]: the application layer around it for the saga. Shipping reacts to ordering's
//!   `OrderConfirmed` (schedule the shipment, to the address the order carries) and
//!   `OrderCancelled` (cancel it before dispatch; a cancellation that comes after the dispatch
//!   is refused and reaches the dead letters), in units of work of shipping's store.
//! - [`operations`]: the application layer for operators (through the gateway): dispatch and
//!   deliver a shipment.
//! - [`commands`]: those operations as NATS command endpoints, and [`service`]: the process
//!   (the reactions and the commands on a `host::Host`); the `shipping` binary runs it.

pub mod commands;
pub mod operations;
pub mod reactions;
pub mod service;
pub mod shipment;

pub use shipment::{Shipment, ShipmentCommand, ShipmentError, ShipmentStatus};
