//! Events of the shipping context: the `shipment` aggregate, one per order.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ordering::Address;
use crate::values::OrderId;

/// A confirmed order's parcel is waiting to be dispatched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShipmentScheduled {
    pub order_id: OrderId,
    pub address: Address,
}

/// The parcel left the warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShipmentDispatched {
    pub order_id: OrderId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
}

/// The parcel reached the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShipmentDelivered {
    pub order_id: OrderId,
}

/// The shipment will not happen (the order was cancelled before dispatch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShipmentCancelled {
    pub order_id: OrderId,
}

crate::event_enum! {
    /// Events of the `shipment` aggregate.
    pub enum ShipmentEvent: "shipment" {
        ShipmentScheduled = 1,
        ShipmentDispatched = 1,
        ShipmentDelivered = 1,
        ShipmentCancelled = 1,
    }
}
