//! Every route of the document, called as a client would, answering what the document says
//! (each answer is checked by the contract: status, body schema, headers).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::system::System;
use crate::{operator, order_body, shopper};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_the_document_says() {
    let system = System::start().await;
    let api = &system.api;
    let ops = operator();
    let (alice, _) = shopper();

    // Catalogue and inventory.
    system.define_product(&ops, "TEA", 450).await;
    let repriced = api
        .put(
            "/products/TEA",
            &ops,
            json!({ "name": "Tea", "price": { "amount_minor": 500, "currency": "EUR" } }),
        )
        .await
        .expect(200);
    let token = repriced.token();
    let tea = api
        .get(&format!("/products/TEA?after={token}"), None)
        .await
        .expect(200);
    assert_eq!(tea.json["price"]["amount_minor"], 500);
    let received = system.receive(&ops, "TEA", 20).await;
    api.get(
        &format!("/inventory/TEA?after={received}&wait_ms=5000"),
        Some(&ops),
    )
    .await
    .expect(200);
    let page = api.get("/products?limit=1", None).await.expect(200);
    assert_eq!(page.json["products"][0]["sku"], "TEA");
    api.get("/inventory?limit=10", Some(&ops)).await.expect(200);

    // Orders.
    let placed = api
        .post("/orders", &alice, order_body(&[("TEA", 2)], "tok_success"))
        .await
        .expect(201);
    let order_id = placed.json["aggregate_id"].as_str().unwrap().to_owned();
    let after = placed.token();
    api.get(&format!("/orders/{order_id}?after={after}"), Some(&alice))
        .await
        .expect(200);
    let listed = api
        .get(
            &format!("/orders?status=placed&limit=5&after={after}"),
            Some(&alice),
        )
        .await
        .expect(200);
    assert!(listed.json["orders"].is_array());
    system.wait_for_status(&alice, &order_id, "confirmed").await;
    crate::system::wait("the shipment to be scheduled", || async {
        let order = api.get(&format!("/orders/{order_id}"), Some(&alice)).await;
        order.json["shipment"]["status"] == "scheduled"
    })
    .await;
    api.post(&format!("/shipments/{order_id}/dispatch"), &ops, json!({}))
        .await
        .expect(200);
    system.wait_for_status(&alice, &order_id, "shipped").await;
    api.post(&format!("/shipments/{order_id}/deliver"), &ops, Value::Null)
        .await
        .expect(200);
    let (bob, _) = shopper();
    let other = api
        .post("/orders", &bob, order_body(&[("TEA", 1)], "tok_success"))
        .await
        .expect(201);
    let other_id = other.json["aggregate_id"].as_str().unwrap();
    api.post(
        &format!("/orders/{other_id}/cancel"),
        &bob,
        json!({ "reason": "too slow" }),
    )
    .await
    .expect(200);
    api.get("/reports/sales?from=2025-01-01&to=2025-12-31", Some(&ops))
        .await
        .expect(200);

    // Operations.
    api.get("/healthz", None).await.expect(200);
    api.get("/readyz", None).await.expect(200);
    api.get("/metrics", None).await.expect(200);
    api.get("/openapi.json", None).await.expect(200);
    api.get("/docs", None).await.expect(200);

    let documented: BTreeSet<String> = api
        .contract()
        .operations()
        .into_iter()
        .map(|(_, _, id)| id)
        .collect();
    let called = api.contract().called();
    let missed: Vec<_> = documented.difference(&called).collect();
    assert!(missed.is_empty(), "routes never called: {missed:?}");
}
