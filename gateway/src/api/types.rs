//! The API's own request and response types: its contract with clients, described by their
//! JSON Schemas in the OpenAPI document.
//!
//! Requests are parsed once, at the edge, into the value types of [`events::values`] (a SKU is
//! a SKU, a quantity at least 1, money integer minor units), and refuse unknown fields. They
//! are mapped to the contexts' command bodies by the handlers: the HTTP API does not change
//! when a command's body does, and it never takes what the token already says (a shopper's
//! customer id). Read models come back as the query service gives them ([`events::query`]),
//! except the public catalogue, which shows what a shopper needs and no stock internals.

use chrono::NaiveDate;
use events::query::{OrderState, ProductView};
use events::values::{CustomerId, Money, Quantity, Sku};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// ---- requests ------------------------------------------------------------------------------

/// The body of `POST /orders`. Prices come from the catalogue, the customer from the token.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    /// One line per SKU, at least one.
    pub lines: Vec<OrderLine>,
    pub shipping_address: ShippingAddress,
    /// The payment method's token, passed on to the payment provider.
    pub payment_token: String,
}

/// A SKU and how many of it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    pub sku: Sku,
    pub quantity: Quantity,
}

/// Where the order goes.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShippingAddress {
    pub name: String,
    pub line1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code, e.g. `GB`.
    pub country: String,
}

/// The body of `POST /orders/{order_id}/cancel` (it may be left out).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelOrder {
    /// Why, if the customer says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The body of `PUT /products/{sku}`: defines the product, or reprices it if it exists (its
/// name is kept: the catalogue does not rename).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutProduct {
    pub name: String,
    /// More than zero; a product keeps the currency it was defined in.
    pub price: Money,
}

/// The body of `POST /inventory/{sku}/receipts`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StockReceipt {
    /// Units that arrived, at least 1.
    pub quantity: Quantity,
}

/// The body of `POST /shipments/{order_id}/dispatch` (it may be left out).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dispatch {
    /// The carrier's tracking number: 1 to 100 of A-Z, a-z, 0-9 and '-'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
}

/// The body of `POST /shipments/{order_id}/deliver` (it may be left out).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Deliver {}

// ---- query strings -------------------------------------------------------------------------

/// Read-your-writes on a `GET` of one thing.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(inline)]
pub struct ReadQuery {
    /// A command's `consistency_token`: answer only once the read model has applied that
    /// write (503 `not_yet` if it has not within `wait_ms`).
    pub after: Option<String>,
    /// How long to wait for `after`, in milliseconds (default 2,000).
    #[schemars(range(max = 5000))]
    pub wait_ms: Option<u64>,
}

/// A page of a list.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(inline)]
pub struct PageQuery {
    /// Items per page (default 20).
    #[schemars(range(min = 1, max = 100))]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// A command's `consistency_token` (see `GET /orders/{order_id}`).
    pub after: Option<String>,
    /// How long to wait for `after`, in milliseconds (default 2,000).
    #[schemars(range(max = 5000))]
    pub wait_ms: Option<u64>,
}

/// `GET /orders`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(inline)]
pub struct OrdersQuery {
    /// Only orders in this status.
    pub status: Option<OrderState>,
    /// Only this customer's orders (operators; a shopper sees only their own anyway).
    pub customer_id: Option<CustomerId>,
    /// Orders per page (default 20).
    #[schemars(range(min = 1, max = 100))]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// A command's `consistency_token` (see `GET /orders/{order_id}`).
    pub after: Option<String>,
    /// How long to wait for `after`, in milliseconds (default 2,000).
    #[schemars(range(max = 5000))]
    pub wait_ms: Option<u64>,
}

/// `GET /reports/sales`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(inline)]
pub struct SalesQuery {
    /// The first day (UTC), e.g. `2025-01-31`.
    pub from: NaiveDate,
    /// The last day (UTC), at most 366 days after `from`.
    pub to: NaiveDate,
    /// A command's `consistency_token` (see `GET /orders/{order_id}`).
    pub after: Option<String>,
    /// How long to wait for `after`, in milliseconds (default 2,000).
    #[schemars(range(max = 5000))]
    pub wait_ms: Option<u64>,
}

// ---- responses -----------------------------------------------------------------------------

/// A command was accepted: its events are committed. What follows from it happens
/// asynchronously.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandAccepted {
    /// The aggregate written: `order`, `product`, `stock` or `shipment`.
    pub aggregate_type: String,
    /// Its id: the order id, or the SKU.
    pub aggregate_id: String,
    /// The event-store position of the last event written (0 if nothing changed).
    pub position: i64,
    /// The aggregate's version after the command.
    pub version: u64,
    /// Pass it as `after` to a GET to read this write.
    pub consistency_token: String,
}

/// A product as shoppers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogueItem {
    pub sku: String,
    pub name: String,
    pub price: Money,
    /// Units that can be ordered now.
    pub available: i64,
}

impl From<ProductView> for CatalogueItem {
    fn from(view: ProductView) -> Self {
        Self {
            sku: view.sku,
            name: view.name,
            price: view.price,
            available: view.available.max(0),
        }
    }
}

/// A page of the catalogue, by SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CataloguePage {
    pub products: Vec<CatalogueItem>,
    /// Pass it as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Alive {
    /// Always `alive`.
    pub status: String,
}

/// `GET /readyz`: whether the gateway can do its work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Readiness {
    /// True when NATS is connected and every service below answered ready.
    pub ready: bool,
    /// The NATS connection's state: `connected`, `pending` or `disconnected`.
    pub nats: String,
    pub services: Vec<ServiceReadiness>,
}

/// One service the gateway sends requests to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceReadiness {
    /// `ordering`, `inventory`, `payments`, `shipping` or `query`.
    pub name: String,
    pub ready: bool,
    /// Why it is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
