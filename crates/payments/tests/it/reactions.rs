use std::time::Duration as StdDuration;

use events::BoundedContext;
use events::naming::StreamName;
use events::payments::{
    DeclineCode, PaymentCaptured, PaymentDeclined, PaymentRefunded, PaymentRequested, PaymentVoided,
};
use payments::reactions::consumers;
use payments::simulator::{TOKEN_DECLINE, TOKEN_FLAKY, TOKEN_SUCCESS, TOKEN_TIMEOUT};
use payments::{ResiliencePolicy, Resilient};

use super::*;

fn requested_event(order_id: OrderId, total_minor: i64, token: &str) -> PaymentEvent {
    PaymentRequested {
        order_id,
        amount: eur(total_minor),
        payment_token: token.to_owned(),
    }
    .into()
}

fn captured_event(order_id: OrderId, total_minor: i64) -> PaymentEvent {
    PaymentCaptured {
        order_id,
        amount: eur(total_minor),
        provider_reference: format!("sim-cap-{order_id}"),
    }
    .into()
}

fn refunded_event(order_id: OrderId, total_minor: i64) -> PaymentEvent {
    PaymentRefunded {
        order_id,
        amount: eur(total_minor),
        provider_reference: format!("sim-ref-{order_id}"),
    }
    .into()
}

fn voided_event(order_id: OrderId) -> PaymentEvent {
    PaymentVoided { order_id }.into()
}

#[test]
fn payments_has_one_consumer_per_source_stream_filtered_to_the_events_it_reacts_to() {
    let ordering = BoundedContext::Ordering.stream();
    let inventory = BoundedContext::Inventory.stream();
    let specs: Vec<(String, String, Vec<String>)> = consumers()
        .into_iter()
        .map(|spec| (spec.name, spec.stream.name(), spec.filter_subjects))
        .collect();
    let filters = |stream: &StreamName, aggregate: &str, types: &[&str]| {
        types
            .iter()
            .map(|t| stream.event_type_filter(aggregate, t))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        specs,
        vec![
            (
                "payments-from-ordering".to_owned(),
                ordering.name(),
                filters(
                    &ordering,
                    "order",
                    &["OrderPlaced", "OrderCancelled", "OrderRejected"]
                ),
            ),
            (
                "payments-from-inventory".to_owned(),
                inventory.name(),
                filters(&inventory, "allocation", &["StockReserved"]),
            ),
        ]
    );
}

#[tokio::test]
async fn an_order_placed_is_requested_and_captured_once_its_stock_is_reserved() {
    let (s, sim) = Setup::with_simulator().await;
    let order = OrderId::new();
    s.handle_ok(&[placed(order, 4200, TOKEN_SUCCESS)]).await;
    assert_eq!(s.status(order).await, PaymentStatus::Requested);
    assert_eq!(sim.capture_calls(order), 0, "no capture before the stock");

    let mut stock = reserved(order);
    stock.metadata.correlation_id = Some("saga-1".into());
    s.handle_ok(std::slice::from_ref(&stock)).await;

    assert_eq!(
        s.events(order).await,
        vec![
            requested_event(order, 4200, TOKEN_SUCCESS),
            captured_event(order, 4200)
        ]
    );
    assert_eq!(sim.capture_calls(order), 1);
    let capture = s.stored(order).await.pop().unwrap();
    assert_eq!(
        (
            capture.metadata.causation_id,
            capture.metadata.correlation_id
        ),
        (Some(stock.event_id.to_string()), Some("saga-1".to_owned())),
        "the capture is caused by StockReserved and stays in its saga"
    );
}

#[tokio::test]
async fn a_declined_card_records_the_decline_and_its_rejection_undoes_nothing() {
    let (s, sim) = Setup::with_simulator().await;
    let order = OrderId::new();
    s.handle_ok(&[placed(order, 4200, TOKEN_DECLINE), reserved(order)])
        .await;
    let declined: PaymentEvent = PaymentDeclined {
        order_id: order,
        code: DeclineCode::Refused,
        detail: "card declined".into(),
    }
    .into();
    assert_eq!(
        s.events(order).await,
        vec![requested_event(order, 4200, TOKEN_DECLINE), declined]
    );

    s.handle_ok(&[rejected(order, RejectionReason::PaymentDeclined)])
        .await;
    assert_eq!(s.status(order).await, PaymentStatus::Declined);
    assert_eq!(s.events(order).await.len(), 2, "nothing to undo");
    assert_eq!((sim.capture_calls(order), sim.refund_calls(order)), (1, 0));
}

