use std::sync::Arc;

use bus::{Handler, Received};
use chrono::{Duration, Utc};
use events::inventory::{AllocationEvent, ReleaseReason};
use events::ordering::{
    Address, OrderCancelled, OrderEvent, OrderLine, OrderPlaced, OrderRejected, RejectionReason,
};
use events::payments::{DeclineCode, PaymentDeclined, PaymentEvent};
use events::shipping::{ShipmentDispatched, ShipmentEvent};
use events::values::{Currency, CustomerId, Money, OrderId, Quantity, Sku};
use events::{BoundedContext, Metadata};
use eventstore::{Repository, Store, UnitOfWork};
use harness::{TestDatabase, received};
use inventory::reactions::{RESERVATION_HORIZON_MINUTES, Reactions, consumers};
use inventory::{Allocation, AllocationStatus, StockCommand, StockItem};

struct Setup {
    store: Store,
    reactions: Arc<Reactions>,
    _db: TestDatabase,
}

impl Setup {
    async fn new() -> Self {
        let db = TestDatabase::create().await.unwrap();
        let store = Store::from_pool(db.pool(10).await.unwrap());
        store.migrate().await.unwrap();
        let reactions = Arc::new(Reactions::new(&store));
        Self {
            store,
            reactions,
            _db: db,
        }
    }

    async fn receive(&self, sku: &str, quantity: u32) {
        let stock = Repository::<StockItem>::new(self.store.clone(), ());
        let command = StockCommand::Receive {
            sku: sku.parse().unwrap(),
            quantity: Quantity::try_from(quantity).unwrap(),
        };
        stock
            .handle(sku, command, &Metadata::default())
            .await
            .unwrap();
    }

    /// Handles the messages in one unit of work, as one consumer batch would.
    async fn handle(&self, messages: &[Received]) {
        let mut uow = UnitOfWork::new(&self.store);
        for message in messages {
            self.reactions.handle(&mut uow, message).await.unwrap();
        }
        uow.commit().await.unwrap();
    }

    async fn stock(&self, sku: &str) -> StockItem {
        Repository::<StockItem>::new(self.store.clone(), ())
            .load(sku)
            .await
            .unwrap()
            .0
    }

    async fn allocation(&self, order: OrderId) -> Allocation {
        let allocations = Repository::<Allocation>::new(self.store.clone(), ());
        allocations.load(&order.to_string()).await.unwrap().0
    }

    async fn allocation_events(&self, order: OrderId) -> Vec<AllocationEvent> {
        let stored = self
            .store
            .aggregate_events("allocation", &order.to_string(), 0)
            .await
            .unwrap();
        stored
            .into_iter()
            .map(|e| e.decode::<AllocationEvent>().unwrap().payload)
            .collect()
    }

    /// Every unit received is on hand, reserved or committed.
    async fn assert_conserved(&self, sku: &str) {
        let item = self.stock(sku).await;
        assert_eq!(
            item.received(),
            u64::from(item.on_hand()) + item.reserved_total() + item.committed(),
            "stock of {sku} is not conserved"
        );
    }
}

fn placed(order_id: OrderId, lines: &[(&str, u32)]) -> Received {
    let eur: Currency = "EUR".parse().unwrap();
    let lines: Vec<OrderLine> = lines
        .iter()
        .map(|(sku, quantity)| OrderLine {
            sku: sku.parse::<Sku>().unwrap(),
            quantity: Quantity::try_from(*quantity).unwrap(),
            unit_price: Money::new(100, eur),
        })
        .collect();
    let event = OrderEvent::from(OrderPlaced {
        order_id,
        customer_id: CustomerId::new(),
        total: Money::new(100 * lines.len() as i64, eur),
        lines,
        shipping_address: Address {
            name: "A".into(),
            line1: "1 Street".into(),
            line2: None,
            city: "Town".into(),
            postal_code: "1000".into(),
            country: "NL".into(),
        },
        payment_token: "tok_success".into(),
    });
    received(event, order_id)
}

