use events::ordering::Address;
use events::values::OrderId;

/// What can be asked of a shipment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShipmentCommand {
    /// Plan the parcel of a confirmed order (on `OrderConfirmed`).
    Schedule { order_id: OrderId, address: Address },
    /// The parcel left the warehouse (operator).
    Dispatch { tracking_number: Option<String> },
    /// The parcel reached the customer (operator).
    Deliver,
    /// The order was cancelled: the parcel must not leave (on `OrderCancelled`).
    Cancel,
}
