//! The saga's paths, one system each, driven from the commands a client sends. Each ends by
//! checking the invariants (`invariants::check`) on the settled system.

use std::collections::HashMap;

use events::BoundedContext;
use events::command::CommandReply;
use events::inventory::{AllocationEvent, ReleaseReason};
use events::ordering::RejectionReason;
use events::payments::PaymentEvent;
use events::values::{Money, OrderId};
use inventory::AllocationStatus;
use ordering::OrderStatus;
use payments::PaymentStatus;
use payments::simulator::FLAKY_FAILURES;
use shipping::ShipmentStatus;

use crate::invariants;
use crate::system::{Options, System, eur, wait};

const SUCCESS: &str = "tok_success";
const DECLINE: &str = "tok_decline";
const TIMEOUT: &str = "tok_timeout";
const FLAKY: &str = "tok_flaky";

fn expect(orders: &[(OrderId, OrderStatus)]) -> HashMap<OrderId, OrderStatus> {
    orders.iter().copied().collect()
}

/// Waits until shipping has scheduled the order's shipment (it reacts to `OrderConfirmed`).
async fn wait_for_shipment(system: &System, order_id: OrderId, status: ShipmentStatus) {
    wait(
        &format!("the shipment of {order_id} to be {status:?}"),
        || async move { system.shipment(order_id).await.status() == status },
    )
    .await;
}

/// (on hand, reserved, committed) of a SKU.
async fn stock_levels(system: &System, sku: &str) -> (u32, u64, u64) {
    let item = system.stock(sku).await;
    (item.on_hand(), item.reserved_total(), item.committed())
}

