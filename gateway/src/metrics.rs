//! The gateway's Prometheus metrics, served as text at `GET /metrics`.
//!
//! - `chorus_gateway_http_requests_total{route, method, status}`: requests answered;
//! - `chorus_gateway_http_request_duration_seconds{route, method}`: how long they took;
//! - `chorus_gateway_http_requests_in_flight`: requests being answered now.
//!
//! `route` is the route's template (`/orders/{order_id}`), never the path itself, so that ids
//! do not multiply the series; a request that matched no route counts as `unmatched`. Each
//! gateway has a registry of its own (several can run in one test process).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// The media type of the Prometheus text format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The gateway's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGauge,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Arc<Self>> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "chorus_gateway_http_requests_total",
                "HTTP requests answered, by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "chorus_gateway_http_request_duration_seconds",
                "How long HTTP requests took to answer, by route and method",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route", "method"],
        )?;
        let in_flight = IntGauge::new(
            "chorus_gateway_http_requests_in_flight",
            "HTTP requests being answered",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        Ok(Arc::new(Self {
            registry,
            requests,
            duration,
            in_flight,
        }))
    }

    /// Every metric, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buffer)
        {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// Middleware: counts and times every request.
pub async fn observe(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    metrics.in_flight.inc();
    // Counted down however the request ends, an abandoned one included.
    let _in_flight = InFlight(&metrics.in_flight);
    let response = next.run(request).await;
    metrics
        .requests
        .with_label_values(&[&route, &method, response.status().as_str()])
        .inc();
    metrics
        .duration
        .with_label_values(&[&route, &method])
        .observe(started.elapsed().as_secs_f64());
    response
}

struct InFlight<'a>(&'a IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
