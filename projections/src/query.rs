//! The query service: the live read models answered over NATS request/reply (see
//! [`events::query`] for the contract: subjects, requests, replies).
//!
//! Requests are parsed at the edge: unknown fields, ids that do not parse, a limit out of
//! range, a cursor this service did not write, a range of days too long are answered
//! `rejected` with `invalid_request` and the field at fault; nothing is looked up. A database
//! failure is answered `rejected` with `unavailable`.
//!
//! **Cursors** are opaque to clients: the position of the last row of a page (time placed and
//! order id for orders, the SKU for products), hex-encoded with a version tag. The next page
//! starts strictly after it (keyset pagination), so rows written meanwhile never make a page
//! repeat or skip one that was already there.
//!
//! **Read-your-writes.** A query carrying `wait` is answered once the projection that serves it
//! has applied the named aggregate up to the position: the service reads `applied` for that
//! aggregate, and if it is behind, waits for the next notification on
//! [`NOTIFY_CHANNEL`](crate::NOTIFY_CHANNEL) (one listening connection per process, fanned out
//! to waiting queries), reads again, and so on until the deadline; then it answers
//! `not_yet`. Waiting is per aggregate, not per stream, because a stream is not in store
//! position order: the relay publishes waves of different aggregates' events in parallel,
//! and transactions commit out of position order, so a checkpoint past some stream message
//! says nothing about a given position. Each aggregate's events, though, are applied in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, NaiveDate, Utc};
use events::query::{
    DEFAULT_PAGE_SIZE, DEFAULT_WAIT_MS, DailySales, MAX_PAGE_SIZE, MAX_SALES_DAYS, MAX_WAIT_MS,
    OrderLineView, OrderListItem, OrderPage, OrderRequest, OrderState, OrderSummary, OrdersRequest,
    PaymentView, ProductPage, ProductRequest, ProductView, ProductsRequest, ProjectionsStatus,
    QueryReply, SalesReport, SalesRequest, ShipmentView, StatusRequest, TimelineEntry, WaitFor,
};
use events::values::{Currency, CustomerId, Money, OrderId, Sku};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::projection::Projection;
use crate::rebuild;
use crate::runner::NOTIFY_CHANNEL;

/// Wakes queries waiting for a projection to advance: one counter per projection, bumped on
/// every notification of its writer.
#[derive(Debug, Clone)]
pub(crate) struct Advances {
    senders: Arc<HashMap<Projection, watch::Sender<u64>>>,
}

impl Advances {
    pub(crate) fn new() -> Self {
        let senders = Projection::ALL
            .into_iter()
            .map(|p| (p, watch::Sender::new(0)))
            .collect();
        Self {
            senders: Arc::new(senders),
        }
    }

    fn subscribe(&self, projection: Projection) -> watch::Receiver<u64> {
        self.senders[&projection].subscribe()
    }

    fn bump(&self, projection: Projection) {
        self.senders[&projection].send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Every waiting query looks again (after notifications may have been missed).
    fn bump_all(&self) {
        for projection in Projection::ALL {
            self.bump(projection);
        }
    }

    /// Listens on [`NOTIFY_CHANNEL`] until `shutdown`, on a connection of its own.
    pub(crate) async fn listen(self, pool: PgPool, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(e) = self.listen_once(&pool, &shutdown).await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "projection notifications lost; listening again"
                );
                self.bump_all();
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }

    async fn listen_once(&self, pool: &PgPool, shutdown: &CancellationToken) -> anyhow::Result<()> {
        // A pool of its own: a listener keeps its connection for as long as it listens.
        let listening = eventstore::pool_options()
            .max_connections(1)
            .connect_with(pool.connect_options().as_ref().clone())
            .await?;
        let mut listener = PgListener::connect_with(&listening).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        // Whatever committed before the listener was there has not been seen.
        self.bump_all();
        loop {
            let notification = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                notification = listener.try_recv() => notification?,
            };
            match notification {
                Some(n) => match Projection::parse(n.payload()) {
                    Some(projection) => self.bump(projection),
                    None => self.bump_all(),
                },
                // The connection was lost (and is reconnected by the next call): anything may
                // have been missed.
                None => self.bump_all(),
            }
        }
    }
}

