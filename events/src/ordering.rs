//! Events of the ordering context: the `order` aggregate.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::{CustomerId, Money, OrderId, Quantity, Sku};

/// One line of an order, priced from ordering's replica of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderLine {
    pub sku: Sku,
    pub quantity: Quantity,
    /// Price of one unit when the order was placed.
    pub unit_price: Money,
}

/// Where a shipment goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Address {
    pub name: String,
    pub line1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
}

/// A shopper placed an order; the saga starts here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderPlaced {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub lines: Vec<OrderLine>,
    /// Sum of the lines.
    pub total: Money,
    pub shipping_address: Address,
    /// Opaque token naming how the customer pays; passed to the payment provider.
    pub payment_token: String,
}

/// Stock was reserved and payment captured: the order will ship.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderConfirmed {
    pub order_id: OrderId,
    /// Where the order ships to, as placed: what shipping needs to schedule the shipment.
    pub shipping_address: Address,
}

/// Why an order was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectionReason {
    /// At least one line could not be reserved.
    OutOfStock,
    /// The payment provider declined the payment.
    PaymentDeclined,
    /// The order was not paid for before its reservation expired.
    PaymentTimedOut,
}

/// The order cannot be fulfilled; nothing will be charged or shipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderRejected {
    pub order_id: OrderId,
    pub reason: RejectionReason,
    /// Human-readable detail, e.g. which SKUs were short.
    pub detail: String,
}

/// The customer cancelled the order before it was dispatched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancelled {
    pub order_id: OrderId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The order's shipment left the warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderShipped {
    pub order_id: OrderId,
}

/// The order's shipment reached the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderDelivered {
    pub order_id: OrderId,
}

crate::event_enum! {
    /// Events of the `order` aggregate.
    pub enum OrderEvent: "order" {
        OrderPlaced = 1,
        OrderConfirmed = 1,
        OrderRejected = 1,
        OrderCancelled = 1,
        OrderShipped = 1,
        OrderDelivered = 1,
    }
}
