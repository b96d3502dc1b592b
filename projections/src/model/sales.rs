//! Sales per day (UTC) and currency, from ordering's `order` aggregate.
//!
//! An order counts on the day its `OrderConfirmed` was recorded: one more order confirmed, its
//! total added to the revenue. A confirmed order that is cancelled counts on the day of its
//! `OrderCancelled`: one more cancellation, its total added to what was cancelled; net revenue
//! is revenue minus cancelled. An order cancelled before confirmation never counted.
//!
//! The order's total comes from its `OrderPlaced`; the projection keeps what it needs in its
//! own `order_totals` table (total, currency, the days it was confirmed and cancelled), never
//! reading another projection's tables, which are rebuilt on their own schedule. Everything
//! comes from one aggregate per order, read in order, so no interleaving can change the sums.
//!
//! A batch loads the `order_totals` rows of its orders (one statement), folds its events in
//! memory, and writes the changed rows and the per-day sums (two statements).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::NaiveDate;
use events::ordering::OrderEvent;
use sqlx::PgConnection;

use crate::source::{Fact, SourceEvent};

#[derive(Debug, Clone, PartialEq)]
struct Totals {
    total_minor: i64,
    currency: String,
    confirmed_on: Option<NaiveDate>,
    cancelled_on: Option<NaiveDate>,
}

#[derive(Debug, Default)]
struct Day {
    orders_confirmed: i64,
    revenue_minor: i64,
    orders_cancelled: i64,
    cancelled_minor: i64,
}

/// Applies `events` (new ones only, each aggregate's in order) to the sales model.
pub(crate) async fn apply(conn: &mut PgConnection, events: &[&SourceEvent]) -> sqlx::Result<()> {
    let order_events: Vec<(&SourceEvent, &OrderEvent)> = events
        .iter()
        .copied()
        .filter_map(|event| match &event.fact {
            Fact::Order(order) => Some((event, order)),
            _ => None,
        })
        .collect();
    if order_events.is_empty() {
        return Ok(());
    }
    let ids: BTreeSet<&str> = order_events
        .iter()
        .map(|(e, _)| e.aggregate_id.as_str())
        .collect();
    let ids: Vec<&str> = ids.into_iter().collect();
    type Row = (String, i64, String, Option<NaiveDate>, Option<NaiveDate>);
    // A lookup per order: `order_id = ANY($1)` may be planned as a scan of the whole table
    // comparing each row with every id, which grows with the table.
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT t.order_id, t.total_minor, t.currency, t.confirmed_on, t.cancelled_on \
         FROM unnest($1::text[]) AS k(id) \
         CROSS JOIN LATERAL (SELECT * FROM order_totals WHERE order_id = k.id) t",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut known: HashMap<String, Totals> = rows
        .into_iter()
        .map(|(id, total_minor, currency, confirmed_on, cancelled_on)| {
            let totals = Totals {
                total_minor,
                currency,
                confirmed_on,
                cancelled_on,
            };
            (id, totals)
        })
        .collect();
    let before = known.clone();

    let mut days: BTreeMap<(NaiveDate, String), Day> = BTreeMap::new();
    for (event, order) in order_events {
        let day = event.occurred_at.date_naive();
        let id = &event.aggregate_id;
        match order {
            OrderEvent::OrderPlaced(placed) => {
                known.entry(id.clone()).or_insert_with(|| Totals {
                    total_minor: placed.total.amount_minor,
                    currency: placed.total.currency.to_string(),
                    confirmed_on: None,
                    cancelled_on: None,
                });
            }
            OrderEvent::OrderConfirmed(_) => {
                // Without its OrderPlaced (a model rebuilt from a later point) the total is
                // unknown, and the order is not counted.
                if let Some(totals) = known.get_mut(id)
                    && totals.confirmed_on.is_none()
                {
                    totals.confirmed_on = Some(day);
                    let sums = days.entry((day, totals.currency.clone())).or_default();
                    sums.orders_confirmed += 1;
                    sums.revenue_minor += totals.total_minor;
                }
            }
            OrderEvent::OrderCancelled(_) => {
                if let Some(totals) = known.get_mut(id)
                    && totals.confirmed_on.is_some()
                    && totals.cancelled_on.is_none()
                {
                    totals.cancelled_on = Some(day);
                    let sums = days.entry((day, totals.currency.clone())).or_default();
                    sums.orders_cancelled += 1;
                    sums.cancelled_minor += totals.total_minor;
                }
            }
            OrderEvent::OrderRejected(_)
            | OrderEvent::OrderShipped(_)
            | OrderEvent::OrderDelivered(_) => {}
        }
    }

    let mut order_id = Vec::new();
    let mut total_minor = Vec::new();
    let mut currency = Vec::new();
    let mut confirmed_on = Vec::new();
    let mut cancelled_on = Vec::new();
    let mut changed: Vec<(String, Totals)> = known
        .into_iter()
        .filter(|(id, totals)| before.get(id) != Some(totals))
        .collect();
    changed.sort_by(|a, b| a.0.cmp(&b.0));
    for (id, totals) in changed {
        order_id.push(id);
        total_minor.push(totals.total_minor);
        currency.push(totals.currency);
        confirmed_on.push(totals.confirmed_on);
        cancelled_on.push(totals.cancelled_on);
    }
    if !order_id.is_empty() {
        sqlx::query(
            "INSERT INTO order_totals AS t (order_id, total_minor, currency, confirmed_on, \
                 cancelled_on) \
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::date[], $5::date[]) \
             ON CONFLICT (order_id) DO UPDATE SET confirmed_on = EXCLUDED.confirmed_on, \
                 cancelled_on = EXCLUDED.cancelled_on",
        )
        .bind(&order_id)
        .bind(&total_minor)
        .bind(&currency)
        .bind(&confirmed_on)
        .bind(&cancelled_on)
        .execute(&mut *conn)
        .await?;
    }

    if !days.is_empty() {
        let mut day = Vec::with_capacity(days.len());
        let mut day_currency = Vec::with_capacity(days.len());
        let mut orders_confirmed = Vec::with_capacity(days.len());
        let mut revenue_minor = Vec::with_capacity(days.len());
        let mut orders_cancelled = Vec::with_capacity(days.len());
        let mut cancelled_minor = Vec::with_capacity(days.len());
        for ((d, c), sums) in days {
            day.push(d);
            day_currency.push(c);
            orders_confirmed.push(sums.orders_confirmed);
            revenue_minor.push(sums.revenue_minor);
            orders_cancelled.push(sums.orders_cancelled);
            cancelled_minor.push(sums.cancelled_minor);
        }
        sqlx::query(
            "INSERT INTO daily_sales AS s (day, currency, orders_confirmed, revenue_minor, \
                 orders_cancelled, cancelled_minor) \
             SELECT * FROM unnest($1::date[], $2::text[], $3::bigint[], $4::bigint[], \
                 $5::bigint[], $6::bigint[]) \
             ON CONFLICT (day, currency) DO UPDATE SET \
                 orders_confirmed = s.orders_confirmed + EXCLUDED.orders_confirmed, \
                 revenue_minor = s.revenue_minor + EXCLUDED.revenue_minor, \
                 orders_cancelled = s.orders_cancelled + EXCLUDED.orders_cancelled, \
                 cancelled_minor = s.cancelled_minor + EXCLUDED.cancelled_minor",
        )
        .bind(&day)
        .bind(&day_currency)
        .bind(&orders_confirmed)
        .bind(&revenue_minor)
        .bind(&orders_cancelled)
        .bind(&cancelled_minor)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
