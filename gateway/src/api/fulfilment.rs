//! Shipments (shipping's commands) and the sales report (the sales read model), for operators.

use axum::body::Body;
use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use events::query::{SalesReport, SalesRequest};
use events::shipping::ShipmentEvent;
use events::values::OrderId;
use events::{BoundedContext, Event};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::types::{CommandAccepted, Deliver, Dispatch, SalesQuery};
use super::{AppState, Once, PathParam, Route, ask, run_once, wait_for};
use crate::auth::Principal;
use crate::body::{parse_query, read_json};
use crate::idempotency::Idempotency;
use crate::openapi::{Access, Idempotent, Operation, Param, Reply, SchemaFn, schema};
use crate::problem::Problem;

const SHIPMENT: &str = <ShipmentEvent as Event>::AGGREGATE_TYPE;

pub(super) fn routes() -> Vec<Route> {
    let shipment = |path, id, summary, description, body: SchemaFn| Operation {
        method: Method::POST,
        path,
        id,
        tag: "shipments",
        summary,
        description,
        access: Access::Operator,
        owned: false,
        path_params: vec![Param {
            name: "order_id",
            description: "The order whose shipment it is (a UUID).",
            schema: schema::<OrderId>(),
        }],
        query: None,
        body: Some((body, true)),
        idempotent: Idempotent::Required,
        upstream: true,
        replies: vec![Reply {
            status: 200,
            description: "Done.",
            body: Some(("application/json", schema::<CommandAccepted>())),
            headers: &["Chorus-Consistency-Token", "Idempotent-Replayed"],
        }],
        refusals: vec![409, 422],
    };
    vec![
        Route::new(
            shipment(
                "/shipments/{order_id}/dispatch",
                "dispatchShipment",
                "Dispatch an order's shipment",
                "The parcel of a confirmed order left the warehouse; its stock is committed.",
                schema::<Dispatch>(),
            ),
            dispatch,
        ),
        Route::new(
            shipment(
                "/shipments/{order_id}/deliver",
                "deliverShipment",
                "Deliver an order's shipment",
                "The parcel of a dispatched order reached the customer.",
                schema::<Deliver>(),
            ),
            deliver,
        ),
        Route::new(
            Operation {
                method: Method::GET,
                path: "/reports/sales",
                id: "salesReport",
                tag: "reports",
                summary: "Sales per day",
                description: "Orders confirmed and cancelled, and revenue, per day (UTC) and \
                    currency, from `from` to `to` inclusive (at most 366 days). Days without \
                    sales are left out.",
                access: Access::Operator,
                owned: false,
                path_params: vec![],
                query: Some(schema::<SalesQuery>()),
                body: None,
                idempotent: Idempotent::No,
                upstream: true,
                replies: vec![Reply {
                    status: 200,
                    description: "The report.",
                    body: Some(("application/json", schema::<SalesReport>())),
                    headers: &[],
                }],
                refusals: vec![],
            },
            sales,
        ),
    ]
}

#[derive(Debug, Serialize)]
struct DispatchShipment {
    order_id: OrderId,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracking_number: Option<String>,
}

#[derive(Debug, Serialize)]
struct DeliverShipment {
    order_id: OrderId,
}

async fn dispatch(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(order_id): PathParam,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    shipment_command(
        &app,
        &principal,
        &order_id,
        headers,
        body,
        "dispatch",
        |order_id, body: Dispatch| DispatchShipment {
            order_id,
            tracking_number: body.tracking_number,
        },
    )
    .await
}

async fn deliver(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(order_id): PathParam,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    shipment_command(
        &app,
        &principal,
        &order_id,
        headers,
        body,
        "deliver",
        |order_id, _: Deliver| DeliverShipment { order_id },
    )
    .await
}

/// `POST /shipments/{order_id}/<action>`: shipping's `<action>-shipment` with the command
/// `command` makes of the body.
async fn shipment_command<B, C>(
    app: &AppState,
    principal: &Principal,
    order_id: &str,
    headers: HeaderMap,
    body: Body,
    action: &'static str,
    command: fn(OrderId, B) -> C,
) -> Result<Response, Problem>
where
    B: DeserializeOwned + Default + Send + 'static,
    C: Serialize + Send + Sync + 'static,
{
    let order_id: OrderId = order_id
        .parse()
        .map_err(|e: events::values::InvalidValue| {
            Problem::invalid_parameter("order_id", e.to_string())
        })?;
    let key = Idempotency::required_key(&headers)?;
    let request = read_json::<B>(&headers, body, app.max_body_bytes, Some(B::default())).await?;
    let path = format!("/shipments/{order_id}/{action}");
    let once = Once {
        context: BoundedContext::Shipping,
        command: format!("{action}-shipment"),
        body: command(order_id, request.value),
        aggregate_type: SHIPMENT,
    };
    Ok(run_once(app, principal, &path, &key, &request.raw, once).await)
}

async fn sales(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let query: SalesQuery = parse_query(query.as_deref())?;
    let wait = wait_for(query.after.as_deref(), query.wait_ms)?;
    let request = SalesRequest {
        from: query.from,
        to: query.to,
        wait: wait.clone(),
    };
    let report: SalesReport = ask(&app, "sales", &request, wait.as_ref(), String::new).await?;
    Ok(axum::Json(report).into_response())
}
