use events::values::{Currency, Money};

use super::aggregate::MAX_NAME_CHARS;

/// Why the catalogue refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductError {
    #[error("the product is already defined")]
    AlreadyDefined,
    #[error("the product is not defined")]
    NotDefined,
    #[error("a product name must have 1 to {MAX_NAME_CHARS} characters and not be only whitespace")]
    InvalidName,
    #[error("a price must be more than zero, not {price}")]
    InvalidPrice { price: Money },
    #[error("a product priced in {current} cannot be repriced in {requested}")]
    CurrencyChange {
        current: Currency,
        requested: Currency,
    },
}

impl ProductError {
    /// A stable code for API errors: the variant's name in snake_case.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyDefined => "already_defined",
            Self::NotDefined => "not_defined",
            Self::InvalidName => "invalid_name",
            Self::InvalidPrice { .. } => "invalid_price",
            Self::CurrencyChange { .. } => "currency_change",
        }
    }
}
