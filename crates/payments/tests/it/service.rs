//! The payments service on a private nats-server and a database of its own: it starts its
//! durable consumers, answers for its health though it has no command, runs, and stops
//! cleanly.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use events::BoundedContext;
use harness::{NatsServer, TestDatabase};
use host::Settings;
use payments::reactions::consumers;
use payments::{PaymentProvider, ResiliencePolicy, Resilient, Simulator, service};

#[tokio::test]
async fn the_service_runs_its_durable_consumers_and_stops_cleanly() {
    let nats = NatsServer::start().await.unwrap();
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
    let host = service::start(&settings, provider).await.unwrap();
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
    let report = ready_report(&client).await;
    assert_eq!(report.context, "payments");
    assert_eq!(tasks(&report, host::CheckKind::Consumer), names);

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

/// Asks `chorus.payments.health` until the service reports itself ready; returns the report.
async fn ready_report(client: &async_nats::Client) -> host::HealthReport {
    let subject = host::health_subject(BoundedContext::Payments);
    let last = std::cell::RefCell::new(None);
    let ready = harness::wait_until(
        "payments ready",
        std::time::Duration::from_secs(30),
        || async {
            let Ok(reply) = client.request(subject.clone(), "".into()).await else {
                return false;
            };
            let report: host::HealthReport = serde_json::from_slice(&reply.payload).unwrap();
            let ready = report.ready;
            *last.borrow_mut() = Some(report);
            ready
        },
    )
    .await;
    let last = last.into_inner();
    ready.unwrap_or_else(|e| panic!("{e:#}; last report: {last:#?}"));
    last.unwrap()
}

/// The consumers and tickers a health report lists, by name.
fn tasks(report: &host::HealthReport, kind: host::CheckKind) -> Vec<String> {
    report
        .checks
        .iter()
        .filter(|c| c.kind == kind)
        .map(|c| c.name.clone())
        .collect()
}
