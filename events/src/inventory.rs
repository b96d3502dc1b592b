//! Events of the inventory context: the catalogue (`product`), stock per SKU (`stock`) and
//! the per-order allocation of stock (`allocation`).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::{Money, OrderId, Quantity, Sku};

/// An operator added a product to the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductDefined {
    pub sku: Sku,
    pub name: String,
    pub price: Money,
}

/// An operator changed a product's price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductRepriced {
    pub sku: Sku,
    pub price: Money,
}

crate::event_enum! {
    /// Events of the `product` aggregate (the catalogue, one per SKU).
    pub enum ProductEvent: "product" {
        ProductDefined = 1,
        ProductRepriced = 1,
    }
}

/// Units arrived at the warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReceived {
    pub sku: Sku,
    pub quantity: Quantity,
}

/// Units of one SKU were set aside for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockItemReserved {
    pub sku: Sku,
    pub order_id: OrderId,
    pub quantity: Quantity,
}

/// Units reserved for an order went back on hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockItemReleased {
    pub sku: Sku,
    pub order_id: OrderId,
    pub quantity: Quantity,
}

/// Units reserved for an order left with its shipment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockItemCommitted {
    pub sku: Sku,
    pub order_id: OrderId,
    pub quantity: Quantity,
}

crate::event_enum! {
    /// Events of the `stock` aggregate (one per SKU).
    pub enum StockEvent: "stock" {
        StockReceived = 1,
        StockItemReserved = 1,
        StockItemReleased = 1,
        StockItemCommitted = 1,
    }
}

/// A reserved line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AllocatedLine {
    pub sku: Sku,
    pub quantity: Quantity,
}

/// A line that could not be reserved, with what was available.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Shortage {
    pub sku: Sku,
    pub requested: Quantity,
    pub available: u32,
}

/// Every line of an order is reserved until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReserved {
    pub order_id: OrderId,
    pub lines: Vec<AllocatedLine>,
    /// The reservation is released if the order is not paid for by then.
    pub expires_at: DateTime<Utc>,
}

/// At least one line of an order could not be reserved; nothing was reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockRejected {
    pub order_id: OrderId,
    pub shortages: Vec<Shortage>,
}

/// Why a reservation was released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    OrderCancelled,
    PaymentDeclined,
    /// The order was not paid for before the reservation's deadline.
    Expired,
}

/// A reservation went back on hand (a compensation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReleased {
    pub order_id: OrderId,
    pub reason: ReleaseReason,
}

/// A reservation became committed stock: the order was dispatched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockCommitted {
    pub order_id: OrderId,
}

crate::event_enum! {
    /// Events of the `allocation` aggregate (one per order).
    pub enum AllocationEvent: "allocation" {
        StockReserved = 1,
        StockRejected = 1,
        StockReleased = 1,
        StockCommitted = 1,
    }
}
