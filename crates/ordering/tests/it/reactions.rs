//! Ordering's reactions to inventory, payments and shipping.

use bus::HandlerError;
use events::inventory::ReleaseReason;
use events::naming::StreamName;
use events::ordering::{OrderEvent, OrderRejected, RejectionReason};
use events::values::OrderId;
use events::{BoundedContext, Event};
use ordering::OrderStatus;
use ordering::reactions::consumers;

use crate::support::{
    Setup, captured, declined, defined, delivered, dispatched, eur, message, released, repriced,
    stock_rejected,
};

/// A catalogue of MUG (2.50) and BOOK (10.00), kept by the reactions.
async fn with_catalogue() -> Setup {
    let s = Setup::new().await;
    s.handle(&[
        defined("MUG", "Mug", eur(250)),
        defined("BOOK", "Book", eur(1000)),
    ])
    .await;
    s
}

/// An order placed for 2 × MUG and 1 × BOOK.
async fn placed(s: &Setup) -> OrderId {
    let order = OrderId::new();
    s.place(order, &[("MUG", 2), ("BOOK", 1)]).await.unwrap();
    order
}

/// The order's last event, if it is a rejection: its reason and detail.
async fn rejection(s: &Setup, order: OrderId) -> Option<(RejectionReason, String)> {
    match s.order_events(order).await.last() {
        Some(OrderEvent::OrderRejected(OrderRejected { reason, detail, .. })) => {
            Some((reason.clone(), detail.clone()))
        }
        _ => None,
    }
}

fn is_permanent(result: &Result<(), HandlerError>) -> bool {
    matches!(result, Err(HandlerError::Permanent(_)))
}

fn is_transient(result: &Result<(), HandlerError>) -> bool {
    matches!(result, Err(HandlerError::Transient(_)))
}

#[test]
fn one_consumer_per_source_stream_filtered_to_the_events_ordering_reacts_to() {
    let specs = consumers();
    let described: Vec<(String, String, Vec<String>)> = specs
        .iter()
        .map(|c| (c.name.clone(), c.stream.name(), c.filter_subjects.clone()))
        .collect();
    let filters = |context: BoundedContext, events: &[(&str, &str)]| -> Vec<String> {
        let stream: StreamName = context.stream();
        events
            .iter()
            .map(|(aggregate, event)| stream.event_type_filter(aggregate, event))
            .collect()
    };
    assert_eq!(
        described,
        vec![
            (
                "ordering-from-inventory".to_owned(),
                "INVENTORY".to_owned(),
                filters(
                    BoundedContext::Inventory,
                    &[
                        ("product", "ProductDefined"),
                        ("product", "ProductRepriced"),
                        ("allocation", "StockRejected"),
                    ]
                )
            ),
            (
                "ordering-from-payments".to_owned(),
                "PAYMENTS".to_owned(),
                filters(
                    BoundedContext::Payments,
                    &[
                        ("payment", "PaymentDeclined"),
                        ("payment", "PaymentCaptured")
                    ]
                )
            ),
            (
                "ordering-from-shipping".to_owned(),
                "SHIPPING".to_owned(),
                filters(
                    BoundedContext::Shipping,
                    &[
                        ("shipment", "ShipmentDispatched"),
                        ("shipment", "ShipmentDelivered")
                    ]
                )
            ),
        ]
    );
    // The aggregate types in the filters are those of the published events.
    assert_eq!(events::inventory::ProductEvent::AGGREGATE_TYPE, "product");
    assert_eq!(
        events::inventory::AllocationEvent::AGGREGATE_TYPE,
        "allocation"
    );
    assert_eq!(events::payments::PaymentEvent::AGGREGATE_TYPE, "payment");
    assert_eq!(events::shipping::ShipmentEvent::AGGREGATE_TYPE, "shipment");
}

// --- The catalogue replica ---

