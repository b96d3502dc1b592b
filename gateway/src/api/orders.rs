//! Orders: placed and cancelled through ordering's commands, read from the orders read model.
//! A shopper's orders are the ones whose customer is the token's subject; a shopper gets 403
//! for anyone else's. An operator sees and cancels any.

use axum::body::Body;
use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use events::BoundedContext;
use events::Event;
use events::ordering::OrderEvent;
use events::query::{
    DEFAULT_WAIT_MS, OrderPage, OrderRequest, OrderSummary, OrdersRequest, WaitFor,
};
use events::values::{CustomerId, OrderId};
use serde::Serialize;

use super::types::{
    CancelOrder, CommandAccepted, OrderLine, OrdersQuery, PlaceOrder, ReadQuery, ShippingAddress,
};
use super::{AppState, Once, PathParam, Route, accepted, ask, check_owner, run_once, wait_for};
use crate::auth::Principal;
use crate::body::{parse_query, read_json};
use crate::idempotency::{Idempotency, Scope};
use crate::openapi::{Access, Idempotent, Operation, Param, Reply, schema};
use crate::problem::Problem;

const ORDER: &str = <OrderEvent as Event>::AGGREGATE_TYPE;

pub(super) fn routes() -> Vec<Route> {
    let order_id = Param {
        name: "order_id",
        description: "The order's id (a UUID).",
        schema: schema::<OrderId>(),
    };
    vec![
        Route::new(
            Operation {
                method: Method::POST,
                path: "/orders",
                id: "placeOrder",
                tag: "orders",
                summary: "Place an order",
                description: "Places an order for the token's customer, priced from the catalogue. \
                    The order is then reserved, paid and confirmed (or rejected) asynchronously: \
                    follow it with GET /orders/{order_id}. Payment tokens of the simulator: \
                    tok_success, tok_decline, tok_timeout, tok_flaky.",
                access: Access::Shopper,
                owned: false,
                path_params: vec![],
                query: None,
                body: Some((schema::<PlaceOrder>(), false)),
                idempotent: Idempotent::Required,
                upstream: true,
                replies: vec![Reply {
                    status: 201,
                    description: "Placed; Location is the order's URL.",
                    body: Some(("application/json", schema::<CommandAccepted>())),
                    headers: &[
                        "Location",
                        "Chorus-Consistency-Token",
                        "Idempotent-Replayed",
                    ],
                }],
                refusals: vec![409, 422],
            },
            place,
        ),
        Route::new(
            Operation {
                method: Method::GET,
                path: "/orders",
                id: "listOrders",
                tag: "orders",
                summary: "List orders",
                description: "A page of orders, newest first, optionally of one status. A shopper \
                    sees only their own orders; an operator may filter by customer_id.",
                access: Access::Signed,
                owned: true,
                path_params: vec![],
                query: Some(schema::<OrdersQuery>()),
                body: None,
                idempotent: Idempotent::No,
                upstream: true,
                replies: vec![Reply {
                    status: 200,
                    description: "A page of orders.",
                    body: Some(("application/json", schema::<OrderPage>())),
                    headers: &[],
                }],
                refusals: vec![],
            },
            list,
        ),
        Route::new(
            Operation {
                method: Method::GET,
                path: "/orders/{order_id}",
                id: "getOrder",
                tag: "orders",
                summary: "Get an order",
                description: "The order with its lines, stock, payment, shipment and the timeline \
                    of its saga across the contexts.",
                access: Access::Signed,
                owned: true,
                path_params: vec![order_id],
                query: Some(schema::<ReadQuery>()),
                body: None,
                idempotent: Idempotent::No,
                upstream: true,
                replies: vec![Reply {
                    status: 200,
                    description: "The order.",
                    body: Some(("application/json", schema::<OrderSummary>())),
                    headers: &[],
                }],
                refusals: vec![404],
            },
            get,
        ),
        Route::new(
            Operation {
                method: Method::POST,
                path: "/orders/{order_id}/cancel",
                id: "cancelOrder",
                tag: "orders",
                summary: "Cancel an order",
                description: "Cancels an order that has not been shipped. What was reserved is \
                    released and what was captured refunded, asynchronously.",
                access: Access::Signed,
                owned: true,
                path_params: vec![order_id],
                query: None,
                body: Some((schema::<CancelOrder>(), true)),
                idempotent: Idempotent::Required,
                upstream: true,
                replies: vec![Reply {
                    status: 200,
                    description: "Cancelled.",
                    body: Some(("application/json", schema::<CommandAccepted>())),
                    headers: &["Chorus-Consistency-Token", "Idempotent-Replayed"],
                }],
                refusals: vec![404, 409, 422],
            },
            cancel,
        ),
    ]
}

/// The body of ordering's `place-order`.
#[derive(Debug, Serialize)]
struct PlaceOrderCommand {
    order_id: OrderId,
    customer_id: CustomerId,
    lines: Vec<OrderLine>,
    shipping_address: ShippingAddress,
    payment_token: String,
}

