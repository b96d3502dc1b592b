use events::values::{Money, OrderId};

/// What can be asked of a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentCommand {
    /// Record what the order will cost and how it is paid (on `OrderPlaced`). The token is
    /// recorded in `PaymentRequested`, so that the capture can be made after a restart.
    Request {
        order_id: OrderId,
        amount: Money,
        payment_token: String,
    },
    /// Take the money through the provider (on `StockReserved`), with the token recorded by
    /// the request.
    Capture,
    /// The order ended before it could be fulfilled (cancelled, rejected or expired): pay back
    /// what was captured, or void what was not.
    Cancel,
}
