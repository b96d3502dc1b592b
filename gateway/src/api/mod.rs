//! The HTTP API: one route table ([`routes`]) from which both the axum router ([`router`]) and
//! the OpenAPI document ([`crate::openapi::document`]) are built.
//!
//! | route | who | what |
//! |---|---|---|
//! | `POST /orders` | shopper | place an order (`ordering` `place-order`; the customer is the token's subject) |
//! | `GET /orders` | shopper, operator | a page of orders, newest first (a shopper's own only), by `status` |
//! | `GET /orders/{order_id}` | shopper (own), operator | an order with its lines, payment, shipment and timeline |
//! | `POST /orders/{order_id}/cancel` | shopper (own), operator | cancel it (`cancel-order`) |
//! | `GET /products`, `GET /products/{sku}` | anyone | the catalogue: name, price, units available |
//! | `PUT /products/{sku}` | operator | define a product, or reprice it (`define-product`, `reprice-product`) |
//! | `GET /inventory`, `GET /inventory/{sku}` | operator | stock levels: on hand, reserved, available |
//! | `POST /inventory/{sku}/receipts` | operator | units arrived (`receive-stock`) |
//! | `POST /shipments/{order_id}/dispatch`, `.../deliver` | operator | the parcel left, arrived (`dispatch-shipment`, `deliver-shipment`) |
//! | `GET /reports/sales?from=&to=` | operator | sales per day and currency |
//! | `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /openapi.json`, `GET /docs` | anyone | probes, metrics, this API's description |
//!
//! A route's guard ([`guard`]) runs before its handler: it authenticates (401), checks the
//! role (403) and takes a token from the principal's rate-limit bucket (429). Handlers parse
//! their input at the edge ([`crate::body`]), check ownership, and send one command or query;
//! commands run under their `Idempotency-Key` ([`crate::idempotency`]).

mod catalogue;
mod fulfilment;
mod operations;
mod orders;
pub mod types;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Request, State};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use events::BoundedContext;
use events::query::{DEFAULT_WAIT_MS, MAX_WAIT_MS, QueryReply, WaitFor};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::{Principal, Role, Verifier};
use crate::consistency::{CONSISTENCY_HEADER, ConsistencyToken};
use crate::idempotency::{Idempotency, Scope};
use crate::metrics::Metrics;
use crate::openapi::{Access, Operation};
use crate::problem::Problem;
use crate::protect::{RateLimiter, correlate};
use crate::settings::CorsOrigins;
use crate::upstream::{Accepted, Upstream};
use types::CommandAccepted;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

#[derive(Debug)]
pub struct Shared {
    pub upstream: Upstream,
    pub idempotency: Idempotency,
    pub verifier: Verifier,
    pub limiter: RateLimiter,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    /// The OpenAPI document, as served.
    pub document: bytes::Bytes,
    pub docs_page: String,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// A route: its description and its handler.
#[derive(Debug)]
pub struct Route {
    pub operation: Operation,
    handler: MethodRouter<AppState>,
}

impl Route {
    fn new<H, T>(operation: Operation, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = match operation.method {
            Method::GET => MethodFilter::GET,
            Method::POST => MethodFilter::POST,
            Method::PUT => MethodFilter::PUT,
            Method::DELETE => MethodFilter::DELETE,
            Method::PATCH => MethodFilter::PATCH,
            _ => MethodFilter::GET,
        };
        Self {
            operation,
            handler: on(filter, handler),
        }
    }
}

/// Every route of the API, in the order the document lists them.
pub fn routes() -> Vec<Route> {
    let mut routes = Vec::new();
    routes.extend(orders::routes());
    routes.extend(catalogue::routes());
    routes.extend(fulfilment::routes());
    routes.extend(operations::routes());
    routes
}

/// The descriptions of every route.
pub fn operations() -> Vec<Operation> {
    routes().into_iter().map(|r| r.operation).collect()
}

/// The router of `routes` on `state`, with the protections of every route.
pub fn router(routes: Vec<Route>, state: AppState, cors: &CorsOrigins) -> Router {
    let mut router: Router<AppState> = Router::new();
    for route in routes {
        let guard = GuardState {
            app: state.clone(),
            access: route.operation.access,
        };
        let handler = route
            .handler
            .route_layer(from_fn_with_state(guard, self::guard));
        router = router.route(route.operation.path, handler);
    }
    let mut router = router
        .fallback(|| async { Problem::not_found("no such route; the routes are in /openapi.json") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take this method; see /openapi.json",
            )
        })
        .with_state(state.clone());
    if let Some(cors) = crate::protect::cors(cors) {
        router = router.layer(cors);
    }
    router
        .layer(from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::observe,
        ))
        .layer(from_fn(correlate))
}

