//! What protects the gateway and its clients, on a gateway whose upstreams the test plays
//! itself (plain NATS responders on a private server, no databases): no responder is a 503 at
//! once, no answer in time a 504, rate limits a 429, correlation ids travel, CORS answers
//! browsers, metrics count.

use std::time::Duration;

use async_nats::HeaderMap;
use events::command::CommandReply;
use futures::StreamExt;
use gateway::idempotency::{BUCKET, Scope, fingerprint};
use gateway::settings::{CorsOrigins, RateLimit};
use harness::NatsServer;
use reqwest::Method;
use serde_json::json;
use tokio::sync::mpsc;

use crate::system::{RunningGateway, generous, settings};
use crate::{Call, operator, order_body, shopper};

/// A stand-in for a context's command endpoint: answers `reply` (or nothing, for `None`) and
/// reports the headers of each request it gets.
async fn responder(
    nats: &NatsServer,
    subject: &str,
    reply: Option<CommandReply>,
) -> mpsc::UnboundedReceiver<HeaderMap> {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut requests = client.subscribe(subject.to_owned()).await.unwrap();
    client.flush().await.unwrap();
    let (seen, headers) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            seen.send(request.headers.clone().unwrap_or_default()).ok();
            if let (Some(reply), Some(to)) = (&reply, request.reply) {
                let body = serde_json::to_vec(reply).unwrap();
                client.publish(to, body.into()).await.unwrap();
            }
        }
    });
    headers
}

fn accepted(aggregate_id: &str) -> CommandReply {
    CommandReply::Accepted {
        aggregate_id: aggregate_id.to_owned(),
        position: 7,
        version: 1,
    }
}

#[tokio::test]
async fn a_context_without_responders_is_503_at_once_and_the_key_is_released() {
    let nats = NatsServer::start().await.unwrap();
    let gateway = RunningGateway::start(settings(&nats, generous())).await;
    let api = &gateway.api;
    let (shopper, _) = shopper();
    let body = order_body(&[("BOOK", 1)], "tok_success");
    let call = Call::new().token(&shopper).key("k-1").json(body.clone());

    let refused = api
        .send(Method::POST, "/orders", call.clone())
        .await
        .expect(503);
    assert_eq!(refused.code(), "unavailable");
    assert!(
        refused.json["detail"]
            .as_str()
            .unwrap()
            .contains("ordering"),
        "{refused:#?}"
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    // Reads fail the same way without the query service.
    api.get("/orders", Some(&shopper)).await.expect(503);
    let ready = api.get("/readyz", None).await.expect(503);
    assert_eq!(ready.json["ready"], false);
    assert_eq!(ready.json["nats"], "connected");
    assert_eq!(ready.json["services"].as_array().unwrap().len(), 5);
    api.get("/healthz", None).await.expect(200);

    // Nothing ran: the same key runs the request once a context answers.
    let mut requests = responder(&nats, "chorus.ordering.place-order", Some(accepted("o-1"))).await;
    let placed = api.send(Method::POST, "/orders", call).await.expect(201);
    assert_eq!(placed.header("idempotent-replayed"), None);
    assert!(requests.recv().await.is_some());
}

#[tokio::test]
async fn a_context_that_does_not_answer_in_time_is_504_and_the_outcome_is_kept() {
    let nats = NatsServer::start().await.unwrap();
    let mut settings = settings(&nats, generous());
    settings.request_timeout = Duration::from_millis(300);
    let gateway = RunningGateway::start(settings).await;
    let api = &gateway.api;
    let ops = operator();
    let mut requests = responder(&nats, "chorus.inventory.receive-stock", None).await;
    let call = Call::new()
        .token(&ops)
        .key("r-1")
        .json(json!({ "quantity": 3 }));

    let late = api
        .send(Method::POST, "/inventory/BOOK/receipts", call.clone())
        .await
        .expect(504);
    assert_eq!(late.code(), "timeout");
    assert!(requests.recv().await.is_some());
    // The command may have run: a retry with the key does not send it again.
    let again = api
        .send(Method::POST, "/inventory/BOOK/receipts", call)
        .await
        .expect(504);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert!(requests.try_recv().is_err(), "the command was sent twice");
}

#[tokio::test]
async fn a_request_whose_instance_died_is_completed_as_unknown_by_the_next() {
    let nats = NatsServer::start().await.unwrap();
    let gateway = RunningGateway::start(settings(&nats, generous())).await;
    let ops = operator();
    let mut requests = responder(
        &nats,
        "chorus.inventory.receive-stock",
        Some(accepted("BOOK")),
    )
    .await;
    let body = json!({ "quantity": 3 });
    // Left in progress an hour ago by an instance that stopped mid-request.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let kv = async_nats::jetstream::new(client)
        .get_key_value(BUCKET)
        .await
        .unwrap();
    let key = Scope {
        principal: "operator:ops@chorus",
        method: "POST",
        path: "/inventory/BOOK/receipts",
        key: "r-2",
    }
    .storage_key();
    let record = json!({
        "state": "in_progress",
        "fingerprint": fingerprint(&serde_json::to_vec(&body).unwrap()),
        "started_at_ms": 0,
    });
    kv.put(&key, serde_json::to_vec(&record).unwrap().into())
        .await
        .unwrap();

    let answer = gateway
        .api
        .send(
            Method::POST,
            "/inventory/BOOK/receipts",
            Call::new().token(&ops).key("r-2").json(body),
        )
        .await
        .expect(504);
    assert!(
        answer.json["detail"]
            .as_str()
            .unwrap()
            .contains("did not finish"),
        "{answer:#?}"
    );
    assert!(requests.try_recv().is_err(), "the command was sent again");
}

#[tokio::test]
async fn each_principal_has_its_rate_limit() {
    let nats = NatsServer::start().await.unwrap();
    let limit = RateLimit {
        per_second: 1.try_into().unwrap(),
        burst: 2.try_into().unwrap(),
    };
    let gateway = RunningGateway::start(settings(&nats, limit)).await;
    let api = &gateway.api;
    let (alice, _) = shopper();
    let (bob, _) = shopper();
    // No query service: each allowed request is a 503; the third within the second is not.
    api.get("/orders", Some(&alice)).await.expect(503);
    api.get("/orders", Some(&alice)).await.expect(503);
    let limited = api.get("/orders", Some(&alice)).await.expect(429);
    assert_eq!(limited.code(), "rate_limited");
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "{limited:#?}");
    // Bob has a bucket of his own; anonymous clients one per address; probes none.
    api.get("/orders", Some(&bob)).await.expect(503);
    for _ in 0..5 {
        api.get("/healthz", None).await.expect(200);
    }
    api.get("/products", None).await.expect(503);
    api.get("/products", None).await.expect(503);
    api.get("/products", None).await.expect(429);
}

