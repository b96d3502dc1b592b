//! The service's health and metrics: ready over NATS and over HTTP while it works, its
//! metrics moving as an order's messages are handled, and not ready once NATS is gone.

use notifications::observe::{self, HealthReport};
use notifications::{LogSink, Service};

use crate::publish::{Order, publish};
use crate::server::wait_until;
use crate::support::{World, quick};

/// The sum of the samples of `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let series_name = series.split('{').next().unwrap_or_default();
        if series_name == name && labels.iter().all(|l| series.contains(l)) {
            *sum.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    sum
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn it_reports_ready_and_counts_an_order_over_nats_and_http_then_not_ready_without_nats() {
    let world = World::new().await;
    let client = notifications::connect(world.server.url()).await.unwrap();
    let service = Service::start(client.clone(), LogSink::default(), quick())
        .await
        .unwrap();
    let observer = service.observer();
    let (stop, stopped) = tokio::sync::watch::channel(());
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            stopped.changed().await.ok();
        }
    };
    let health = observe::serve_health(&client, observer.clone(), until_stopped())
        .await
        .unwrap();
    tokio::spawn(health);
    let (addr, serving) =
        observe::listen_http("127.0.0.1:0".parse().unwrap(), observer, until_stopped())
            .await
            .unwrap();
    let http = tokio::spawn(serving);
    let running = tokio::spawn(service.run(std::future::pending()));
    let base = format!("http://{addr}");

    let asker = async_nats::connect(world.server.url()).await.unwrap();
    wait_until("the service reports itself ready over NATS", || async {
        let Ok(reply) = asker.request(observe::HEALTH_SUBJECT, "".into()).await else {
            return false;
        };
        let report: HealthReport = serde_json::from_slice(&reply.payload).unwrap();
        report.ready
    })
    .await;
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    let report: HealthReport = serde_json::from_str(&body).unwrap();
    let kinds: Vec<(&str, &str)> = report
        .checks
        .iter()
        .map(|c| (c.kind.as_str(), c.name.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("jetstream", "ORDERING"),
            ("consumer", "notifications-from-ordering"),
            ("bucket", "notifications"),
        ]
    );
    assert_eq!(report.context, "notifications");
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);

    let (_, text) = get(&format!("{base}/metrics")).await;
    let consumer = "consumer=\"notifications-from-ordering\"";
    let confirmed = "kind=\"order-confirmed\"";
    assert_eq!(
        sample(&text, "chorus_notifications_sent_total", &[confirmed]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "chorus_consumer_messages_total",
            &[consumer, "outcome=\"dead_lettered\""]
        ),
        Some(0.0),
        "{text}"
    );

    let order = Order::new(7);
    publish(&world.js, &order.placed()).await;
    publish(&world.js, &order.confirmed()).await;
    world.wait_drained().await;
    wait_until("the metrics count the order's two messages", || async {
        let (_, text) = get(&format!("{base}/metrics")).await;
        sample(
            &text,
            "chorus_consumer_messages_total",
            &[consumer, "outcome=\"handled\""],
        ) == Some(2.0)
    })
    .await;
    let (_, text) = get(&format!("{base}/metrics")).await;
    for (name, labels, want) in [
        (
            "chorus_notifications_sent_total",
            vec![confirmed, "service=\"notifications\""],
            1.0,
        ),
        (
            "chorus_notifications_sent_total",
            vec!["kind=\"order-shipped\""],
            0.0,
        ),
        (
            "chorus_consumer_message_duration_seconds_count",
            vec![consumer],
            2.0,
        ),
        ("chorus_consumer_pending_messages", vec![consumer], 0.0),
        ("chorus_consumer_ack_pending_messages", vec![consumer], 0.0),
    ] {
        assert_eq!(sample(&text, name, &labels), Some(want), "{name}:\n{text}");
    }

    // Without its server, the service is not ready.
    let World { server, .. } = world;
    drop(server);
    wait_until("/readyz answers 503 without NATS", || async {
        get(&format!("{base}/readyz")).await.0 == 503
    })
    .await;
    let (_, body) = get(&format!("{base}/readyz")).await;
    let report: HealthReport = serde_json::from_str(&body).unwrap();
    let jetstream = &report.checks[0];
    assert!(!report.ready && !jetstream.ready, "{report:#?}");
    assert_eq!(jetstream.state, "down");

    drop(stop);
    http.await.unwrap().unwrap();
    running.abort();
}