#[derive(Debug, Clone)]
struct GuardState {
    app: AppState,
    access: Access,
}

/// Authenticates the request, checks its role and rate limit, and hands the [`Principal`]
/// to the handler (as a request extension).
async fn guard(State(guard): State<GuardState>, mut request: Request, next: Next) -> Response {
    if guard.access == Access::Probe {
        return next.run(request).await;
    }
    let principal = match authenticate(&guard.app.verifier, request.headers(), guard.access) {
        Ok(principal) => principal,
        Err(problem) => return problem.into_response(),
    };
    let bucket = match &principal {
        Some(principal) => principal.bucket(),
        None => {
            let peer = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string());
            format!("anonymous:{peer}")
        }
    };
    if let Err(wait) = guard.app.limiter.check(&bucket) {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests; try again in {seconds} s"),
        )
        .retry_after(seconds)
        .into_response();
    }
    if let Some(principal) = principal {
        request.extensions_mut().insert(principal);
    }
    next.run(request).await
}

/// The principal of a request, checked against `access`.
fn authenticate(
    verifier: &Verifier,
    headers: &HeaderMap,
    access: Access,
) -> Result<Option<Principal>, Problem> {
    let token = match headers.get(header::AUTHORIZATION) {
        None if access == Access::Anyone => return Ok(None),
        None => {
            return Err(Problem::unauthenticated(
                "this route needs a bearer token (Authorization: Bearer <JWT>)",
            ));
        }
        Some(value) => {
            let value = value.to_str().unwrap_or("");
            match value.split_once(' ') {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
                _ => {
                    return Err(Problem::unauthenticated(
                        "the Authorization header must be `Bearer <JWT>`",
                    ));
                }
            }
        }
    };
    let principal = verifier
        .verify(token)
        .map_err(|e| Problem::unauthenticated(e.to_string()))?;
    let allowed = match access {
        Access::Probe | Access::Anyone | Access::Signed => true,
        Access::Shopper => principal.role == Role::Shopper,
        Access::Operator => principal.role == Role::Operator,
    };
    if !allowed {
        return Err(Problem::forbidden(format!(
            "a {} may not do this",
            principal.role
        )));
    }
    Ok(Some(principal))
}

// ---- what the handlers share ---------------------------------------------------------------

/// A route's one path parameter, as text; one that cannot be read (not UTF-8 once decoded) is
/// a problem like any other bad parameter, not axum's plain-text rejection.
#[derive(Debug)]
struct PathParam(String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(e) => Err(Problem::invalid_parameter("path", e.body_text())),
        }
    }
}

/// The response to an accepted command: `status`, the [`CommandAccepted`] body, its
/// consistency token in the `Chorus-Consistency-Token` header, and `location` if given.
/// The command of a POST, sent once per `Idempotency-Key` ([`run_once`]).
struct Once<C> {
    context: BoundedContext,
    command: String,
    body: C,
    /// The aggregate the command writes, named in the answer's consistency token.
    aggregate_type: &'static str,
}

/// Runs `once` under the request's `Idempotency-Key` at `path`: the first request sends the
/// command and answers 200 with what it wrote; a repeat with the same body replays that answer
/// (see [`crate::idempotency`]).
async fn run_once<C>(
    app: &AppState,
    principal: &Principal,
    path: &str,
    key: &str,
    raw: &[u8],
    once: Once<C>,
) -> Response
where
    C: Serialize + Send + Sync + 'static,
{
    let bucket = principal.bucket();
    let scope = Scope {
        principal: &bucket,
        method: "POST",
        path,
        key,
    };
    let work_app = app.clone();
    app.idempotency
        .run(scope, raw, move || async move {
            match work_app
                .upstream
                .command(once.context, &once.command, &once.body)
                .await
            {
                Ok(done) => accepted(StatusCode::OK, once.aggregate_type, done, None),
                Err(problem) => problem.into_response(),
            }
        })
        .await
}

