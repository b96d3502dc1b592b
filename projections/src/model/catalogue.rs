//! The catalogue with stock levels per SKU, from inventory's `product` and `stock` aggregates.
//!
//! `name`, `price_minor` and `currency` are written by the product's events only (the last
//! one wins; they arrive in order). `on_hand` and `reserved` are sums of the stock item's
//! events, following the stock aggregate: a delivery adds to what is on hand, a reservation
//! sets units aside (still on hand), a release puts them back, a commitment takes them out of
//! the warehouse with the shipment. So `available = on_hand - reserved` is what the aggregate
//! calls on hand (free to reserve), and `on_hand` is received minus committed. A SKU with
//! stock but no `ProductDefined` yet has a row the queries hide.
//!
//! A batch is folded into one change per SKU and written with one statement.

use std::collections::BTreeMap;

use events::inventory::{ProductEvent, StockEvent};
use sqlx::PgConnection;

use crate::source::{Fact, SourceEvent};

#[derive(Debug, Default)]
struct Change {
    name: Option<String>,
    price_minor: Option<i64>,
    currency: Option<String>,
    on_hand: i64,
    reserved: i64,
}

/// Applies `events` (new ones only, each aggregate's in order) to the catalogue.
pub(crate) async fn apply(conn: &mut PgConnection, events: &[&SourceEvent]) -> sqlx::Result<()> {
    let mut changes: BTreeMap<String, Change> = BTreeMap::new();
    for event in events {
        match &event.fact {
            Fact::Product(ProductEvent::ProductDefined(e)) => {
                let change = changes.entry(e.sku.to_string()).or_default();
                change.name = Some(e.name.clone());
                change.price_minor = Some(e.price.amount_minor);
                change.currency = Some(e.price.currency.to_string());
            }
            Fact::Product(ProductEvent::ProductRepriced(e)) => {
                let change = changes.entry(e.sku.to_string()).or_default();
                change.price_minor = Some(e.price.amount_minor);
                change.currency = Some(e.price.currency.to_string());
            }
            Fact::Stock(StockEvent::StockReceived(e)) => {
                changes.entry(e.sku.to_string()).or_default().on_hand +=
                    i64::from(e.quantity.get());
            }
            Fact::Stock(StockEvent::StockItemReserved(e)) => {
                changes.entry(e.sku.to_string()).or_default().reserved +=
                    i64::from(e.quantity.get());
            }
            Fact::Stock(StockEvent::StockItemReleased(e)) => {
                changes.entry(e.sku.to_string()).or_default().reserved -=
                    i64::from(e.quantity.get());
            }
            Fact::Stock(StockEvent::StockItemCommitted(e)) => {
                let change = changes.entry(e.sku.to_string()).or_default();
                change.reserved -= i64::from(e.quantity.get());
                change.on_hand -= i64::from(e.quantity.get());
            }
            _ => {}
        }
    }
    if changes.is_empty() {
        return Ok(());
    }
    let mut sku = Vec::with_capacity(changes.len());
    let mut name = Vec::with_capacity(changes.len());
    let mut price_minor = Vec::with_capacity(changes.len());
    let mut currency = Vec::with_capacity(changes.len());
    let mut on_hand = Vec::with_capacity(changes.len());
    let mut reserved = Vec::with_capacity(changes.len());
    for (s, change) in changes {
        sku.push(s);
        name.push(change.name);
        price_minor.push(change.price_minor);
        currency.push(change.currency);
        on_hand.push(change.on_hand);
        reserved.push(change.reserved);
    }
    sqlx::query(
        "INSERT INTO products AS p (sku, name, price_minor, currency, on_hand, reserved) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], \
             $6::bigint[]) \
         ON CONFLICT (sku) DO UPDATE SET \
             name = COALESCE(EXCLUDED.name, p.name), \
             price_minor = COALESCE(EXCLUDED.price_minor, p.price_minor), \
             currency = COALESCE(EXCLUDED.currency, p.currency), \
             on_hand = p.on_hand + EXCLUDED.on_hand, \
             reserved = p.reserved + EXCLUDED.reserved",
    )
    .bind(&sku)
    .bind(&name)
    .bind(&price_minor)
    .bind(&currency)
    .bind(&on_hand)
    .bind(&reserved)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
