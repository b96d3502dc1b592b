//! Placing an order: priced from the replica, never from the request.

use events::Metadata;
use events::ordering::{OrderEvent, OrderLine, OrderPlaced};
use events::values::{OrderId, Quantity};
use ordering::catalogue::CatalogueReplica;
use ordering::{MAX_LINES, OrderError, OrderStatus, PlaceError, place_order};

use crate::support::{Setup, eur, payment_timeout, request, sku};

async fn with_catalogue() -> Setup {
    let s = Setup::new().await;
    s.catalogue
        .apply(&sku("MUG"), Some("Mug"), eur(250), 1)
        .await
        .unwrap();
    s.catalogue
        .apply(&sku("BOOK"), Some("Book"), eur(1000), 1)
        .await
        .unwrap();
    s
}

fn priced(s: &str, quantity: u32, unit_price: events::values::Money) -> OrderLine {
    OrderLine {
        sku: sku(s),
        quantity: Quantity::try_from(quantity).unwrap(),
        unit_price,
    }
}

#[tokio::test]
async fn an_order_is_priced_from_the_replica() {
    let s = with_catalogue().await;
    let order = OrderId::new();
    let committed = s.place(order, &[("MUG", 2), ("BOOK", 1)]).await.unwrap();

    let [OrderEvent::OrderPlaced(placed)] = committed.events.as_slice() else {
        panic!("expected one OrderPlaced, got {:?}", committed.events);
    };
    assert_eq!(
        placed.lines,
        [priced("MUG", 2, eur(250)), priced("BOOK", 1, eur(1000))]
    );
    assert_eq!(placed.total, eur(1500));
    assert_eq!(placed.order_id, order);
    assert_eq!(placed.payment_token, "tok_success");
    assert_eq!((committed.version, committed.position > 0), (1, true));
    assert_eq!(s.order_events(order).await, committed.events);
    assert_eq!(s.status(order).await, Some(OrderStatus::Placed));
}

#[tokio::test]
async fn an_unknown_sku_is_refused_and_nothing_is_appended() {
    let s = with_catalogue().await;
    let order = OrderId::new();
    let refused = s
        .place(order, &[("MUG", 1), ("NOPE", 1)])
        .await
        .unwrap_err();
    assert_eq!(
        refused.rejection(),
        Some(&OrderError::UnknownSku(sku("NOPE")))
    );
    assert!(s.order_events(order).await.is_empty());
    assert_eq!(s.store.outbox_backlog().await.unwrap(), 0);
}

#[tokio::test]
async fn a_reprice_changes_the_price_of_the_next_order_only() {
    let s = with_catalogue().await;
    let first = OrderId::new();
    s.place(first, &[("MUG", 2)]).await.unwrap();
    s.catalogue
        .apply(&sku("MUG"), None, eur(300), 2)
        .await
        .unwrap();
    let second = OrderId::new();
    s.place(second, &[("MUG", 2)]).await.unwrap();

    let total = |events: Vec<OrderEvent>| match events.as_slice() {
        [OrderEvent::OrderPlaced(OrderPlaced { total, lines, .. })] => {
            (*total, lines[0].unit_price)
        }
        other => panic!("expected one OrderPlaced, got {other:?}"),
    };
    assert_eq!(
        total(s.order_events(first).await),
        (eur(500), eur(250)),
        "an order placed keeps its price"
    );
    assert_eq!(total(s.order_events(second).await), (eur(600), eur(300)));
}

#[tokio::test]
async fn placing_the_same_order_twice_is_refused() {
    let s = with_catalogue().await;
    let order = OrderId::new();
    s.place(order, &[("MUG", 1)]).await.unwrap();
    let again = s.place(order, &[("BOOK", 1)]).await.unwrap_err();
    assert_eq!(again.rejection(), Some(&OrderError::AlreadyPlaced));
    assert_eq!(s.order_events(order).await.len(), 1);
}

#[tokio::test]
async fn a_replica_that_cannot_be_read_places_nothing() {
    let s = with_catalogue().await;
    let broken = CatalogueReplica::new(s.db.pool(1).await.unwrap());
    broken.pool().close().await;
    let order = OrderId::new();
    let failed = place_order(
        s.reactions.orders(),
        &broken,
        request(order, &[("MUG", 1)]),
        payment_timeout(),
        &Metadata::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(failed, PlaceError::Catalogue(_)), "{failed:?}");
    assert_eq!(failed.rejection(), None);
    assert!(s.order_events(order).await.is_empty());

    // Too many lines: refused by the aggregate without reading the replica at all.
    let many: Vec<(String, u32)> = (0..=MAX_LINES)
        .map(|i| (format!("SKU-{i:02}"), 1))
        .collect();
    let many: Vec<(&str, u32)> = many.iter().map(|(s, q)| (s.as_str(), *q)).collect();
    let refused = place_order(
        s.reactions.orders(),
        &broken,
        request(order, &many),
        payment_timeout(),
        &Metadata::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        refused.rejection(),
        Some(&OrderError::TooManyLines { max: MAX_LINES })
    );
}