fn accepted(
    status: StatusCode,
    aggregate_type: &str,
    accepted: Accepted,
    location: Option<String>,
) -> Response {
    let token = ConsistencyToken {
        aggregate_type: aggregate_type.to_owned(),
        aggregate_id: accepted.aggregate_id.clone(),
        position: accepted.position,
    }
    .encode();
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&token) {
        headers.insert(HeaderName::from_static(CONSISTENCY_HEADER), value);
    }
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(header::LOCATION, location);
    }
    let body = CommandAccepted {
        aggregate_type: aggregate_type.to_owned(),
        aggregate_id: accepted.aggregate_id,
        position: accepted.position,
        version: accepted.version,
        consistency_token: token,
    };
    (status, headers, axum::Json(body)).into_response()
}

/// The wait of a `GET` with `?after=<token>[&wait_ms=<ms>]`.
fn wait_for(after: Option<&str>, wait_ms: Option<u64>) -> Result<Option<WaitFor>, Problem> {
    if let Some(ms) = wait_ms {
        if after.is_none() {
            return Err(Problem::invalid_parameter(
                "wait_ms",
                "wait_ms says how long to wait for `after`: give `after` too",
            ));
        }
        if ms > MAX_WAIT_MS {
            return Err(Problem::invalid_parameter(
                "wait_ms",
                format!("wait_ms is at most {MAX_WAIT_MS}, not {ms}"),
            ));
        }
    }
    let Some(after) = after else {
        return Ok(None);
    };
    let token = ConsistencyToken::decode(after).ok_or_else(|| {
        Problem::invalid_parameter(
            "after",
            "not a consistency token: pass the consistency_token of a command's response",
        )
    })?;
    Ok(Some(token.wait_for(wait_ms)))
}

/// How long a query with `wait` may take on top of the usual timeout.
fn wait_time(wait: Option<&WaitFor>) -> Option<Duration> {
    wait.map(|w| Duration::from_millis(w.timeout_ms.unwrap_or(DEFAULT_WAIT_MS).min(MAX_WAIT_MS)))
}

/// Asks the query service's `endpoint` and returns what it found; `missing` is the detail of
/// the 404 when it found nothing.
async fn ask<T: DeserializeOwned>(
    app: &AppState,
    endpoint: &str,
    request: &impl Serialize,
    wait: Option<&WaitFor>,
    missing: impl FnOnce() -> String,
) -> Result<T, Problem> {
    match app
        .upstream
        .query::<T>(endpoint, request, wait_time(wait))
        .await?
    {
        QueryReply::Found(found) => Ok(found),
        QueryReply::NotFound => Err(Problem::not_found(missing())),
        QueryReply::Rejected {
            code,
            message,
            field,
        } => Err(match code.as_str() {
            "invalid_request" => {
                let field = field.unwrap_or_else(|| "query".to_owned());
                let field = if field.starts_with("wait") {
                    "after".to_owned()
                } else {
                    field
                };
                Problem::invalid_parameter(&field, message)
            }
            "unavailable" => Problem::unavailable(message),
            other => Problem::internal(format!(
                "the query service refused with a code the gateway does not know ({other}): {message}"
            )),
        }),
        QueryReply::NotYet {
            aggregate_type,
            aggregate_id,
            position,
            reached,
        } => Err(not_yet(&aggregate_type, &aggregate_id, position, reached)),
    }
}

fn not_yet(
    aggregate_type: &str,
    aggregate_id: &str,
    position: i64,
    reached: Option<i64>,
) -> Problem {
    let reached = reached.map_or_else(|| "nothing".to_owned(), |p| format!("position {p}"));
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_yet",
        format!(
            "the read model has not yet applied {aggregate_type} {aggregate_id} up to position \
             {position} (it has {reached}); try again"
        ),
    )
    .field("after")
    .retry_after(1)
}

/// A shopper may only touch their own orders; an operator any.
fn check_owner(principal: &Principal, customer_id: &str) -> Result<(), Problem> {
    match principal.customer_id() {
        Some(own) if own.to_string() != customer_id => {
            Err(Problem::forbidden("this order is another customer's"))
        }
        _ => Ok(()),
    }
}
