//! Stock of one SKU: on hand, reserved per order, committed to shipments.

mod aggregate;
mod commands;
mod error;

pub use aggregate::StockItem;
pub use commands::StockCommand;
pub use error::StockError;
