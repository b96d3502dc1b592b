//! The catalogue and the stock: inventory's commands, the catalogue read model. Shoppers (and
//! anyone) see names, prices and units available; operators see the stock levels, define and
//! reprice products and record deliveries.

use axum::body::Body;
use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use events::inventory::{ProductEvent, StockEvent};
use events::query::{ProductPage, ProductRequest, ProductView, ProductsRequest};
use events::values::{Money, Quantity, Sku};
use events::{BoundedContext, Event};
use serde::Serialize;

use super::types::{
    CatalogueItem, CataloguePage, CommandAccepted, PageQuery, PutProduct, ReadQuery, StockReceipt,
};
use super::{AppState, Once, PathParam, Route, accepted, ask, run_once, wait_for};
use crate::auth::Principal;
use crate::body::{parse_query, read_json};
use crate::idempotency::{Idempotency, Scope};
use crate::openapi::{Access, Idempotent, Operation, Param, Reply, schema};
use crate::problem::Problem;

const PRODUCT: &str = <ProductEvent as Event>::AGGREGATE_TYPE;
const STOCK: &str = <StockEvent as Event>::AGGREGATE_TYPE;

pub(super) fn routes() -> Vec<Route> {
    let sku = Param {
        name: "sku",
        description: "The stock-keeping unit: 1 to 64 of A-Z, 0-9, '-' and '_'.",
        schema: schema::<Sku>(),
    };
    let page = |status: u16, description: &'static str, body| Reply {
        status,
        description,
        body: Some(("application/json", body)),
        headers: &[],
    };
    vec![
        Route::new(
            Operation {
                method: Method::GET,
                path: "/products",
                id: "listProducts",
                tag: "catalogue",
                summary: "List the catalogue",
                description: "A page of products by SKU: name, price and units available.",
                access: Access::Anyone,
                owned: false,
                path_params: vec![],
                query: Some(schema::<PageQuery>()),
                body: None,
                idempotent: Idempotent::No,
                upstream: true,
                replies: vec![page(200, "A page of products.", schema::<CataloguePage>())],
                refusals: vec![],
            },
            list_products,
        ),
        Route::new(
            Operation {
                method: Method::GET,
                path: "/products/{sku}",
                id: "getProduct",
                tag: "catalogue",
                summary: "Get a product",
                description: "A product's name, price and units available.",
                access: Access::Anyone,
                owned: false,
                path_params: vec![sku],
                query: Some(schema::<ReadQuery>()),
                body: None,
                idempotent: Idempotent::No,
                upstream: true,
                replies: vec![page(200, "The product.", schema::<CatalogueItem>())],
                refusals: vec![404],
            },
            get_product,
        ),
        Route::new(
            Operation {
                method: Method::PUT,
                path: "/products/{sku}",
                id: "putProduct",
                tag: "catalogue",
                summary: "Define or reprice a product",
                description: "Defines the product (201) or, if it is defined, changes its price \
                    (200) in the same currency; a defined product keeps its name. Orders are \
                    priced from the catalogue as ordering's replica knows it, a moment later.",
                access: Access::Operator,
                owned: false,
                path_params: vec![sku],
                query: None,
                body: Some((schema::<PutProduct>(), false)),
                idempotent: Idempotent::Optional,
                upstream: true,
                replies: vec![
                    Reply {
                        status: 201,
                        description: "Defined.",
                        body: Some(("application/json", schema::<CommandAccepted>())),
                        headers: &[
                            "Location",
                            "Chorus-Consistency-Token",
                            "Idempotent-Replayed",
                        ],
                    },
                    Reply {
                        status: 200,
                        description: "Repriced.",
                        body: Some(("application/json", schema::<CommandAccepted>())),
                        headers: &["Chorus-Consistency-Token", "Idempotent-Replayed"],
                    },
                ],
                refusals: vec![404, 409, 422],
            },
            put_product,
        ),
        Route::new(
            Operation {
                method: Method::GET,
                path: "/inventory",
                id: "listInventory",
                tag: "inventory",
                summary: "List stock levels",
                description: "A page of products by SKU with their stock: on hand, reserved and \
                    available.",
                access: Access::Operator,
                owned: false,
                path_params: vec![],
                query: Some(schema::<PageQuery>()),
                body: None,
                idempotent: Idempotent::No,
                upstream: true,
                replies: vec![page(
                    200,
                    "A page of stock levels.",
                    schema::<ProductPage>(),
                )],
                refusals: vec![],
            },
            list_inventory,
        ),
        Route::new(
            Operation {
                method: Method::GET,
                path: "/inventory/{sku}",
                id: "getInventory",
                tag: "inventory",
                summary: "Get a product's stock",
                description: "A product with its stock: on hand, reserved and available.",
                access: Access::Operator,
                owned: false,
                path_params: vec![sku],
                query: Some(schema::<ReadQuery>()),
                body: None,
                idempotent: Idempotent::No,
                upstream: true,
                replies: vec![page(200, "The product's stock.", schema::<ProductView>())],
                refusals: vec![404],
            },
            get_inventory,
        ),
        Route::new(
            Operation {
                method: Method::POST,
                path: "/inventory/{sku}/receipts",
                id: "receiveStock",
                tag: "inventory",
                summary: "Record a delivery of stock",
                description: "Units of the SKU arrived at the warehouse.",
                access: Access::Operator,
                owned: false,
                path_params: vec![sku],
                query: None,
                body: Some((schema::<StockReceipt>(), false)),
                idempotent: Idempotent::Required,
                upstream: true,
                replies: vec![Reply {
                    status: 200,
                    description: "Received.",
                    body: Some(("application/json", schema::<CommandAccepted>())),
                    headers: &["Chorus-Consistency-Token", "Idempotent-Replayed"],
                }],
                refusals: vec![422],
            },
            receive_stock,
        ),
    ]
}

