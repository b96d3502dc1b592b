//! Commands of the `order` aggregate.

use std::collections::HashMap;

use events::ordering::{Address, RejectionReason};
use events::values::{CustomerId, Money, OrderId, Quantity, Sku};

/// One line as the shopper asks for it: no price (the price comes from the catalogue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedLine {
    pub sku: Sku,
    pub quantity: Quantity,
}

/// What can be asked of an order. The aggregate id (the order id) travels with the command
/// envelope; only `Place` repeats it, because it goes into `OrderPlaced`.
#[derive(Debug, Clone, PartialEq, Eq)]
// `Place` is much larger than the others, but a command is built once and moved into
// `handle`: boxing it would cost an allocation and make it harder to build, for nothing.
#[allow(clippy::large_enum_variant)]
pub enum OrderCommand {
    /// A shopper places an order (through the gateway).
    Place {
        order_id: OrderId,
        customer_id: CustomerId,
        lines: Vec<RequestedLine>,
        shipping_address: Address,
        /// Opaque; passed on to payments in `OrderPlaced`, not kept in the order's state.
        payment_token: String,
        /// The current unit price of the requested SKUs, filled by the application layer from
        /// ordering's replica of the catalogue (see `crate::catalogue`), never from the request:
        /// the shopper does not choose prices. A requested SKU missing from the map is not in
        /// the catalogue (`OrderError::UnknownSku`); entries for SKUs not requested are ignored.
        prices: HashMap<Sku, Money>,
    },
    /// Policy on `PaymentCaptured`: stock is reserved and paid for.
    Confirm,
    /// Policy on `StockRejected`, `PaymentDeclined`, or the order's payment deadline passing
    /// while it is still `Placed`.
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
