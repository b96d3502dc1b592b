//! The fulfilment saga's paths, driven through HTTP only: operators define products and
//! receive stock, shoppers place and cancel orders, operators dispatch and deliver; the
//! outcome is read back from the API (the read models), with read-your-writes where a test
//! reads its own write.

use serde_json::Value;

use crate::system::{Options, System, wait};
use crate::{operator, order_body, shopper};

/// Places an order and returns its id, checking the 201 and its Location.
async fn place(
    system: &System,
    token: &str,
    lines: &[(&str, u32)],
    payment: &str,
) -> (String, String) {
    let answer = system
        .api
        .post("/orders", token, order_body(lines, payment))
        .await
        .expect(201);
    let order_id = answer.json["aggregate_id"].as_str().unwrap().to_owned();
    assert_eq!(answer.json["aggregate_type"], "order");
    assert_eq!(
        answer.header("location"),
        Some(format!("/orders/{order_id}").as_str())
    );
    assert_eq!(
        answer.header("chorus-consistency-token"),
        Some(answer.token().as_str())
    );
    (order_id, answer.token())
}

/// (on hand, reserved, available) of a SKU, from `GET /inventory/{sku}`.
async fn stock(system: &System, operator: &str, sku: &str) -> (i64, i64, i64) {
    let json = system
        .api
        .get(&format!("/inventory/{sku}"), Some(operator))
        .await
        .expect(200)
        .json;
    (
        json["on_hand"].as_i64().unwrap(),
        json["reserved"].as_i64().unwrap(),
        json["available"].as_i64().unwrap(),
    )
}

async fn wait_for_stock(system: &System, operator: &str, sku: &str, expected: (i64, i64, i64)) {
    wait(
        &format!("the stock of {sku} to be {expected:?}"),
        || async { stock(system, operator, sku).await == expected },
    )
    .await;
}

/// Waits until the order has a shipment in `status`.
async fn wait_for_shipment(system: &System, token: &str, order_id: &str, status: &str) {
    wait(
        &format!("the shipment of {order_id} to be {status}"),
        || async {
            let order = system
                .api
                .get(&format!("/orders/{order_id}"), Some(token))
                .await;
            order.json["shipment"]["status"] == status
        },
    )
    .await;
}

/// Waits until the order's payment shows `amount` captured.
async fn wait_for_capture(system: &System, token: &str, order_id: &str, amount: i64) {
    wait(
        &format!("the payment of {order_id} to capture {amount}"),
        || async {
            let order = system
                .api
                .get(&format!("/orders/{order_id}"), Some(token))
                .await;
            order.json["payment"]["status"] == "captured"
                && order.json["payment"]["captured_minor"] == amount
        },
    )
    .await;
}

