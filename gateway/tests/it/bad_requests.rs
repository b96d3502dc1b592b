//! Bad requests, each answered with its documented status and a problem naming the field at
//! fault, and none of them appending an event to any context's store.

use gateway::consistency::ConsistencyToken;
use reqwest::Method;
use serde_json::{Value, json};

use crate::system::System;
use crate::{Call, operator, order_body, shopper};

/// One bad request and what it must get.
struct Case {
    what: &'static str,
    method: Method,
    path: String,
    call: Call,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

/// An order body with `change` applied.
fn order_with(change: impl FnOnce(&mut Value)) -> Value {
    let mut body = order_body(&[("BOOK", 1)], "tok_success");
    change(&mut body);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_documented_problem_and_append_nothing() {
    let system = System::start().await;
    let ops = operator();
    system.define_product(&ops, "BOOK", 1_500).await;
    system.receive(&ops, "BOOK", 5).await;
    let (shopper, _) = shopper();
    let unknown_order = "0195f3c4-7d2a-7b3e-9c1d-2a4b6c8d0e1f";
    let order_token = ConsistencyToken {
        aggregate_type: "order".into(),
        aggregate_id: unknown_order.into(),
        position: 1,
    }
    .encode();

    let post = |what, body: Call, status, code, field| Case {
        what,
        method: Method::POST,
        path: "/orders".to_owned(),
        call: body.token(&shopper).fresh_key(),
        status,
        code,
        field,
    };
    let json_call = |body: Value| Call::new().json(body);
    let raw = |body: &[u8], content_type: Option<&str>| Call::new().raw(body, content_type);
    let get = |what, path: String, token: &str, status, code, field| Case {
        what,
        method: Method::GET,
        path,
        call: Call::new().token(token),
        status,
        code,
        field,
    };
    let operate = |what, method, path: String, body: Value, status, code, field| Case {
        what,
        method,
        path,
        call: Call::new().token(&ops).fresh_key().json(body),
        status,
        code,
        field,
    };

    let mut two_values = serde_json::to_vec(&order_body(&[("BOOK", 1)], "tok_success")).unwrap();
    two_values.extend_from_slice(b" {}");
    let cases = vec![
        // The body of POST /orders.
        post(
            "malformed JSON",
            raw(br#"{"lines": ["#, Some("application/json")),
            400,
            "malformed_json",
            Some("body"),
        ),
        post(
            "not JSON",
            raw(b"lines=1", Some("application/json")),
            400,
            "malformed_json",
            Some("body"),
        ),
        post(
            "two JSON values",
            raw(&two_values, Some("application/json")),
            400,
            "malformed_json",
            Some("body"),
        ),
        post(
            "an empty body",
            raw(b"", Some("application/json")),
            400,
            "malformed_json",
            Some("body"),
        ),
        post(
            "not sent as JSON",
            raw(br#"{"lines": []}"#, Some("text/plain")),
            415,
            "unsupported_media_type",
            Some("body"),
        ),
        post(
            "no content type",
            raw(br#"{"lines": []}"#, None),
            415,
            "unsupported_media_type",
            Some("body"),
        ),
        post(
            "an array",
            json_call(json!([1, 2])),
            422,
            "invalid_request",
            Some("body"),
        ),
        post(
            "a quantity that is a string",
            json_call(order_with(|b| b["lines"][0]["quantity"] = json!("two"))),
            422,
            "invalid_request",
            Some("lines[0].quantity"),
        ),
        post(
            "lines that are an object",
            json_call(order_with(|b| b["lines"] = json!({"sku": "BOOK"}))),
            422,
            "invalid_request",
            Some("lines"),
        ),
        post(
            "an unknown field",
            json_call(order_with(|b| b["colour"] = json!("red"))),
            422,
            "invalid_request",
            Some("colour"),
        ),
        post(
            "an unknown field in a line",
            json_call(order_with(|b| b["lines"][0]["price"] = json!(1))),
            422,
            "invalid_request",
            Some("lines[0].price"),
        ),
        post(
            "a customer id in the body",
            json_call(order_with(|b| b["customer_id"] = json!(unknown_order))),
            422,
            "invalid_request",
            Some("customer_id"),
        ),
        post(
            "a zero quantity",
            json_call(order_with(|b| b["lines"][0]["quantity"] = json!(0))),
            422,
            "invalid_request",
            Some("lines[0].quantity"),
        ),
        post(
            "a negative quantity",
            json_call(order_with(|b| b["lines"][0]["quantity"] = json!(-2))),
            422,
            "invalid_request",
            Some("lines[0].quantity"),
        ),
        post(
            "a fractional quantity",
            json_call(order_with(|b| b["lines"][0]["quantity"] = json!(1.5))),
            422,
            "invalid_request",
            Some("lines[0].quantity"),
        ),
        post(
            "no lines",
            json_call(order_with(|b| b["lines"] = json!([]))),
            422,
            "empty_order",
            Some("lines"),
        ),
        post(
            "no address",
            json_call(order_with(|b| {
                b.as_object_mut().unwrap().remove("shipping_address");
            })),
            422,
            "invalid_request",
            Some("shipping_address"),
        ),
        post(
            "no city",
            json_call(order_with(|b| {
                b["shipping_address"]
                    .as_object_mut()
                    .unwrap()
                    .remove("city");
            })),
            422,
            "invalid_request",
            Some("shipping_address.city"),
        ),
        post(
            "a SKU that is not one",
            json_call(order_with(|b| b["lines"][0]["sku"] = json!("book"))),
            422,
            "invalid_request",
            Some("lines[0].sku"),
        ),
        post(
            "an unknown SKU",
            json_call(order_body(&[("BOOK", 1), ("NOPE", 1)], "tok_success")),
            422,
            "unknown_sku",
            Some("lines[1].sku"),
        ),
        post(
            "a SKU twice",
            json_call(order_body(&[("BOOK", 1), ("BOOK", 2)], "tok_success")),
            422,
            "duplicate_sku",
            Some("lines[1].sku"),
        ),
        post(
            "a country that is not a code",
            json_call(order_with(|b| {
                b["shipping_address"]["country"] = json!("Britain")
            })),
            422,
            "invalid_address",
            Some("shipping_address.country"),
        ),
        post(
            "an empty payment token",
            json_call(order_with(|b| b["payment_token"] = json!(""))),
            422,
            "invalid_payment_token",
            Some("payment_token"),
        ),
        post(
            "an oversized body",
            json_call(order_with(|b| {
                b["shipping_address"]["line2"] = json!("x".repeat(5_000))
            })),
            413,
            "body_too_large",
            Some("body"),
        ),
        Case {
            what: "no Idempotency-Key",
            method: Method::POST,
            path: "/orders".to_owned(),
            call: Call::new()
                .token(&shopper)
                .json(order_body(&[("BOOK", 1)], "tok_success")),
            status: 400,
            code: "idempotency_key_required",
            field: Some("Idempotency-Key"),
        },
        Case {
            what: "an Idempotency-Key that is too long",
            method: Method::POST,
            path: "/orders".to_owned(),
            call: Call::new()
                .token(&shopper)
                .key(&"k".repeat(300))
                .json(order_body(&[("BOOK", 1)], "tok_success")),
            status: 400,
            code: "invalid_idempotency_key",
            field: Some("Idempotency-Key"),
        },
        // Ids, cursors and other parameters.
        get(
            "an order id that is not one",
            "/orders/not-a-uuid".into(),
            &shopper,
            400,
            "invalid_parameter",
            Some("order_id"),
        ),
        get(
            "an order nobody placed",
            format!("/orders/{unknown_order}"),
            &shopper,
            404,
            "not_found",
            None,
        ),
        get(
            "a cursor this gateway did not give",
            "/orders?cursor=garbage".into(),
            &shopper,
            400,
            "invalid_parameter",
            Some("cursor"),
        ),
        get(
            "a page of zero",
            "/orders?limit=0".into(),
            &shopper,
            400,
            "invalid_parameter",
            Some("limit"),
        ),
        get(
            "a page size that is not a number",
            "/orders?limit=ten".into(),
            &shopper,
            400,
            "invalid_parameter",
            Some("limit"),
        ),
        get(
            "an unknown status",
            "/orders?status=lost".into(),
            &shopper,
            400,
            "invalid_parameter",
            Some("status"),
        ),
        get(
            "an unknown parameter",
            "/orders?colour=red".into(),
            &shopper,
            400,
            "invalid_parameter",
            Some("colour"),
        ),
        get(
            "a customer id that is not one",
            "/orders?customer_id=alice".into(),
            &ops,
            400,
            "invalid_parameter",
            Some("customer_id"),
        ),
        get(
            "a consistency token that is not one",
            format!("/orders/{unknown_order}?after=garbage"),
            &shopper,
            400,
            "invalid_parameter",
            Some("after"),
        ),
        get(
            "a wait without a token",
            format!("/orders/{unknown_order}?wait_ms=100"),
            &shopper,
            400,
            "invalid_parameter",
            Some("wait_ms"),
        ),
        get(
            "a wait too long",
            format!("/orders/{unknown_order}?after={order_token}&wait_ms=60000"),
            &shopper,
            400,
            "invalid_parameter",
            Some("wait_ms"),
        ),
        get(
            "a token of a write the catalogue does not read",
            format!("/products?after={order_token}"),
            &shopper,
            400,
            "invalid_parameter",
            Some("after"),
        ),
        get(
            "a SKU that is not one",
            "/products/lower-case".into(),
            &shopper,
            400,
            "invalid_parameter",
            Some("sku"),
        ),
        get(
            "an unknown product",
            "/products/NOPE".into(),
            &shopper,
            404,
            "not_found",
            None,
        ),
        get(
            "a catalogue cursor that is not one",
            "/products?cursor=zz".into(),
            &shopper,
            400,
            "invalid_parameter",
            Some("cursor"),
        ),
        get(
            "a report ending before it starts",
            "/reports/sales?from=2025-02-01&to=2025-01-01".into(),
            &ops,
            400,
            "invalid_parameter",
            Some("to"),
        ),
        get(
            "a report from a date that is not one",
            "/reports/sales?from=yesterday&to=2025-01-01".into(),
            &ops,
            400,
            "invalid_parameter",
            Some("from"),
        ),
        get(
            "a report without dates",
            "/reports/sales".into(),
            &ops,
            400,
            "invalid_parameter",
            Some("from"),
        ),
        get(
            "a route that does not exist",
            "/nothing".into(),
            &shopper,
            404,
            "not_found",
            None,
        ),
        Case {
            what: "a method the route does not take",
            method: Method::DELETE,
            path: "/orders".into(),
            call: Call::new().token(&shopper),
            status: 405,
            code: "method_not_allowed",
            field: None,
        },
        // Operators' commands.
        operate(
            "a zero price",
            Method::PUT,
            "/products/BOOK".into(),
            json!({ "name": "Book", "price": { "amount_minor": 0, "currency": "EUR" } }),
            422,
            "invalid_price",
            Some("price.amount_minor"),
        ),
        operate(
            "another currency",
            Method::PUT,
            "/products/BOOK".into(),
            json!({ "name": "Book", "price": { "amount_minor": 100, "currency": "USD" } }),
            422,
            "currency_change",
            Some("price.currency"),
        ),
        operate(
            "a currency that is not one",
            Method::PUT,
            "/products/NEW1".into(),
            json!({ "name": "New", "price": { "amount_minor": 100, "currency": "eur" } }),
            422,
            "invalid_request",
            Some("price.currency"),
        ),
        operate(
            "an empty name",
            Method::PUT,
            "/products/NEW2".into(),
            json!({ "name": " ", "price": { "amount_minor": 100, "currency": "EUR" } }),
            422,
            "invalid_name",
            Some("name"),
        ),
        operate(
            "a price in a float",
            Method::PUT,
            "/products/NEW3".into(),
            json!({ "name": "New", "price": { "amount_minor": 1.99, "currency": "EUR" } }),
            422,
            "invalid_request",
            Some("price.amount_minor"),
        ),
        operate(
            "a receipt of nothing",
            Method::POST,
            "/inventory/BOOK/receipts".into(),
            json!({ "quantity": 0 }),
            422,
            "invalid_request",
            Some("quantity"),
        ),
        operate(
            "a negative receipt",
            Method::POST,
            "/inventory/BOOK/receipts".into(),
            json!({ "quantity": -3 }),
            422,
            "invalid_request",
            Some("quantity"),
        ),
        operate(
            "a receipt for a SKU that is not one",
            Method::POST,
            "/inventory/book/receipts".into(),
            json!({ "quantity": 3 }),
            400,
            "invalid_parameter",
            Some("sku"),
        ),
        operate(
            "a dispatch of an order with no shipment",
            Method::POST,
            format!("/shipments/{unknown_order}/dispatch"),
            json!({}),
            409,
            "not_scheduled",
            None,
        ),
        operate(
            "a delivery for an id that is not one",
            Method::POST,
            "/shipments/42/deliver".into(),
            json!({}),
            400,
            "invalid_parameter",
            Some("order_id"),
        ),
        operate(
            "a cancellation of an order nobody placed",
            Method::POST,
            format!("/orders/{unknown_order}/cancel"),
            json!({}),
            404,
            "not_placed",
            None,
        ),
        operate(
            "an unknown field in a dispatch",
            Method::POST,
            format!("/shipments/{unknown_order}/dispatch"),
            json!({ "carrier": "x" }),
            422,
            "invalid_request",
            Some("carrier"),
        ),
    ];

    let before = system.event_counts().await;
    for case in cases {
        let answer = system
            .api
            .send(case.method.clone(), &case.path, case.call)
            .await;
        assert_eq!(
            answer.status, case.status,
            "{}: {} {}: {answer:#?}",
            case.what, case.method, case.path
        );
        assert_eq!(answer.code(), case.code, "{}: {answer:#?}", case.what);
        assert_eq!(
            answer.json["field"].as_str(),
            case.field,
            "{}: {answer:#?}",
            case.what
        );
        assert_eq!(
            answer.json["type"].as_str(),
            Some(format!("tag:chorus,2025:problem:{}", case.code).as_str()),
            "{}",
            case.what
        );
        assert!(
            !answer.json["detail"].as_str().unwrap().is_empty(),
            "{}",
            case.what
        );
    }
    assert_eq!(
        system.event_counts().await,
        before,
        "a refused request appended events"
    );
}
