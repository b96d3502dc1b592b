//! How the service stands and what it did: its health on `chorus.notifications.health` and
//! `GET /readyz`, its metrics at `GET /metrics` (Prometheus text format), and `GET /healthz`
//! for liveness, on the optional `NOTIFICATIONS_HTTP_ADDR` listener.
//!
//! The health report has the shape of the Chorus services' (`context`, `instance`, `ready`,
//! `stopping`, `duration_ms`, `checks`), so the same probes and tools read it. Its checks,
//! each within [`PROBE_TIMEOUT`]:
//!
//! - `jetstream` `ORDERING`: the NATS connection is up and the stream answers for its info;
//! - `consumer` `notifications-from-ordering`: the loop runs and the durable consumer answers
//!   for its info (its lag in the detail);
//! - `bucket` `notifications`: the key-value bucket answers for its status.
//!
//! Metrics, every series labelled `service="notifications"`, named as the Chorus services
//! name theirs:
//!
//! - `chorus_consumer_messages_total{consumer, outcome}`: messages settled: `handled`,
//!   `retried` (naked: waiting, a transient failure or an unknown version), `dead_lettered`;
//! - `chorus_consumer_message_duration_seconds{consumer}`: a message from its delivery to its
//!   settlement;
//! - `chorus_notifications_sent_total{kind}`: notifications the sink took;
//! - sampled at scrape: `chorus_consumer_pending_messages{consumer}` (the lag) and
//!   `chorus_consumer_ack_pending_messages{consumer}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::connection::State as ConnectionState;
use async_nats::jetstream;
use async_nats::service::ServiceExt as _;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt as _;
use prometheus::{Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use serde::{Deserialize, Serialize};

use crate::contract::{CONSUMER, STREAM};
use crate::notification::Kind;
use crate::state::BUCKET;

/// The service's name: its NATS service and its health subject's middle token.
pub const NAME: &str = "notifications";
/// Where the health report is asked for.
pub const HEALTH_SUBJECT: &str = "chorus.notifications.health";
/// How long a check may take before it counts as failed, and a sample before it is left out.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Upper bounds of the duration buckets, in seconds: 1 ms to 5 min.
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The answer of `chorus.notifications.health` and the body of `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    /// The service: `notifications`.
    pub context: String,
    pub instance: String,
    pub ready: bool,
    pub stopping: bool,
    pub duration_ms: f64,
    pub checks: Vec<Check>,
}

/// One thing the service depends on, and how it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// `jetstream`, `consumer` or `bucket`.
    pub kind: String,
    pub name: String,
    /// `up`, `down`, `running` or `stopped`.
    pub state: String,
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub duration_ms: f64,
}

/// How a message was settled, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Handled,
    Retried,
    DeadLettered,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Handled, Outcome::Retried, Outcome::DeadLettered];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Handled => "handled",
            Outcome::Retried => "retried",
            Outcome::DeadLettered => "dead_lettered",
        }
    }
}

/// The service's series.
#[derive(Debug)]
struct Metrics {
    registry: prometheus::Registry,
    messages: IntCounterVec,
    duration: HistogramVec,
    sent: IntCounterVec,
    pending: IntGaugeVec,
    ack_pending: IntGaugeVec,
}

impl Metrics {
    fn new() -> prometheus::Result<Self> {
        let labels = HashMap::from([("service".to_owned(), NAME.to_owned())]);
        let registry = prometheus::Registry::new_custom(None, Some(labels))?;
        let messages = IntCounterVec::new(
            Opts::new(
                "chorus_consumer_messages_total",
                "Messages settled by the durable consumer, by consumer and outcome",
            ),
            &["consumer", "outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "chorus_consumer_message_duration_seconds",
                "How long a message took from its delivery to its settlement, by consumer",
            )
            .buckets(BUCKETS.to_vec()),
            &["consumer"],
        )?;
        let sent = IntCounterVec::new(
            Opts::new(
                "chorus_notifications_sent_total",
                "Notifications the sink took, by kind",
            ),
            &["kind"],
        )?;
        let pending = IntGaugeVec::new(
            Opts::new(
                "chorus_consumer_pending_messages",
                "Messages the durable consumer has not delivered yet (its lag), by consumer",
            ),
            &["consumer"],
        )?;
        let ack_pending = IntGaugeVec::new(
            Opts::new(
                "chorus_consumer_ack_pending_messages",
                "Messages delivered to the durable consumer and not acked yet, by consumer",
            ),
            &["consumer"],
        )?;
        registry.register(Box::new(messages.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(sent.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(ack_pending.clone()))?;
        // Known up front: at zero before the first message, so that rates are defined.
        for outcome in Outcome::ALL {
            messages.with_label_values(&[CONSUMER, outcome.as_str()]);
        }
        duration.with_label_values(&[CONSUMER]);
        for kind in [Kind::OrderConfirmed, Kind::OrderShipped] {
            sent.with_label_values(&[kind.name()]);
        }
        Ok(Self {
            registry,
            messages,
            duration,
            sent,
            pending,
            ack_pending,
        })
    }
}

/// What the service's health and metrics are read from; cheap to clone.
#[derive(Debug, Clone)]
pub struct Observer {
    instance: String,
    js: jetstream::Context,
    metrics: Arc<Metrics>,
    /// The loop runs: set when it starts pulling, cleared when it ends.
    running: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    /// One scrape samples at a time: the sampled series are cleared, then set again.
    sampling: Arc<tokio::sync::Mutex<()>>,
}

impl Observer {
    pub(crate) fn new(js: jetstream::Context) -> anyhow::Result<Self> {
        let random = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Ok(Self {
            instance: format!("chorus-{NAME}-{}-{random:08x}", std::process::id()),
            js,
            metrics: Arc::new(Metrics::new().context("cannot register the metrics")?),
            running: Arc::default(),
            stopping: Arc::default(),
            sampling: Arc::default(),
        })
    }

    pub(crate) fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Relaxed);
    }

    /// From now on the service reports itself stopping, hence not ready.
    pub(crate) fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Counts a message settled with `outcome`, delivered at `started`.
    pub(crate) fn settled(&self, outcome: Outcome, started: Instant) {
        let metrics = &self.metrics;
        metrics
            .duration
            .with_label_values(&[CONSUMER])
            .observe(started.elapsed().as_secs_f64());
        metrics
            .messages
            .with_label_values(&[CONSUMER, outcome.as_str()])
            .inc();
    }

    /// Counts a notification the sink took.
    pub(crate) fn sent(&self, kind: Kind) {
        self.metrics.sent.with_label_values(&[kind.name()]).inc();
    }

    /// The service's health now.
    pub async fn health(&self) -> HealthReport {
        let started = Instant::now();
        let (jetstream, consumer, bucket) = tokio::join!(
            self.stream_check(),
            self.consumer_check(),
            self.bucket_check()
        );
        let checks = vec![jetstream, consumer, bucket];
        let stopping = self.stopping.load(Ordering::Relaxed);
        HealthReport {
            context: NAME.to_owned(),
            instance: self.instance.clone(),
            ready: !stopping && checks.iter().all(|c| c.ready),
            stopping,
            duration_ms: millis(started.elapsed()),
            checks,
        }
    }

    /// Every series in the Prometheus text format, the consumer's lag read first.
    pub async fn metrics(&self) -> String {
        let _one_at_a_time = self.sampling.lock().await;
        let metrics = &self.metrics;
        metrics.pending.reset();
        metrics.ack_pending.reset();
        match tokio::time::timeout(PROBE_TIMEOUT, self.consumer_info()).await {
            Ok(Ok((pending, ack_pending))) => {
                let saturate = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                metrics
                    .pending
                    .with_label_values(&[CONSUMER])
                    .set(saturate(pending));
                metrics
                    .ack_pending
                    .with_label_values(&[CONSUMER])
                    .set(saturate(ack_pending as u64));
            }
            Ok(Err(e)) => tracing::debug!(error = format!("{e:#}"), "cannot sample the lag"),
            Err(_) => tracing::debug!("the consumer's lag took too long to sample"),
        }
        let mut buffer = Vec::new();
        if let Err(e) =
            prometheus::TextEncoder::new().encode(&metrics.registry.gather(), &mut buffer)
        {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }

    async fn consumer_info(&self) -> anyhow::Result<(u64, usize)> {
        let info = self
            .js
            .get_stream_no_info(STREAM)
            .await?
            .consumer_info(CONSUMER)
            .await?;
        Ok((info.num_pending, info.num_ack_pending))
    }

    async fn stream_check(&self) -> Check {
        let started = Instant::now();
        let connection = self.js.client().connection_state();
        if connection != ConnectionState::Connected {
            let detail = format!("the NATS connection is {connection}");
            return check("jetstream", STREAM, Err(detail), started);
        }
        let info = async {
            let mut stream = self.js.get_stream(STREAM).await?;
            let info = stream.info().await?;
            anyhow::Ok(format!(
                "{} messages, last sequence {}",
                info.state.messages, info.state.last_sequence
            ))
        };
        check("jetstream", STREAM, probe(info).await, started)
    }

    async fn consumer_check(&self) -> Check {
        let started = Instant::now();
        if !self.running.load(Ordering::Relaxed) {
            let mut stopped = check(
                "consumer",
                CONSUMER,
                Err("the loop is not running".to_owned()),
                started,
            );
            stopped.state = "stopped".to_owned();
            return stopped;
        }
        let info = async {
            let (pending, ack_pending) = self.consumer_info().await?;
            anyhow::Ok(format!(
                "{pending} messages not delivered yet, {ack_pending} not acked yet"
            ))
        };
        let mut found = check("consumer", CONSUMER, probe(info).await, started);
        if found.ready {
            found.state = "running".to_owned();
        }
        found
    }

    async fn bucket_check(&self) -> Check {
        let started = Instant::now();
        let status = async {
            let status = self.js.get_key_value(BUCKET).await?.status().await?;
            anyhow::Ok(format!("{} values", status.values()))
        };
        check("bucket", BUCKET, probe(status).await, started)
    }
}

/// Runs `probe` within [`PROBE_TIMEOUT`]: what it found, or why it failed.
async fn probe(probe: impl Future<Output = anyhow::Result<String>>) -> Result<String, String> {
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

fn check(kind: &str, name: &str, found: Result<String, String>, started: Instant) -> Check {
    let (state, ready, detail) = match found {
        Ok(detail) => ("up", true, detail),
        Err(detail) => ("down", false, detail),
    };
    Check {
        kind: kind.to_owned(),
        name: name.to_owned(),
        state: state.to_owned(),
        ready,
        detail: Some(detail),
        duration_ms: millis(started.elapsed()),
    }
}

/// Milliseconds, to the microsecond.
fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1_000.0
}

/// Answers `chorus.notifications.health` (the NATS service `notifications`, queue group
/// `chorus`) until `shutdown` resolves.
pub async fn serve_health(
    client: &async_nats::Client,
    observer: Observer,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let service = client
        .service_builder()
        .description("The notifications service: its health")
        .queue_group("chorus")
        .start(NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the {NAME} NATS service: {e}"))?;
    let endpoint = service
        .endpoint_builder()
        .name("health")
        .add(HEALTH_SUBJECT)
        .await
        .map_err(|e| anyhow::anyhow!("cannot add endpoint {HEALTH_SUBJECT}: {e}"))?;
    Ok(async move {
        endpoint
            .take_until(shutdown)
            .for_each_concurrent(8, |request| {
                let observer = &observer;
                async move {
                    let body = serde_json::to_vec(&observer.health().await).unwrap_or_default();
                    if let Err(e) = request.respond(Ok(body.into())).await {
                        tracing::warn!(endpoint = HEALTH_SUBJECT, error = %e, "cannot reply");
                    }
                }
            })
            .await;
        if let Err(e) = service.stop().await {
            tracing::warn!(error = %e, "cannot stop the NATS service");
        }
    })
}

/// Listens on `addr` (`NOTIFICATIONS_HTTP_ADDR`); returns the address it listens on and the
/// server, which serves `/healthz`, `/readyz` and `/metrics` until `shutdown` resolves.
pub async fn listen_http(
    addr: SocketAddr,
    observer: Observer,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(
    SocketAddr,
    impl Future<Output = anyhow::Result<()>> + Send + 'static,
)> {
    let cannot = || format!("cannot listen for HTTP on {addr} (NOTIFICATIONS_HTTP_ADDR)");
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(cannot)?;
    let local = listener.local_addr().with_context(cannot)?;
    let app = Router::new()
        .route("/healthz", get(|| async { "alive\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(observer);
    tracing::info!(addr = %local, "serving /healthz, /readyz and /metrics");
    Ok((local, async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("the HTTP listener failed")
    }))
}

async fn readyz(State(observer): State<Observer>) -> (StatusCode, Json<HealthReport>) {
    let report = observer.health().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

async fn metrics(
    State(observer): State<Observer>,
) -> ([(header::HeaderName, &'static str); 1], String) {
    let text = observer.metrics().await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}
