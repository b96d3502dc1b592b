//! A service over HTTP, for what cannot ask NATS: an orchestrator's liveness and readiness
//! probes, a load balancer, Prometheus.
//!
//! - `GET /healthz`: 200 as long as the process serves requests. It checks nothing else on
//!   purpose: a service whose database is down is not ready, but restarting it would not help.
//! - `GET /readyz`: the [`HealthReport`] as JSON, with 200 when it is ready and 503 when it is
//!   not (a dependency is down, or the service is stopping).
//! - `GET /metrics`: the service's metrics in the Prometheus text format (see
//!   [`crate::metrics`]).
//!
//! The listener is optional (`<CONTEXT>_HTTP_ADDR`); the same health report is always served
//! over NATS. The variable was `<CONTEXT>_HEALTH_ADDR` while the listener served health only;
//! the old name is refused with a message naming the new one, so that a deployment that still
//! sets it fails at start instead of running without its probes.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::get;
use axum::{Json, Router};
use events::BoundedContext;
use tokio_util::sync::CancellationToken;

use crate::HealthReport;
use crate::health::Monitor;
use crate::metrics::{Scraper, TEXT_FORMAT};

/// The variable of a context's HTTP listener, e.g. `ORDERING_HTTP_ADDR`.
pub fn http_addr_var(context: BoundedContext) -> String {
    format!("{}_HTTP_ADDR", context.name().to_uppercase())
}

/// The variable [`http_addr_var`] replaced, e.g. `ORDERING_HEALTH_ADDR`: refused if set.
pub fn former_http_addr_var(context: BoundedContext) -> String {
    format!("{}_HEALTH_ADDR", context.name().to_uppercase())
}

/// Parses a value of [`http_addr_var`]: `host:port` with an IP address, e.g.
/// `127.0.0.1:8081` or `[::]:8081` (port 0: any free port). Unset or empty: no listener.
pub fn parse_http_addr(
    context: BoundedContext,
    value: Option<&str>,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    value.parse().map(Some).with_context(|| {
        format!(
            "{}={value:?} is not an address to listen on, like 127.0.0.1:8081",
            http_addr_var(context)
        )
    })
}

/// The address of the HTTP listener from the environment (see [`http_addr_from_vars`]).
pub fn http_addr_from_env(context: BoundedContext) -> anyhow::Result<Option<SocketAddr>> {
    http_addr_from_vars(context, |name| std::env::var(name))
}

/// The address of the HTTP listener from [`http_addr_var`] as `var` reads it (unset or empty:
/// none). Fails, naming both, when [`former_http_addr_var`] is set.
pub fn http_addr_from_vars(
    context: BoundedContext,
    var: impl Fn(&str) -> Result<String, std::env::VarError>,
) -> anyhow::Result<Option<SocketAddr>> {
    let former = former_http_addr_var(context);
    let name = http_addr_var(context);
    match var(&former) {
        Err(std::env::VarError::NotPresent) => {}
        Ok(value) if value.is_empty() => {}
        Ok(_) | Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!(
            "{former} is no longer read: the listener serves /metrics too, and its address is \
             now {name} (same format); rename the variable"
        ),
    }
    match var(&name) {
        Ok(value) => parse_http_addr(context, Some(&value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(value)) => {
            anyhow::bail!("{name}={value:?} is not an address to listen on, like 127.0.0.1:8081")
        }
    }
}

/// Binds `addr`; the error names the variable the address came from.
pub(crate) async fn bind(
    context: BoundedContext,
    addr: SocketAddr,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen for HTTP on {addr} ({})",
            http_addr_var(context)
        )
    })
}

/// What the routes answer from.
#[derive(Debug, Clone)]
struct Sources {
    monitor: Monitor,
    scraper: Scraper,
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until `shutdown`, then lets the
/// requests in hand finish.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    monitor: Monitor,
    scraper: Scraper,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(alive))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(Sources { monitor, scraper });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("the HTTP listener failed")
}

async fn alive() -> &'static str {
    "alive\n"
}

async fn ready(State(sources): State<Sources>) -> (StatusCode, Json<HealthReport>) {
    let report = sources.monitor.report().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

async fn metrics(
    State(sources): State<Sources>,
) -> ([(header::HeaderName, &'static str); 1], String) {
    let text = sources.scraper.scrape().await;
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], text)
}