#[tokio::test]
async fn catalogue_events_keep_the_replica_that_prices_orders() {
    let s = with_catalogue().await;
    s.handle(&[repriced("MUG", eur(300), 2)]).await;
    let entry = s
        .catalogue
        .entry(&"MUG".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (entry.name.as_str(), entry.price, entry.version),
        ("Mug", eur(300), 2)
    );

    let order = placed(&s).await;
    let events = s.order_events(order).await;
    let [OrderEvent::OrderPlaced(placed)] = events.as_slice() else {
        panic!("expected one OrderPlaced, got {events:?}");
    };
    assert_eq!(placed.total, eur(1600), "2 × 3.00 + 10.00");
}

#[tokio::test]
async fn the_replica_only_moves_forward_whatever_the_order_of_delivery() {
    let s = with_catalogue().await;
    s.handle(&[repriced("MUG", eur(300), 3)]).await;
    // An older reprice delivered late, and the definition redelivered: nothing changes.
    s.handle(&[repriced("MUG", eur(275), 2)]).await;
    s.handle(&[defined("MUG", "Old mug", eur(250))]).await;
    // The newest reprice redelivered, in the same batch as itself.
    let newest = repriced("MUG", eur(300), 3);
    s.handle(&[newest.clone(), newest]).await;

    let entry = s
        .catalogue
        .entry(&"MUG".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (entry.name.as_str(), entry.price, entry.version),
        ("Mug", eur(300), 3)
    );
}

#[tokio::test]
async fn a_reprice_overtaking_its_definition_is_retried_until_the_definition_arrives() {
    let s = Setup::new().await;
    let early = repriced("CAP", eur(600), 2);
    let result = s.try_handle(&early).await;
    assert!(is_transient(&result), "{result:?}");
    assert_eq!(s.price("CAP").await, None, "no row without a name");

    s.handle(&[defined("CAP", "Cap", eur(500))]).await;
    assert_eq!(s.price("CAP").await, Some(eur(500)));
    s.handle(&[early]).await;
    assert_eq!(s.price("CAP").await, Some(eur(600)));
}

// --- The saga ---

#[tokio::test]
async fn an_order_goes_from_placed_to_delivered_by_reactions() {
    let s = with_catalogue().await;
    let order = placed(&s).await;
    let correlation = format!("order-{order}");
    let mut messages = [captured(order), dispatched(order), delivered(order)];
    for m in &mut messages {
        m.metadata.correlation_id = Some(correlation.clone());
    }

    let expected = [
        OrderStatus::Confirmed,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
    ];
    for (m, status) in messages.iter().zip(expected) {
        s.handle(std::slice::from_ref(m)).await;
        assert_eq!(s.status(order).await, Some(status));
    }

    let stored = s.stored_order_events(order).await;
    let types: Vec<&str> = stored.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "OrderPlaced",
            "OrderConfirmed",
            "OrderShipped",
            "OrderDelivered"
        ]
    );
    // Each reaction's event names the message that caused it, in the order's correlation.
    for (event, cause) in stored[1..].iter().zip(&messages) {
        assert_eq!(
            event.metadata.causation_id,
            Some(cause.event_id.to_string())
        );
        assert_eq!(event.metadata.correlation_id, Some(correlation.clone()));
    }
    let events = s.order_events(order).await;
    let OrderEvent::OrderConfirmed(confirmed) = &events[1] else {
        panic!("expected OrderConfirmed, got {:?}", events[1]);
    };
    assert_eq!(confirmed.shipping_address, crate::support::address());
}