/// Answers the query endpoints on the live schemas.
#[derive(Debug, Clone)]
pub(crate) struct Queries {
    pool: PgPool,
    js: jetstream::Context,
    advances: Advances,
}

type Reply<T> = QueryReply<T>;

impl Queries {
    pub(crate) fn new(pool: PgPool, js: jetstream::Context, advances: Advances) -> Self {
        Self { pool, js, advances }
    }

    /// The JSON reply to `body` on `endpoint`, and its outcome (see [`outcome`]).
    pub(crate) async fn answer(&self, endpoint: &str, body: &[u8]) -> (Vec<u8>, &'static str) {
        match endpoint {
            "order" => encode(self.order(body).await),
            "orders" => encode(self.orders(body).await),
            "product" => encode(self.product(body).await),
            "products" => encode(self.products(body).await),
            "sales" => encode(self.sales(body).await),
            "status" => encode(self.status(body).await),
            other => encode::<()>(Reply::rejected(
                "invalid_request",
                format!("no query endpoint {other:?}"),
            )),
        }
    }

    async fn order(&self, body: &[u8]) -> Reply<OrderSummary> {
        let request: OrderRequest = match parse(body) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        let order_id = match request.order_id.parse::<OrderId>() {
            Ok(id) => id.to_string(),
            Err(e) => return Reply::invalid_field("order_id", e.to_string()),
        };
        if let Err(reply) = self.wait(Projection::Orders, request.wait.as_ref()).await {
            return reply;
        }
        unavailable(self.load_order(&order_id).await)
    }

