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
//! The listener is optional (`<SERVICE>_HTTP_ADDR`, e.g. `ORDERING_HTTP_ADDR` or
//! `PROJECTIONS_HTTP_ADDR`); the same health report is always served over NATS. It serves any
//! service that can say how it is ([`Observed`]): a context's host, the projections. The
//! variable was `<CONTEXT>_HEALTH_ADDR` while the listener served health only; the old name is
//! refused with a message naming the new one, so that a deployment that still sets it fails at
//! start instead of running without its probes.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::HealthReport;
use crate::metrics::TEXT_FORMAT;

/// What a service answers its probes and scrapes from.
pub trait Observed: Clone + Send + Sync + 'static {
    /// The service's health now, as `chorus.<service>.health` and `GET /readyz` answer it.
    fn health(&self) -> impl Future<Output = HealthReport> + Send;

    /// The service's metrics now, in the Prometheus text format, sampled series read first.
    fn metrics(&self) -> impl Future<Output = String> + Send;
}

/// The variable of a service's HTTP listener, e.g. `ORDERING_HTTP_ADDR` for the context
/// `ordering`, `PROJECTIONS_HTTP_ADDR` for `projections`.
pub fn http_addr_var(service: impl Display) -> String {
    format!("{}_HTTP_ADDR", service.to_string().to_uppercase())
}

/// The variable [`http_addr_var`] replaced, e.g. `ORDERING_HEALTH_ADDR`: refused if set.
pub fn former_http_addr_var(service: impl Display) -> String {
    format!("{}_HEALTH_ADDR", service.to_string().to_uppercase())
}

/// Parses a value of [`http_addr_var`]: `host:port` with an IP address, e.g.
/// `127.0.0.1:8081` or `[::]:8081` (port 0: any free port). Unset or empty: no listener.
pub fn parse_http_addr(
    service: impl Display,
    value: Option<&str>,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    value.parse().map(Some).with_context(|| {
        format!(
            "{}={value:?} is not an address to listen on, like 127.0.0.1:8081",
            http_addr_var(service)
        )
    })
}

/// The address of the HTTP listener from the environment (see [`http_addr_from_vars`]).
pub fn http_addr_from_env(service: impl Display) -> anyhow::Result<Option<SocketAddr>> {
    http_addr_from_vars(service, |name| std::env::var(name))
}

/// The address of the HTTP listener from [`http_addr_var`] as `var` reads it (unset or empty:
/// none). Fails, naming both, when [`former_http_addr_var`] is set.
pub fn http_addr_from_vars(
    service: impl Display,
    var: impl Fn(&str) -> Result<String, std::env::VarError>,
) -> anyhow::Result<Option<SocketAddr>> {
    let former = former_http_addr_var(&service);
    let name = http_addr_var(&service);
    match var(&former) {
        Err(std::env::VarError::NotPresent) => {}
        Ok(value) if value.is_empty() => {}
        Ok(_) | Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!(
            "{former} is no longer read: the listener serves /metrics too, and its address is \
             now {name} (same format); rename the variable"
        ),
    }
    match var(&name) {
        Ok(value) => parse_http_addr(&service, Some(&value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(value)) => {
            anyhow::bail!("{name}={value:?} is not an address to listen on, like 127.0.0.1:8081")
        }
    }
}

/// Listens on `addr` for `service` (see the module docs). Returns the address it listens on
/// (with port 0, the port the system chose) and the server, to run until `shutdown`, after
/// which it lets the requests in hand finish. An address it cannot listen on fails here,
/// naming `<SERVICE>_HTTP_ADDR`.
pub async fn listen<O: Observed>(
    service: impl Display,
    addr: SocketAddr,
    observed: O,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    SocketAddr,
    impl Future<Output = anyhow::Result<()>> + Send + 'static,
)> {
    let cannot = || {
        format!(
            "cannot listen for HTTP on {addr} ({})",
            http_addr_var(&service)
        )
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(cannot)?;
    let local = listener.local_addr().with_context(cannot)?;
    tracing::info!(service = %service, addr = %local, "serving /healthz, /readyz and /metrics");
    let app = Router::new()
        .route("/healthz", get(alive))
        .route("/readyz", get(ready::<O>))
        .route("/metrics", get(metrics::<O>))
        .with_state(observed);
    let serving = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .context("the HTTP listener failed")
    };
    Ok((local, serving))
}

async fn alive() -> &'static str {
    "alive\n"
}

async fn ready<O: Observed>(State(observed): State<O>) -> (StatusCode, Json<HealthReport>) {
    let report = observed.health().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

async fn metrics<O: Observed>(
    State(observed): State<O>,
) -> ([(header::HeaderName, &'static str); 1], String) {
    let text = observed.metrics().await;
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], text)
}