fn rejected(order_id: OrderId, reason: RejectionReason) -> Received {
    received(
        OrderEvent::from(OrderRejected {
            order_id,
            reason,
            detail: "test".into(),
        }),
        order_id,
    )
}

fn cancelled(order_id: OrderId) -> Received {
    received(
        OrderEvent::from(OrderCancelled {
            order_id,
            reason: None,
        }),
        order_id,
    )
}

#[tokio::test]
async fn an_order_whose_lines_are_all_in_stock_reserves_them_all_and_keeps_no_deadline() {
    let s = Setup::new().await;
    s.receive("APPLE", 5).await;
    s.receive("PEAR", 2).await;
    let order = OrderId::new();
    s.handle(&[placed(order, &[("APPLE", 2), ("PEAR", 2), ("APPLE", 1)])])
        .await;

    assert_eq!(
        s.allocation(order).await.status(),
        AllocationStatus::Reserved
    );
    let apple = s.stock("APPLE").await;
    assert_eq!(
        (apple.on_hand(), apple.reserved_for(order)),
        (2, 3),
        "lines of one SKU add up"
    );
    assert_eq!(s.stock("PEAR").await.on_hand(), 0);
    // The published horizon is informational: the message's time (here none: now) + 15 min.
    let expires_at = s.allocation(order).await.expires_at().unwrap();
    let expected = Utc::now() + Duration::minutes(RESERVATION_HORIZON_MINUTES);
    assert!(
        (expires_at - expected).num_seconds().abs() < 60,
        "{expires_at:?}"
    );
    assert!(
        s.store.failed_deadlines().await.unwrap().is_empty(),
        "inventory keeps no deadline"
    );
    let due = s
        .store
        .due_deadlines("reservation-expiry", Utc::now() + Duration::days(1), 100)
        .await
        .unwrap();
    assert!(due.is_empty(), "inventory keeps no deadline: {due:?}");
}

#[tokio::test]
async fn the_published_horizon_counts_from_when_the_order_was_placed() {
    let s = Setup::new().await;
    s.receive("APPLE", 1).await;
    let order = OrderId::new();
    let mut message = placed(order, &[("APPLE", 1)]);
    let placed_at = "2030-01-01T10:00:00.123456789Z"
        .parse::<chrono::DateTime<Utc>>()
        .unwrap();
    message.occurred_at = Some(placed_at);
    s.handle(&[message]).await;
    let expected = "2030-01-01T10:15:00.123456Z"
        .parse::<chrono::DateTime<Utc>>()
        .unwrap();
    assert_eq!(s.allocation(order).await.expires_at(), Some(expected));
}

#[tokio::test]
async fn an_order_with_one_line_short_reserves_nothing_and_says_what_is_short() {
    let s = Setup::new().await;
    s.receive("APPLE", 5).await;
    s.receive("PEAR", 1).await;
    let order = OrderId::new();
    s.handle(&[placed(order, &[("APPLE", 1), ("PEAR", 3), ("PLUM", 1)])])
        .await;

    let events = s.allocation_events(order).await;
    let [AllocationEvent::StockRejected(rejected)] = events.as_slice() else {
        panic!("expected one StockRejected, got {events:?}");
    };
    let shortages: Vec<(String, u32, u32)> = rejected
        .shortages
        .iter()
        .map(|s| (s.sku.to_string(), s.requested.get(), s.available))
        .collect();
    assert_eq!(
        shortages,
        vec![("PEAR".into(), 3, 1), ("PLUM".into(), 1, 0)]
    );
    assert_eq!(
        s.stock("APPLE").await.on_hand(),
        5,
        "the line in stock was not reserved either"
    );
    assert_eq!(s.stock("PEAR").await.on_hand(), 1);
}

