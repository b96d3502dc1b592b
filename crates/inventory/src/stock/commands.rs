use events::values::{OrderId, Quantity, Sku};

/// What can happen to the stock of one SKU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockCommand {
    /// Units arrived. Receiving is what starts a stock item, so it alone names the SKU; it must
    /// be the SKU of the item (its aggregate id) whenever it is given again.
    Receive { sku: Sku, quantity: Quantity },
    /// Set units aside for an order. Once per order: a second reservation for the same order
    /// succeeds with no events, whatever its quantity.
    Reserve {
        order_id: OrderId,
        quantity: Quantity,
    },
    /// Put an order's reserved units back on hand (compensation; idempotent).
    Release { order_id: OrderId },
    /// An order's reserved units left with its shipment (idempotent).
    Commit { order_id: OrderId },
}
