//! What must hold when a system has settled, whatever the scenario: read from the four event
//! stores, each context's facts checked against the others'.
//!
//! - **Orders**: every order in ordering's store is one the scenario placed, in the status the
//!   scenario expects.
//! - **Each order, across the contexts**: its allocation, payment and shipment agree with its
//!   status (a confirmed order holds its stock and its money and has a shipment scheduled; a
//!   rejected or cancelled one holds neither; a shipped one has committed its stock), and no
//!   payment deadline is left behind in ordering's store (every order has ended its wait).
//! - **Stock is conserved per SKU**: what was received (the `StockReceived` events) is on hand,
//!   reserved or committed; what the stock items hold as reserved and committed is exactly
//!   what the reserved and committed allocations say.
//! - **Money is conserved**: captured minus refunded, over every payment, equals the totals of
//!   the orders that are confirmed, shipped or delivered.
//! - **Nothing was dead-lettered**: no message of the saga was given up on.
//! - **Every published message keeps the contract**: its payload validates against the
//!   committed JSON Schema (`events/schemas/`) its headers name, read as another team would
//!   read it, without the Rust types; its subject agrees with its envelope headers.

use std::collections::{BTreeMap, HashMap};

use events::inventory::StockEvent;
use events::payments::PaymentEvent;
use events::values::{Currency, OrderId, Sku};
use events::{BoundedContext, headers};
use inventory::AllocationStatus;
use ordering::OrderStatus;
use payments::PaymentStatus;
use shipping::ShipmentStatus;

use crate::system::System;

/// Settles the system, then checks every invariant; `expected` names every order the
/// scenario placed and the status it must end in.
pub async fn check(system: &System, expected: &HashMap<OrderId, OrderStatus>) {
    system.settle().await;
    orders_are_as_expected(system, expected).await;
    for (&order_id, &status) in expected {
        contexts_agree(system, order_id, status).await;
    }
    stock_is_conserved(system).await;
    money_is_conserved(system).await;
    let dead_letters = system.dead_letters().await;
    assert!(
        dead_letters.is_empty(),
        "messages were dead-lettered: {dead_letters:#?}"
    );
    published_messages_keep_the_contract(system).await;
}

/// Reads every stream and checks each message against the schema file its headers name.
async fn published_messages_keep_the_contract(system: &System) {
    let schemas = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/schemas");
    let mut validators = HashMap::new();
    for context in BoundedContext::ALL {
        for (subject, map, payload) in system.published(context).await {
            let header = |name: &str| {
                map.get(name)
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| panic!("{subject}: header {name} is missing"))
            };
            let event_type = header(headers::EVENT_TYPE);
            let version = header(headers::SCHEMA_VERSION);
            let expected_subject = format!(
                "{context}.{}.{}.{event_type}",
                header(headers::AGGREGATE_TYPE),
                header(headers::AGGREGATE_ID)
            );
            assert_eq!(subject, expected_subject, "subject and envelope disagree");
            for name in [
                headers::MSG_ID,
                headers::EVENT_ID,
                headers::SEQUENCE,
                headers::POSITION,
                headers::OCCURRED_AT,
            ] {
                header(name);
            }
            let file = schemas
                .join(context.name())
                .join(format!("{event_type}.v{version}.json"));
            let validator = validators.entry(file.clone()).or_insert_with(|| {
                let text = std::fs::read_to_string(&file)
                    .unwrap_or_else(|e| panic!("{subject}: no schema {}: {e}", file.display()));
                let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
                jsonschema::draft202012::new(&schema).unwrap()
            });
            let payload: serde_json::Value = serde_json::from_slice(&payload)
                .unwrap_or_else(|e| panic!("{subject}: payload is not JSON: {e}"));
            let errors: Vec<String> = validator
                .iter_errors(&payload)
                .map(|e| format!("{e} at {}", e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{subject} does not match {}: {errors:?}",
                file.display()
            );
        }
    }
}

async fn orders_are_as_expected(system: &System, expected: &HashMap<OrderId, OrderStatus>) {
    let mut stored = system
        .aggregate_ids(BoundedContext::Ordering, "order")
        .await;
    let mut placed: Vec<String> = expected.keys().map(ToString::to_string).collect();
    stored.sort();
    placed.sort();
    assert_eq!(
        stored, placed,
        "ordering holds other orders than the scenario placed"
    );
    for (&order_id, &status) in expected {
        assert_eq!(
            system.order_status(order_id).await,
            Some(status),
            "order {order_id}"
        );
    }
}

