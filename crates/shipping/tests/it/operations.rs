use events::Metadata;
use events::shipping::{ShipmentDelivered, ShipmentDispatched, ShipmentEvent};
use events::values::OrderId;
use eventstore::CommandError;
use shipping::operations::{deliver, dispatch};
use shipping::{ShipmentError, ShipmentStatus};

use super::{Setup, confirmed};

fn request_metadata() -> Metadata {
    Metadata {
        correlation_id: Some("req-1".into()),
        causation_id: Some("req-1".into()),
        traceparent: None,
        tracestate: None,
    }
}

#[tokio::test]
async fn an_operator_dispatches_then_delivers_a_scheduled_shipment() {
    let s = Setup::new().await;
    let repo = s.shipments();
    let order = OrderId::new();
    s.handle(&[confirmed(order)]).await;

    let dispatched = dispatch(&repo, order, Some("1Z-999".into()), &request_metadata())
        .await
        .unwrap();
    assert_eq!(
        dispatched.events,
        vec![ShipmentEvent::from(ShipmentDispatched {
            order_id: order,
            tracking_number: Some("1Z-999".into()),
        })]
    );
    assert_eq!(dispatched.version, 2);
    assert!(dispatched.position > 0, "{dispatched:?}");

    let delivered = deliver(&repo, order, &request_metadata()).await.unwrap();
    assert_eq!(
        delivered.events,
        vec![ShipmentEvent::from(ShipmentDelivered { order_id: order })]
    );
    assert_eq!(delivered.version, 3);
    assert!(delivered.position > dispatched.position);

    let stored = s.stored(order).await;
    assert_eq!(stored.len(), 3);
    assert_eq!(
        stored[2].metadata.correlation_id.as_deref(),
        Some("req-1"),
        "the request's metadata is recorded with the event"
    );
    let (shipment, _) = s.shipments().load(&order.to_string()).await.unwrap();
    assert_eq!(shipment.status(), ShipmentStatus::Delivered);
}

#[tokio::test]
async fn dispatching_an_unscheduled_shipment_is_refused_and_appends_nothing() {
    let s = Setup::new().await;
    let order = OrderId::new();
    let result = dispatch(&s.shipments(), order, None, &Metadata::default()).await;
    assert!(
        matches!(
            result,
            Err(CommandError::Rejected(ShipmentError::NotScheduled))
        ),
        "{result:?}"
    );
    assert!(s.stored(order).await.is_empty());
}

#[tokio::test]
async fn delivering_before_dispatch_is_refused_and_appends_nothing() {
    let s = Setup::new().await;
    let order = OrderId::new();
    s.handle(&[confirmed(order)]).await;
    let result = deliver(&s.shipments(), order, &Metadata::default()).await;
    assert!(
        matches!(
            result,
            Err(CommandError::Rejected(ShipmentError::NotDispatched))
        ),
        "{result:?}"
    );
    assert_eq!(s.stored(order).await.len(), 1, "only ShipmentScheduled");
}

#[tokio::test]
async fn a_malformed_tracking_number_is_refused_and_appends_nothing() {
    let s = Setup::new().await;
    let order = OrderId::new();
    s.handle(&[confirmed(order)]).await;
    let result = dispatch(
        &s.shipments(),
        order,
        Some("not a number".into()),
        &Metadata::default(),
    )
    .await;
    assert!(
        matches!(
            result,
            Err(CommandError::Rejected(ShipmentError::InvalidTrackingNumber))
        ),
        "{result:?}"
    );
    assert_eq!(s.stored(order).await.len(), 1);
}
