//! The health of a service over HTTP, for what cannot ask NATS: an orchestrator's liveness and
//! readiness probes, a load balancer.
//!
//! - `GET /healthz`: 200 as long as the process serves requests. It checks nothing else on
//!   purpose: a service whose database is down is not ready, but restarting it would not help.
//! - `GET /readyz`: the [`HealthReport`](crate::HealthReport) as JSON, with 200 when it is
//!   ready and 503 when it is not (a dependency is down, or the service is stopping).
//!
//! The listener is optional (`<CONTEXT>_HEALTH_ADDR`); the same report is always served over
//! NATS.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use events::BoundedContext;
use tokio_util::sync::CancellationToken;

use crate::HealthReport;
use crate::health::Monitor;

/// The variable of a context's health listener, e.g. `ORDERING_HEALTH_ADDR`.
pub fn health_addr_var(context: BoundedContext) -> String {
    format!("{}_HEALTH_ADDR", context.name().to_uppercase())
}

/// Parses a value of [`health_addr_var`]: `host:port` with an IP address, e.g.
/// `127.0.0.1:8081` or `[::]:8081` (port 0: any free port). Unset or empty: no listener.
pub fn parse_health_addr(
    context: BoundedContext,
    value: Option<&str>,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    value.parse().map(Some).with_context(|| {
        format!(
            "{}={value:?} is not an address to listen on, like 127.0.0.1:8081",
            health_addr_var(context)
        )
    })
}

/// The address of the health listener from [`health_addr_var`] (unset or empty: none).
pub fn health_addr_from_env(context: BoundedContext) -> anyhow::Result<Option<SocketAddr>> {
    let var = health_addr_var(context);
    match std::env::var(&var) {
        Ok(value) => parse_health_addr(context, Some(&value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(value)) => {
            anyhow::bail!("{var}={value:?} is not an address to listen on, like 127.0.0.1:8081")
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
            "cannot listen for health checks on {addr} ({})",
            health_addr_var(context)
        )
    })
}

/// Serves `/healthz` and `/readyz` on `listener` until `shutdown`, then lets the requests in
/// hand finish.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    monitor: Monitor,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(alive))
        .route("/readyz", get(ready))
        .with_state(monitor);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("the health listener failed")
}

async fn alive() -> &'static str {
    "alive\n"
}

async fn ready(State(monitor): State<Monitor>) -> (StatusCode, Json<HealthReport>) {
    let report = monitor.report().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}
