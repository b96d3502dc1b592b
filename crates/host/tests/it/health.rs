use events::BoundedContext;
use host::metrics::read_sum;
use host::{CheckKind, CheckState, HealthReport};

use crate::{Infra, REMINDER, Running, check, get, metrics_until, readyz_until};

const ORDERING: BoundedContext = BoundedContext::Ordering;

#[tokio::test]
async fn a_working_service_is_ready_over_nats_and_http() {
    let infra = Infra::new().await;
    let service = Running::start(&infra, ORDERING).await;
    service.wait_for("ready", |r| r.ready).await;

    let report = service.health().await.unwrap();
    assert_eq!(report.context, "ordering");
    assert!(
        report.instance.starts_with("chorus-ordering-"),
        "{report:#?}"
    );
    assert!(!report.stopping);
    let database = check(&report, CheckKind::Database, infra.db.name());
    assert_eq!(database.state, CheckState::Up);
    let stream = check(&report, CheckKind::Jetstream, "ORDERING");
    assert_eq!(stream.state, CheckState::Up);
    let relay = check(&report, CheckKind::Relay, "ORDERING");
    assert_eq!(relay.state, CheckState::Active, "{relay:?}");
    assert!(
        relay.detail.as_deref().unwrap().contains("this instance"),
        "{relay:?}"
    );
    let consumer = check(&report, CheckKind::Consumer, "ordering-from-ordering");
    assert_eq!(consumer.state, CheckState::Running);
    assert!(consumer.since_ms.is_some());
    let ticker = check(&report, CheckKind::Ticker, REMINDER);
    assert_eq!(ticker.state, CheckState::Running);
    assert!(
        report
            .checks
            .iter()
            .all(|c| c.ready && c.duration_ms >= 0.0)
    );

    let (status, body) = get(service.http, "/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let over_http: HealthReport = serde_json::from_str(&body).unwrap();
    assert!(over_http.ready);
    assert_eq!(over_http.instance, report.instance);
    assert_eq!(get(service.http, "/healthz").await.unwrap().0, 200);
    assert_eq!(get(service.http, "/nothing").await.unwrap().0, 404);
    service.stop().await;
}

#[tokio::test]
async fn a_second_instance_is_ready_with_its_relay_standing_by() {
    let infra = Infra::new().await;
    let first = Running::start(&infra, ORDERING).await;
    first
        .wait_for("the first instance ready", |r| r.ready)
        .await;
    let active = first.health().await.unwrap().instance;

    let second = Running::start(&infra, ORDERING).await;
    // Its own report, over its own listener: over NATS, the queue group may give the request
    // to either instance.
    let (_, report) = readyz_until(second.http, "the second instance ready", |status, r| {
        status == 200 && r.ready
    })
    .await;
    assert_ne!(report.instance, active);
    let relay = check(&report, CheckKind::Relay, "ORDERING");
    assert_eq!(relay.state, CheckState::Standby, "{relay:?}");
    assert!(
        relay.detail.as_deref().unwrap().contains(&active),
        "{relay:?}"
    );
    assert!(report.ready, "{report:#?}");

    // The active instance stops; the standby's relay takes over.
    first.stop().await;
    let ready_active = |r: &HealthReport| {
        r.ready
            && r.checks
                .iter()
                .any(|c| c.kind == CheckKind::Relay && c.state == CheckState::Active)
    };
    // Requests go to the instance left; it reports its own relay active.
    second
        .wait_for("the second relay active", ready_active)
        .await;
    second.stop().await;
}

#[tokio::test]
async fn without_its_database_a_service_is_alive_but_not_ready() {
    let infra = Infra::new().await;
    let service = Running::start(&infra, ORDERING).await;
    service.wait_for("ready", |r| r.ready).await;
    let lag = |text: &str| {
        read_sum(
            text,
            "chorus_consumer_pending_messages",
            &[("consumer", "ordering-from-ordering")],
        )
    };
    let text = metrics_until(service.http, "the consumer's lag", |text| {
        lag(text).is_some()
    })
    .await;
    assert_eq!(
        read_sum(&text, "chorus_outbox_backlog_events", &[]),
        Some(0.0)
    );

    infra.drop_database().await;
    let down = |r: &HealthReport| {
        let state = |kind| r.checks.iter().find(|c| c.kind == kind).map(|c| c.state);
        state(CheckKind::Database) == Some(CheckState::Down)
            && state(CheckKind::Relay) == Some(CheckState::Failing)
            && state(CheckKind::Ticker) == Some(CheckState::Failing)
    };
    service
        .wait_for("the database, relay and ticker failing", down)
        .await;
    let report = service.health().await.unwrap();
    assert!(!report.ready, "{report:#?}");
    let database = check(&report, CheckKind::Database, infra.db.name());
    assert!(!database.ready);
    assert!(database.detail.is_some(), "{database:?}");
    let stream = check(&report, CheckKind::Jetstream, "ORDERING");
    assert_eq!(stream.state, CheckState::Up, "NATS is still there");

    let (status, body) = get(service.http, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    let over_http: HealthReport = serde_json::from_str(&body).unwrap();
    assert!(!over_http.ready);
    let (status, _) = get(service.http, "/healthz").await.unwrap();
    assert_eq!(status, 200, "alive all the same");
    // The metrics are served all the same; the outbox backlog, which cannot be read, is left
    // out rather than reported stale, and the consumer's lag (from NATS) is still there.
    let (status, text) = get(service.http, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        read_sum(&text, "chorus_outbox_backlog_events", &[]),
        None,
        "{text}"
    );
    assert_eq!(lag(&text), Some(0.0), "{text}");
    service.stop().await;
}

#[tokio::test]
async fn without_nats_a_service_is_not_ready_until_nats_is_back() {
    let mut infra = Infra::new().await;
    let service = Running::start(&infra, ORDERING).await;
    service.wait_for("ready", |r| r.ready).await;

    infra.nats.stop().await;
    let (_, report) = readyz_until(service.http, "/readyz 503", |status, _| status == 503).await;
    let stream = check(&report, CheckKind::Jetstream, "ORDERING");
    assert_eq!(stream.state, CheckState::Down, "{report:#?}");
    assert!(stream.detail.is_some());
    assert_eq!(
        check(&report, CheckKind::Database, infra.db.name()).state,
        CheckState::Up
    );

    infra.nats.restart().await.unwrap();
    let (_, report) = readyz_until(service.http, "/readyz 200", |status, _| status == 200).await;
    assert!(report.ready);
    service.stop().await;
}

#[tokio::test]
async fn a_stopped_service_answers_no_health_request() {
    let infra = Infra::new().await;
    let service = Running::start(&infra, ORDERING).await;
    service.wait_for("ready", |r| r.ready).await;
    let client = service.client.clone();
    let http = service.http;
    service.stop().await;

    let health = client
        .request(host::health_subject(ORDERING), "".into())
        .await;
    assert!(health.is_err(), "the health endpoint is gone");
    let ping = client.request("$SRV.PING.ordering", "".into()).await;
    assert!(ping.is_err(), "the NATS service is gone");
    assert!(
        get(http, "/healthz").await.is_err(),
        "the listener is closed"
    );
}