/// The order's allocation, payment and shipment agree with its status.
async fn contexts_agree(system: &System, order_id: OrderId, status: OrderStatus) {
    let allocation = system.allocation(order_id).await.status();
    let payment = system.payment(order_id).await.status();
    let shipment = system.shipment(order_id).await.status();
    let facts = format!(
        "order {order_id} is {status:?}, allocation {allocation:?}, payment {payment:?}, \
         shipment {shipment:?}"
    );
    use AllocationStatus as A;
    use PaymentStatus as P;
    use ShipmentStatus as S;
    let agree = match status {
        OrderStatus::Confirmed => {
            allocation == A::Reserved && payment == P::Captured && shipment == S::Scheduled
        }
        OrderStatus::Shipped => {
            allocation == A::Committed && payment == P::Captured && shipment == S::Dispatched
        }
        OrderStatus::Delivered => {
            allocation == A::Committed && payment == P::Captured && shipment == S::Delivered
        }
        OrderStatus::Rejected => {
            matches!(allocation, A::Rejected | A::Released)
                && matches!(payment, P::Declined | P::Voided | P::Refunded)
                && shipment == S::NotScheduled
        }
        // Declined: a capture that reached the provider after it had voided the order (ADR 0009).
        OrderStatus::Cancelled => {
            matches!(allocation, A::Rejected | A::Released)
                && matches!(payment, P::Voided | P::Declined | P::Refunded)
                && matches!(shipment, S::NotScheduled | S::Cancelled)
        }
        // Not an end state: a scenario never expects it once the system has settled.
        OrderStatus::Placed => false,
    };
    assert!(agree, "the contexts disagree: {facts}");
    let deadline = system.payment_deadline(order_id).await;
    assert!(
        deadline.is_none(),
        "{facts}, yet a payment deadline is left: {deadline:?}"
    );
}

/// Per SKU: received = on hand + reserved + committed, and the stock items' reserved and
/// committed units are exactly those of the reserved and committed allocations.
async fn stock_is_conserved(system: &System) {
    let mut received: BTreeMap<String, u64> = BTreeMap::new();
    for stored in system.events(BoundedContext::Inventory).await {
        if stored.aggregate_type != "stock" {
            continue;
        }
        let sku = stored.aggregate_id.clone();
        if let StockEvent::StockReceived(r) =
            stored.decode::<StockEvent>().expect("decodes").payload
        {
            *received.entry(sku).or_default() += u64::from(r.quantity.get());
        }
    }

    // What the allocations say each SKU holds, reserved (per order) and committed.
    let mut reserved: HashMap<(Sku, OrderId), u64> = HashMap::new();
    let mut committed: BTreeMap<Sku, u64> = BTreeMap::new();
    for id in system
        .aggregate_ids(BoundedContext::Inventory, "allocation")
        .await
    {
        let order_id: OrderId = id.parse().expect("allocation ids are order ids");
        let allocation = system.allocation(order_id).await;
        for line in allocation.lines() {
            let units = u64::from(line.quantity.get());
            match allocation.status() {
                AllocationStatus::Reserved => {
                    *reserved.entry((line.sku.clone(), order_id)).or_default() += units;
                }
                AllocationStatus::Committed => {
                    *committed.entry(line.sku.clone()).or_default() += units;
                }
                _ => {}
            }
        }
    }

    let skus = system
        .aggregate_ids(BoundedContext::Inventory, "stock")
        .await;
    for sku in &skus {
        let item = system.stock(sku).await;
        let sku_value: Sku = sku.parse().expect("stock ids are SKUs");
        let received = received.get(sku).copied().unwrap_or(0);
        assert_eq!(item.received(), received, "{sku}: units received");
        assert_eq!(
            received,
            u64::from(item.on_hand()) + item.reserved_total() + item.committed(),
            "{sku}: received = on hand + reserved + committed does not hold: {item:?}"
        );
        let reserved_by_allocations: u64 = reserved
            .iter()
            .filter(|((s, _), _)| *s == sku_value)
            .map(|(_, units)| units)
            .sum();
        assert_eq!(
            item.reserved_total(),
            reserved_by_allocations,
            "{sku}: reserved units differ from the reserved allocations: {item:?}"
        );
        for ((s, order_id), units) in &reserved {
            if *s == sku_value {
                assert_eq!(
                    u64::from(item.reserved_for(*order_id)),
                    *units,
                    "{sku}: reserved for order {order_id}"
                );
            }
        }
        assert_eq!(
            item.committed(),
            committed.get(&sku_value).copied().unwrap_or(0),
            "{sku}: committed units differ from the committed allocations"
        );
    }
    // Allocations only ever name SKUs that have stock items.
    for (sku, _) in reserved.keys() {
        assert!(skus.contains(&sku.to_string()), "{sku} has no stock item");
    }
}

/// Captured − refunded = the totals of the orders that keep their money.
async fn money_is_conserved(system: &System) {
    let mut kept: BTreeMap<Currency, i64> = BTreeMap::new();
    for stored in system.events(BoundedContext::Payments).await {
        match stored.decode::<PaymentEvent>().expect("decodes").payload {
            PaymentEvent::PaymentCaptured(c) => {
                *kept.entry(c.amount.currency).or_default() += c.amount.amount_minor;
            }
            PaymentEvent::PaymentRefunded(r) => {
                *kept.entry(r.amount.currency).or_default() -= r.amount.amount_minor;
            }
            _ => {}
        }
    }
    kept.retain(|_, amount| *amount != 0);

    let mut owed: BTreeMap<Currency, i64> = BTreeMap::new();
    for id in system
        .aggregate_ids(BoundedContext::Ordering, "order")
        .await
    {
        let order = system.order(id.parse().expect("order ids")).await;
        let keeps_its_money = matches!(
            order.status(),
            Some(OrderStatus::Confirmed | OrderStatus::Shipped | OrderStatus::Delivered)
        );
        if keeps_its_money {
            let total = order.total().expect("a placed order has a total");
            *owed.entry(total.currency).or_default() += total.amount_minor;
        }
    }
    assert_eq!(
        kept, owed,
        "money is not conserved: captured − refunded (left) differs from the totals of the \
         confirmed, shipped and delivered orders (right)"
    );
}
