//! `Idempotency-Key`: a retry replays, another body under the same key is refused, and
//! concurrent requests with one key, on one gateway or several, create one order.

use std::collections::BTreeSet;

use events::BoundedContext;
use reqwest::Method;
use serde_json::json;

use crate::system::{System, generous, wait};
use crate::{Answer, Api, Call, operator, order_body, shopper};

async fn place(api: &Api, token: &str, key: &str, body: serde_json::Value) -> Answer {
    api.send(
        Method::POST,
        "/orders",
        Call::new().token(token).key(key).json(body),
    )
    .await
}

/// How many orders the shopper has, once the read model has caught up with `after`.
async fn orders_of(system: &System, token: &str, after: &str) -> usize {
    let answer = system
        .api
        .get(&format!("/orders?after={after}&wait_ms=5000"), Some(token))
        .await
        .expect(200);
    answer.json["orders"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_replays_and_another_body_under_the_key_is_refused() {
    let system = System::start().await;
    let ops = operator();
    system.define_product(&ops, "BOOK", 1_500).await;
    system.receive(&ops, "BOOK", 50).await;
    let (alice, _) = shopper();
    let body = order_body(&[("BOOK", 1)], "tok_success");

    let first = place(&system.api, &alice, "order-1", body.clone())
        .await
        .expect(201);
    assert_eq!(first.header("idempotent-replayed"), None);
    let placed = || system.events_of_type(BoundedContext::Ordering, "OrderPlaced");
    assert_eq!(placed().await, 1);

    // The same request again: the same answer, nothing done.
    let again = place(&system.api, &alice, "order-1", body.clone())
        .await
        .expect(201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json, first.json);
    assert_eq!(again.header("location"), first.header("location"));
    assert_eq!(
        again.header("chorus-consistency-token"),
        first.header("chorus-consistency-token")
    );
    // The same body with its fields in another order is the same request.
    let reordered = json!({
        "payment_token": "tok_success",
        "shipping_address": body["shipping_address"],
        "lines": [{ "quantity": 1, "sku": "BOOK" }],
    });
    let replayed = place(&system.api, &alice, "order-1", reordered)
        .await
        .expect(201);
    assert_eq!(replayed.json, first.json);
    assert_eq!(placed().await, 1, "a replay placed an order");

    // Another body under the same key is refused.
    let other = place(
        &system.api,
        &alice,
        "order-1",
        order_body(&[("BOOK", 2)], "tok_success"),
    )
    .await
    .expect(422);
    assert_eq!(other.code(), "idempotency_key_reused");
    assert_eq!(other.json["field"], "Idempotency-Key");
    assert_eq!(placed().await, 1, "a refused reuse placed an order");
    assert_eq!(orders_of(&system, &alice, &first.token()).await, 1);

    // Keys are the principal's own: Bob's "order-1" is another request.
    let (bob, _) = shopper();
    let bobs = place(&system.api, &bob, "order-1", body.clone())
        .await
        .expect(201);
    assert_ne!(bobs.json["aggregate_id"], first.json["aggregate_id"]);

    // A refusal is kept and replayed like a success.
    let refused = place(
        &system.api,
        &alice,
        "order-2",
        order_body(&[("NOPE", 1)], "tok_success"),
    )
    .await
    .expect(422);
    assert_eq!(refused.code(), "unknown_sku");
    let replayed = place(
        &system.api,
        &alice,
        "order-2",
        order_body(&[("NOPE", 1)], "tok_success"),
    )
    .await
    .expect(422);
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    assert_eq!(replayed.json["code"], "unknown_sku");

    // Every POST route keeps its keys: a receipt replayed is received once.
    let receipt = Call::new()
        .token(&ops)
        .key("receipt-1")
        .json(json!({ "quantity": 5 }));
    let received = system
        .api
        .send(Method::POST, "/inventory/BOOK/receipts", receipt.clone())
        .await
        .expect(200);
    system
        .api
        .send(Method::POST, "/inventory/BOOK/receipts", receipt)
        .await
        .expect(200);
    let stock = system
        .api
        .get(
            &format!("/inventory/BOOK?after={}", received.token()),
            Some(&ops),
        )
        .await
        .expect(200);
    // 50 received, 5 more once; the two orders hold one each.
    assert_eq!(stock.json["on_hand"], 55);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_create_one_order() {
    let system = System::start().await;
    let ops = operator();
    system.define_product(&ops, "GPU", 99_900).await;
    system.receive(&ops, "GPU", 100).await;
    let second = system.another_gateway(generous()).await;
    let (alice, _) = shopper();
    let body = order_body(&[("GPU", 1)], "tok_success");

    // Eight at once, half through each of two gateway instances.
    let apis = [&system.api, &second.api];
    let sending = (0..8).map(|i| place(apis[i % 2], &alice, "the-one-key", body.clone()));
    let answers = futures::future::join_all(sending).await;
    let ids: BTreeSet<String> = answers
        .iter()
        .map(|answer| {
            assert_eq!(answer.status, 201, "{answer:#?}");
            answer.json["aggregate_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "several orders were placed: {ids:?}");
    let replays = answers
        .iter()
        .filter(|a| a.header("idempotent-replayed") == Some("true"))
        .count();
    assert_eq!(replays, 7, "one request ran, the others replayed it");
    assert_eq!(
        system
            .events_of_type(BoundedContext::Ordering, "OrderPlaced")
            .await,
        1
    );
    let token = answers[0].token();
    assert_eq!(orders_of(&system, &alice, &token).await, 1);
    let order_id = ids.into_iter().next().unwrap();
    system.wait_for_status(&alice, &order_id, "confirmed").await;
    wait("the stock to show one unit reserved", || async {
        let stock = system.api.get("/inventory/GPU", Some(&ops)).await;
        stock.json["reserved"] == 1
    })
    .await;
}