#[tokio::test]
async fn cancellation_decline_dispatch_and_a_payment_timeout_settle_the_reservation() {
    let s = Setup::new().await;
    s.receive("APPLE", 10).await;
    let [cancelled_order, declined_order, shipped_order, unpaid_order] = [
        OrderId::new(),
        OrderId::new(),
        OrderId::new(),
        OrderId::new(),
    ];
    for order in [cancelled_order, declined_order, shipped_order, unpaid_order] {
        s.handle(&[placed(order, &[("APPLE", 2)])]).await;
    }
    assert_eq!(s.stock("APPLE").await.on_hand(), 2);

    s.handle(&[cancelled(cancelled_order)]).await;
    let declined = PaymentEvent::from(PaymentDeclined {
        order_id: declined_order,
        code: DeclineCode::Refused,
        detail: "card declined".into(),
    });
    s.handle(&[received(declined, declined_order)]).await;
    let dispatched = ShipmentEvent::from(ShipmentDispatched {
        order_id: shipped_order,
        tracking_number: None,
    });
    s.handle(&[received(dispatched, shipped_order)]).await;
    // Ordering's payment deadline passed: it rejected the unpaid order.
    s.handle(&[rejected(unpaid_order, RejectionReason::PaymentTimedOut)])
        .await;

    let reason_of = |events: Vec<AllocationEvent>| match events.last() {
        Some(AllocationEvent::StockReleased(r)) => Some(r.reason.clone()),
        _ => None,
    };
    assert_eq!(
        reason_of(s.allocation_events(cancelled_order).await),
        Some(ReleaseReason::OrderCancelled)
    );
    assert_eq!(
        reason_of(s.allocation_events(declined_order).await),
        Some(ReleaseReason::PaymentDeclined)
    );
    assert_eq!(
        reason_of(s.allocation_events(unpaid_order).await),
        Some(ReleaseReason::Expired)
    );
    assert_eq!(
        s.allocation(shipped_order).await.status(),
        AllocationStatus::Committed
    );
    let apple = s.stock("APPLE").await;
    assert_eq!(
        (apple.on_hand(), apple.reserved_total(), apple.committed()),
        (8, 0, 2)
    );
    s.assert_conserved("APPLE").await;
}

#[tokio::test]
async fn redelivered_reactions_change_nothing_the_second_time() {
    let s = Setup::new().await;
    s.receive("APPLE", 3).await;
    let order = OrderId::new();
    s.handle(&[placed(order, &[("APPLE", 2)])]).await;
    s.handle(&[placed(order, &[("APPLE", 2)])]).await;
    assert_eq!(s.stock("APPLE").await.on_hand(), 1, "reserved once");
    s.handle(&[cancelled(order)]).await;
    s.handle(&[cancelled(order)]).await;
    assert_eq!(s.stock("APPLE").await.on_hand(), 3, "released once");
    assert_eq!(s.allocation_events(order).await.len(), 2);
    s.assert_conserved("APPLE").await;
}

#[tokio::test]
async fn an_order_placed_and_cancelled_in_one_batch_ends_released() {
    let s = Setup::new().await;
    s.receive("APPLE", 3).await;
    let order = OrderId::new();
    s.handle(&[placed(order, &[("APPLE", 2)]), cancelled(order)])
        .await;
    assert_eq!(
        s.allocation(order).await.status(),
        AllocationStatus::Released
    );
    assert_eq!(s.stock("APPLE").await.on_hand(), 3);
    s.assert_conserved("APPLE").await;
}