#[tokio::test]
async fn a_flaky_provider_fails_transiently_twice_committing_nothing_then_captures() {
    let (s, sim) = Setup::with_simulator().await;
    let order = OrderId::new();
    s.handle_ok(&[placed(order, 4200, TOKEN_FLAKY)]).await;
    for attempt in 1..=2 {
        let result = s.handle(reserved(order)).await;
        assert_transient(&result, &format!("capture attempt {attempt}"));
        assert_eq!(
            s.events(order).await,
            vec![requested_event(order, 4200, TOKEN_FLAKY)],
            "attempt {attempt} committed something"
        );
    }
    s.handle_ok(&[reserved(order)]).await;
    assert_eq!(
        s.events(order).await,
        vec![
            requested_event(order, 4200, TOKEN_FLAKY),
            captured_event(order, 4200)
        ]
    );
    assert_eq!(sim.capture_calls(order), 3);
}

#[tokio::test]
async fn a_provider_that_times_out_fails_transiently_every_time_and_commits_nothing() {
    let (s, sim) = Setup::with_simulator().await;
    let order = OrderId::new();
    s.handle_ok(&[placed(order, 4200, TOKEN_TIMEOUT)]).await;
    for attempt in 1..=4 {
        let result = s.handle(reserved(order)).await;
        assert_transient(&result, &format!("capture attempt {attempt}"));
    }
    assert_eq!(s.status(order).await, PaymentStatus::Requested);
    assert_eq!(s.events(order).await.len(), 1, "only the request");
    assert_eq!(
        sim.capture_calls(order),
        4,
        "each attempt asked the provider"
    );
}

#[tokio::test]
async fn cancelling_after_capture_refunds_the_captured_amount() {
    let (s, sim) = Setup::with_simulator().await;
    let order = OrderId::new();
    s.handle_ok(&[placed(order, 4200, TOKEN_SUCCESS), reserved(order)])
        .await;
    s.handle_ok(&[cancelled(order)]).await;
    assert_eq!(
        s.events(order).await,
        vec![
            requested_event(order, 4200, TOKEN_SUCCESS),
            captured_event(order, 4200),
            refunded_event(order, 4200)
        ]
    );
    let payment = s.payment(order).await;
    assert_eq!(
        (payment.status(), payment.captured(), payment.refunded()),
        (PaymentStatus::Refunded, Some(eur(4200)), Some(eur(4200)))
    );
    assert_eq!(sim.refund_calls(order), 1);
}

#[tokio::test]
async fn cancelling_before_capture_voids_the_payment_and_a_late_stock_reservation_charges_nothing()
{
    let (s, sim) = Setup::with_simulator().await;
    let order = OrderId::new();
    s.handle_ok(&[placed(order, 4200, TOKEN_SUCCESS)]).await;
    s.handle_ok(&[cancelled(order)]).await;
    assert_eq!(
        s.events(order).await,
        vec![
            requested_event(order, 4200, TOKEN_SUCCESS),
            voided_event(order)
        ]
    );

    // Inventory's stream is behind ordering's: its StockReserved comes after the cancellation.
    s.handle_ok(&[reserved(order)]).await;
    assert_eq!(s.status(order).await, PaymentStatus::Voided);
    assert_eq!(
        (sim.capture_calls(order), sim.refund_calls(order)),
        (0, 0),
        "a voided payment never reaches the provider"
    );
}

#[tokio::test]
async fn a_rejected_order_is_refunded_if_its_capture_came_late_and_voided_otherwise() {
    let (s, sim) = Setup::with_simulator().await;
    // The reservation expired while the capture was still being retried; it landed anyway.
    let late = OrderId::new();
    s.handle_ok(&[placed(late, 4200, TOKEN_SUCCESS), reserved(late)])
        .await;
    s.handle_ok(&[rejected(late, RejectionReason::PaymentTimedOut)])
        .await;
    assert_eq!(
        s.events(late).await,
        vec![
            requested_event(late, 4200, TOKEN_SUCCESS),
            captured_event(late, 4200),
            refunded_event(late, 4200)
        ],
        "the money captured for a rejected order goes back"
    );
    assert_eq!(sim.refund_calls(late), 1);

    // Out of stock: never captured, so voided.
    let short = OrderId::new();
    s.handle_ok(&[
        placed(short, 1500, TOKEN_SUCCESS),
        rejected(short, RejectionReason::OutOfStock),
    ])
    .await;
    assert_eq!(
        s.events(short).await,
        vec![
            requested_event(short, 1500, TOKEN_SUCCESS),
            voided_event(short)
        ]
    );
    assert_eq!((sim.capture_calls(short), sim.refund_calls(short)), (0, 0));
}

