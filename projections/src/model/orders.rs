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
//! (orders, lines, timeline), each over arrays (unnested in the select list, which PostgreSQL
//! streams row by row; `FROM unnest(...)` of several arrays is a function scan that first
//! copies every row into a tuplestore).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use events::inventory::{AllocationEvent, ReleaseReason};
use events::ordering::{OrderEvent, RejectionReason};
use events::payments::PaymentEvent;
use events::shipping::ShipmentEvent;
use sqlx::{Connection as _, PgConnection};

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
struct Timeline<'a> {
    order_id: Vec<String>,
    aggregate_type: Vec<&'a str>,
    sequence: Vec<i64>,
    context: Vec<&'static str>,
    event_type: Vec<&'a str>,
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
        timeline.aggregate_type.push(&event.aggregate_type);
        timeline.sequence.push(event.sequence);
        timeline.context.push(event.context.name());
        timeline.event_type.push(&event.event_type);
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
         SELECT unnest($1::text[]), unnest($2::text[]), unnest($3::text[]), unnest($4::text[]), \
             unnest($5::text[]), unnest($6::bigint[]), unnest($7::text[]), \
             unnest($8::timestamptz[]), unnest($9::text[]), unnest($10::text[]), \
             unnest($11::bigint[]), unnest($12::bigint[]), unnest($13::text[]), \
             unnest($14::text[]), unnest($15::timestamptz[]) \
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

    // New lines and timeline entries conflict with existing rows only in corner cases (two
    // aggregates of one type about the same order, with the same sequence): they are inserted
    // as they are, which spares PostgreSQL a look-up per row, and only if that fails on a key
    // are they inserted again, skipping the rows already there, as they would have been.
    let mut savepoint = conn.begin().await?;
    let inserted = async {
        insert_lines(&mut savepoint, &lines, false).await?;
        insert_timeline(&mut savepoint, &timeline, false).await
    }
    .await;
    match inserted {
        Ok(()) => savepoint.commit().await?,
        Err(e)
            if e.as_database_error()
                .is_some_and(|e| e.is_unique_violation()) =>
        {
            savepoint.rollback().await?;
            insert_lines(conn, &lines, true).await?;
            insert_timeline(conn, &timeline, true).await?;
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Inserts `lines`; `existing` skips those whose key is taken, instead of failing.
async fn insert_lines(conn: &mut PgConnection, lines: &Lines, existing: bool) -> sqlx::Result<()> {
    if lines.order_id.is_empty() {
        return Ok(());
    }
    macro_rules! insert {
        () => {
            "INSERT INTO order_lines \
                 (order_id, line_no, sku, quantity, unit_price_minor, currency) \
             SELECT unnest($1::text[]), unnest($2::integer[]), unnest($3::text[]), \
                 unnest($4::bigint[]), unnest($5::bigint[]), unnest($6::text[])"
        };
    }
    let sql = if existing {
        concat!(insert!(), " ON CONFLICT DO NOTHING")
    } else {
        insert!()
    };
    sqlx::query(sql)
        .bind(&lines.order_id)
        .bind(&lines.line_no)
        .bind(&lines.sku)
        .bind(&lines.quantity)
        .bind(&lines.unit_price_minor)
        .bind(&lines.currency)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Inserts `timeline`; `existing` skips the entries whose key is taken, instead of failing.
async fn insert_timeline(
    conn: &mut PgConnection,
    timeline: &Timeline<'_>,
    existing: bool,
) -> sqlx::Result<()> {
    if timeline.order_id.is_empty() {
        return Ok(());
    }
    macro_rules! insert {
        () => {
            "INSERT INTO timeline \
                 (order_id, aggregate_type, sequence, context, event_type, occurred_at, detail) \
             SELECT unnest($1::text[]), unnest($2::text[]), unnest($3::bigint[]), \
                 unnest($4::text[]), unnest($5::text[]), unnest($6::timestamptz[]), \
                 unnest($7::text[])"
        };
    }
    let sql = if existing {
        concat!(insert!(), " ON CONFLICT DO NOTHING")
    } else {
        insert!()
    };
    sqlx::query(sql)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::TimeZone;
    use events::payments::{PaymentCaptured, PaymentRequested};
    use events::values::{Money, OrderId};
    use events::{BoundedContext, Event as _};
    use sqlx::Connection as _;

    use super::*;
    use crate::projection::{Layout, Projection, create_schema_with};

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 14, 9, minute, 0).unwrap()
    }

    fn payment(payment_id: &str, sequence: i64, minute: u32, event: PaymentEvent) -> SourceEvent {
        SourceEvent {
            context: BoundedContext::Payments,
            aggregate_type: "payment".to_owned(),
            aggregate_id: payment_id.to_owned(),
            sequence,
            position: sequence,
            occurred_at: at(minute),
            event_type: event.event_type().to_owned(),
            fact: Fact::Payment(event),
        }
    }

    /// Two payments of one order share timeline keys (order, type, sequence): the first entry
    /// stays, whether the second comes in a later batch or in the same one, and the batch still
    /// applies everything else.
    #[tokio::test]
    async fn timeline_entries_whose_key_is_taken_are_skipped_and_the_batch_applies() {
        let db = harness::TestDatabase::create().await.unwrap();
        let pool = db.pool(1).await.unwrap();
        let mut conn = pool.acquire().await.unwrap();
        create_schema_with(&mut conn, Projection::Orders, "m", Layout::Bulk)
            .await
            .unwrap();
        sqlx::query("SET search_path = m")
            .execute(&mut *conn)
            .await
            .unwrap();
        let order_id = OrderId::new();
        let eur = "EUR".parse().unwrap();
        let requested = |token: &str| {
            PaymentEvent::from(PaymentRequested {
                order_id,
                amount: Money::new(1_000, eur),
                payment_token: token.to_owned(),
            })
        };
        let captured = PaymentEvent::from(PaymentCaptured {
            order_id,
            amount: Money::new(1_000, eur),
            provider_reference: "ref-2".to_owned(),
        });
        let first = payment("pay-1", 1, 1, requested("tok_first"));
        let second = payment("pay-2", 1, 2, requested("tok_second"));
        let capture = payment("pay-2", 2, 3, captured);
        let third = payment("pay-3", 1, 4, requested("tok_third"));

        let mut tx = conn.begin().await.unwrap();
        apply(&mut tx, &[&first]).await.unwrap();
        tx.commit().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        apply(&mut tx, &[&second, &capture, &third]).await.unwrap();
        tx.commit().await.unwrap();

        let timeline: Vec<(i64, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT sequence, event_type, occurred_at FROM timeline ORDER BY sequence",
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        assert_eq!(
            timeline,
            [
                (1, "PaymentRequested".to_owned(), at(1)),
                (2, "PaymentCaptured".to_owned(), at(3))
            ],
            "the first payment's request stays; the capture is added"
        );
        let (status, captured): (String, i64) =
            sqlx::query_as("SELECT payment_status, captured_minor FROM orders")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        assert_eq!((status.as_str(), captured), ("requested", 1_000));
    }
}
