//! The payment provider port: what payments needs from whoever moves the money.

use std::future::Future;
use std::pin::Pin;

use events::payments::DeclineCode;
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
    /// The provider refused (a business answer: retrying will not change it): why, as a code
    /// a program can act on, and in the provider's words.
    Declined { code: DeclineCode, detail: String },
}

/// The provider's answer to a cancel: what became of the order's money.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Nothing was captured for the order, and nothing will be: any later capture for it is
    /// declined.
    Voided,
    /// A capture had happened (perhaps one whose answer payments never recorded) and it is now
    /// paid back. `capture_reference` names the capture, `refund_reference` the refund.
    Refunded {
        capture_reference: String,
        refund_reference: String,
    },
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
/// Every call must be idempotent per order at the provider: the order id is the idempotency
/// key. Capturing the same `order_id` twice charges once and returns the same reference,
/// refunding it twice pays back once, and cancelling it twice gives the same outcome. Payments
/// relies on this: a call whose answer was lost (a timeout, a crash before the events were
/// committed) is simply made again.
///
/// The provider serialises capture and cancel per order id: whichever reaches it first
/// decides. A cancel after a capture refunds it; a capture after a cancel is declined. So a
/// capture and a cancel racing in two consumers can never leave money taken and unrecorded:
/// the cancel's answer tells payments what the capture did (see ADR 0009).
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

    /// Ends the order's payment, whatever the provider did for it so far: voids it if nothing
    /// was captured (a later capture for the order is declined), or refunds the capture if one
    /// happened. Idempotent: a repeated cancel returns the same outcome.
    fn cancel(&self, order_id: OrderId, amount: Money) -> ProviderFuture<'_, CancelOutcome>;
}
