//! Who may do what: 401 without a usable token, 403 for the wrong role or another shopper's
//! order.

use base64::Engine as _;
use gateway::Role;
use gateway::auth::Claims;
use reqwest::Method;
use serde_json::{Value, json};

use crate::system::System;
use crate::{Call, SECRET, operator, order_body, shopper};

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A token with `claims`, signed with `secret` (whatever the claims say).
fn signed(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A token that claims not to be signed at all.
fn unsigned(claims: &Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64.encode(serde_json::to_vec(claims).unwrap());
    format!("{header}.{payload}.")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_are_missing_expired_or_wrongly_signed_are_refused_with_401() {
    let system = System::start().await;
    let api = &system.api;
    let (good, customer) = shopper();
    let expired = gateway::auth::mint_claims(
        SECRET,
        &Claims {
            sub: customer.clone(),
            role: Role::Shopper,
            iat: now() - 7_200,
            exp: now() - 3_600,
        },
    )
    .unwrap();
    let claims = json!({ "sub": customer, "role": "shopper", "iat": now(), "exp": now() + 600 });
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "needs a bearer token"),
        ("expired", Some(format!("Bearer {expired}")), "expired"),
        (
            "signed with another secret",
            Some(format!(
                "Bearer {}",
                signed(b"not-the-gateway-secret-but-long-enough", &claims)
            )),
            "signature",
        ),
        (
            "not signed",
            Some(format!("Bearer {}", unsigned(&claims))),
            "not a valid JWT",
        ),
        (
            "not a JWT",
            Some("Bearer not-a-token".to_owned()),
            "not a valid JWT",
        ),
        ("another scheme", Some(format!("Basic {good}")), "Bearer"),
        (
            "a shopper without a customer id",
            Some(format!(
                "Bearer {}",
                signed(
                    SECRET,
                    &json!({ "sub": "alice", "role": "shopper", "iat": now(), "exp": now() + 600 })
                )
            )),
            "customer id",
        ),
        (
            "an unknown role",
            Some(format!(
                "Bearer {}",
                signed(
                    SECRET,
                    &json!({ "sub": customer, "role": "admin", "iat": now(), "exp": now() + 600 })
                )
            )),
            "not a valid JWT",
        ),
        (
            "no expiry",
            Some(format!(
                "Bearer {}",
                signed(
                    SECRET,
                    &json!({ "sub": customer, "role": "shopper", "iat": now() })
                )
            )),
            "not a valid JWT",
        ),
    ];
    let before = system.event_counts().await;
    for (case, authorization, detail) in cases {
        for (method, path) in [
            (Method::POST, "/orders"),
            (Method::GET, "/orders"),
            (Method::GET, "/inventory"),
            (Method::PUT, "/products/BOOK"),
        ] {
            let mut call = Call::new()
                .fresh_key()
                .json(order_body(&[("BOOK", 1)], "tok_success"));
            if let Some(authorization) = &authorization {
                call = call.header("Authorization", authorization);
            }
            let answer = api.send(method.clone(), path, call).await;
            assert_eq!(answer.status, 401, "{case}: {method} {path}: {answer:#?}");
            assert_eq!(answer.code(), "unauthenticated", "{case}");
            assert!(
                answer.json["detail"].as_str().unwrap().contains(detail),
                "{case}: {answer:#?}"
            );
            assert!(
                answer
                    .header("www-authenticate")
                    .unwrap()
                    .starts_with("Bearer")
            );
        }
    }
    // The catalogue needs no token, but a token that is sent must be good.
    api.get("/products", None).await.expect(200);
    api.get("/products", Some("not-a-token")).await.expect(401);
    api.get("/products", Some(&good)).await.expect(200);
    assert_eq!(
        system.event_counts().await,
        before,
        "a refused request appended events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_ownership_are_checked() {
    let system = System::start().await;
    let api = &system.api;
    let ops = operator();
    system.define_product(&ops, "MUG", 800).await;
    system.receive(&ops, "MUG", 10).await;
    let (alice, alice_id) = shopper();
    let (bob, _) = shopper();

    // A shopper may not do an operator's work, nor an operator place an order.
    for (method, path, body) in [
        (Method::GET, "/inventory", None),
        (Method::GET, "/inventory/MUG", None),
        (
            Method::PUT,
            "/products/MUG",
            Some(json!({ "name": "Mug", "price": { "amount_minor": 1, "currency": "EUR" } })),
        ),
        (
            Method::POST,
            "/inventory/MUG/receipts",
            Some(json!({ "quantity": 1 })),
        ),
        (
            Method::POST,
            "/shipments/0195f3c4-7d2a-7b3e-9c1d-2a4b6c8d0e1f/dispatch",
            Some(json!({})),
        ),
        (
            Method::POST,
            "/shipments/0195f3c4-7d2a-7b3e-9c1d-2a4b6c8d0e1f/deliver",
            Some(json!({})),
        ),
        (
            Method::GET,
            "/reports/sales?from=2025-01-01&to=2025-01-31",
            None,
        ),
    ] {
        let mut call = Call::new().token(&alice).fresh_key();
        if let Some(body) = body {
            call = call.json(body);
        }
        let answer = api.send(method.clone(), path, call).await;
        assert_eq!(
            (answer.status, answer.code()),
            (403, "forbidden"),
            "{method} {path}"
        );
    }
    let answer = api
        .post("/orders", &ops, order_body(&[("MUG", 1)], "tok_success"))
        .await
        .expect(403);
    assert_eq!(answer.code(), "forbidden");

    // Alice's order is hers: Bob may neither read nor cancel it, nor list her orders.
    let placed = api
        .post("/orders", &alice, order_body(&[("MUG", 1)], "tok_success"))
        .await
        .expect(201);
    let order_id = placed.json["aggregate_id"].as_str().unwrap().to_owned();
    let token = placed.token();
    let path = format!("/orders/{order_id}");
    api.get(&format!("{path}?after={token}"), Some(&alice))
        .await
        .expect(200);
    assert_eq!(
        api.get(&path, Some(&bob)).await.expect(403).code(),
        "forbidden"
    );
    let cancel = api
        .post(&format!("{path}/cancel"), &bob, Value::Null)
        .await
        .expect(403);
    assert_eq!(cancel.code(), "forbidden");
    assert_eq!(
        system
            .events_of_type(events::BoundedContext::Ordering, "OrderCancelled")
            .await,
        0,
        "a refused cancellation cancelled"
    );
    api.get(&format!("/orders?customer_id={alice_id}"), Some(&bob))
        .await
        .expect(403);
    let bobs = api.get("/orders", Some(&bob)).await.expect(200);
    assert_eq!(bobs.json["orders"], json!([]));
    let alices = api.get("/orders", Some(&alice)).await.expect(200);
    assert_eq!(alices.json["orders"][0]["order_id"], order_id.as_str());

    // An operator sees any order and any customer's orders.
    let seen = api.get(&path, Some(&ops)).await.expect(200);
    assert_eq!(seen.json["customer_id"], alice_id.as_str());
    let hers = api
        .get(&format!("/orders?customer_id={alice_id}"), Some(&ops))
        .await
        .expect(200);
    assert_eq!(hers.json["orders"].as_array().unwrap().len(), 1);

    // Alice may cancel her own.
    api.post(&format!("{path}/cancel"), &alice, Value::Null)
        .await
        .expect(200);
}