async fn happy_path(system: &System, ops: &str) {
    system.define_product(ops, "BOOK", 1_500).await;
    system.define_product(ops, "PEN", 250).await;
    system.receive(ops, "BOOK", 5).await;
    let received = system.receive(ops, "PEN", 10).await;
    // Read-your-writes: the receipt is visible at once with its token.
    let pen = system
        .api
        .get(&format!("/products/PEN?after={received}"), None)
        .await
        .expect(200);
    assert_eq!(pen.json["available"], 10);
    assert_eq!(pen.json["price"]["amount_minor"], 250);

    let (shopper, customer) = shopper();
    let (order_id, token) =
        place(system, &shopper, &[("BOOK", 2), ("PEN", 3)], "tok_success").await;
    let placed = system
        .api
        .get(&format!("/orders/{order_id}?after={token}"), Some(&shopper))
        .await
        .expect(200);
    assert_eq!(placed.json["customer_id"], customer);
    assert_eq!(placed.json["total"]["amount_minor"], 3_750);

    system
        .wait_for_status(&shopper, &order_id, "confirmed")
        .await;
    wait_for_capture(system, &shopper, &order_id, 3_750).await;
    wait_for_shipment(system, &shopper, &order_id, "scheduled").await;

    let dispatched = system
        .api
        .post(
            &format!("/shipments/{order_id}/dispatch"),
            ops,
            serde_json::json!({ "tracking_number": "TRACK-1" }),
        )
        .await
        .expect(200);
    assert_eq!(dispatched.json["aggregate_type"], "shipment");
    system.wait_for_status(&shopper, &order_id, "shipped").await;
    system
        .api
        .post(&format!("/shipments/{order_id}/deliver"), ops, Value::Null)
        .await
        .expect(200);
    let delivered = system
        .wait_for_status(&shopper, &order_id, "delivered")
        .await;
    assert_eq!(delivered["shipment"]["tracking_number"], "TRACK-1");
    let timeline: Vec<&str> = delivered["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["event_type"].as_str().unwrap())
        .collect();
    for step in [
        "OrderPlaced",
        "StockReserved",
        "PaymentCaptured",
        "OrderConfirmed",
        "ShipmentDispatched",
        "ShipmentDelivered",
    ] {
        assert!(timeline.contains(&step), "{step} missing from {timeline:?}");
    }

    wait_for_stock(system, ops, "BOOK", (3, 0, 3)).await;
    wait_for_stock(system, ops, "PEN", (7, 0, 7)).await;

    // The shopper's list holds the order; the sales report counts it.
    let mine = system.api.get("/orders", Some(&shopper)).await.expect(200);
    let ids: Vec<&str> = mine.json["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![order_id.as_str()]);
    let today = chrono::Utc::now().date_naive();
    let from = today - chrono::Days::new(1);
    let to = today + chrono::Days::new(1);
    wait("the sales report to count the order", || async {
        let report = system
            .api
            .get(&format!("/reports/sales?from={from}&to={to}"), Some(ops))
            .await
            .expect(200);
        report.json["days"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["revenue_minor"].as_i64().unwrap())
            .sum::<i64>()
            >= 3_750
    })
    .await;
}

async fn out_of_stock(system: &System, ops: &str) {
    system.define_product(ops, "APPLE", 100).await;
    system.define_product(ops, "PEAR", 200).await;
    system.receive(ops, "APPLE", 10).await;
    system.receive(ops, "PEAR", 1).await;
    let (shopper, _) = shopper();
    let (order_id, _) = place(
        system,
        &shopper,
        &[("APPLE", 2), ("PEAR", 3)],
        "tok_success",
    )
    .await;
    let rejected = system
        .wait_for_status(&shopper, &order_id, "rejected")
        .await;
    assert_eq!(rejected["rejection_reason"], "out_of_stock");
    wait_for_stock(system, ops, "APPLE", (10, 0, 10)).await;
    wait_for_stock(system, ops, "PEAR", (1, 0, 1)).await;
}

async fn declined(system: &System, ops: &str) {
    system.define_product(ops, "LAMP", 4_200).await;
    system.receive(ops, "LAMP", 5).await;
    let (shopper, _) = shopper();
    let (order_id, _) = place(system, &shopper, &[("LAMP", 2)], "tok_decline").await;
    let rejected = system
        .wait_for_status(&shopper, &order_id, "rejected")
        .await;
    assert_eq!(rejected["rejection_reason"], "payment_declined");
    wait_for_stock(system, ops, "LAMP", (5, 0, 5)).await;
}

async fn flaky_provider(system: &System, ops: &str) {
    system.define_product(ops, "KETTLE", 3_000).await;
    system.receive(ops, "KETTLE", 3).await;
    let (shopper, _) = shopper();
    let (order_id, _) = place(system, &shopper, &[("KETTLE", 1)], "tok_flaky").await;
    system
        .wait_for_status(&shopper, &order_id, "confirmed")
        .await;
    wait_for_capture(system, &shopper, &order_id, 3_000).await;
    wait_for_stock(system, ops, "KETTLE", (3, 1, 2)).await;
}

async fn cancelled_after_capture(system: &System, ops: &str) {
    system.define_product(ops, "BIKE", 50_000).await;
    system.receive(ops, "BIKE", 5).await;
    let (shopper, _) = shopper();
    let (order_id, _) = place(system, &shopper, &[("BIKE", 2)], "tok_success").await;
    system
        .wait_for_status(&shopper, &order_id, "confirmed")
        .await;
    wait_for_shipment(system, &shopper, &order_id, "scheduled").await;
    let cancel = system
        .api
        .post(
            &format!("/orders/{order_id}/cancel"),
            &shopper,
            serde_json::json!({ "reason": "changed my mind" }),
        )
        .await
        .expect(200);
    assert_eq!(cancel.json["aggregate_id"], order_id.as_str());
    let cancelled = system
        .wait_for_status(&shopper, &order_id, "cancelled")
        .await;
    assert_eq!(cancelled["cancellation_reason"], "changed my mind");
    wait(
        &format!("the refund and the cancelled shipment of {order_id}"),
        || async {
            let order = system
                .api
                .get(&format!("/orders/{order_id}"), Some(&shopper))
                .await;
            order.json["payment"]["status"] == "refunded"
                && order.json["payment"]["refunded_minor"] == 100_000
                && order.json["shipment"]["status"] == "cancelled"
        },
    )
    .await;
    wait_for_stock(system, ops, "BIKE", (5, 0, 5)).await;
    // Cancelled once; a second cancellation is refused as the state says.
    let again = system
        .api
        .post(&format!("/orders/{order_id}/cancel"), &shopper, Value::Null)
        .await
        .expect(409);
    assert_eq!(again.code(), "already_cancelled");
}

async fn cancelled_before_capture(system: &System, ops: &str) {
    system.define_product(ops, "DESK", 25_000).await;
    system.receive(ops, "DESK", 5).await;
    let (shopper, _) = shopper();
    // The provider never answers this token: the order waits for its payment.
    let (order_id, _) = place(system, &shopper, &[("DESK", 1)], "tok_timeout").await;
    system
        .api
        .post(&format!("/orders/{order_id}/cancel"), &shopper, Value::Null)
        .await
        .expect(200);
    system
        .wait_for_status(&shopper, &order_id, "cancelled")
        .await;
    wait(
        &format!("the payment of {order_id} to end without a capture"),
        || async {
            let order = system
                .api
                .get(&format!("/orders/{order_id}"), Some(&shopper))
                .await;
            let status = order.json["payment"]["status"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            (status == "voided" || status == "declined")
                && order.json["payment"]["captured_minor"] == 0
        },
    )
    .await;
    wait_for_stock(system, ops, "DESK", (5, 0, 5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_of_the_saga_runs_through_the_api() {
    let system = System::start().await;
    let ops = operator();
    tokio::join!(
        happy_path(&system, &ops),
        out_of_stock(&system, &ops),
        declined(&system, &ops),
        flaky_provider(&system, &ops),
        cancelled_after_capture(&system, &ops),
        cancelled_before_capture(&system, &ops),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_that_never_answers_times_out_and_the_order_is_rejected() {
    let system = System::start_with(Options {
        payment_timeout: chrono::Duration::seconds(3),
        ..Options::default()
    })
    .await;
    let ops = operator();
    system.define_product(&ops, "CHAIR", 9_900).await;
    system.receive(&ops, "CHAIR", 5).await;
    let (shopper, _) = shopper();
    let (order_id, _) = place(&system, &shopper, &[("CHAIR", 2)], "tok_timeout").await;
    let rejected = system
        .wait_for_status(&shopper, &order_id, "rejected")
        .await;
    assert_eq!(rejected["rejection_reason"], "payment_timed_out");
    wait_for_stock(&system, &ops, "CHAIR", (5, 0, 5)).await;
}