    async fn load_order(&self, order_id: &str) -> sqlx::Result<Reply<OrderSummary>> {
        type Row = (
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<DateTime<Utc>>,
            Option<String>,
            Option<String>,
            i64,
            i64,
            Option<String>,
            Option<String>,
            DateTime<Utc>,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT order_id, customer_id, status, rejection_reason, cancellation_reason, \
                 total_minor, currency, placed_at, stock_status, payment_status, captured_minor, \
                 refunded_minor, shipment_status, tracking_number, updated_at \
             FROM orders.orders WHERE order_id = $1 AND placed_at IS NOT NULL",
        )
        .bind(order_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some((
            order_id,
            customer_id,
            status,
            rejection_reason,
            cancellation_reason,
            total_minor,
            currency,
            placed_at,
            stock_status,
            payment_status,
            captured_minor,
            refunded_minor,
            shipment_status,
            tracking_number,
            updated_at,
        )) = row
        else {
            return Ok(Reply::NotFound);
        };
        let lines: Vec<(String, i64, i64, String)> = sqlx::query_as(
            "SELECT sku, quantity, unit_price_minor, currency FROM orders.order_lines \
             WHERE order_id = $1 ORDER BY line_no",
        )
        .bind(&order_id)
        .fetch_all(&self.pool)
        .await?;
        let timeline: Vec<(String, String, DateTime<Utc>, String)> = sqlx::query_as(
            "SELECT context, event_type, occurred_at, detail FROM orders.timeline \
             WHERE order_id = $1 ORDER BY occurred_at, context, sequence",
        )
        .bind(&order_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(Reply::Found(OrderSummary {
            order_id,
            customer_id: customer_id.unwrap_or_default(),
            status: state(status.as_deref()),
            rejection_reason,
            cancellation_reason,
            lines: lines
                .into_iter()
                .map(|(sku, quantity, price, currency)| OrderLineView {
                    sku,
                    quantity: u32::try_from(quantity).unwrap_or(u32::MAX),
                    unit_price: money(price, &currency),
                })
                .collect(),
            total: money(total_minor.unwrap_or(0), currency.as_deref().unwrap_or("")),
            stock: stock_status,
            payment: payment_status.map(|status| PaymentView {
                status,
                captured_minor,
                refunded_minor,
            }),
            shipment: shipment_status.map(|status| ShipmentView {
                status,
                tracking_number,
            }),
            placed_at: placed_at.unwrap_or_default(),
            updated_at,
            timeline: timeline
                .into_iter()
                .map(|(context, event_type, occurred_at, detail)| TimelineEntry {
                    context,
                    event_type,
                    occurred_at,
                    detail,
                })
                .collect(),
        }))
    }

    async fn orders(&self, body: &[u8]) -> Reply<OrderPage> {
        let request: OrdersRequest = match parse(body) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        let customer_id = match request.customer_id.as_deref().map(str::parse::<CustomerId>) {
            None => None,
            Some(Ok(id)) => Some(id.to_string()),
            Some(Err(e)) => return Reply::invalid_field("customer_id", e.to_string()),
        };
        let limit = match page_size(request.limit) {
            Ok(limit) => limit,
            Err(reply) => return reply,
        };
        let after = match request.cursor.as_deref().map(OrderCursor::decode) {
            None => None,
            Some(Some(cursor)) => Some(cursor),
            Some(None) => return bad_cursor(),
        };
        if let Err(reply) = self.wait(Projection::Orders, request.wait.as_ref()).await {
            return reply;
        }
        let status = request.status.map(OrderState::as_str);
        let rows: sqlx::Result<Vec<ListRow>> = sqlx::query_as(
            "SELECT order_id, customer_id, status, total_minor, currency, placed_at, updated_at \
                 FROM orders.orders \
                 WHERE placed_at IS NOT NULL \
                   AND ($1::text IS NULL OR customer_id = $1) \
                   AND ($2::text IS NULL OR status = $2) \
                   AND ($3::timestamptz IS NULL OR (placed_at, order_id) < ($3, $4::text)) \
                 ORDER BY placed_at DESC, order_id DESC LIMIT $5",
        )
        .bind(customer_id)
        .bind(status)
        .bind(after.as_ref().map(|c| c.placed_at))
        .bind(after.as_ref().map(|c| c.order_id.clone()))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await;
        let mut rows = match rows {
            Ok(rows) => rows,
            Err(e) => return database_down(e),
        };
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor =
            more.then(|| rows.last())
                .flatten()
                .map(|(order_id, _, _, _, _, placed_at, _)| {
                    OrderCursor {
                        placed_at: *placed_at,
                        order_id: order_id.clone(),
                    }
                    .encode()
                });
        let orders = rows
            .into_iter()
            .map(
                |(order_id, customer_id, status, total_minor, currency, placed_at, updated_at)| {
                    OrderListItem {
                        order_id,
                        customer_id: customer_id.unwrap_or_default(),
                        status: state(status.as_deref()),
                        total: money(total_minor.unwrap_or(0), currency.as_deref().unwrap_or("")),
                        placed_at,
                        updated_at,
                    }
                },
            )
            .collect();
        Reply::Found(OrderPage {
            orders,
            next_cursor,
        })
    }

    async fn product(&self, body: &[u8]) -> Reply<ProductView> {
        let request: ProductRequest = match parse(body) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        let sku = match request.sku.parse::<Sku>() {
            Ok(sku) => sku,
            Err(e) => return Reply::invalid_field("sku", e.to_string()),
        };
        if let Err(reply) = self
            .wait(Projection::Catalogue, request.wait.as_ref())
            .await
        {
            return reply;
        }
        let row: sqlx::Result<Option<ProductRow>> = sqlx::query_as(
            "SELECT sku, name, price_minor, currency, on_hand, reserved FROM catalogue.products \
             WHERE sku = $1 AND name IS NOT NULL",
        )
        .bind(sku.as_str())
        .fetch_optional(&self.pool)
        .await;
        match row {
            Ok(Some(row)) => Reply::Found(product_view(row)),
            Ok(None) => Reply::NotFound,
            Err(e) => database_down(e),
        }
    }

    async fn products(&self, body: &[u8]) -> Reply<ProductPage> {
        let request: ProductsRequest = match parse(body) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        let limit = match page_size(request.limit) {
            Ok(limit) => limit,
            Err(reply) => return reply,
        };
        let after = match request.cursor.as_deref().map(decode_product_cursor) {
            None => None,
            Some(Some(sku)) => Some(sku),
            Some(None) => return bad_cursor(),
        };
        if let Err(reply) = self
            .wait(Projection::Catalogue, request.wait.as_ref())
            .await
        {
            return reply;
        }
        let rows: sqlx::Result<Vec<ProductRow>> = sqlx::query_as(
            "SELECT sku, name, price_minor, currency, on_hand, reserved FROM catalogue.products \
             WHERE name IS NOT NULL AND ($1::text IS NULL OR sku > $1) ORDER BY sku LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await;
        let mut rows = match rows {
            Ok(rows) => rows,
            Err(e) => return database_down(e),
        };
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = more
            .then(|| rows.last())
            .flatten()
            .map(|row| encode_cursor(PRODUCT_CURSOR, &row.0));
        Reply::Found(ProductPage {
            products: rows.into_iter().map(product_view).collect(),
            next_cursor,
        })
    }

    async fn sales(&self, body: &[u8]) -> Reply<SalesReport> {
        let request: SalesRequest = match parse(body) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        let days = (request.to - request.from).num_days() + 1;
        if days < 1 {
            return Reply::invalid_field("to", "to must not be before from");
        }
        if days > MAX_SALES_DAYS {
            return Reply::invalid_field(
                "to",
                format!("at most {MAX_SALES_DAYS} days at once, not {days}"),
            );
        }
        if let Err(reply) = self.wait(Projection::Sales, request.wait.as_ref()).await {
            return reply;
        }
        let rows: sqlx::Result<Vec<SalesRow>> = sqlx::query_as(
            "SELECT day, currency, orders_confirmed, revenue_minor, orders_cancelled, \
                 cancelled_minor FROM sales.daily_sales \
             WHERE day BETWEEN $1 AND $2 ORDER BY day, currency",
        )
        .bind(request.from)
        .bind(request.to)
        .fetch_all(&self.pool)
        .await;
        match rows {
            Ok(rows) => Reply::Found(SalesReport {
                from: request.from,
                to: request.to,
                days: rows
                    .into_iter()
                    .map(
                        |(day, currency, confirmed, revenue, cancelled, cancelled_minor)| {
                            DailySales {
                                day,
                                currency,
                                orders_confirmed: confirmed,
                                revenue_minor: revenue,
                                orders_cancelled: cancelled,
                                cancelled_minor,
                                net_minor: revenue - cancelled_minor,
                            }
                        },
                    )
                    .collect(),
            }),
            Err(e) => database_down(e),
        }
    }

    async fn status(&self, body: &[u8]) -> Reply<ProjectionsStatus> {
        let StatusRequest {} = match parse(body) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        match rebuild::status(&self.pool, &self.js).await {
            Ok(projections) => Reply::Found(ProjectionsStatus { projections }),
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "status query failed");
                Reply::rejected("unavailable", format!("{e:#}"))
            }
        }
    }

    /// Waits until `projection` has applied the aggregate of `wait` up to its position.
    async fn wait<T>(
        &self,
        projection: Projection,
        wait: Option<&WaitFor>,
    ) -> Result<(), Reply<T>> {
        let Some(wait) = wait else {
            return Ok(());
        };
        if !projection
            .aggregate_types()
            .contains(&wait.aggregate_type.as_str())
        {
            return Err(Reply::invalid_field(
                "wait.aggregate_type",
                format!(
                    "the {projection} read model does not apply {:?} events (it applies {})",
                    wait.aggregate_type,
                    projection.aggregate_types().join(", ")
                ),
            ));
        }
        let timeout =
            Duration::from_millis(wait.timeout_ms.unwrap_or(DEFAULT_WAIT_MS).min(MAX_WAIT_MS));
        let deadline = tokio::time::Instant::now() + timeout;
        let mut advanced = self.advances.subscribe(projection);
        loop {
            advanced.borrow_and_update();
            let reached = match self.applied_position(projection, wait).await {
                Ok(reached) => reached,
                Err(e) => return Err(database_down(e)),
            };
            if reached.is_some_and(|p| p >= wait.position) || wait.position <= 0 {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, advanced.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    return Err(Reply::NotYet {
                        aggregate_type: wait.aggregate_type.clone(),
                        aggregate_id: wait.aggregate_id.clone(),
                        position: wait.position,
                        reached,
                    });
                }
            }
        }
    }