#[tokio::test]
async fn correlation_ids_are_kept_or_made_and_travel_to_the_contexts() {
    let nats = NatsServer::start().await.unwrap();
    let gateway = RunningGateway::start(settings(&nats, generous())).await;
    let api = &gateway.api;
    let mut requests = responder(
        &nats,
        "chorus.shipping.deliver-shipment",
        Some(accepted("o")),
    )
    .await;
    let ops = operator();
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let call = Call::new()
        .token(&ops)
        .fresh_key()
        .header("X-Correlation-Id", "support-ticket-42")
        .header("traceparent", traceparent);
    let answer = api
        .send(
            Method::POST,
            "/shipments/0195f3c4-7d2a-7b3e-9c1d-2a4b6c8d0e1f/deliver",
            call,
        )
        .await
        .expect(200);
    assert_eq!(answer.header("x-correlation-id"), Some("support-ticket-42"));
    let headers = requests.recv().await.unwrap();
    assert_eq!(
        headers.get("Chorus-Correlation-Id").map(|v| v.as_str()),
        Some("support-ticket-42")
    );
    assert_eq!(
        headers.get("traceparent").map(|v| v.as_str()),
        Some(traceparent)
    );

    // A problem names it too; an unusable one is replaced by a new one.
    let problem = api
        .send(
            Method::GET,
            "/orders",
            Call::new().header("X-Correlation-Id", "two words"),
        )
        .await
        .expect(401);
    let made = problem.header("x-correlation-id").unwrap().to_owned();
    assert_ne!(made, "two words");
    assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");
    assert_eq!(problem.json["correlation_id"], made.as_str());
    assert_eq!(problem.json["instance"], "/orders");
}

#[tokio::test]
async fn browsers_from_the_configured_origins_may_call() {
    let nats = NatsServer::start().await.unwrap();
    let mut settings = settings(&nats, generous());
    settings.cors_origins = CorsOrigins::List(vec!["https://shop.example".parse().unwrap()]);
    let gateway = RunningGateway::start(settings).await;
    // Preflights are not in the document: sent without the contract check.
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(Method::OPTIONS, format!("{}/orders", gateway.api.base))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization, idempotency-key, content-type",
            )
            .send()
    };
    let allowed = preflight("https://shop.example").await.unwrap();
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some("https://shop.example")
    );
    let methods = allowed.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(methods.contains("POST"), "{methods}");
    let stranger = preflight("https://evil.example").await.unwrap();
    assert!(
        stranger
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    let answer = gateway
        .api
        .send(
            Method::GET,
            "/healthz",
            Call::new().header("Origin", "https://shop.example"),
        )
        .await
        .expect(200);
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    let exposed = answer
        .header("access-control-expose-headers")
        .unwrap()
        .to_ascii_lowercase();
    for header in [
        "x-correlation-id",
        "chorus-consistency-token",
        "retry-after",
        "location",
    ] {
        assert!(exposed.contains(header), "{header} not exposed: {exposed}");
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_method_and_status() {
    let nats = NatsServer::start().await.unwrap();
    let gateway = RunningGateway::start(settings(&nats, generous())).await;
    let api = &gateway.api;
    api.get("/orders/0195f3c4-7d2a-7b3e-9c1d-2a4b6c8d0e1f", None)
        .await
        .expect(401);
    api.get("/nothing", None).await.expect(404);
    let metrics = api.get("/metrics", None).await.expect(200).text;
    for line in [
        r#"chorus_gateway_http_requests_total{method="GET",route="/orders/{order_id}",status="401"} 1"#,
        r#"chorus_gateway_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        "chorus_gateway_http_request_duration_seconds_bucket",
        // The request for the metrics is in flight while they are rendered.
        "chorus_gateway_http_requests_in_flight 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

#[tokio::test]
async fn the_document_and_its_page_are_served() {
    let nats = NatsServer::start().await.unwrap();
    let gateway = RunningGateway::start(settings(&nats, generous())).await;
    let api = &gateway.api;
    let document = api.get("/openapi.json", None).await.expect(200);
    assert_eq!(&document.json, api.contract().document());
    assert_eq!(document.json["openapi"], "3.1.0");
    let page = api.get("/docs", None).await.expect(200);
    assert!(page.text.contains(r#"spec-url="/openapi.json""#));
    assert!(page.text.contains("/orders/{order_id}/cancel"));
}
