//! Starting, serving and stopping the gateway.
//!
//! [`Gateway::start`] connects to NATS (under the inbox prefix `_INBOX_gateway`, the only one
//! the gateway's NATS user may subscribe to, and refusing servers older than 2.12), opens the
//! idempotency bucket, builds the router and binds the address. [`Gateway::run`] serves until
//! told to stop, then stops taking connections, lets the requests in hand finish (up to 30 s)
//! and flushes NATS.
//!
//! Each request is served in a span (`http.request`, service `gateway`), a child of the
//! client's `traceparent` when it sent one. The request then carries the span's own trace
//! context in its `traceparent` header, so that what answers it (the request context, and
//! through it the NATS requests to the contexts, even from a task of their own) continues the
//! trace from the gateway's span rather than from the client's.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use events::headers;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::api::{self, AppState, Shared};
use crate::idempotency::Idempotency;
use crate::metrics::Metrics;
use crate::openapi;
use crate::protect::RateLimiter;
use crate::settings::{ADDR_VAR, NATS_URL_VAR, Settings};
use crate::upstream::Upstream;

/// How often the rate limiter forgets principals that have been quiet.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// A gateway, bound and ready to serve.
#[derive(Debug)]
pub struct Gateway {
    listener: TcpListener,
    addr: SocketAddr,
    router: axum::Router,
    state: AppState,
    client: async_nats::Client,
    shutdown: CancellationToken,
}

impl Gateway {
    /// Connects, opens the idempotency bucket and binds `settings.addr`.
    pub async fn start(settings: Settings) -> anyhow::Result<Self> {
        let client = connect(&settings.nats_url).await?;
        let js = async_nats::jetstream::new(client.clone());
        let idempotency =
            Idempotency::open(&js, settings.idempotency_ttl, settings.request_timeout).await?;
        let routes = api::routes();
        let operations: Vec<_> = routes.iter().map(|r| r.operation.clone()).collect();
        let document = serde_json::to_vec(&openapi::document(&operations))
            .context("cannot encode the OpenAPI document")?;
        let state = AppState::new(Shared {
            upstream: Upstream::new(client.clone(), settings.request_timeout),
            idempotency,
            verifier: settings.verifier.clone(),
            limiter: RateLimiter::new(settings.rate_limit),
            metrics: Metrics::new().context("cannot register the metrics")?,
            max_body_bytes: settings.max_body_bytes,
            document: document.into(),
            docs_page: openapi::docs_page(&operations),
        });
        let router = api::router(routes, state.clone(), &settings.cors_origins)
            .layer(axum::middleware::from_fn(trace));
        let listener = TcpListener::bind(settings.addr)
            .await
            .with_context(|| format!("cannot listen on {} ({ADDR_VAR})", settings.addr))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("cannot listen on {} ({ADDR_VAR})", settings.addr))?;
        Ok(Self {
            listener,
            addr,
            router,
            state,
            client,
            shutdown: CancellationToken::new(),
        })
    }

    /// The address it listens on (with port 0, the port the system chose).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cancelling it stops the gateway, as a signal would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until `stop` completes (or the shutdown token is cancelled), then stops in order.
    pub async fn run(self, stop: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        tracing::info!(addr = %self.addr, "gateway serving");
        let shutdown = self.shutdown.clone();
        let limiter_state = self.state.clone();
        let forgetting = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let mut tick = tokio::time::interval(FORGET_EVERY);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        _ = tick.tick() => limiter_state.limiter.forget_idle(),
                    }
                }
            }
        });
        let signal = {
            let shutdown = shutdown.clone();
            async move {
                tokio::select! {
                    () = stop => {}
                    () = shutdown.cancelled() => {}
                }
                tracing::info!("gateway stopping: finishing the requests in hand");
                shutdown.cancel();
            }
        };
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        let serving = axum::serve(self.listener, service).with_graceful_shutdown(signal);
        let outcome = tokio::select! {
            outcome = serving => outcome.context("the HTTP server failed"),
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            } => {
                tracing::warn!("some requests did not finish within 30 s");
                Ok(())
            }
        };
        shutdown.cancel();
        forgetting.await.ok();
        if tokio::time::timeout(Duration::from_secs(5), self.client.flush())
            .await
            .is_err()
        {
            tracing::warn!("NATS did not take the last messages within 5 s");
        }
        tracing::info!("gateway stopped");
        outcome
    }
}

/// Connects to NATS as the gateway (`bus::connect`: the URL's credentials, the inbox prefix
/// `_INBOX_gateway` its user may read, the server version check).
pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    bus::connect(url, "gateway")
        .await
        .with_context(|| format!("{NATS_URL_VAR} ({})", bus::redact(url)))
}

/// Middleware, outside every other: serves the request in its span (see the module's docs).
async fn trace(mut request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let span = tracing::info_span!(
        "http.request",
        otel.name = %method,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        service = "gateway",
        http.request.method = %method,
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    let (traceparent, tracestate) = {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        (header(headers::TRACEPARENT), header(headers::TRACESTATE))
    };
    if let Some(context) = bus::follow_trace(&span, traceparent.as_deref(), tracestate.as_deref()) {
        let map = request.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&context.traceparent) {
            map.insert(headers::TRACEPARENT, value);
        }
        match context
            .tracestate
            .and_then(|state| HeaderValue::from_str(&state).ok())
        {
            Some(value) => map.insert(headers::TRACESTATE, value),
            None => map.remove(headers::TRACESTATE),
        };
    }
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}
