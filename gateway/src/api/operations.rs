//! Probes, metrics and the description of the API.
//!
//! `/readyz` asks every context's health endpoint and the query service's `status` endpoint at
//! the same time, each within 2 s (or the request timeout, if shorter): the gateway is ready
//! when NATS is connected and every one of them answers ready. `/healthz` checks nothing: a
//! gateway that cannot reach NATS is not ready, but restarting it would not help.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use events::BoundedContext;
use events::query::{ProjectionsStatus, QueryReply, StatusRequest};

use super::types::{Alive, Readiness, ServiceReadiness};
use super::{AppState, Route};
use crate::openapi::{Access, Idempotent, Operation, Reply, SchemaFn, schema};

/// How long a readiness check waits for each service, at most.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn routes() -> Vec<Route> {
    let probe = |path, id, summary, description, replies| Operation {
        method: Method::GET,
        path,
        id,
        tag: "operations",
        summary,
        description,
        access: Access::Probe,
        owned: false,
        path_params: vec![],
        query: None,
        body: None,
        idempotent: Idempotent::No,
        upstream: false,
        replies,
        refusals: vec![],
    };
    let reply = |status, description, media, body: Option<SchemaFn>| Reply {
        status,
        description,
        body: body.map(|b| (media, b)),
        headers: &[],
    };
    let text: SchemaFn = schema::<String>();
    let object: SchemaFn = schema::<serde_json::Map<String, serde_json::Value>>();
    vec![
        Route::new(
            probe(
                "/healthz",
                "alive",
                "Liveness",
                "200 as long as the gateway answers HTTP.",
                vec![reply(
                    200,
                    "Alive.",
                    "application/json",
                    Some(schema::<Alive>()),
                )],
            ),
            alive,
        ),
        Route::new(
            probe(
                "/readyz",
                "ready",
                "Readiness",
                "Whether NATS is connected and every context and the query service answer \
                 ready.",
                vec![
                    reply(
                        200,
                        "Ready.",
                        "application/json",
                        Some(schema::<Readiness>()),
                    ),
                    reply(
                        503,
                        "Not ready: see which service.",
                        "application/json",
                        Some(schema::<Readiness>()),
                    ),
                ],
            ),
            ready,
        ),
        Route::new(
            probe(
                "/metrics",
                "metrics",
                "Prometheus metrics",
                "Requests by route, method and status, their latency, and the requests in \
                 flight, in the Prometheus text format.",
                vec![reply(200, "The metrics.", "text/plain", Some(text))],
            ),
            metrics,
        ),
        Route::new(
            probe(
                "/openapi.json",
                "openapi",
                "This document",
                "The OpenAPI 3.1 description of this API, generated from its route table.",
                vec![reply(
                    200,
                    "The document.",
                    "application/json",
                    Some(object),
                )],
            ),
            openapi,
        ),
        Route::new(
            probe(
                "/docs",
                "docs",
                "API documentation",
                "An HTML page that renders /openapi.json.",
                vec![reply(200, "The page.", "text/html", Some(text))],
            ),
            docs,
        ),
    ]
}

async fn alive() -> axum::Json<Alive> {
    axum::Json(Alive {
        status: "alive".to_owned(),
    })
}

async fn ready(State(app): State<AppState>) -> Response {
    let timeout = app.upstream.timeout().min(CHECK_TIMEOUT);
    let nats = match app.upstream.client().connection_state() {
        async_nats::connection::State::Connected => "connected",
        async_nats::connection::State::Pending => "pending",
        async_nats::connection::State::Disconnected => "disconnected",
    };
    let contexts = BoundedContext::ALL.map(|context| {
        let app = app.clone();
        async move {
            match app.upstream.health(context, timeout).await {
                Ok(report) => ServiceReadiness {
                    name: context.name().to_owned(),
                    ready: report.ready,
                    detail: (!report.ready).then(|| {
                        let failing: Vec<String> = report
                            .checks
                            .iter()
                            .filter(|c| !c.ready)
                            .map(|c| c.name.clone())
                            .collect();
                        if report.stopping {
                            "stopping".to_owned()
                        } else {
                            format!("not ready: {}", failing.join(", "))
                        }
                    }),
                },
                Err(problem) => ServiceReadiness {
                    name: context.name().to_owned(),
                    ready: false,
                    detail: Some(problem.detail),
                },
            }
        }
    });
    let query = async {
        let reply = app
            .upstream
            .request(
                &events::query::query_subject("status"),
                serde_json::to_vec(&StatusRequest {}).unwrap_or_default(),
                timeout,
                "query",
            )
            .await;
        let (ready, detail) = match reply {
            Ok(body) => match serde_json::from_slice::<QueryReply<ProjectionsStatus>>(&body) {
                Ok(QueryReply::Found(_)) => (true, None),
                Ok(_) => (
                    false,
                    Some("the query service cannot read its read models".to_owned()),
                ),
                Err(e) => (false, Some(format!("an answer that is not a status: {e}"))),
            },
            Err(problem) => (false, Some(problem.detail)),
        };
        ServiceReadiness {
            name: "query".to_owned(),
            ready,
            detail,
        }
    };
    let (mut services, query) = tokio::join!(futures::future::join_all(contexts), query);
    services.push(query);
    let ready = nats == "connected" && services.iter().all(|s| s.ready);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        ready,
        nats: nats.to_owned(),
        services,
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::TEXT_FORMAT),
        )],
        app.metrics.render(),
    )
        .into_response()
}

async fn openapi(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        app.document.clone(),
    )
        .into_response()
}

async fn docs(State(app): State<AppState>) -> Response {
    axum::response::Html(app.docs_page.clone()).into_response()
}