    async fn applied_position(
        &self,
        projection: Projection,
        wait: &WaitFor,
    ) -> sqlx::Result<Option<i64>> {
        let sql = match projection {
            Projection::Orders => {
                "SELECT position FROM orders.applied WHERE aggregate_type = $1 AND aggregate_id = $2"
            }
            Projection::Catalogue => {
                "SELECT position FROM catalogue.applied WHERE aggregate_type = $1 AND aggregate_id = $2"
            }
            Projection::Sales => {
                "SELECT position FROM sales.applied WHERE aggregate_type = $1 AND aggregate_id = $2"
            }
        };
        sqlx::query_scalar(sql)
            .bind(&wait.aggregate_type)
            .bind(&wait.aggregate_id)
            .fetch_optional(&self.pool)
            .await
    }
}

type ListRow = (
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    DateTime<Utc>,
    DateTime<Utc>,
);

type SalesRow = (NaiveDate, String, i64, i64, i64, i64);

type ProductRow = (
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    i64,
    i64,
);

fn product_view((sku, name, price_minor, currency, on_hand, reserved): ProductRow) -> ProductView {
    ProductView {
        sku,
        name: name.unwrap_or_default(),
        price: money(price_minor.unwrap_or(0), currency.as_deref().unwrap_or("")),
        on_hand,
        reserved,
        available: on_hand - reserved,
    }
}