#[tokio::test]
async fn redelivered_messages_have_no_second_effect() {
    let (s, sim) = Setup::with_simulator().await;
    let order = OrderId::new();
    let place = placed(order, 4200, TOKEN_SUCCESS);
    let stock = reserved(order);
    // Redelivered within one batch and across batches.
    s.handle_ok(&[place.clone(), place.clone()]).await;
    s.handle_ok(&[place]).await;
    s.handle_ok(&[stock.clone(), stock.clone()]).await;
    s.handle_ok(&[stock]).await;
    assert_eq!(sim.capture_calls(order), 1, "captured once");
    let cancel = cancelled(order);
    s.handle_ok(std::slice::from_ref(&cancel)).await;
    s.handle_ok(&[cancel, rejected(order, RejectionReason::PaymentTimedOut)])
        .await;
    assert_eq!(sim.refund_calls(order), 1, "refunded once");
    assert_eq!(
        s.event_types(order).await,
        ["PaymentRequested", "PaymentCaptured", "PaymentRefunded"]
    );
}

#[tokio::test]
async fn stock_reserved_before_its_order_reaches_payments_is_retried_until_it_has() {
    let (s, sim) = Setup::with_simulator().await;
    let order = OrderId::new();
    let result = s.handle(reserved(order)).await;
    assert!(
        matches!(result, Err(HandlerError::Early(_))),
        "capture before the request: expected an early message (retried soon), got {result:?}"
    );
    assert!(s.events(order).await.is_empty(), "nothing committed");
    assert_eq!(sim.capture_calls(order), 0);

    s.handle_ok(&[placed(order, 4200, TOKEN_SUCCESS)]).await;
    s.handle_ok(&[reserved(order)]).await;
    assert_eq!(s.status(order).await, PaymentStatus::Captured);
}

#[tokio::test]
async fn an_order_payments_can_never_charge_or_an_unreadable_message_fails_permanently() {
    let (s, _sim) = Setup::with_simulator().await;
    for (what, total_minor, token) in [
        ("a blank token", 4200, "  "),
        ("a total of zero", 0, TOKEN_SUCCESS),
    ] {
        let order = OrderId::new();
        let result = s.handle(placed(order, total_minor, token)).await;
        assert_permanent(&result, what);
        assert!(
            s.events(order).await.is_empty(),
            "{what}: nothing committed"
        );
    }

    let mut unreadable = placed(OrderId::new(), 4200, TOKEN_SUCCESS);
    unreadable.payload = "{\"order_id\": 42}".into();
    assert_permanent(&s.handle(unreadable).await, "an undecodable payload");
}

#[tokio::test]
async fn a_refund_the_provider_cannot_take_fails_transiently_and_commits_nothing() {
    // The real wrapper around the simulator: one failed call opens its circuit breaker.
    let policy = ResiliencePolicy {
        timeout: StdDuration::from_secs(5),
        attempts: 1,
        backoff_initial: StdDuration::ZERO,
        backoff_max: StdDuration::ZERO,
        breaker_threshold: 1,
        breaker_cooldown: StdDuration::from_secs(3600),
    };
    let provider: Arc<dyn PaymentProvider> = Arc::new(Resilient::new(Simulator::new(), policy));
    let s = Setup::new(provider).await;
    let paid = OrderId::new();
    s.handle_ok(&[placed(paid, 4200, TOKEN_SUCCESS), reserved(paid)])
        .await;
    let unreachable = OrderId::new();
    s.handle_ok(&[placed(unreachable, 1000, TOKEN_TIMEOUT)])
        .await;
    assert_transient(&s.handle(reserved(unreachable)).await, "timed-out capture");

    // The breaker is open now: the compensation cannot reach the provider.
    for attempt in 1..=2 {
        let result = s.handle(cancelled(paid)).await;
        assert_transient(&result, &format!("refund attempt {attempt}"));
    }
    assert_eq!(
        s.event_types(paid).await,
        ["PaymentRequested", "PaymentCaptured"],
        "still captured: the refund is owed, not lost"
    );
}

