//! The `payment` aggregate: one per order, keyed by the order id.

mod aggregate;
mod commands;
mod error;

pub use aggregate::{MAX_PAYMENT_TOKEN_CHARS, Payment, PaymentStatus};
pub use commands::PaymentCommand;
pub use error::PaymentError;
