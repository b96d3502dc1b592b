//! Ordering's payment deadline (ADR 0008): scheduled with `OrderPlaced`, removed by whatever
//! confirms, rejects or cancels the order, and a rejection `PaymentTimedOut` when it fires on an
//! order still waiting for its payment.

use std::sync::Arc;

use chrono::{Duration, Utc};
use events::Metadata;
use events::command::CommandReply;
use events::ordering::{OrderEvent, RejectionReason};
use events::values::OrderId;
use eventstore::{Deadline, DeadlineHandler, UnitOfWork};
use ordering::commands::OrderingCommands;
use ordering::{OrderError, OrderStatus, PAYMENT_TIMEOUT};

use crate::support::{Setup, captured, declined, defined, eur, payment_timeout, stock_rejected};

async fn with_catalogue() -> Setup {
    let s = Setup::new().await;
    s.handle(&[defined("MUG", "Mug", eur(250))]).await;
    s
}

async fn placed(s: &Setup) -> OrderId {
    let order = OrderId::new();
    s.place(order, &[("MUG", 1)]).await.unwrap();
    order
}

/// Past every deadline these tests schedule.
fn later() -> chrono::DateTime<Utc> {
    Utc::now() + payment_timeout() + Duration::minutes(1)
}

/// Fires the order's payment deadline directly, as the ticker would, whether or not one is
/// still scheduled (a firing that raced the change that removed it).
async fn fire(s: &Setup, order: OrderId) {
    let deadline = Deadline {
        kind: PAYMENT_TIMEOUT.to_owned(),
        key: order.to_string(),
        due_at: Utc::now(),
        payload: serde_json::json!({}),
        attempts: 0,
        last_error: None,
        failed_at: None,
    };
    let mut uow = UnitOfWork::new(&s.store);
    s.reactions
        .fire(&mut uow, &deadline, later())
        .await
        .unwrap();
    uow.commit().await.unwrap();
}

#[tokio::test]
async fn the_payment_deadline_is_scheduled_with_order_placed() {
    let s = with_catalogue().await;
    let before = Utc::now();
    let order = placed(&s).await;
    let after = Utc::now();

    let deadline = s.payment_deadline(order).await.expect("a payment deadline");
    assert_eq!(deadline.kind, PAYMENT_TIMEOUT);
    assert_eq!(deadline.key, order.to_string());
    assert!(
        deadline.due_at >= before + payment_timeout() - Duration::microseconds(1)
            && deadline.due_at <= after + payment_timeout(),
        "{deadline:?}"
    );
    assert_eq!(
        deadline.due_at.timestamp_subsec_nanos() % 1_000,
        0,
        "kept to the microsecond"
    );

    // A refused placement schedules nothing and leaves the first deadline as it was.
    let again = s.place(order, &[("MUG", 2)]).await.unwrap_err();
    assert_eq!(again.rejection(), Some(&OrderError::AlreadyPlaced));
    assert_eq!(s.payment_deadline(order).await, Some(deadline));
    let unknown = OrderId::new();
    assert!(s.place(unknown, &[("PEN", 1)]).await.is_err());
    assert_eq!(s.payment_deadline(unknown).await, None);
}

#[tokio::test]
async fn an_order_still_placed_when_its_deadline_fires_is_rejected_payment_timed_out() {
    let s = with_catalogue().await;
    let order = placed(&s).await;
    assert_eq!(s.tick(Utc::now()).await, 0, "not due yet");

    assert_eq!(s.tick(later()).await, 1);
    assert_eq!(s.status(order).await, Some(OrderStatus::Rejected));
    let events = s.order_events(order).await;
    let Some(OrderEvent::OrderRejected(rejected)) = events.last() else {
        panic!("expected a rejection, got {events:?}");
    };
    assert_eq!(rejected.reason, RejectionReason::PaymentTimedOut);
    assert_eq!(rejected.detail, "not paid within 900 s");
    assert_eq!(s.payment_deadline(order).await, None);
    assert!(s.store.failed_deadlines().await.unwrap().is_empty());

    // Fired again (a firing that raced): nothing more. A capture after it: still rejected
    // (payments refunds the capture, reacting to the rejection).
    fire(&s, order).await;
    s.handle(&[captured(order)]).await;
    assert_eq!(s.order_events(order).await.len(), 2, "placed, rejected");
    assert_eq!(s.status(order).await, Some(OrderStatus::Rejected));
}

#[tokio::test]
async fn a_deadline_that_fires_on_a_confirmed_order_does_nothing() {
    let s = with_catalogue().await;
    let order = placed(&s).await;
    s.handle(&[captured(order)]).await;
    assert_eq!(s.status(order).await, Some(OrderStatus::Confirmed));

    assert_eq!(s.tick(later()).await, 0, "confirming removed the deadline");
    fire(&s, order).await;
    assert_eq!(s.status(order).await, Some(OrderStatus::Confirmed));
    assert_eq!(s.order_events(order).await.len(), 2, "placed, confirmed");
}

#[tokio::test]
async fn confirming_rejecting_and_cancelling_remove_the_deadline() {
    let s = with_catalogue().await;
    let [confirmed, declined_order, short, cancelled, waiting] = [
        placed(&s).await,
        placed(&s).await,
        placed(&s).await,
        placed(&s).await,
        placed(&s).await,
    ];
    for order in [confirmed, declined_order, short, cancelled, waiting] {
        assert!(s.payment_deadline(order).await.is_some());
    }

    s.handle(&[captured(confirmed)]).await;
    s.handle(&[declined(declined_order, "card declined")]).await;
    s.handle(&[stock_rejected(short, &[("MUG", 1, 0)])]).await;
    let commands = OrderingCommands::new(Arc::clone(&s.reactions));
    let body = serde_json::json!({ "order_id": cancelled }).to_string();
    let reply = commands.cancel(body.as_bytes(), &Metadata::default()).await;
    assert!(
        matches!(reply, CommandReply::Accepted { version: 2, .. }),
        "{reply:?}"
    );

    for order in [confirmed, declined_order, short, cancelled] {
        assert_eq!(s.payment_deadline(order).await, None, "order {order}");
    }
    assert!(s.payment_deadline(waiting).await.is_some());
    assert_eq!(s.status(cancelled).await, Some(OrderStatus::Cancelled));

    // Only the order still waiting times out.
    assert_eq!(s.tick(later()).await, 1);
    assert_eq!(s.status(waiting).await, Some(OrderStatus::Rejected));
    assert_eq!(s.status(confirmed).await, Some(OrderStatus::Confirmed));
    assert_eq!(s.status(cancelled).await, Some(OrderStatus::Cancelled));

    // A refused cancellation removes nothing and appends nothing.
    let again = commands.cancel(body.as_bytes(), &Metadata::default()).await;
    assert!(matches!(again, CommandReply::Rejected { .. }), "{again:?}");
    assert_eq!(s.order_events(cancelled).await.len(), 2);
}
