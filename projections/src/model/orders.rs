//! The order summary and its saga timeline, from all four contexts.
//!
//! One row per order in `orders`, its lines in `order_lines`, and one `timeline` row per event
//! of any context about the order (the order itself, its allocation, its payment, its
//! shipment: all keyed by the order id). Every column of `orders` is written by the events of
//! one aggregate only (status and reasons by the order, `stock_status` by the allocation,
//! payment columns by the payment, shipment columns by the shipment), each aggregate's events
//! arrive in order, and the rest is commutative (`captured_minor`, `refunded_minor` are sums,
//! `updated_at` a maximum): so the row is the same whatever order the four streams interleave
//! in. A row may exist before its `OrderPlaced` arrives (a payment read first); queries hide it
//! until `placed_at` is set. Timeline entries are ordered when read.
//!
//! A batch is folded in memory into one change per order, then written with three statements
//! (orders, lines, timeline), each over arrays.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use events::inventory::{AllocationEvent, ReleaseReason};
use events::ordering::{OrderEvent, RejectionReason};
use events::payments::PaymentEvent;
use events::shipping::ShipmentEvent;
use sqlx::PgConnection;

use crate::source::{Fact, SourceEvent};

/// What a batch changes in one order's row. `None` leaves a column as it is.
#[derive(Debug, Default)]
struct Change {
    customer_id: Option<String>,
    status: Option<&'static str>,
    rejection_reason: Option<&'static str>,
    cancellation_reason: Option<String>,
    total_minor: Option<i64>,
    currency: Option<String>,
    placed_at: Option<DateTime<Utc>>,
    stock_status: Option<&'static str>,
    payment_status: Option<&'static str>,
    captured_minor: i64,
    refunded_minor: i64,
    shipment_status: Option<&'static str>,
    tracking_number: Option<String>,
    updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
struct Columns {
    order_id: Vec<String>,
    customer_id: Vec<Option<String>>,
    status: Vec<Option<&'static str>>,
    rejection_reason: Vec<Option<&'static str>>,
    cancellation_reason: Vec<Option<String>>,
    total_minor: Vec<Option<i64>>,
    currency: Vec<Option<String>>,
    placed_at: Vec<Option<DateTime<Utc>>>,
    stock_status: Vec<Option<&'static str>>,
    payment_status: Vec<Option<&'static str>>,
    captured_minor: Vec<i64>,
    refunded_minor: Vec<i64>,
    shipment_status: Vec<Option<&'static str>>,
    tracking_number: Vec<Option<String>>,
    updated_at: Vec<DateTime<Utc>>,
}

#[derive(Debug, Default)]
struct Lines {
    order_id: Vec<String>,
    line_no: Vec<i32>,
    sku: Vec<String>,
    quantity: Vec<i64>,
    unit_price_minor: Vec<i64>,
    currency: Vec<String>,
}

#[derive(Debug, Default)]
struct Timeline {
    order_id: Vec<String>,
    aggregate_type: Vec<String>,
    sequence: Vec<i64>,
    context: Vec<&'static str>,
    event_type: Vec<String>,
    occurred_at: Vec<DateTime<Utc>>,
    detail: Vec<String>,
}

/// Applies `events` (new ones only, each aggregate's in order) to the orders model.
pub(crate) async fn apply(conn: &mut PgConnection, events: &[&SourceEvent]) -> sqlx::Result<()> {
    let mut changes: BTreeMap<String, Change> = BTreeMap::new();
    let mut lines = Lines::default();
    let mut timeline = Timeline::default();
    for event in events {
        let Some((order_id, detail)) = fold(event, &mut changes, &mut lines) else {
            continue;
        };
        timeline.order_id.push(order_id);
        timeline.aggregate_type.push(event.aggregate_type.clone());
        timeline.sequence.push(event.sequence);
        timeline.context.push(event.context.name());
        timeline.event_type.push(event.event_type.clone());
        timeline.occurred_at.push(event.occurred_at);
        timeline.detail.push(detail);
    }
    if changes.is_empty() {
        return Ok(());
    }

    let mut c = Columns::default();
    for (order_id, change) in changes {
        c.order_id.push(order_id);
        c.customer_id.push(change.customer_id);
        c.status.push(change.status);
        c.rejection_reason.push(change.rejection_reason);
        c.cancellation_reason.push(change.cancellation_reason);
        c.total_minor.push(change.total_minor);
        c.currency.push(change.currency);
        c.placed_at.push(change.placed_at);
        c.stock_status.push(change.stock_status);
        c.payment_status.push(change.payment_status);
        c.captured_minor.push(change.captured_minor);
        c.refunded_minor.push(change.refunded_minor);
        c.shipment_status.push(change.shipment_status);
        c.tracking_number.push(change.tracking_number);
        c.updated_at.push(change.updated_at.unwrap_or_default());
    }
    sqlx::query(
        "INSERT INTO orders AS o (order_id, customer_id, status, rejection_reason, \
             cancellation_reason, total_minor, currency, placed_at, stock_status, payment_status, \
             captured_minor, refunded_minor, shipment_status, tracking_number, updated_at) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::bigint[], $7::text[], $8::timestamptz[], $9::text[], $10::text[], $11::bigint[], \
             $12::bigint[], $13::text[], $14::text[], $15::timestamptz[]) \
         ON CONFLICT (order_id) DO UPDATE SET \
             customer_id = COALESCE(EXCLUDED.customer_id, o.customer_id), \
             status = COALESCE(EXCLUDED.status, o.status), \
             rejection_reason = COALESCE(EXCLUDED.rejection_reason, o.rejection_reason), \
             cancellation_reason = COALESCE(EXCLUDED.cancellation_reason, o.cancellation_reason), \
             total_minor = COALESCE(EXCLUDED.total_minor, o.total_minor), \
             currency = COALESCE(EXCLUDED.currency, o.currency), \
             placed_at = COALESCE(EXCLUDED.placed_at, o.placed_at), \
             stock_status = COALESCE(EXCLUDED.stock_status, o.stock_status), \
             payment_status = COALESCE(EXCLUDED.payment_status, o.payment_status), \
             captured_minor = o.captured_minor + EXCLUDED.captured_minor, \
             refunded_minor = o.refunded_minor + EXCLUDED.refunded_minor, \
             shipment_status = COALESCE(EXCLUDED.shipment_status, o.shipment_status), \
             tracking_number = COALESCE(EXCLUDED.tracking_number, o.tracking_number), \
             updated_at = GREATEST(EXCLUDED.updated_at, o.updated_at)",
    )
    .bind(&c.order_id)
    .bind(&c.customer_id)
    .bind(&c.status)
    .bind(&c.rejection_reason)
    .bind(&c.cancellation_reason)
    .bind(&c.total_minor)
    .bind(&c.currency)
    .bind(&c.placed_at)
    .bind(&c.stock_status)
    .bind(&c.payment_status)
    .bind(&c.captured_minor)
    .bind(&c.refunded_minor)
    .bind(&c.shipment_status)
    .bind(&c.tracking_number)
    .bind(&c.updated_at)
    .execute(&mut *conn)
    .await?;

    if !lines.order_id.is_empty() {
        sqlx::query(
            "INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price_minor, currency) \
             SELECT * FROM unnest($1::text[], $2::integer[], $3::text[], $4::bigint[], \
                 $5::bigint[], $6::text[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&lines.order_id)
        .bind(&lines.line_no)
        .bind(&lines.sku)
        .bind(&lines.quantity)
        .bind(&lines.unit_price_minor)
        .bind(&lines.currency)
        .execute(&mut *conn)
        .await?;
    }

    sqlx::query(
        "INSERT INTO timeline (order_id, aggregate_type, sequence, context, event_type, \
             occurred_at, detail) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], \
             $6::timestamptz[], $7::text[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&timeline.order_id)
    .bind(&timeline.aggregate_type)
    .bind(&timeline.sequence)
    .bind(&timeline.context)
    .bind(&timeline.event_type)
    .bind(&timeline.occurred_at)
    .bind(&timeline.detail)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Folds one event into its order's change; returns the order id and the timeline detail, or
/// `None` for an event that is not about an order.
fn fold(
    event: &SourceEvent,
    changes: &mut BTreeMap<String, Change>,
    lines: &mut Lines,
) -> Option<(String, String)> {
    let order_id = match &event.fact {
        Fact::Order(e) => order_id_of_order(e),
        Fact::Allocation(e) => match e {
            AllocationEvent::StockReserved(e) => e.order_id,
            AllocationEvent::StockRejected(e) => e.order_id,
            AllocationEvent::StockReleased(e) => e.order_id,
            AllocationEvent::StockCommitted(e) => e.order_id,
        },
        Fact::Payment(e) => match e {
            PaymentEvent::PaymentRequested(e) => e.order_id,
            PaymentEvent::PaymentCaptured(e) => e.order_id,
            PaymentEvent::PaymentDeclined(e) => e.order_id,
            PaymentEvent::PaymentRefunded(e) => e.order_id,
            PaymentEvent::PaymentVoided(e) => e.order_id,
        },
        Fact::Shipment(e) => match e {
            ShipmentEvent::ShipmentScheduled(e) => e.order_id,
            ShipmentEvent::ShipmentDispatched(e) => e.order_id,
            ShipmentEvent::ShipmentDelivered(e) => e.order_id,
            ShipmentEvent::ShipmentCancelled(e) => e.order_id,
        },
        Fact::Product(_) | Fact::Stock(_) => return None,
    }
    .to_string();
    let change = changes.entry(order_id.clone()).or_default();
    change.updated_at = change.updated_at.max(Some(event.occurred_at));
    let detail = match &event.fact {
        Fact::Order(e) => match e {
            OrderEvent::OrderPlaced(e) => {
                change.customer_id = Some(e.customer_id.to_string());
                change.status = Some("placed");
                change.total_minor = Some(e.total.amount_minor);
                change.currency = Some(e.total.currency.to_string());
                change.placed_at = Some(event.occurred_at);
                for (n, line) in e.lines.iter().enumerate() {
                    lines.order_id.push(order_id.clone());
                    lines.line_no.push(i32::try_from(n + 1).unwrap_or(i32::MAX));
                    lines.sku.push(line.sku.to_string());
                    lines.quantity.push(i64::from(line.quantity.get()));
                    lines.unit_price_minor.push(line.unit_price.amount_minor);
                    lines.currency.push(line.unit_price.currency.to_string());
                }
                format!("placed: {} line(s), {}", e.lines.len(), e.total)
            }
            OrderEvent::OrderConfirmed(_) => {
                change.status = Some("confirmed");
                "confirmed".to_owned()
            }
            OrderEvent::OrderRejected(e) => {
                change.status = Some("rejected");
                change.rejection_reason = Some(rejection_reason(&e.reason));
                format!("rejected: {}", e.detail)
            }
            OrderEvent::OrderCancelled(e) => {
                change.status = Some("cancelled");
                change.cancellation_reason = e.reason.clone();
                match &e.reason {
                    Some(reason) => format!("cancelled: {reason}"),
                    None => "cancelled".to_owned(),
                }
            }
            OrderEvent::OrderShipped(_) => {
                change.status = Some("shipped");
                "shipped".to_owned()
            }
            OrderEvent::OrderDelivered(_) => {
                change.status = Some("delivered");
                "delivered".to_owned()
            }
        },
        Fact::Allocation(e) => match e {
            AllocationEvent::StockReserved(e) => {
                change.stock_status = Some("reserved");
                format!("stock reserved for {} line(s)", e.lines.len())
            }
            AllocationEvent::StockRejected(e) => {
                change.stock_status = Some("rejected");
                let short: Vec<String> = e
                    .shortages
                    .iter()
                    .map(|s| {
                        format!(
                            "{} ({} requested, {} available)",
                            s.sku,
                            s.requested.get(),
                            s.available
                        )
                    })
                    .collect();
                format!("stock short: {}", short.join(", "))
            }
            AllocationEvent::StockReleased(e) => {
                change.stock_status = Some("released");
                let reason = match e.reason {
                    ReleaseReason::OrderCancelled => "order cancelled",
                    ReleaseReason::PaymentDeclined => "payment declined",
                    ReleaseReason::Expired => "expired",
                };
                format!("stock released: {reason}")
            }
            AllocationEvent::StockCommitted(_) => {
                change.stock_status = Some("committed");
                "stock committed".to_owned()
            }
        },
        Fact::Payment(e) => match e {
            PaymentEvent::PaymentRequested(e) => {
                change.payment_status = Some("requested");
                format!("payment of {} requested", e.amount)
            }
            PaymentEvent::PaymentCaptured(e) => {
                change.payment_status = Some("captured");
                change.captured_minor += e.amount.amount_minor;
                format!("{} captured", e.amount)
            }
            PaymentEvent::PaymentDeclined(e) => {
                change.payment_status = Some("declined");
                format!("payment declined ({}): {}", e.code, e.detail)
            }
            PaymentEvent::PaymentRefunded(e) => {
                change.payment_status = Some("refunded");
                change.refunded_minor += e.amount.amount_minor;
                format!("{} refunded", e.amount)
            }
            PaymentEvent::PaymentVoided(_) => {
                change.payment_status = Some("voided");
                "payment voided".to_owned()
            }
        },
        Fact::Shipment(e) => match e {
            ShipmentEvent::ShipmentScheduled(e) => {
                change.shipment_status = Some("scheduled");
                format!(
                    "shipment scheduled to {}, {}",
                    e.address.city, e.address.country
                )
            }
            ShipmentEvent::ShipmentDispatched(e) => {
                change.shipment_status = Some("dispatched");
                change.tracking_number = e.tracking_number.clone();
                match &e.tracking_number {
                    Some(tracking) => format!("dispatched, tracking {tracking}"),
                    None => "dispatched".to_owned(),
                }
            }
            ShipmentEvent::ShipmentDelivered(_) => {
                change.shipment_status = Some("delivered");
                "delivered to the customer".to_owned()
            }
            ShipmentEvent::ShipmentCancelled(_) => {
                change.shipment_status = Some("cancelled");
                "shipment cancelled".to_owned()
            }
        },
        Fact::Product(_) | Fact::Stock(_) => return None,
    };
    Some((order_id, detail))
}

fn order_id_of_order(event: &OrderEvent) -> events::values::OrderId {
    match event {
        OrderEvent::OrderPlaced(e) => e.order_id,
        OrderEvent::OrderConfirmed(e) => e.order_id,
        OrderEvent::OrderRejected(e) => e.order_id,
        OrderEvent::OrderCancelled(e) => e.order_id,
        OrderEvent::OrderShipped(e) => e.order_id,
        OrderEvent::OrderDelivered(e) => e.order_id,
    }
}

/// The wire name of a rejection reason (as in the event's JSON).
fn rejection_reason(reason: &RejectionReason) -> &'static str {
    match reason {
        RejectionReason::OutOfStock => "out_of_stock",
        RejectionReason::PaymentDeclined => "payment_declined",
        RejectionReason::PaymentTimedOut => "payment_timed_out",
    }
}