#[tokio::test]
async fn an_order_is_rejected_with_the_reason_its_saga_failed() {
    let s = with_catalogue().await;
    let [short, unpaid, declined_order] = [placed(&s).await, placed(&s).await, placed(&s).await];

    s.handle(&[stock_rejected(short, &[("MUG", 2, 1), ("BOOK", 1, 0)])])
        .await;
    s.handle(&[declined(declined_order, "insufficient funds")])
        .await;
    // Ordering's own payment deadline, past due: only the unpaid order's was left.
    let fired = s
        .tick(chrono::Utc::now() + chrono::Duration::minutes(16))
        .await;
    assert_eq!(fired, 1);

    assert_eq!(
        rejection(&s, short).await,
        Some((
            RejectionReason::OutOfStock,
            "out of stock: MUG: 2 requested, 1 available; BOOK: 1 requested, 0 available".into()
        ))
    );
    assert_eq!(
        rejection(&s, unpaid).await,
        Some((
            RejectionReason::PaymentTimedOut,
            "not paid within 900 s".into()
        ))
    );
    assert_eq!(
        rejection(&s, declined_order).await,
        Some((
            RejectionReason::PaymentDeclined,
            "insufficient funds (refused)".into()
        ))
    );
    for order in [short, unpaid, declined_order] {
        assert_eq!(s.status(order).await, Some(OrderStatus::Rejected));
    }
}

#[tokio::test]
async fn releases_and_other_events_change_nothing() {
    let s = with_catalogue().await;
    let order = placed(&s).await;
    // Built from JSON: its deadline is the only time in these tests, not worth a dependency.
    let reserved: events::inventory::StockReserved = serde_json::from_value(serde_json::json!({
        "order_id": order,
        "lines": [{"sku": "MUG", "quantity": 2}, {"sku": "BOOK", "quantity": 1}],
        "expires_at": "2030-01-01T00:00:00Z",
    }))
    .unwrap();
    let reserved = events::inventory::AllocationEvent::from(reserved);
    let requested = events::payments::PaymentEvent::from(events::payments::PaymentRequested {
        order_id: order,
        amount: eur(1500),
        payment_token: "tok_success".into(),
    });
    let scheduled = events::shipping::ShipmentEvent::from(events::shipping::ShipmentScheduled {
        order_id: order,
        address: crate::support::address(),
    });
    let id = order.to_string();
    s.handle(&[
        released(order, ReleaseReason::OrderCancelled),
        released(order, ReleaseReason::PaymentDeclined),
        // Ordering decides the timeout itself; an `Expired` release is not a command to it.
        released(order, ReleaseReason::Expired),
        message(reserved, &id, 1),
        message(requested, &id, 1),
        message(scheduled, &id, 1),
    ])
    .await;
    // An aggregate type ordering does not know.
    let mut stranger = captured(order);
    stranger.aggregate_type = "refund".into();
    s.handle(&[stranger]).await;

    assert_eq!(s.order_events(order).await.len(), 1);
    assert_eq!(s.status(order).await, Some(OrderStatus::Placed));
}

#[tokio::test]
async fn redelivered_messages_have_no_second_effect() {
    let s = with_catalogue().await;
    let [shipped, short, declined_order] = [placed(&s).await, placed(&s).await, placed(&s).await];
    let messages = [
        captured(shipped),
        dispatched(shipped),
        delivered(shipped),
        stock_rejected(short, &[("MUG", 2, 0)]),
        declined(declined_order, "card declined"),
    ];
    for m in &messages {
        s.handle(std::slice::from_ref(m)).await;
        // Redelivered on its own, and twice more in one batch.
        s.handle(std::slice::from_ref(m)).await;
        s.handle(&[m.clone(), m.clone()]).await;
    }
    assert_eq!(s.order_events(shipped).await.len(), 4);
    for order in [short, declined_order] {
        assert_eq!(
            s.order_events(order).await.len(),
            2,
            "placed, rejected once"
        );
    }

    // Two failures in a row (declined, then declined again): one rejection, the first.
    s.handle(&[declined(declined_order, "expired card")]).await;
    assert_eq!(
        rejection(&s, declined_order).await,
        Some((
            RejectionReason::PaymentDeclined,
            "card declined (refused)".into()
        ))
    );
    // A capture that lost the race with a rejection: the order stays rejected.
    s.handle(&[captured(short)]).await;
    assert_eq!(s.status(short).await, Some(OrderStatus::Rejected));
    assert_eq!(s.order_events(short).await.len(), 2);
}

// --- Failures ---