#[tokio::test]
async fn of_many_orders_racing_for_scarce_stock_only_as_many_as_there_are_units_win() {
    let s = Setup::new().await;
    s.receive("LAST", 3).await;
    let orders: Vec<OrderId> = (0..12).map(|_| OrderId::new()).collect();
    let tasks: Vec<_> = orders
        .iter()
        .map(|&order| {
            let store = s.store.clone();
            let reactions = Arc::clone(&s.reactions);
            tokio::spawn(async move {
                // As a consumer would: rerun the message on a conflict.
                loop {
                    let mut uow = UnitOfWork::new(&store);
                    reactions
                        .handle(&mut uow, &placed(order, &[("LAST", 1)]))
                        .await
                        .unwrap();
                    match uow.commit().await {
                        Ok(_) => return,
                        Err(e) if e.is_conflict() => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let mut reserved = 0;
    for order in &orders {
        match s.allocation(*order).await.status() {
            AllocationStatus::Reserved => reserved += 1,
            AllocationStatus::Rejected => {}
            other => panic!("order {order} ended {other:?}"),
        }
    }
    assert_eq!(reserved, 3, "exactly as many orders as units");
    assert_eq!(s.stock("LAST").await.on_hand(), 0);
    s.assert_conserved("LAST").await;
}

#[tokio::test]
async fn an_order_rejected_for_a_payment_timeout_releases_its_stock_as_expired() {
    let s = Setup::new().await;
    s.receive("APPLE", 2).await;
    let order = OrderId::new();
    s.handle(&[placed(order, &[("APPLE", 2)])]).await;
    assert_eq!(s.stock("APPLE").await.on_hand(), 0);

    let timed_out = rejected(order, RejectionReason::PaymentTimedOut);
    s.handle(std::slice::from_ref(&timed_out)).await;
    // Redelivered: nothing more.
    s.handle(&[timed_out]).await;

    let events = s.allocation_events(order).await;
    assert_eq!(events.len(), 2, "{events:?}");
    let Some(AllocationEvent::StockReleased(released)) = events.last() else {
        panic!("expected a release, got {events:?}");
    };
    assert_eq!(released.reason, ReleaseReason::Expired);
    assert_eq!(
        s.allocation(order).await.status(),
        AllocationStatus::Released
    );
    let apple = s.stock("APPLE").await;
    assert_eq!((apple.on_hand(), apple.reserved_for(order)), (2, 0));
    s.assert_conserved("APPLE").await;
}

#[tokio::test]
async fn other_rejections_release_at_most_once() {
    let s = Setup::new().await;
    s.receive("APPLE", 4).await;
    let [declined, declined_late, short] = [OrderId::new(), OrderId::new(), OrderId::new()];
    s.handle(&[placed(declined, &[("APPLE", 2)])]).await;
    s.handle(&[placed(declined_late, &[("APPLE", 2)])]).await;
    s.handle(&[placed(short, &[("APPLE", 1)])]).await;
    assert_eq!(
        s.allocation(short).await.status(),
        AllocationStatus::Rejected
    );

    // The decline itself released the stock; the rejection that follows is a no-op.
    let decline = PaymentEvent::from(PaymentDeclined {
        order_id: declined,
        code: DeclineCode::Refused,
        detail: "card declined".into(),
    });
    s.handle(&[received(decline, declined)]).await;
    s.handle(&[rejected(declined, RejectionReason::PaymentDeclined)])
        .await;
    assert_eq!(s.allocation_events(declined).await.len(), 2);

    // A rejection heard before the decline releases the stock, as PaymentDeclined.
    s.handle(&[rejected(declined_late, RejectionReason::PaymentDeclined)])
        .await;
    let events = s.allocation_events(declined_late).await;
    let Some(AllocationEvent::StockReleased(released)) = events.last() else {
        panic!("expected a release, got {events:?}");
    };
    assert_eq!(released.reason, ReleaseReason::PaymentDeclined);

    // Out of stock: nothing was reserved, nothing is released.
    s.handle(&[rejected(short, RejectionReason::OutOfStock)])
        .await;
    assert_eq!(s.allocation_events(short).await.len(), 1);
    assert_eq!(
        s.allocation(short).await.status(),
        AllocationStatus::Rejected
    );
    assert_eq!(s.stock("APPLE").await.on_hand(), 4);
    s.assert_conserved("APPLE").await;
}

#[tokio::test]
async fn inventory_hears_of_rejections_and_no_longer_of_captures() {
    let ordering = BoundedContext::Ordering.stream();
    let payments = BoundedContext::Payments.stream();
    let filters: Vec<String> = consumers()
        .into_iter()
        .flat_map(|spec| spec.filter_subjects)
        .collect();
    assert!(
        filters.contains(&ordering.event_type_filter("order", "OrderRejected")),
        "{filters:?}"
    );
    assert!(
        !filters.contains(&payments.event_type_filter("payment", "PaymentCaptured")),
        "{filters:?}"
    );
}
