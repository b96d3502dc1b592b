//! Why the `order` aggregate refuses a command.

use events::values::Sku;

use super::aggregate::{MAX_CANCEL_REASON_CHARS, MAX_PAYMENT_TOKEN_CHARS};

/// A command the `order` aggregate refused. [`OrderError::code`] gives a stable code for APIs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("the order has already been placed")]
    AlreadyPlaced,
    #[error("an order needs at least one line")]
    EmptyOrder,
    #[error("an order has at most {max} lines")]
    TooManyLines { max: usize },
    #[error("SKU {0} appears on more than one line; use one line with the total quantity")]
    DuplicateSku(Sku),
    #[error("SKU {0} is not in the catalogue")]
    UnknownSku(Sku),
    #[error("the lines are priced in different currencies")]
    MixedCurrencies,
    #[error("the order total is too large")]
    TotalTooLarge,
    #[error("shipping address field `{field}` is missing, too long or malformed")]
    InvalidAddress { field: &'static str },
    #[error(
        "the payment token must be 1 to {} characters",
        MAX_PAYMENT_TOKEN_CHARS
    )]
    InvalidPaymentToken,
    #[error("the order has not been placed")]
    NotPlaced,
    #[error("the order has already been confirmed")]
    AlreadyConfirmed,
    #[error("the order has already been cancelled")]
    AlreadyCancelled,
    #[error("the order has already been rejected")]
    AlreadyRejected,
    #[error("the order has already been shipped")]
    AlreadyShipped,
    #[error("the order has not been confirmed yet")]
    NotConfirmed,
    #[error("the order has not been shipped")]
    NotShipped,
    #[error(
        "the cancellation reason must be at most {} characters",
        MAX_CANCEL_REASON_CHARS
    )]
    InvalidReason,
}

impl OrderError {
    /// A stable snake_case code (the variant's name), for API error bodies and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyPlaced => "already_placed",
            Self::EmptyOrder => "empty_order",
            Self::TooManyLines { .. } => "too_many_lines",
            Self::DuplicateSku(_) => "duplicate_sku",
            Self::UnknownSku(_) => "unknown_sku",
            Self::MixedCurrencies => "mixed_currencies",
            Self::TotalTooLarge => "total_too_large",
            Self::InvalidAddress { .. } => "invalid_address",
            Self::InvalidPaymentToken => "invalid_payment_token",
            Self::NotPlaced => "not_placed",
            Self::AlreadyConfirmed => "already_confirmed",
            Self::AlreadyCancelled => "already_cancelled",
            Self::AlreadyRejected => "already_rejected",
            Self::AlreadyShipped => "already_shipped",
            Self::NotConfirmed => "not_confirmed",
            Self::NotShipped => "not_shipped",
            Self::InvalidReason => "invalid_reason",
        }
    }
}
