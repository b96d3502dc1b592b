//! The shipping context's domain: one `Shipment` per order, which owns the delivery address and
//! the parcel's status (scheduled, dispatched, delivered or cancelled).
//!
//! Shipping reacts to `OrderConfirmed` (schedule the shipment) and `OrderCancelled` (cancel it
//! before dispatch); operators dispatch and deliver. This crate holds the domain only: pure
//! aggregates, commands and errors, with no I/O (no database, no NATS, no clock).

pub mod shipment;

pub use shipment::{Shipment, ShipmentCommand, ShipmentError, ShipmentStatus};
