//! The payments service on a private nats-server and a database of its own: it starts its
//! durable consumers, answers for its health though it has no command, reacts to an order
//! placed, counts it in the metrics its HTTP listener serves, runs, and stops cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use events::{BoundedContext, Metadata};
use eventstore::StoredEvent;
use harness::{NatsServer, TestDatabase};
use host::Settings;
use host::metrics::read_sum;
use payments::reactions::consumers;
use payments::{PaymentProvider, ResiliencePolicy, Resilient, Simulator, service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn the_service_runs_its_durable_consumers_and_stops_cleanly() {
    let nats = NatsServer::start().await.unwrap();
    // The streams this context reads, which the other contexts would create.
    nats.provision_event_streams().await.unwrap();
    let db = TestDatabase::create().await.unwrap();
    let settings = Settings {
        context: BoundedContext::Payments,
        database_url: db.url(),
        nats_url: nats.url(),
        database_connections: 4,
    };
    let provider: Arc<dyn PaymentProvider> = Arc::new(Resilient::new(
        Simulator::default(),
        ResiliencePolicy::default(),
    ));
    let mut host = service::start(&settings, provider).await.unwrap();
    let http = host
        .listen_http("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let stop = host.shutdown_token();
    let run = tokio::spawn(host.run(std::future::pending()));

    let js = jetstream::new(nats.connect().await.unwrap());
    let names: Vec<_> = consumers().iter().map(|spec| spec.name.clone()).collect();
    assert_eq!(names, ["payments-from-ordering", "payments-from-inventory"]);
    for spec in consumers() {
        let stream = spec.stream.name();
        harness::wait_until(&spec.name, Duration::from_secs(10), || async {
            js.get_consumer_from_stream::<pull::Config, _, _>(&spec.name, &stream)
                .await
                .is_ok()
        })
        .await
        .unwrap();
    }
    assert!(!run.is_finished(), "the service stopped on its own");

    // No command endpoint, but a NATS service with the health endpoint all the same.
    let client = nats.connect().await.unwrap();
    let report = harness::ready_report(&client, BoundedContext::Payments).await;
    assert_eq!(report.context, "payments");
    assert_eq!(report.names(host::CheckKind::Consumer), names);

    // Before any work: the consumers' series at zero, and no command series at all.
    let from_ordering = ("consumer", "payments-from-ordering");
    let before = metrics_until(http, "the consumers' lag", |text| {
        names.iter().all(|name| {
            read_sum(
                text,
                "chorus_consumer_pending_messages",
                &[("consumer", name)],
            )
            .is_some()
        })
    })
    .await;
    assert_eq!(
        read_sum(&before, "chorus_consumer_messages_total", &[from_ordering]),
        Some(0.0)
    );
    assert_eq!(
        read_sum(&before, "chorus_relay_events_published_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        read_sum(&before, "chorus_commands_handled_total", &[]),
        None
    );

    // An order placed, published as ordering's relay publishes it: payments requests the
    // payment, and its relay publishes that.
    let order = events::values::OrderId::new();
    let placed = super::placed(order, 1500, "tok_success");
    let stored = StoredEvent {
        position: 1,
        event_id: placed.event_id,
        aggregate_type: placed.aggregate_type.clone(),
        aggregate_id: placed.aggregate_id.clone(),
        sequence: 1,
        event_type: placed.event_type.clone(),
        schema_version: i32::try_from(placed.schema_version).unwrap(),
        payload: String::from_utf8(placed.payload.to_vec()).unwrap(),
        metadata: Metadata::default(),
        recorded_at: chrono::Utc::now(),
    };
    let subject = BoundedContext::Ordering
        .stream()
        .event_subject("order", &placed.aggregate_id, &placed.event_type)
        .unwrap();
    js.publish_with_headers(subject, bus::event_headers(&stored), placed.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    let text = metrics_until(
        http,
        "the order handled and the request published",
        |text| {
            read_sum(
                text,
                "chorus_consumer_messages_total",
                &[from_ordering, ("outcome", "handled")],
            ) == Some(1.0)
                && read_sum(text, "chorus_relay_events_published_total", &[]) == Some(1.0)
                && read_sum(text, "chorus_consumer_pending_messages", &[from_ordering]) == Some(0.0)
                && read_sum(text, "chorus_outbox_backlog_events", &[]) == Some(0.0)
        },
    )
    .await;
    assert_eq!(
        read_sum(
            &text,
            "chorus_events_appended_total",
            &[("context", "payments"), ("event_type", "PaymentRequested")]
        ),
        Some(1.0)
    );
    assert_eq!(
        read_sum(&text, "chorus_events_appended_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        read_sum(&text, "chorus_relay_latency_seconds_count", &[]),
        Some(1.0)
    );

    stop.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the service did not stop within 30 s");
    stopped.unwrap().unwrap();

    // The consumers are durable: they outlive the service.
    for spec in consumers() {
        let consumer = js
            .get_consumer_from_stream::<pull::Config, _, _>(&spec.name, spec.stream.name())
            .await
            .unwrap();
        assert_eq!(consumer.cached_info().config.durable_name, Some(spec.name));
    }
}

/// Scrapes `GET /metrics` on `addr` until `want` holds for the text; returns the text.
async fn metrics_until(addr: SocketAddr, what: &str, want: impl Fn(&str) -> bool) -> String {
    let last = std::cell::RefCell::new(String::new());
    let found = harness::wait_until(what, Duration::from_secs(10), || async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let found = want(body);
        *last.borrow_mut() = body.to_owned();
        found
    })
    .await;
    let last = last.into_inner();
    found.unwrap_or_else(|e| panic!("{e:#}; last scrape:\n{last}"));
    last
}
