//! The payment provider port: what payments needs from whoever moves the money.

use std::future::Future;
use std::pin::Pin;

use events::values::{Money, OrderId};

/// What a provider call returns. Boxed so that the port is object-safe: the aggregate's
/// services are an `Arc<dyn PaymentProvider>`, whatever adapter sits behind it.
pub type ProviderFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, ProviderError>> + Send + 'a>>;

/// The provider's answer to a capture it could process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureOutcome {
    /// The money was taken; `reference` names the capture at the provider.
    Captured { reference: String },
    /// The provider refused (a business answer: retrying will not change it).
    Declined { reason: String },
}

/// The provider could not give an answer. Transient: the same call may succeed later.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ProviderError {
    #[error("payment provider timed out")]
    Timeout,
    #[error("payment provider unavailable: {0}")]
    Unavailable(String),
}

/// The payment provider port.
///
/// Both calls must be idempotent per order at the provider: the order id is the idempotency
/// key. Capturing the same `order_id` twice charges once and returns the same reference, and
/// refunding it twice pays back once. Payments relies on this: a call whose answer was lost
/// (a timeout, a crash before the events were committed) is simply made again.
pub trait PaymentProvider: Send + Sync {
    /// Takes `amount` for the order from the means of payment named by `token`.
    fn capture<'a>(
        &'a self,
        order_id: OrderId,
        amount: Money,
        token: &'a str,
    ) -> ProviderFuture<'a, CaptureOutcome>;

    /// Pays back `amount` of the capture named by `reference`; returns the refund's reference.
    fn refund<'a>(
        &'a self,
        order_id: OrderId,
        amount: Money,
        reference: &'a str,
    ) -> ProviderFuture<'a, String>;
}
