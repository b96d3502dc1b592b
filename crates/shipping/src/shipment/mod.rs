//! The `shipment` aggregate: one per order, keyed by the order id.

mod aggregate;
mod commands;
mod error;

pub use aggregate::{Shipment, ShipmentStatus};
pub use commands::ShipmentCommand;
pub use error::ShipmentError;
