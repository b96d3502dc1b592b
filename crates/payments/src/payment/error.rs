use events::values::Money;

use crate::provider::ProviderError;

use super::MAX_PAYMENT_TOKEN_CHARS;

/// Why a payment refused a command.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PaymentError {
    #[error("the amount to pay must be positive, got {0}")]
    InvalidAmount(Money),
    #[error(
        "the payment token must not be blank nor longer than {MAX_PAYMENT_TOKEN_CHARS} characters"
    )]
    InvalidPaymentToken,
    #[error("no payment was requested for this order")]
    NotRequested,
    /// The provider gave no answer. Transient: the consumer retries later; the provider's
    /// idempotency makes the retry safe.
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

impl PaymentError {
    /// A stable snake_case code for API errors (the messages may change, the codes do not).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidAmount(_) => "invalid_amount",
            Self::InvalidPaymentToken => "invalid_payment_token",
            Self::NotRequested => "not_requested",
            Self::Provider(ProviderError::Timeout) => "provider_timeout",
            Self::Provider(ProviderError::Unavailable(_)) => "provider_unavailable",
        }
    }

    /// Whether the same command may succeed if tried again later (the consumer naks with a
    /// delay) rather than never (it records the failure).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Provider(_))
    }
}