#[tokio::test]
async fn a_message_that_cannot_be_decoded_fails_permanently() {
    let s = with_catalogue().await;
    let order = placed(&s).await;
    let mut garbled = captured(order);
    garbled.payload = "{\"order_id\": 42}".into();
    assert!(is_permanent(&s.try_handle(&garbled).await));
    let mut not_json = defined("PEN", "Pen", eur(100));
    not_json.payload = "not json".into();
    assert!(is_permanent(&s.try_handle(&not_json).await));
    let mut no_version = defined("PEN", "Pen", eur(100));
    no_version.sequence = 0;
    assert!(is_permanent(&s.try_handle(&no_version).await));
    assert_eq!(s.price("PEN").await, None);
    assert_eq!(s.status(order).await, Some(OrderStatus::Placed));
}

#[tokio::test]
async fn a_command_the_order_refuses_fails_permanently_and_appends_nothing() {
    let s = with_catalogue().await;
    let order = placed(&s).await;
    s.handle(&[captured(order)]).await;

    // The payment of a confirmed order is declined: a saga bug that must be seen.
    let result = s.try_handle(&declined(order, "too late")).await;
    assert!(is_permanent(&result), "{result:?}");
    assert!(
        result
            .unwrap_err()
            .to_string()
            .contains("already been confirmed"),
        "the error says why"
    );
    // A payment for an order ordering never placed.
    assert!(is_permanent(&s.try_handle(&captured(OrderId::new())).await));
    // A dispatch that raced a cancellation.
    let cancelled = placed(&s).await;
    s.reactions
        .orders()
        .handle(
            &cancelled.to_string(),
            ordering::OrderCommand::Cancel { reason: None },
            &events::Metadata::default(),
        )
        .await
        .unwrap();
    assert!(is_permanent(&s.try_handle(&dispatched(cancelled)).await));

    assert_eq!(s.order_events(order).await.len(), 2, "placed, confirmed");
    assert_eq!(s.status(order).await, Some(OrderStatus::Confirmed));
    assert_eq!(s.status(cancelled).await, Some(OrderStatus::Cancelled));
}

#[tokio::test]
async fn a_delivery_that_overtakes_its_dispatch_is_retried() {
    let s = with_catalogue().await;
    let order = placed(&s).await;
    s.handle(&[captured(order)]).await;
    let early = delivered(order);
    let result = s.try_handle(&early).await;
    assert!(is_transient(&result), "{result:?}");
    assert_eq!(s.status(order).await, Some(OrderStatus::Confirmed));

    s.handle(&[dispatched(order)]).await;
    s.handle(&[early]).await;
    assert_eq!(s.status(order).await, Some(OrderStatus::Delivered));
}

#[tokio::test]
async fn a_database_failure_is_transient() {
    let s = with_catalogue().await;
    s.store.pool().close().await;
    // An order not in the repository's cache must be loaded: the database is needed.
    assert!(is_transient(&s.try_handle(&captured(OrderId::new())).await));
    assert!(is_transient(
        &s.try_handle(&defined("PEN", "Pen", eur(100))).await
    ));
    assert!(is_transient(
        &s.try_handle(&repriced("MUG", eur(300), 2)).await
    ));
}

/// Payments published this decline before decline codes existed (schema version 1, a free-text
/// `reason`): ordering reads it as version 2 and rejects the order all the same.
#[tokio::test]
async fn a_decline_published_as_version_1_rejects_the_order_all_the_same() {
    let s = with_catalogue().await;
    let order = placed(&s).await;
    let v1 = serde_json::json!({ "order_id": order, "reason": "card declined" });
    let message = bus::Received {
        schema_version: 1,
        payload: serde_json::to_vec(&v1).unwrap().into(),
        ..declined(order, "replaced by the version 1 payload")
    };
    s.handle(&[message]).await;
    assert_eq!(
        rejection(&s, order).await,
        Some((
            RejectionReason::PaymentDeclined,
            "card declined (unclassified)".into()
        ))
    );
}