#[derive(Debug, Serialize)]
struct DefineProduct {
    sku: Sku,
    name: String,
    price: Money,
}

#[derive(Debug, Serialize)]
struct RepriceProduct {
    sku: Sku,
    price: Money,
}

#[derive(Debug, Serialize)]
struct ReceiveStock {
    sku: Sku,
    quantity: Quantity,
}

async fn list_products(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let page = products(&app, query.as_deref()).await?;
    let page = CataloguePage {
        products: page.products.into_iter().map(CatalogueItem::from).collect(),
        next_cursor: page.next_cursor,
    };
    Ok(axum::Json(page).into_response())
}

async fn get_product(
    State(app): State<AppState>,
    PathParam(sku): PathParam,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let product = product(&app, &sku, query.as_deref()).await?;
    Ok(axum::Json(CatalogueItem::from(product)).into_response())
}

async fn list_inventory(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    Ok(axum::Json(products(&app, query.as_deref()).await?).into_response())
}

async fn get_inventory(
    State(app): State<AppState>,
    PathParam(sku): PathParam,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    Ok(axum::Json(product(&app, &sku, query.as_deref()).await?).into_response())
}

async fn products(app: &AppState, query: Option<&str>) -> Result<ProductPage, Problem> {
    let query: PageQuery = parse_query(query)?;
    let wait = wait_for(query.after.as_deref(), query.wait_ms)?;
    let request = ProductsRequest {
        limit: query.limit,
        cursor: query.cursor,
        wait: wait.clone(),
    };
    ask(app, "products", &request, wait.as_ref(), String::new).await
}

async fn product(app: &AppState, sku: &str, query: Option<&str>) -> Result<ProductView, Problem> {
    let sku = parse_sku(sku)?;
    let query: ReadQuery = parse_query(query)?;
    let wait = wait_for(query.after.as_deref(), query.wait_ms)?;
    let request = ProductRequest {
        sku: sku.to_string(),
        wait: wait.clone(),
    };
    ask(app, "product", &request, wait.as_ref(), || {
        format!("no product {sku}")
    })
    .await
}

async fn put_product(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(sku): PathParam,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let sku = parse_sku(&sku)?;
    let key = Idempotency::key(&headers)?;
    let request = read_json::<PutProduct>(&headers, body, app.max_body_bytes, None).await?;
    let work_app = app.clone();
    let work_sku = sku.clone();
    let work = move || async move {
        define_or_reprice(&work_app, work_sku, request.value)
            .await
            .unwrap_or_else(IntoResponse::into_response)
    };
    let Some(key) = key else {
        return Ok(work().await);
    };
    let bucket = principal.bucket();
    let path = format!("/products/{sku}");
    let scope = Scope {
        principal: &bucket,
        method: "PUT",
        path: &path,
        key: &key,
    };
    Ok(app.idempotency.run(scope, &request.raw, work).await)
}

/// Defines the product; if it is defined already, reprices it.
async fn define_or_reprice(
    app: &AppState,
    sku: Sku,
    product: PutProduct,
) -> Result<Response, Problem> {
    let define = DefineProduct {
        sku: sku.clone(),
        name: product.name,
        price: product.price,
    };
    match app
        .upstream
        .command(BoundedContext::Inventory, "define-product", &define)
        .await
    {
        Ok(done) => Ok(accepted(
            StatusCode::CREATED,
            PRODUCT,
            done,
            Some(format!("/products/{sku}")),
        )),
        Err(problem) if problem.code == "already_defined" => {
            let reprice = RepriceProduct {
                sku,
                price: product.price,
            };
            let done = app
                .upstream
                .command(BoundedContext::Inventory, "reprice-product", &reprice)
                .await?;
            Ok(accepted(StatusCode::OK, PRODUCT, done, None))
        }
        Err(problem) => Err(problem),
    }
}

async fn receive_stock(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(sku): PathParam,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let sku = parse_sku(&sku)?;
    let key = Idempotency::required_key(&headers)?;
    let request = read_json::<StockReceipt>(&headers, body, app.max_body_bytes, None).await?;
    let path = format!("/inventory/{sku}/receipts");
    let once = Once {
        context: BoundedContext::Inventory,
        command: "receive-stock".to_owned(),
        body: ReceiveStock {
            sku,
            quantity: request.value.quantity,
        },
        aggregate_type: STOCK,
    };
    Ok(run_once(&app, &principal, &path, &key, &request.raw, once).await)
}

fn parse_sku(text: &str) -> Result<Sku, Problem> {
    text.parse()
        .map_err(|e: events::values::InvalidValue| Problem::invalid_parameter("sku", e.to_string()))
}