/// The body of ordering's `cancel-order`.
#[derive(Debug, Serialize)]
struct CancelOrderCommand {
    order_id: OrderId,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

async fn place(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let key = Idempotency::required_key(&headers)?;
    let request = read_json::<PlaceOrder>(&headers, body, app.max_body_bytes, None).await?;
    let customer_id = principal
        .customer_id()
        .ok_or_else(|| Problem::forbidden("only a shopper places orders"))?;
    let bucket = principal.bucket();
    let scope = Scope {
        principal: &bucket,
        method: "POST",
        path: "/orders",
        key: &key,
    };
    let work_app = app.clone();
    let response = app
        .idempotency
        .run(scope, &request.raw, move || async move {
            // A new id on each run: a replay returns the first run's.
            let order_id = OrderId::new();
            let place = request.value;
            let command = PlaceOrderCommand {
                order_id,
                customer_id,
                lines: place.lines,
                shipping_address: place.shipping_address,
                payment_token: place.payment_token,
            };
            let location = format!("/orders/{order_id}");
            match work_app
                .upstream
                .command(BoundedContext::Ordering, "place-order", &command)
                .await
            {
                Ok(done) => accepted(StatusCode::CREATED, ORDER, done, Some(location)),
                // The order may have been placed: say which one to look for.
                Err(problem) if problem.status == StatusCode::GATEWAY_TIMEOUT => {
                    problem.instance(location).into_response()
                }
                Err(problem) => problem.into_response(),
            }
        })
        .await;
    Ok(response)
}

async fn list(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let query: OrdersQuery = parse_query(query.as_deref())?;
    let wait = wait_for(query.after.as_deref(), query.wait_ms)?;
    let customer_id = match (principal.customer_id(), query.customer_id) {
        (Some(own), Some(asked)) if own != asked => {
            return Err(
                Problem::forbidden("a shopper sees only their own orders").field("customer_id")
            );
        }
        (Some(own), _) => Some(own),
        (None, asked) => asked,
    };
    let request = OrdersRequest {
        customer_id: customer_id.map(|c| c.to_string()),
        status: query.status,
        limit: query.limit,
        cursor: query.cursor,
        wait: wait.clone(),
    };
    let page: OrderPage = ask(&app, "orders", &request, wait.as_ref(), String::new).await?;
    Ok(axum::Json(page).into_response())
}

async fn get(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(order_id): PathParam,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let order_id = parse_order_id(&order_id)?;
    let query: ReadQuery = parse_query(query.as_deref())?;
    let wait = wait_for(query.after.as_deref(), query.wait_ms)?;
    let request = OrderRequest {
        order_id: order_id.to_string(),
        wait: wait.clone(),
    };
    let summary: OrderSummary = ask(&app, "order", &request, wait.as_ref(), || {
        format!("no order {order_id}")
    })
    .await?;
    check_owner(&principal, &summary.customer_id)?;
    Ok(axum::Json(summary).into_response())
}

async fn cancel(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(order_id): PathParam,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let order_id = parse_order_id(&order_id)?;
    let key = Idempotency::required_key(&headers)?;
    let request = read_json::<CancelOrder>(
        &headers,
        body,
        app.max_body_bytes,
        Some(CancelOrder::default()),
    )
    .await?;
    if principal.customer_id().is_some() {
        owned_order(&app, &principal, order_id).await?;
    }
    let path = format!("/orders/{order_id}/cancel");
    let once = Once {
        context: BoundedContext::Ordering,
        command: "cancel-order".to_owned(),
        body: CancelOrderCommand {
            order_id,
            reason: request.value.reason,
        },
        aggregate_type: ORDER,
    };
    Ok(run_once(&app, &principal, &path, &key, &request.raw, once).await)
}

/// Checks that the order is the shopper's. An order placed a moment ago may not be in the
/// read model yet: the query waits (up to 2 s) for the order to appear at all.
async fn owned_order(
    app: &AppState,
    principal: &Principal,
    order_id: OrderId,
) -> Result<(), Problem> {
    let wait = WaitFor {
        aggregate_type: ORDER.to_owned(),
        aggregate_id: order_id.to_string(),
        position: 1,
        timeout_ms: Some(DEFAULT_WAIT_MS),
    };
    let request = OrderRequest {
        order_id: order_id.to_string(),
        wait: Some(wait.clone()),
    };
    let summary: Result<OrderSummary, Problem> = ask(app, "order", &request, Some(&wait), || {
        format!("no order {order_id}")
    })
    .await;
    match summary {
        Ok(summary) => check_owner(principal, &summary.customer_id),
        // Never seen: for this shopper, it does not exist.
        Err(problem) if problem.code == "not_yet" => {
            Err(Problem::not_found(format!("no order {order_id}")))
        }
        Err(problem) => Err(problem),
    }
}

fn parse_order_id(text: &str) -> Result<OrderId, Problem> {
    text.parse().map_err(|e: events::values::InvalidValue| {
        Problem::invalid_parameter("order_id", e.to_string())
    })
}