fn payment_events_captured(events: &[PaymentEvent]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, PaymentEvent::PaymentCaptured(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_in_stock_and_paid_is_confirmed_shipped_and_delivered() {
    an_order_is_confirmed_shipped_and_delivered(&System::start().await).await;
}

/// The happy path on `system`: placed, confirmed, shipped, delivered; stock committed. Also
/// run under the accounts of `nats/` (`security`).
pub async fn an_order_is_confirmed_shipped_and_delivered(system: &System) {
    system.define_product("BOOK", 1_500).await;
    system.define_product("PEN", 250).await;
    system.receive("BOOK", 5).await;
    system.receive("PEN", 10).await;

    let order = system.place(&[("BOOK", 2), ("PEN", 3)], SUCCESS).await;
    system.wait_for_status(order, OrderStatus::Confirmed).await;
    let payment = system.payment(order).await;
    assert_eq!(payment.status(), PaymentStatus::Captured);
    assert_eq!(payment.captured(), Some(Money::new(3_750, eur())));

    wait_for_shipment(system, order, ShipmentStatus::Scheduled).await;
    system.dispatch(order).await;
    system.wait_for_status(order, OrderStatus::Shipped).await;
    system.deliver(order).await;
    system.wait_for_status(order, OrderStatus::Delivered).await;

    invariants::check(system, &expect(&[(order, OrderStatus::Delivered)])).await;
    assert_eq!(
        system.allocation(order).await.status(),
        AllocationStatus::Committed
    );
    assert_eq!(stock_levels(system, "BOOK").await, (3, 0, 2));
    assert_eq!(stock_levels(system, "PEN").await, (7, 0, 3));
    assert_eq!(system.simulator().capture_calls(order), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_with_one_line_short_is_rejected_and_reserves_nothing() {
    let system = System::start().await;
    for (sku, price) in [("APPLE", 100), ("PEAR", 200), ("PLUM", 300)] {
        system.define_product(sku, price).await;
    }
    system.receive("APPLE", 10).await;
    system.receive("PEAR", 1).await;
    system.receive("PLUM", 5).await;

    let order = system
        .place(&[("APPLE", 2), ("PEAR", 3), ("PLUM", 1)], SUCCESS)
        .await;
    system.wait_for_status(order, OrderStatus::Rejected).await;
    assert_eq!(
        system.rejection_reason(order).await,
        Some(RejectionReason::OutOfStock)
    );

    invariants::check(&system, &expect(&[(order, OrderStatus::Rejected)])).await;
    let allocation = system.allocation_events(order).await;
    let [AllocationEvent::StockRejected(rejected)] = allocation.as_slice() else {
        panic!("expected one StockRejected, got {allocation:?}");
    };
    let short: Vec<_> = rejected
        .shortages
        .iter()
        .map(|s| (s.sku.to_string(), s.requested.get(), s.available))
        .collect();
    assert_eq!(short, vec![("PEAR".to_owned(), 3, 1)]);
    assert_eq!(stock_levels(&system, "APPLE").await, (10, 0, 0));
    assert_eq!(stock_levels(&system, "PEAR").await, (1, 0, 0));
    assert_eq!(stock_levels(&system, "PLUM").await, (5, 0, 0));
    // Voided, or declined if the capture retry reached the provider after its void.
    let status = system.payment(order).await.status();
    assert!(
        matches!(status, PaymentStatus::Voided | PaymentStatus::Declined),
        "{status:?}"
    );
    assert!(
        !system.simulator().holds_money(order),
        "the provider kept money"
    );
    assert_eq!(system.simulator().capture_calls(order), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_rejects_the_order_and_releases_its_stock() {
    a_declined_payment_is_compensated(&System::start().await).await;
}

/// The compensation of a declined payment on `system`: rejected `PaymentDeclined`, stock
/// released. Also run under the accounts of `nats/` (`security`).
pub async fn a_declined_payment_is_compensated(system: &System) {
    system.define_product("LAMP", 4_200).await;
    system.receive("LAMP", 5).await;

    let order = system.place(&[("LAMP", 2)], DECLINE).await;
    system.wait_for_status(order, OrderStatus::Rejected).await;
    assert_eq!(
        system.rejection_reason(order).await,
        Some(RejectionReason::PaymentDeclined)
    );

    invariants::check(system, &expect(&[(order, OrderStatus::Rejected)])).await;
    assert_eq!(
        system.payment(order).await.status(),
        PaymentStatus::Declined
    );
    let allocation = system.allocation_events(order).await;
    assert!(
        matches!(
            allocation.as_slice(),
            [AllocationEvent::StockReserved(_), AllocationEvent::StockReleased(r)]
                if r.reason == ReleaseReason::PaymentDeclined
        ),
        "{allocation:?}"
    );
    assert_eq!(stock_levels(system, "LAMP").await, (5, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_that_never_answers_times_out_rejects_the_order_and_releases_the_stock() {
    let system = System::start_with(Options {
        payment_timeout: chrono::Duration::seconds(3),
        ..Options::default()
    })
    .await;
    system.define_product("CHAIR", 9_900).await;
    system.receive("CHAIR", 5).await;

    let order = system.place(&[("CHAIR", 2)], TIMEOUT).await;
    system.wait_for_status(order, OrderStatus::Rejected).await;
    assert_eq!(
        system.rejection_reason(order).await,
        Some(RejectionReason::PaymentTimedOut)
    );

    invariants::check(&system, &expect(&[(order, OrderStatus::Rejected)])).await;
    let allocation = system.allocation_events(order).await;
    assert!(
        matches!(
            allocation.as_slice(),
            [AllocationEvent::StockReserved(_), AllocationEvent::StockReleased(r)]
                if r.reason == ReleaseReason::Expired
        ),
        "{allocation:?}"
    );
    assert_eq!(stock_levels(&system, "CHAIR").await, (5, 0, 0));
    let payment = system
        .aggregate_events::<PaymentEvent>(BoundedContext::Payments, &order.to_string())
        .await;
    assert!(!payment_events_captured(&payment), "{payment:?}");
    // Voided, or declined if the capture retry reached the provider after its void.
    let status = system.payment(order).await.status();
    assert!(
        matches!(status, PaymentStatus::Voided | PaymentStatus::Declined),
        "{status:?}"
    );
    assert!(
        !system.simulator().holds_money(order),
        "the provider kept money"
    );
    assert!(
        system.simulator().capture_calls(order) >= 1,
        "the capture was never tried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_provider_that_fails_transiently_is_retried_and_the_order_confirmed() {
    let system = System::start().await;
    system.define_product("KETTLE", 3_000).await;
    system.receive("KETTLE", 3).await;

    let order = system.place(&[("KETTLE", 1)], FLAKY).await;
    system.wait_for_status(order, OrderStatus::Confirmed).await;

    invariants::check(&system, &expect(&[(order, OrderStatus::Confirmed)])).await;
    assert_eq!(
        system.simulator().capture_calls(order),
        FLAKY_FAILURES + 1,
        "two failed attempts, then the capture; none after it"
    );
    assert_eq!(stock_levels(&system, "KETTLE").await, (2, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_cancelled_after_capture_is_refunded_released_and_its_shipment_cancelled() {
    let system = System::start().await;
    system.define_product("BIKE", 50_000).await;
    system.receive("BIKE", 5).await;

    let order = system.place(&[("BIKE", 2)], SUCCESS).await;
    system.wait_for_status(order, OrderStatus::Confirmed).await;
    wait_for_shipment(&system, order, ShipmentStatus::Scheduled).await;
    let reply = system.cancel(order).await;
    assert!(matches!(reply, CommandReply::Accepted { .. }), "{reply:?}");
    system.wait_for_status(order, OrderStatus::Cancelled).await;

    invariants::check(&system, &expect(&[(order, OrderStatus::Cancelled)])).await;
    let payment = system.payment(order).await;
    assert_eq!(payment.status(), PaymentStatus::Refunded);
    assert_eq!(payment.refunded(), Some(Money::new(100_000, eur())));
    assert_eq!(system.simulator().refund_calls(order), 1);
    assert_eq!(
        system.shipment(order).await.status(),
        ShipmentStatus::Cancelled
    );
    let allocation = system.allocation_events(order).await;
    assert!(
        matches!(
            allocation.as_slice(),
            [AllocationEvent::StockReserved(_), AllocationEvent::StockReleased(r)]
                if r.reason == ReleaseReason::OrderCancelled
        ),
        "{allocation:?}"
    );
    assert_eq!(stock_levels(&system, "BIKE").await, (5, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_cancelled_before_capture_is_voided_and_released() {
    let system = System::start().await;
    system.define_product("DESK", 25_000).await;
    system.receive("DESK", 5).await;

    let order = system.place(&[("DESK", 1)], TIMEOUT).await;
    let reply = system.cancel(order).await;
    assert!(matches!(reply, CommandReply::Accepted { .. }), "{reply:?}");
    system.wait_for_status(order, OrderStatus::Cancelled).await;

    invariants::check(&system, &expect(&[(order, OrderStatus::Cancelled)])).await;
    // Voided, or declined if the capture retry reached the provider after its void.
    let status = system.payment(order).await.status();
    assert!(
        matches!(status, PaymentStatus::Voided | PaymentStatus::Declined),
        "{status:?}"
    );
    assert!(
        !system.simulator().holds_money(order),
        "the provider kept money"
    );
    let payment = system
        .aggregate_events::<PaymentEvent>(BoundedContext::Payments, &order.to_string())
        .await;
    assert!(!payment_events_captured(&payment), "{payment:?}");
    assert_eq!(system.simulator().refund_calls(order), 0);
    assert_eq!(
        system.shipment(order).await.status(),
        ShipmentStatus::NotScheduled
    );
    assert_eq!(stock_levels(&system, "DESK").await, (5, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_orders_for_scarce_stock_confirm_exactly_what_is_on_hand() {
    const STOCK: usize = 10;
    const ORDERS: usize = 30;
    let system = System::start().await;
    system.define_product("GPU", 99_900).await;
    system.receive("GPU", STOCK as u32).await;

    let placing = (0..ORDERS).map(|_| system.place(&[("GPU", 1)], SUCCESS));
    let orders = futures::future::join_all(placing).await;
    for &order in &orders {
        system
            .wait_for_order(order, "confirmed or rejected", |s| {
                matches!(s, Some(OrderStatus::Confirmed | OrderStatus::Rejected))
            })
            .await;
    }

    let mut expected = HashMap::new();
    let (mut confirmed, mut rejected) = (0, 0);
    for &order in &orders {
        let status = system.order_status(order).await.unwrap();
        if status == OrderStatus::Rejected {
            rejected += 1;
            assert_eq!(
                system.rejection_reason(order).await,
                Some(RejectionReason::OutOfStock)
            );
        } else {
            confirmed += 1;
        }
        expected.insert(order, status);
    }
    assert_eq!((confirmed, rejected), (STOCK, ORDERS - STOCK));
    invariants::check(&system, &expected).await;
    assert_eq!(stock_levels(&system, "GPU").await, (0, STOCK as u64, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_delivered_again_under_new_message_ids_change_nothing() {
    let system = System::start().await;
    system.define_product("MUG", 800).await;
    system.define_product("TEA", 450).await;
    system.receive("MUG", 4).await;
    system.receive("TEA", 10).await;

    let delivered = system.place(&[("MUG", 1), ("TEA", 2)], SUCCESS).await;
    let declined = system.place(&[("TEA", 1)], DECLINE).await;
    let short = system.place(&[("MUG", 9)], SUCCESS).await;
    let cancelled = system.place(&[("MUG", 2)], SUCCESS).await;
    let confirmed = system.place(&[("TEA", 3)], SUCCESS).await;
    system
        .wait_for_status(delivered, OrderStatus::Confirmed)
        .await;
    wait_for_shipment(&system, delivered, ShipmentStatus::Scheduled).await;
    system.dispatch(delivered).await;
    system
        .wait_for_status(delivered, OrderStatus::Shipped)
        .await;
    system.deliver(delivered).await;
    system
        .wait_for_status(cancelled, OrderStatus::Confirmed)
        .await;
    let reply = system.cancel(cancelled).await;
    assert!(matches!(reply, CommandReply::Accepted { .. }), "{reply:?}");
    let expected = expect(&[
        (delivered, OrderStatus::Delivered),
        (declined, OrderStatus::Rejected),
        (short, OrderStatus::Rejected),
        (cancelled, OrderStatus::Cancelled),
        (confirmed, OrderStatus::Confirmed),
    ]);
    for (&order, &status) in &expected {
        system.wait_for_status(order, status).await;
    }
    invariants::check(&system, &expected).await;
    let events_before = system.event_counts().await;
    let stock_before = (
        stock_levels(&system, "MUG").await,
        stock_levels(&system, "TEA").await,
    );

    for context in [BoundedContext::Ordering, BoundedContext::Inventory] {
        let in_stream = system.stream_messages(context).await;
        let republished = system.republish(context).await;
        assert!(republished > 0);
        assert_eq!(
            system.stream_messages(context).await,
            in_stream + republished as u64,
            "every republished event is in {context}'s stream again"
        );
    }

    invariants::check(&system, &expected).await;
    assert_eq!(
        system.event_counts().await,
        events_before,
        "a redelivered event was handled again"
    );
    let stock_after = (
        stock_levels(&system, "MUG").await,
        stock_levels(&system, "TEA").await,
    );
    assert_eq!(stock_after, stock_before);
    for &order in expected.keys() {
        assert!(system.simulator().capture_calls(order) <= 1);
        assert!(system.simulator().refund_calls(order) <= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_wait_for_a_stopped_service_and_finish_when_it_is_back() {
    let mut system = System::start().await;
    system.define_product("SOFA", 70_000).await;
    system.receive("SOFA", 10).await;

    system.stop_service(BoundedContext::Payments).await;
    let mut orders = Vec::new();
    for _ in 0..5 {
        orders.push(system.place(&[("SOFA", 1)], SUCCESS).await);
    }
    let reader = &system;
    for &order in &orders {
        wait(&format!("stock reserved for {order}"), || async move {
            reader.allocation(order).await.status() == AllocationStatus::Reserved
        })
        .await;
    }
    for &order in &orders {
        assert_eq!(
            system.order_status(order).await,
            Some(OrderStatus::Placed),
            "no payment, no confirmation"
        );
    }
    assert!(
        system.events(BoundedContext::Payments).await.is_empty(),
        "payments wrote while stopped"
    );

    system.start_service(BoundedContext::Payments).await;
    for &order in &orders {
        system.wait_for_status(order, OrderStatus::Confirmed).await;
    }
    let expected: HashMap<_, _> = orders
        .iter()
        .map(|&order| (order, OrderStatus::Confirmed))
        .collect();
    invariants::check(&system, &expected).await;
    assert_eq!(stock_levels(&system, "SOFA").await, (5, 5, 0));
}

/// A capture that ordering learns of only after the order's payment deadline has passed: the
/// capture and the timeout race in the `Order` aggregate, which owns the deadline (ADR 0008).
/// Ordering is stopped while payments captures; it starts again after the deadline, so its
/// ticker may fire before its consumer delivers the `PaymentCaptured`, or after. Whichever
/// wins, the decision is taken once, in the order, and the contexts end up agreeing: confirmed
/// with its stock held and no refund, or rejected `PaymentTimedOut` with the payment refunded
/// and the stock released (`Expired`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_that_ordering_learns_of_after_the_deadline_leaves_the_contexts_agreeing() {
    let mut system = System::start_with(Options {
        payment_timeout: chrono::Duration::seconds(3),
        ..Options::default()
    })
    .await;
    system.define_product("CLOCK", 1_200).await;
    system.receive("CLOCK", 5).await;

    system.stop_service(BoundedContext::Payments).await;
    let order = system.place(&[("CLOCK", 1)], SUCCESS).await;
    let reader = &system;
    wait(&format!("stock reserved for {order}"), || async move {
        reader.allocation(order).await.status() == AllocationStatus::Reserved
    })
    .await;
    let due_at = system
        .payment_deadline(order)
        .await
        .expect("ordering scheduled the payment deadline with the order")
        .due_at;
    system.stop_service(BoundedContext::Ordering).await;
    system.start_service(BoundedContext::Payments).await;
    let reader = &system;
    wait(&format!("the payment of {order} captured"), || async move {
        reader.payment(order).await.status() == PaymentStatus::Captured
    })
    .await;
    assert_eq!(
        system.order_status(order).await,
        Some(OrderStatus::Placed),
        "ordering was stopped: it cannot have heard of the capture"
    );
    wait("the payment deadline to pass", || async move {
        chrono::Utc::now() > due_at
    })
    .await;
    system.start_service(BoundedContext::Ordering).await;
    system
        .wait_for_order(order, "confirmed or rejected", |status| {
            matches!(status, Some(OrderStatus::Confirmed | OrderStatus::Rejected))
        })
        .await;

    system.settle().await;
    let status = system.order_status(order).await.unwrap();
    invariants::check(&system, &expect(&[(order, status)])).await;
    let allocation = system.allocation_events(order).await;
    let payment = system
        .aggregate_events::<PaymentEvent>(BoundedContext::Payments, &order.to_string())
        .await;
    assert!(payment_events_captured(&payment), "{payment:?}");
    match status {
        OrderStatus::Confirmed => {
            assert_eq!(
                system.payment(order).await.status(),
                PaymentStatus::Captured
            );
            assert_eq!(
                system.allocation(order).await.status(),
                AllocationStatus::Reserved
            );
            assert_eq!(stock_levels(&system, "CLOCK").await, (4, 1, 0));
        }
        OrderStatus::Rejected => {
            assert_eq!(
                system.rejection_reason(order).await,
                Some(RejectionReason::PaymentTimedOut)
            );
            assert_eq!(
                system.payment(order).await.status(),
                PaymentStatus::Refunded
            );
            assert!(
                matches!(
                    allocation.as_slice(),
                    [AllocationEvent::StockReserved(_), AllocationEvent::StockReleased(r)]
                        if r.reason == ReleaseReason::Expired
                ),
                "{allocation:?}"
            );
            assert_eq!(stock_levels(&system, "CLOCK").await, (5, 0, 0));
        }
        other => panic!("order {order} ended {other:?}"),
    }
}