/// Parses a request body; a body that does not fit names the field at fault.
fn parse<T: DeserializeOwned, R>(body: &[u8]) -> Result<T, Reply<R>> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let malformed = e.inner().is_syntax() || e.inner().is_eof();
        let path = e.path().to_string();
        let field = if malformed || path.is_empty() || path == "." || path.contains('?') {
            "body"
        } else {
            path.as_str()
        };
        Reply::invalid_field(field, e.inner().to_string())
    })?;
    deserializer
        .end()
        .map_err(|e| Reply::invalid_field("body", e.to_string()))?;
    Ok(value)
}

fn page_size<R>(limit: Option<u32>) -> Result<u32, Reply<R>> {
    match limit {
        None => Ok(DEFAULT_PAGE_SIZE),
        Some(n) if (1..=MAX_PAGE_SIZE).contains(&n) => Ok(n),
        Some(n) => Err(Reply::invalid_field(
            "limit",
            format!("limit must be 1 to {MAX_PAGE_SIZE}, not {n}"),
        )),
    }
}

fn bad_cursor<R>() -> Reply<R> {
    Reply::invalid_field(
        "cursor",
        "not a cursor of this query: pass the next_cursor of the previous page",
    )
}

fn database_down<R>(error: sqlx::Error) -> Reply<R> {
    tracing::warn!(error = %error, "query failed");
    Reply::rejected("unavailable", "the read models cannot be read right now")
}

fn unavailable<R>(result: sqlx::Result<Reply<R>>) -> Reply<R> {
    result.unwrap_or_else(database_down)
}

