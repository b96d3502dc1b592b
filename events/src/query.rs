//! Queries over NATS request/reply: what the read models answer, and on which subject.
//!
//! The projections service runs a NATS service named [`SERVICE`] (queue group
//! [`QUEUE_GROUP`](crate::command::QUEUE_GROUP)) with one endpoint per query: subject
//! `chorus.query.<endpoint>`, e.g. `chorus.query.orders`. The request body is the query as JSON
//! (unknown fields refused); the reply body is a [`QueryReply`].
//!
//! | endpoint | request | found |
//! |---|---|---|
//! | `order` | [`OrderRequest`] | [`OrderSummary`] |
//! | `orders` | [`OrdersRequest`] | [`OrderPage`] |
//! | `product` | [`ProductRequest`] | [`ProductView`] |
//! | `products` | [`ProductsRequest`] | [`ProductPage`] |
//! | `sales` | [`SalesRequest`] | [`SalesReport`] |
//! | `status` | [`StatusRequest`] | [`ProjectionsStatus`] |
//!
//! **Read-your-writes.** A command's reply names the aggregate it wrote and the event-store
//! position of its last event. A query may carry that as [`WaitFor`]: the service answers once
//! the read model serving the query has applied that aggregate's event at that position or a
//! later one, or with [`QueryReply::NotYet`] when the wait runs out. The wait is per aggregate,
//! not per stream: a context's stream is not in position order (its relay publishes waves of
//! events of different aggregates in parallel, and transactions commit out of position order),
//! so "the projection has read past position P of the stream" is not something a projection
//! can know; "it has applied aggregate A up to position P" is.

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::Money;

/// The name of the query service.
pub const SERVICE: &str = "query";

/// The endpoints of the query service, each answering on [`query_subject`].
pub const ENDPOINTS: [&str; 6] = ["order", "orders", "product", "products", "sales", "status"];

/// The longest a query may wait for its read model ([`WaitFor::timeout_ms`]): 5 s.
pub const MAX_WAIT_MS: u64 = 5_000;

/// How long a query waits when [`WaitFor::timeout_ms`] is not given: 2 s.
pub const DEFAULT_WAIT_MS: u64 = 2_000;

/// Page size when a list query gives no `limit`.
pub const DEFAULT_PAGE_SIZE: u32 = 20;

/// The largest page a list query may ask for.
pub const MAX_PAGE_SIZE: u32 = 100;

/// The longest range of days a sales query may ask for (a leap year).
pub const MAX_SALES_DAYS: i64 = 366;

/// The subject of a query endpoint, e.g. `chorus.query.orders`.
pub fn query_subject(endpoint: &str) -> String {
    format!("chorus.{SERVICE}.{endpoint}")
}

/// Read-your-writes: answer only once the read model has applied `aggregate_type`
/// `aggregate_id` up to event-store `position` (from a command's reply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitFor {
    /// The aggregate the command wrote, e.g. `order`, `payment`, `product`, `stock`.
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The position the command reply gave (its last event's position in its context's store).
    pub position: i64,
    /// How long to wait, in milliseconds: at most [`MAX_WAIT_MS`], [`DEFAULT_WAIT_MS`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// One order by id, with its lines and timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    pub order_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitFor>,
}

/// A page of orders, newest first (by time placed, then order id), optionally filtered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrdersRequest {
    /// Only this customer's orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// Only orders in this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<OrderState>,
    /// Orders per page: 1 to [`MAX_PAGE_SIZE`], [`DEFAULT_PAGE_SIZE`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page; absent for the first page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitFor>,
}

/// One product by SKU, with its stock levels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductRequest {
    pub sku: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitFor>,
}

/// A page of the catalogue, by SKU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductsRequest {
    /// Products per page: 1 to [`MAX_PAGE_SIZE`], [`DEFAULT_PAGE_SIZE`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitFor>,
}

/// Sales per day (UTC) and currency, `from` to `to` inclusive, at most [`MAX_SALES_DAYS`] days.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SalesRequest {
    pub from: NaiveDate,
    pub to: NaiveDate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitFor>,
}

/// Each projection's position in each of its source streams.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {}

/// The answer to a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueryReply<T> {
    /// What was asked for.
    Found(T),
    /// Nothing by that id (or the read model has not seen it yet).
    NotFound,
    /// The request is wrong; nothing was looked up.
    Rejected {
        /// A stable snake_case code: `invalid_request` (with the field at fault: a cursor
        /// this service did not write is refused with field `cursor`) or `unavailable`.
        code: String,
        message: String,
        /// The request field at fault, when there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
    },
    /// The read model did not reach the position of [`WaitFor`] in time; ask again later.
    NotYet {
        aggregate_type: String,
        aggregate_id: String,
        /// The position asked for.
        position: i64,
        /// The position the read model has applied for that aggregate, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reached: Option<i64>,
    },
}

impl<T> QueryReply<T> {
    pub fn rejected(code: &str, message: impl Into<String>) -> Self {
        Self::Rejected {
            code: code.to_owned(),
            message: message.into(),
            field: None,
        }
    }

    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::Rejected {
            code: "invalid_request".to_owned(),
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }
}

/// Where an order stands, as the read model tells it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, PartialOrd, Ord,
)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    Placed,
    Confirmed,
    Rejected,
    Cancelled,
    Shipped,
    Delivered,
}

