//! The service's health, metrics and traces: ready over NATS and HTTP with every writer and
//! the query service listed, metrics that move as an order is projected and queried, spans
//! of the projected message and of the query in the traces their headers carry, and not ready
//! once its database is gone.

use std::sync::OnceLock;

use events::BoundedContext;
use events::health::{CheckKind, HealthReport};
use events::ordering::OrderEvent;
use events::query::query_subject;
use events::values::{CustomerId, OrderId};
use harness::{NatsServer, TestDatabase};
use host::metrics::read_sum;
use opentelemetry::trace::{TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use projections::service::Settings;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::runtime::placed;
use crate::support::{Publisher, wait};

/// The spans this test process exports, kept in memory, as `host::telemetry` exports them
/// over OTLP in a service.
fn exported() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    let (exporter, _) = EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        tracing_subscriber::registry()
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("chorus-test"))
                    .with_filter(LevelFilter::INFO),
            )
            .try_init()
            .expect("no other subscriber in this test process");
        (exporter, provider)
    });
    exporter
}

/// The names of the spans exported in `trace`.
fn spans_of(trace: TraceId) -> Vec<String> {
    exported()
        .get_finished_spans()
        .unwrap()
        .iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .map(|s| s.name.to_string())
        .collect()
}

/// A `traceparent` of a new trace, as a caller would send it.
fn new_trace() -> (TraceId, String) {
    let id = uuid::Uuid::now_v7();
    let trace = TraceId::from_bytes(*id.as_bytes());
    let span = &uuid::Uuid::now_v7().simple().to_string()[16..];
    (trace, format!("00-{trace}-{span}-01"))
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_over_nats_and_http_metrics_and_spans_follow_an_order_not_ready_without_database() {
    exported();
    let nats = NatsServer::start().await.unwrap();
    let db = TestDatabase::create().await.unwrap();
    let client = bus::connect(&nats.url(), "projections-test").await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let streams: Vec<_> = BoundedContext::ALL.iter().map(|c| c.stream()).collect();
    bus::provision::streams(&js, &streams, 1).await.unwrap();
    let settings = Settings {
        database_url: db.url(),
        nats_url: nats.url(),
        database_connections: 8,
        batch_size: projections::DEFAULT_BATCH_SIZE,
        linger: projections::DEFAULT_LINGER,
    };
    let mut service = projections::service::start(&settings).await.unwrap();
    let addr = service
        .listen_http("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let stop = service.shutdown_token();
    let running = tokio::spawn(service.run(std::future::pending()));

    let health = || async {
        let reply = client
            .request("chorus.projections.health", "".into())
            .await
            .ok()?;
        serde_json::from_slice::<HealthReport>(&reply.payload).ok()
    };
    wait(
        "the projections report themselves ready over NATS",
        || async { health().await.is_some_and(|report| report.ready) },
    )
    .await;
    let report = health().await.unwrap();
    assert_eq!(report.context, "projections");
    assert_eq!(report.names(CheckKind::Database).len(), 1, "{report:#?}");
    assert_eq!(
        report.names(CheckKind::Jetstream),
        ["ORDERING", "INVENTORY", "PAYMENTS", "SHIPPING"],
        "{report:#?}"
    );
    assert_eq!(
        report.names(CheckKind::Projection),
        ["orders", "catalogue", "sales"]
    );
    assert_eq!(report.names(CheckKind::Service), ["query"]);
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(addr, "/healthz").await.0, 200);

    let (_, text) = get(addr, "/metrics").await;
    let orders = ("projection", "orders");
    let ordering = ("stream", "ORDERING");
    assert_eq!(
        read_sum(
            &text,
            "chorus_projection_messages_total",
            &[orders, ordering]
        ),
        Some(0.0),
        "{text}"
    );

    // An order placed, its event carrying the trace of the command that placed it.
    let (placing, traceparent) = new_trace();
    let publisher = Publisher::new(js.clone());
    let order_id = OrderId::new();
    let mut event = publisher.stored::<OrderEvent>(
        BoundedContext::Ordering,
        &order_id.to_string(),
        &placed(order_id, CustomerId::new(), 4_200).into(),
        chrono::Utc::now(),
    );
    event.metadata.traceparent = Some(traceparent);
    publisher
        .send(BoundedContext::Ordering, &event)
        .await
        .await
        .unwrap();

    let service_label = ("service", "projections");
    wait(
        "the orders writer counts the order and its lag is 0",
        || async {
            let (_, text) = get(addr, "/metrics").await;
            read_sum(
                &text,
                "chorus_projection_messages_total",
                &[orders, ordering],
            ) == Some(1.0)
                && read_sum(&text, "chorus_projection_lag_messages", &[orders, ordering])
                    == Some(0.0)
        },
    )
    .await;
    let (_, text) = get(addr, "/metrics").await;
    for (name, labels) in [
        ("chorus_projection_batch_size_messages_count", vec![orders]),
        (
            "chorus_projection_batch_duration_seconds_count",
            vec![orders],
        ),
        ("chorus_projection_messages_total", vec![service_label]),
    ] {
        let found = read_sum(&text, name, &labels).unwrap_or_default();
        assert!(found >= 1.0, "{name} {labels:?} is {found}:\n{text}");
    }
    assert_eq!(
        read_sum(&text, "chorus_projection_rebuilds_total", &[orders]),
        Some(0.0),
        "{text}"
    );

    // The order queried, in a trace of its own.
    let (querying, traceparent) = new_trace();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", traceparent.as_str());
    let body = serde_json::json!({ "order_id": order_id.to_string() }).to_string();
    let reply = client
        .request_with_headers(query_subject("order"), headers, body.into())
        .await
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(reply.get("found").is_some(), "{reply}");
    let (_, text) = get(addr, "/metrics").await;
    let order_query = ("query", "order");
    assert_eq!(
        read_sum(
            &text,
            "chorus_queries_total",
            &[order_query, ("outcome", "found")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        read_sum(&text, "chorus_query_duration_seconds_count", &[order_query]),
        Some(1.0),
        "{text}"
    );

    // Each projection that reads ORDERING applied the message in the placing trace.
    wait("the projected message's spans are exported", || async {
        spans_of(placing)
            .iter()
            .filter(|n| n.starts_with("project "))
            .count()
            >= 2
    })
    .await;
    wait("the query's span is exported", || async {
        spans_of(querying)
            .iter()
            .any(|n| n == &query_subject("order"))
    })
    .await;

    // Without its database, the service is not ready.
    let admin =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| harness::DEFAULT_DATABASE_URL.to_owned());
    let pool = sqlx::PgPool::connect(&admin).await.unwrap();
    let sql = format!(r#"DROP DATABASE "{}" WITH (FORCE)"#, db.name());
    sqlx::Executor::execute(&pool, sqlx::AssertSqlSafe(sql))
        .await
        .unwrap();
    pool.close().await;
    wait("/readyz answers 503 without the database", || async {
        get(addr, "/readyz").await.0 == 503
    })
    .await;
    let report = health().await.unwrap();
    assert!(!report.ready, "{report:#?}");
    assert!(
        report
            .checks
            .iter()
            .any(|c| c.kind == CheckKind::Database && !c.ready),
        "{report:#?}"
    );

    stop.cancel();
    running.await.unwrap().ok();
}
