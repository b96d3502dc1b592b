//! The `order` aggregate: one shopper's order, from placing it to its delivery.

mod aggregate;
mod commands;
mod error;

pub use aggregate::{
    MAX_ADDRESS_FIELD_CHARS, MAX_CANCEL_REASON_CHARS, MAX_LINES, MAX_PAYMENT_TOKEN_CHARS, Order,
    OrderStatus,
};
pub use commands::{OrderCommand, RequestedLine};
pub use error::OrderError;
