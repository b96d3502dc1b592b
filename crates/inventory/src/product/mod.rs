//! The catalogue: one `Product` per SKU, with its name and price.

mod aggregate;
mod commands;
mod error;

pub use aggregate::{MAX_NAME_CHARS, Product};
pub use commands::ProductCommand;
pub use error::ProductError;