impl OrderState {
    pub const ALL: [OrderState; 6] = [
        OrderState::Placed,
        OrderState::Confirmed,
        OrderState::Rejected,
        OrderState::Cancelled,
        OrderState::Shipped,
        OrderState::Delivered,
    ];

    /// The snake_case name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Placed => "placed",
            OrderState::Confirmed => "confirmed",
            OrderState::Rejected => "rejected",
            OrderState::Cancelled => "cancelled",
            OrderState::Shipped => "shipped",
            OrderState::Delivered => "delivered",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderLineView {
    pub sku: String,
    pub quantity: u32,
    pub unit_price: Money,
}

/// The payment of an order, from the payments context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentView {
    /// `requested`, `captured`, `declined`, `refunded` or `voided`.
    pub status: String,
    /// Captured so far, in the order's currency (minor units).
    pub captured_minor: i64,
    /// Refunded so far, in the order's currency (minor units).
    pub refunded_minor: i64,
}

/// The shipment of an order, from the shipping context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShipmentView {
    /// `scheduled`, `dispatched`, `delivered` or `cancelled`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
}

/// One step of an order's saga: an event of any context about the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TimelineEntry {
    /// `ordering`, `inventory`, `payments` or `shipping`.
    pub context: String,
    /// The event type, e.g. `PaymentCaptured`.
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    /// A short human-readable detail, e.g. `captured 37.50 EUR`.
    pub detail: String,
}

/// An order with everything the contexts said about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderSummary {
    pub order_id: String,
    pub customer_id: String,
    pub status: OrderState,
    /// Why the order was rejected (`out_of_stock`, `payment_declined`, `payment_timed_out`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejection_reason: Option<String>,
    /// Why the customer cancelled, when they said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancellation_reason: Option<String>,
    pub lines: Vec<OrderLineView>,
    pub total: Money,
    /// The stock reserved for the order: `reserved`, `rejected`, `released` or `committed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stock: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipment: Option<ShipmentView>,
    pub placed_at: DateTime<Utc>,
    /// When any context last said something about the order.
    pub updated_at: DateTime<Utc>,
    /// Every step, ordered by time, then context, then the event's sequence in its aggregate.
    pub timeline: Vec<TimelineEntry>,
}

/// An order in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderListItem {
    pub order_id: String,
    pub customer_id: String,
    pub status: OrderState,
    pub total: Money,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A page of orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderPage {
    pub orders: Vec<OrderListItem>,
    /// Pass it as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A product of the catalogue with its stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductView {
    pub sku: String,
    pub name: String,
    pub price: Money,
    /// Units in the warehouse (received, not yet shipped), reserved ones included.
    pub on_hand: i64,
    /// Units set aside for orders.
    pub reserved: i64,
    /// Units free to order: `on_hand - reserved`.
    pub available: i64,
}

/// A page of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductPage {
    pub products: Vec<ProductView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Sales of one day in one currency. An order counts on the day it was confirmed; its
/// cancellation (after confirmation) on the day it was cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DailySales {
    pub day: NaiveDate,
    pub currency: String,
    pub orders_confirmed: i64,
    pub revenue_minor: i64,
    pub orders_cancelled: i64,
    pub cancelled_minor: i64,
    /// `revenue_minor - cancelled_minor`.
    pub net_minor: i64,
}

/// Sales over a range of days: only days with sales are listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SalesReport {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub days: Vec<DailySales>,
}

/// A projection's position in one source stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StreamStatus {
    /// The stream, e.g. `ORDERING`.
    pub stream: String,
    /// The last stream sequence the projection has applied (or skipped).
    pub checkpoint: u64,
    /// The stream's last sequence.
    pub last_sequence: u64,
    /// `last_sequence - checkpoint`: messages not yet applied.
    pub lag: u64,
}

/// One projection's position in each of its source streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProjectionStatus {
    pub projection: String,
    pub streams: Vec<StreamStatus>,
}

/// Every projection's position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProjectionsStatus {
    pub projections: Vec<ProjectionStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_tagged_like_command_replies() {
        let found: QueryReply<u32> = QueryReply::Found(3);
        assert_eq!(serde_json::to_string(&found).unwrap(), r#"{"found":3}"#);
        let none: QueryReply<u32> = QueryReply::NotFound;
        assert_eq!(serde_json::to_string(&none).unwrap(), r#""not_found""#);
        let bad: QueryReply<u32> = QueryReply::invalid_field("cursor", "bad");
        assert_eq!(
            serde_json::to_value(&bad).unwrap(),
            serde_json::json!({"rejected": {"code": "invalid_request", "message": "bad", "field": "cursor"}})
        );
    }

    #[test]
    fn requests_refuse_unknown_fields() {
        assert!(serde_json::from_str::<OrdersRequest>(r#"{"colour":"red"}"#).is_err());
        assert!(serde_json::from_str::<StatusRequest>(r#"{"wait":{}}"#).is_err());
        let request: OrdersRequest =
            serde_json::from_str(r#"{"status":"shipped","limit":5}"#).unwrap();
        assert_eq!(request.status, Some(OrderState::Shipped));
        assert_eq!(request.limit, Some(5));
    }

    #[test]
    fn order_states_round_trip_by_name() {
        for state in OrderState::ALL {
            assert_eq!(OrderState::parse(state.as_str()), Some(state));
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
    }
}
