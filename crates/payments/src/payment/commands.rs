use events::values::{Money, OrderId};

/// What can be asked of a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentCommand {
    /// Record what the order will cost (on `OrderPlaced`).
    ///
    /// `payment_token` is not recorded yet: `PaymentRequested` has no field for it, and state is
    /// rebuilt from events. Until the contract carries it, the service keeps the token and
    /// passes it to [`PaymentCommand::Capture`].
    Request {
        order_id: OrderId,
        amount: Money,
        payment_token: String,
    },
    /// Take the money through the provider (on `StockReserved`). The token comes from the
    /// service's own records of `OrderPlaced`.
    Capture { payment_token: String },
    /// The order ended before it could be fulfilled (cancelled, rejected or expired): pay back
    /// what was captured, or void what was not.
    Cancel,
}
