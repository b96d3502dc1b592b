use bus::HandlerError;
use events::Metadata;
use events::ordering::{OrderEvent, OrderShipped};
use events::shipping::{ShipmentCancelled, ShipmentEvent, ShipmentScheduled};
use events::values::OrderId;
use shipping::ShipmentStatus;
use shipping::operations::dispatch;
use shipping::reactions::consumers;

use super::{Setup, address, cancelled, confirmed, received};

#[test]
fn shipping_consumes_ordering_through_one_durable_consumer_filtered_to_its_events() {
    let specs = consumers();
    let [spec] = specs.as_slice() else {
        panic!("expected one consumer, got {specs:?}");
    };
    assert_eq!(spec.name, "shipping-from-ordering");
    assert_eq!(spec.stream.name(), "ORDERING");
    assert_eq!(
        spec.filter_subjects,
        vec![
            "ordering.order.*.OrderConfirmed".to_owned(),
            "ordering.order.*.OrderCancelled".to_owned(),
        ]
    );
}

#[tokio::test]
async fn a_confirmed_order_schedules_its_shipment_to_the_orders_address() {
    let s = Setup::new().await;
    let order = OrderId::new();
    let message = confirmed(order);
    s.handle(std::slice::from_ref(&message)).await;

    assert_eq!(
        s.events(order).await,
        vec![ShipmentEvent::from(ShipmentScheduled {
            order_id: order,
            address: address(),
        })]
    );
    let (shipment, version) = s.shipments().load(&order.to_string()).await.unwrap();
    assert_eq!((shipment.status(), version), (ShipmentStatus::Scheduled, 1));
    assert_eq!(shipment.address(), Some(&address()));
    let stored = s.stored(order).await;
    assert_eq!(
        stored[0].metadata.causation_id,
        Some(message.event_id.to_string()),
        "the shipment names the event that caused it"
    );
}

#[tokio::test]
async fn an_order_cancelled_before_dispatch_cancels_its_shipment() {
    let s = Setup::new().await;
    let order = OrderId::new();
    s.handle(&[confirmed(order)]).await;
    s.handle(&[cancelled(order)]).await;

    let events = s.events(order).await;
    assert_eq!(
        events.last(),
        Some(&ShipmentEvent::from(ShipmentCancelled { order_id: order }))
    );
    assert_eq!(events.len(), 2);
}

#[tokio::test]
async fn an_order_confirmed_and_cancelled_in_one_batch_ends_cancelled() {
    let s = Setup::new().await;
    let order = OrderId::new();
    s.handle(&[confirmed(order), cancelled(order)]).await;
    let (shipment, _) = s.shipments().load(&order.to_string()).await.unwrap();
    assert_eq!(shipment.status(), ShipmentStatus::Cancelled);
    assert_eq!(s.events(order).await.len(), 2);
}

#[tokio::test]
async fn an_order_cancelled_after_dispatch_is_a_permanent_failure_that_appends_nothing() {
    let s = Setup::new().await;
    let order = OrderId::new();
    s.handle(&[confirmed(order)]).await;
    dispatch(
        &s.shipments(),
        order,
        Some("TRK-1".into()),
        &Metadata::default(),
    )
    .await
    .unwrap();

    // The dispatch went through another repository (the gateway's): the reactions' cache
    // still holds the shipment as scheduled, so the first run conflicts at commit and the
    // rerun, on the dispatched shipment, is refused.
    let (error, runs) = s.handle_failing(&cancelled(order)).await;
    assert_eq!(runs, 2, "a stale cache costs one rerun, no wrong event");
    let HandlerError::Permanent(reason) = &error else {
        panic!("expected a permanent failure (dead letter), got {error:?}");
    };
    let reason = reason.to_string();
    assert!(
        reason.contains(&order.to_string()) && reason.contains("dispatched"),
        "the dead letter should say which order and why: {reason}"
    );
    let events = s.events(order).await;
    assert_eq!(events.len(), 2, "scheduled and dispatched only: {events:?}");
    assert!(matches!(events[1], ShipmentEvent::ShipmentDispatched(_)));
    let (shipment, _) = s.shipments().load(&order.to_string()).await.unwrap();
    assert_eq!(shipment.status(), ShipmentStatus::Dispatched);

    // Delivered again (the cache now fresh): refused at once, still nothing appended.
    let (error, runs) = s.handle_failing(&cancelled(order)).await;
    assert!(matches!(error, HandlerError::Permanent(_)), "{error:?}");
    assert_eq!(runs, 1);
    assert_eq!(s.events(order).await.len(), 2);
}

#[tokio::test]
async fn a_redelivered_order_confirmed_schedules_one_shipment() {
    let s = Setup::new().await;
    let order = OrderId::new();
    let message = confirmed(order);
    s.handle(std::slice::from_ref(&message)).await;
    // The same message again, later, and twice more in one batch.
    s.handle(std::slice::from_ref(&message)).await;
    s.handle(&[message.clone(), message]).await;
    assert_eq!(s.events(order).await.len(), 1, "one ShipmentScheduled");
}

#[tokio::test]
async fn a_redelivered_order_cancelled_cancels_once() {
    let s = Setup::new().await;
    let order = OrderId::new();
    s.handle(&[confirmed(order)]).await;
    let message = cancelled(order);
    s.handle(std::slice::from_ref(&message)).await;
    s.handle(std::slice::from_ref(&message)).await;
    assert_eq!(s.events(order).await.len(), 2, "scheduled, cancelled once");
}

#[tokio::test]
async fn a_cancellation_for_an_order_shipping_never_heard_of_changes_nothing() {
    let s = Setup::new().await;
    let order = OrderId::new();
    s.handle(&[cancelled(order)]).await;
    assert!(s.events(order).await.is_empty());
}

#[tokio::test]
async fn order_events_shipping_does_not_react_to_are_ignored() {
    let s = Setup::new().await;
    let order = OrderId::new();
    let shipped = OrderEvent::from(OrderShipped { order_id: order });
    s.handle(&[received(shipped, order)]).await;
    assert!(s.events(order).await.is_empty());
}

#[tokio::test]
async fn an_undecodable_order_event_is_a_permanent_failure() {
    let s = Setup::new().await;
    let order = OrderId::new();
    let mut garbled = confirmed(order);
    garbled.payload = "{\"order_id\": 42}".into();
    let (error, _) = s.handle_failing(&garbled).await;
    assert!(
        matches!(error, HandlerError::Permanent(_)),
        "expected a permanent failure, got {error:?}"
    );
    assert!(s.events(order).await.is_empty());
}
