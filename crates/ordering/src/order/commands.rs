//! Commands of the `order` aggregate.

use events::ordering::{Address, RejectionReason};
use events::values::{CustomerId, OrderId, Quantity, Sku};

/// One line as the shopper asks for it: no price (the price comes from the catalogue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedLine {
    pub sku: Sku,
    pub quantity: Quantity,
}

/// What can be asked of an order. The aggregate id (the order id) travels with the command
/// envelope; only `Place` repeats it, because it goes into `OrderPlaced`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    /// A shopper places an order (through the gateway).
    Place {
        order_id: OrderId,
        customer_id: CustomerId,
        lines: Vec<RequestedLine>,
        shipping_address: Address,
        /// Opaque; passed on to payments in `OrderPlaced`, not kept in the order's state.
        payment_token: String,
    },
    /// Policy on `PaymentCaptured`: stock is reserved and paid for.
    Confirm,
    /// Policy on `StockRejected`, `PaymentDeclined`, or a reservation that expired unpaid.
    Reject {
        reason: RejectionReason,
        detail: String,
    },
    /// The customer cancels before dispatch.
    Cancel { reason: Option<String> },
    /// Policy on `ShipmentDispatched`.
    MarkShipped,
    /// Policy on `ShipmentDelivered`.
    MarkDelivered,
}