fn encode<T: Serialize>(reply: Reply<T>) -> (Vec<u8>, &'static str) {
    // Replies are plain data (string keys only); serialising cannot fail.
    (
        serde_json::to_vec(&reply).unwrap_or_default(),
        outcome(&reply),
    )
}

/// How a query ended, as its metrics count it: `found`, `not_found`, `not_yet`, or the code
/// of a rejection (`invalid_request`, `unavailable`).
fn outcome<T>(reply: &Reply<T>) -> &'static str {
    match reply {
        Reply::Found(_) => "found",
        Reply::NotFound => "not_found",
        Reply::NotYet { .. } => "not_yet",
        Reply::Rejected { code, .. } if code == "unavailable" => "unavailable",
        Reply::Rejected { .. } => "invalid_request",
    }
}

fn state(status: Option<&str>) -> OrderState {
    status
        .and_then(OrderState::parse)
        .unwrap_or(OrderState::Placed)
}

fn money(amount_minor: i64, currency: &str) -> Money {
    // Only currencies parsed from events are stored; "XXX" (ISO 4217: no currency) parses.
    let currency = currency
        .parse::<Currency>()
        .or_else(|_| "XXX".parse())
        .expect("XXX is a currency code");
    Money::new(amount_minor, currency)
}

const ORDER_CURSOR: &str = "o1";
const PRODUCT_CURSOR: &str = "p1";

/// Where a page of orders ended.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OrderCursor {
    placed_at: DateTime<Utc>,
    order_id: String,
}

impl OrderCursor {
    fn encode(&self) -> String {
        encode_cursor(
            ORDER_CURSOR,
            &format!("{}:{}", self.placed_at.timestamp_micros(), self.order_id),
        )
    }

    fn decode(cursor: &str) -> Option<Self> {
        let text = decode_cursor(ORDER_CURSOR, cursor)?;
        let (micros, order_id) = text.split_once(':')?;
        let placed_at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
        let order_id = order_id.parse::<OrderId>().ok()?.to_string();
        Some(Self {
            placed_at,
            order_id,
        })
    }
}

fn decode_product_cursor(cursor: &str) -> Option<String> {
    let sku = decode_cursor(PRODUCT_CURSOR, cursor)?;
    sku.parse::<Sku>().ok().map(String::from)
}

fn encode_cursor(tag: &str, text: &str) -> String {
    let mut cursor = String::with_capacity(tag.len() + text.len() * 2);
    cursor.push_str(tag);
    for byte in text.bytes() {
        cursor.push_str(&format!("{byte:02x}"));
    }
    cursor
}

fn decode_cursor(tag: &str, cursor: &str) -> Option<String> {
    let hex = cursor.strip_prefix(tag)?;
    if hex.len() % 2 != 0 || hex.len() > 512 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        let cursor = OrderCursor {
            placed_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            order_id: OrderId::new().to_string(),
        };
        assert_eq!(OrderCursor::decode(&cursor.encode()), Some(cursor.clone()));
        let product = encode_cursor(PRODUCT_CURSOR, "MUG-1");
        assert_eq!(decode_product_cursor(&product).as_deref(), Some("MUG-1"));
        for bad in ["", "o1", "o1zz", "o1abc", "nonsense", product.as_str()] {
            assert_eq!(OrderCursor::decode(bad), None, "{bad:?}");
        }
        assert_eq!(decode_product_cursor(&cursor.encode()), None);
    }

    #[test]
    fn page_sizes_are_bounded() {
        assert_eq!(page_size::<()>(None).ok(), Some(DEFAULT_PAGE_SIZE));
        assert_eq!(
            page_size::<()>(Some(MAX_PAGE_SIZE)).ok(),
            Some(MAX_PAGE_SIZE)
        );
        for bad in [0, MAX_PAGE_SIZE + 1] {
            assert!(matches!(
                page_size::<()>(Some(bad)),
                Err(QueryReply::Rejected { field: Some(f), .. }) if f == "limit"
            ));
        }
    }
}