#[tokio::test]
async fn money_is_conserved_across_a_mixed_set_of_orders() {
    let (s, sim) = Setup::with_simulator().await;
    let [
        kept,
        refunded,
        declined,
        voided,
        flaky,
        late,
        timed_out,
        redelivered,
        out_of_stock,
    ] = [(); 9].map(|()| OrderId::new());
    let place = placed(redelivered, 8000, TOKEN_SUCCESS);
    let stock = reserved(redelivered);

    // Batches as a consumer would take them, each message rolled back alone when it fails.
    let ok = |r: &Result<(), HandlerError>| r.is_ok();
    let batch = s
        .handle_batch(&[
            placed(kept, 1000, TOKEN_SUCCESS),
            placed(refunded, 2000, TOKEN_SUCCESS),
            placed(declined, 3000, TOKEN_DECLINE),
            placed(voided, 4000, TOKEN_SUCCESS),
            placed(flaky, 5000, TOKEN_FLAKY),
            placed(late, 6000, TOKEN_SUCCESS),
            placed(timed_out, 7000, TOKEN_TIMEOUT),
            place.clone(),
            place,
            placed(out_of_stock, 9000, TOKEN_SUCCESS),
            cancelled(voided),
            rejected(out_of_stock, RejectionReason::OutOfStock),
        ])
        .await;
    assert!(batch.iter().all(ok), "{batch:?}");

    let batch = s
        .handle_batch(&[
            reserved(kept),
            reserved(refunded),
            reserved(declined),
            reserved(voided),
            reserved(flaky),
            reserved(late),
            reserved(timed_out),
            stock.clone(),
        ])
        .await;
    let failed: Vec<usize> = (0..batch.len()).filter(|&i| !ok(&batch[i])).collect();
    assert_eq!(failed, [4, 6], "only flaky and timed out fail: {batch:?}");

    let batch = s
        .handle_batch(&[
            cancelled(refunded),
            rejected(declined, RejectionReason::PaymentDeclined),
            rejected(late, RejectionReason::PaymentTimedOut),
            reserved(flaky),
            reserved(timed_out),
            stock.clone(),
        ])
        .await;
    let failed: Vec<usize> = (0..batch.len()).filter(|&i| !ok(&batch[i])).collect();
    assert_eq!(failed, [3, 4], "flaky fails a second time: {batch:?}");

    let batch = s
        .handle_batch(&[
            reserved(flaky),
            rejected(timed_out, RejectionReason::PaymentTimedOut),
            reserved(timed_out),
            stock,
            cancelled(voided),
        ])
        .await;
    assert!(batch.iter().all(ok), "{batch:?}");

    let orders = [
        kept,
        refunded,
        declined,
        voided,
        flaky,
        late,
        timed_out,
        redelivered,
        out_of_stock,
    ];
    let (mut captured, mut paid_back) = (0, 0);
    for order in orders {
        for event in s.events(order).await {
            match event {
                PaymentEvent::PaymentCaptured(c) => captured += c.amount.amount_minor,
                PaymentEvent::PaymentRefunded(r) => paid_back += r.amount.amount_minor,
                _ => {}
            }
        }
    }
    assert_eq!(
        captured - paid_back,
        1000 + 5000 + 8000,
        "kept: the orders captured and neither cancelled nor rejected"
    );
    assert_eq!(captured, 1000 + 2000 + 5000 + 6000 + 8000);

    use PaymentStatus as S;
    let expected = [
        (kept, S::Captured),
        (refunded, S::Refunded),
        (declined, S::Declined),
        (voided, S::Voided),
        (flaky, S::Captured),
        (late, S::Refunded),
        (timed_out, S::Voided),
        (redelivered, S::Captured),
        (out_of_stock, S::Voided),
    ];
    for (order, status) in expected {
        assert_eq!(s.status(order).await, status, "order {order}");
    }
    assert_eq!(sim.capture_calls(redelivered), 1, "captured once");
    assert_eq!(sim.capture_calls(voided), 0, "voided before its stock");
}

/// A payment declined before decline codes existed: its `PaymentDeclined` was stored as schema
/// version 1 (`{order_id, reason}`), and must still load, as version 2.
#[tokio::test]
async fn a_decline_stored_as_version_1_loads_as_version_2() {
    let (s, _sim) = Setup::with_simulator().await;
    let order = OrderId::new();
    let id = order.to_string();
    let rows = [
        (
            1,
            "PaymentRequested",
            1,
            serde_json::json!({
                "order_id": id,
                "amount": { "amount_minor": 4200, "currency": "EUR" },
                "payment_token": TOKEN_DECLINE,
            }),
        ),
        (
            2,
            "PaymentDeclined",
            1,
            serde_json::json!({ "order_id": id, "reason": "card declined" }),
        ),
    ];
    for (sequence, event_type, version, payload) in rows {
        sqlx::query(
            "INSERT INTO events (event_id, aggregate_type, aggregate_id, sequence, event_type, \
             schema_version, payload, metadata) VALUES ($1, 'payment', $2, $3, $4, $5, $6, '{}')",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(&id)
        .bind(sequence)
        .bind(event_type)
        .bind(version)
        .bind(payload)
        .execute(s.store.pool())
        .await
        .unwrap();
    }

    let payment = s.payment(order).await;
    assert_eq!(payment.status(), PaymentStatus::Declined);
    assert_eq!(
        payment.decline(),
        Some((DeclineCode::Unclassified, "card declined"))
    );
    let declined: PaymentEvent = PaymentDeclined {
        order_id: order,
        code: DeclineCode::Unclassified,
        detail: "card declined".into(),
    }
    .into();
    assert_eq!(s.events(order).await[1], declined, "read through the store");
}
