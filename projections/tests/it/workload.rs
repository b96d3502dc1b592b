//! The projections under a real workload: the four context services driven by commands
//! through every path of the saga, the read models checked against the event stores, and
//! rebuilds (in any interleaving of the streams, while orders flow, after streams were
//! recreated) checked against the live read models.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use events::BoundedContext;
use events::ordering::OrderEvent;
use events::query::{OrderState, OrderSummary, ProductView, QueryReply, SalesReport};
use events::values::{CustomerId, OrderId};
use harness::NatsServer;
use ordering::OrderStatus;
use projections::Projection;
use projections::rebuild::{self, NoProgress, RebuildOptions, SourceOrder, StartAt};
use tokio_util::sync::CancellationToken;

use crate::support::{Contexts, Projections, assert_same, wait};

const SUCCESS: &str = "tok_success";
const DECLINE: &str = "tok_decline";

/// Happy (confirmed, shipped, delivered), out of stock, declined and cancelled orders.
async fn workload(contexts: &Contexts) -> Vec<OrderId> {
    for (sku, price) in [("BOOK", 1_500), ("PEN", 250), ("MUG", 900)] {
        contexts.define_product(sku, price).await;
    }
    contexts.receive("BOOK", 20).await;
    contexts.receive("PEN", 50).await;
    contexts.receive("MUG", 1).await;
    contexts
        .accepted(
            BoundedContext::Inventory,
            "reprice-product",
            serde_json::json!({ "sku": "PEN", "price": { "amount_minor": 300, "currency": "EUR" } }),
        )
        .await;
    let ada = CustomerId::new();
    let bob = CustomerId::new();
    let mut orders = Vec::new();

    let (delivered, _) = contexts
        .place(ada, &[("BOOK", 2), ("PEN", 3)], SUCCESS)
        .await;
    let (shipped, _) = contexts.place(bob, &[("PEN", 1)], SUCCESS).await;
    let (confirmed, _) = contexts.place(ada, &[("BOOK", 1)], SUCCESS).await;
    let (short, _) = contexts.place(bob, &[("MUG", 5)], SUCCESS).await;
    let (declined, _) = contexts.place(ada, &[("PEN", 2)], DECLINE).await;
    let (cancelled, _) = contexts
        .place(bob, &[("BOOK", 1), ("MUG", 1)], SUCCESS)
        .await;
    orders.extend([delivered, shipped, confirmed, short, declined, cancelled]);
    for n in 0..6u32 {
        let (order, _) = contexts
            .place(ada, &[("PEN", 1 + n % 3), ("BOOK", 1)], SUCCESS)
            .await;
        orders.push(order);
    }

    for order in [delivered, shipped, confirmed, cancelled] {
        contexts
            .wait_for_status(order, OrderStatus::Confirmed)
            .await;
    }
    contexts.wait_for_status(short, OrderStatus::Rejected).await;
    contexts
        .wait_for_status(declined, OrderStatus::Rejected)
        .await;
    for order in [delivered, shipped] {
        contexts.wait_for_shipment(order).await;
        contexts.dispatch(order).await;
        contexts.wait_for_status(order, OrderStatus::Shipped).await;
    }
    contexts.deliver(delivered).await;
    contexts
        .wait_for_status(delivered, OrderStatus::Delivered)
        .await;
    contexts.wait_for_shipment(cancelled).await;
    contexts.cancel(cancelled).await;
    contexts
        .wait_for_status(cancelled, OrderStatus::Cancelled)
        .await;
    orders
}

fn state(status: OrderStatus) -> OrderState {
    match status {
        OrderStatus::Placed => OrderState::Placed,
        OrderStatus::Confirmed => OrderState::Confirmed,
        OrderStatus::Rejected => OrderState::Rejected,
        OrderStatus::Cancelled => OrderState::Cancelled,
        OrderStatus::Shipped => OrderState::Shipped,
        OrderStatus::Delivered => OrderState::Delivered,
    }
}

/// `NotRequested` → none, `Captured` → "captured": the read models' names of the statuses.
fn named(debug: impl std::fmt::Debug, absent: &str) -> Option<String> {
    let name = format!("{debug:?}").to_lowercase();
    (name != absent).then_some(name)
}

/// Each read model is what the event stores say.
async fn check_against_stores(contexts: &Contexts, projections: &Projections, skus: &[&str]) {
    let ordering = contexts.events(BoundedContext::Ordering).await;
    let mut all = ordering.clone();
    for context in [
        BoundedContext::Inventory,
        BoundedContext::Payments,
        BoundedContext::Shipping,
    ] {
        all.extend(contexts.events(context).await);
    }
    let order_ids: std::collections::BTreeSet<String> = ordering
        .iter()
        .filter(|e| e.aggregate_type == "order")
        .map(|e| e.aggregate_id.clone())
        .collect();
    let in_model: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders.orders WHERE placed_at IS NOT NULL")
            .fetch_one(&projections.pool)
            .await
            .unwrap();
    assert_eq!(
        in_model as usize,
        order_ids.len(),
        "orders in the read model"
    );

    for id in &order_ids {
        let order_id: OrderId = id.parse().unwrap();
        let reply: QueryReply<OrderSummary> = projections
            .query("order", serde_json::json!({ "order_id": id }))
            .await;
        let QueryReply::Found(summary) = reply else {
            panic!("order {id} is not in the read model: {reply:?}");
        };
        let order = contexts.order(order_id).await;
        assert_eq!(summary.status, state(order.status().unwrap()), "order {id}");
        assert_eq!(Some(summary.total), order.total(), "total of {id}");
        assert_eq!(
            summary.customer_id,
            order.customer_id().unwrap().to_string()
        );
        assert_eq!(summary.lines.len(), order.lines().len());
        let allocation = contexts.allocation(order_id).await.status();
        assert_eq!(
            summary.stock,
            named(allocation, "undecided"),
            "stock of {id}"
        );
        let payment = contexts.payment(order_id).await;
        assert_eq!(
            summary.payment.as_ref().map(|p| p.status.clone()),
            named(payment.status(), "notrequested"),
            "payment of {id}"
        );
        let paid = summary
            .payment
            .clone()
            .unwrap_or(events::query::PaymentView {
                status: String::new(),
                captured_minor: 0,
                refunded_minor: 0,
            });
        assert_eq!(
            paid.captured_minor,
            payment.captured().map_or(0, |m| m.amount_minor)
        );
        assert_eq!(
            paid.refunded_minor,
            payment.refunded().map_or(0, |m| m.amount_minor)
        );
        let shipment = contexts.shipment(order_id).await.status();
        assert_eq!(
            summary.shipment.as_ref().map(|s| s.status.clone()),
            named(shipment, "notscheduled"),
            "shipment of {id}"
        );
        let about_order = all
            .iter()
            .filter(|e| {
                e.aggregate_id == *id
                    && ["order", "allocation", "payment", "shipment"]
                        .contains(&e.aggregate_type.as_str())
            })
            .count();
        assert_eq!(summary.timeline.len(), about_order, "timeline of {id}");
        let times: Vec<_> = summary.timeline.iter().map(|t| t.occurred_at).collect();
        assert!(times.is_sorted(), "timeline of {id} is in time order");
    }

    for &sku in skus {
        let reply: QueryReply<ProductView> = projections
            .query("product", serde_json::json!({ "sku": sku }))
            .await;
        let QueryReply::Found(product) = reply else {
            panic!("{sku} is not in the catalogue: {reply:?}");
        };
        let stock = contexts.stock(sku).await;
        assert_eq!(
            product.available,
            i64::from(stock.on_hand()),
            "{sku} available"
        );
        assert_eq!(
            product.reserved as u64,
            stock.reserved_total(),
            "{sku} reserved"
        );
        assert_eq!(
            product.on_hand as u64,
            stock.received() - stock.committed(),
            "{sku} on hand"
        );
    }
    // Sales, computed from ordering's events.
    let mut totals = HashMap::new();
    let mut confirmed_orders = HashMap::new();
    let mut expected: BTreeMap<NaiveDate, (i64, i64, i64, i64)> = BTreeMap::new();
    for stored in ordering.iter().filter(|e| e.aggregate_type == "order") {
        let id = stored.aggregate_id.clone();
        let day = stored.recorded_at.date_naive();
        match stored.clone().decode::<OrderEvent>().unwrap().payload {
            OrderEvent::OrderPlaced(placed) => {
                totals.insert(id, placed.total.amount_minor);
            }
            OrderEvent::OrderConfirmed(_) => {
                let day_sums = expected.entry(day).or_default();
                day_sums.0 += 1;
                day_sums.1 += totals[&id];
                confirmed_orders.insert(id, ());
            }
            OrderEvent::OrderCancelled(_) if confirmed_orders.contains_key(&id) => {
                let day_sums = expected.entry(day).or_default();
                day_sums.2 += 1;
                day_sums.3 += totals[&id];
            }
            _ => {}
        }
    }
    let (first, last) = (
        *expected.keys().next().unwrap(),
        *expected.keys().last().unwrap(),
    );
    let reply: QueryReply<SalesReport> = projections
        .query("sales", serde_json::json!({ "from": first, "to": last }))
        .await;
    let QueryReply::Found(report) = reply else {
        panic!("no sales: {reply:?}");
    };
    let found: BTreeMap<NaiveDate, (i64, i64, i64, i64)> = report
        .days
        .iter()
        .map(|d| {
            assert_eq!(d.currency, "EUR");
            assert_eq!(d.net_minor, d.revenue_minor - d.cancelled_minor);
            (
                d.day,
                (
                    d.orders_confirmed,
                    d.revenue_minor,
                    d.orders_cancelled,
                    d.cancelled_minor,
                ),
            )
        })
        .collect();
    assert_eq!(found, expected, "sales per day");
}

async fn rebuild_with(projections: &Projections, projection: Projection, options: RebuildOptions) {
    rebuild::rebuild_with(
        &projections.pool,
        &projections.js,
        projection,
        &options,
        &NoProgress,
        &CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("rebuild of {projection}: {e:#}"));
}

async fn verify_clean(projections: &Projections, projection: Projection) {
    let differences = rebuild::verify(
        &projections.pool,
        &projections.js,
        projection,
        &NoProgress,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(
        differences.is_empty(),
        "{projection} differs from a rebuild: {differences:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_models_match_the_stores_and_rebuilds_in_any_interleaving_match_them() {
    let nats = NatsServer::start().await.unwrap();
    let projections = Projections::start(&nats).await;
    let mut contexts = Contexts::start(&nats).await;
    workload(&contexts).await;
    contexts.settle().await;
    projections.caught_up().await;
    check_against_stores(&contexts, &projections, &["BOOK", "PEN", "MUG"]).await;
    let pen: QueryReply<ProductView> = projections
        .query("product", serde_json::json!({ "sku": "PEN" }))
        .await;
    assert!(
        matches!(pen, QueryReply::Found(p) if p.price.amount_minor == 300),
        "repriced"
    );

    let mut live = BTreeMap::new();
    for projection in Projection::ALL {
        live.insert(projection, projections.snapshot(projection).await);
        verify_clean(&projections, projection).await;
        rebuild_with(&projections, projection, RebuildOptions::default()).await;
        assert_same(
            &projections.snapshot(projection).await,
            &live[&projection],
            &format!("the rebuilt {projection}"),
        );
    }

    use BoundedContext::{Inventory, Ordering, Payments, Shipping};
    for order in [
        vec![Ordering, Inventory, Payments, Shipping],
        vec![Shipping, Payments, Inventory, Ordering],
        vec![Payments, Ordering, Shipping, Inventory],
    ] {
        let options = RebuildOptions {
            order: SourceOrder::OneAfterAnother(order.clone()),
            batch_size: 7,
            ..RebuildOptions::default()
        };
        rebuild_with(&projections, Projection::Orders, options).await;
        assert_same(
            &projections.snapshot(Projection::Orders).await,
            &live[&Projection::Orders],
            &format!("orders read in the order {order:?}"),
        );
    }

    // The streams are deleted, recreated and republished from the stores: nothing counts twice.
    contexts.stop().await;
    let created_before: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT stream, stream_created FROM orders.checkpoints ORDER BY stream")
            .fetch_all(&projections.pool)
            .await
            .unwrap();
    for context in BoundedContext::ALL {
        projections
            .js
            .delete_stream(context.stream().name())
            .await
            .unwrap();
    }
    let streams: Vec<_> = BoundedContext::ALL.iter().map(|c| c.stream()).collect();
    bus::provision::streams(&projections.js, &streams, 1)
        .await
        .unwrap();
    for context in BoundedContext::ALL {
        contexts.republish(context).await;
    }
    wait("every projection to read the recreated streams", || async {
        let mut renewed = true;
        for projection in Projection::ALL {
            let sql = format!(
                "SELECT stream, stream_created FROM {}.checkpoints ORDER BY stream",
                projection.schema()
            );
            let now: Vec<(String, chrono::DateTime<chrono::Utc>)> =
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&projections.pool)
                    .await
                    .unwrap();
            renewed &= now.iter().all(|row| !created_before.contains(row));
        }
        renewed
    })
    .await;
    projections.caught_up().await;
    for projection in Projection::ALL {
        assert_same(
            &projections.snapshot(projection).await,
            &live[&projection],
            &format!("{projection} after the streams were republished"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_while_orders_flow_loses_nothing_and_doubles_nothing() {
    let nats = NatsServer::start().await.unwrap();
    let projections = Projections::start(&nats).await;
    let contexts = Contexts::start(&nats).await;
    contexts.define_product("BOOK", 1_500).await;
    contexts.define_product("PEN", 250).await;
    contexts.receive("BOOK", 1_000).await;
    contexts.receive("PEN", 1_000).await;

    let rebuilding = CancellationToken::new();
    let rebuilt = CancellationToken::new();
    let flow = async {
        let customer = CustomerId::new();
        let (mut placed, mut during) = (0, 0);
        while !rebuilt.is_cancelled() || placed < 10 {
            let token = if placed % 4 == 3 { DECLINE } else { SUCCESS };
            let was_rebuilding = rebuilding.is_cancelled() && !rebuilt.is_cancelled();
            contexts
                .place(customer, &[("BOOK", 1), ("PEN", 2)], token)
                .await;
            placed += 1;
            if was_rebuilding && !rebuilt.is_cancelled() {
                during += 1;
            }
        }
        (placed, during)
    };
    let rebuilds = async {
        // Some orders first, so that the rebuilds start with history to read.
        wait("the first orders in the read model", || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders.orders")
                .fetch_one(&projections.pool)
                .await
                .unwrap()
                >= 3
        })
        .await;
        rebuilding.cancel();
        for projection in Projection::ALL {
            rebuild_with(&projections, projection, RebuildOptions::default()).await;
        }
        rebuild_with(&projections, Projection::Orders, RebuildOptions::default()).await;
        rebuilt.cancel();
    };
    let ((placed, during), ()) = tokio::join!(flow, rebuilds);
    assert!(placed >= 10);
    assert!(
        during > 0,
        "no order was placed while the read models were rebuilt"
    );
    contexts.settle().await;
    projections.caught_up().await;
    check_against_stores(&contexts, &projections, &["BOOK", "PEN"]).await;
    for projection in Projection::ALL {
        verify_clean(&projections, projection).await;
    }
    let doubled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT order_id FROM orders.timeline \
         GROUP BY order_id, aggregate_type, sequence HAVING count(*) > 1) d",
    )
    .fetch_one(&projections.pool)
    .await
    .unwrap();
    assert_eq!(doubled, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_from_a_point_leaves_out_what_came_before() {
    let nats = NatsServer::start().await.unwrap();
    let projections = Projections::start(&nats).await;
    let contexts = Contexts::start(&nats).await;
    contexts.define_product("BOOK", 1_000).await;
    contexts.receive("BOOK", 100).await;
    let customer = CustomerId::new();
    let (early, _) = contexts.place(customer, &[("BOOK", 1)], SUCCESS).await;
    contexts
        .wait_for_status(early, OrderStatus::Confirmed)
        .await;
    contexts.settle().await;
    let since = chrono::Utc::now();
    let (late, _) = contexts.place(customer, &[("BOOK", 2)], SUCCESS).await;
    contexts.wait_for_status(late, OrderStatus::Confirmed).await;
    contexts.settle().await;
    projections.caught_up().await;

    let options = RebuildOptions {
        from: StartAt::Time(since),
        ..RebuildOptions::default()
    };
    rebuild_with(&projections, Projection::Sales, options).await;
    let totals: Vec<String> = sqlx::query_scalar("SELECT order_id FROM sales.order_totals")
        .fetch_all(&projections.pool)
        .await
        .unwrap();
    assert_eq!(
        totals,
        vec![late.to_string()],
        "only the late order is known"
    );
    let revenue: i64 =
        sqlx::query_scalar("SELECT sum(revenue_minor)::bigint FROM sales.daily_sales")
            .fetch_one(&projections.pool)
            .await
            .unwrap();
    assert_eq!(revenue, 2_000);
    // A verification rebuilds from the same point, so it finds the model as it should be.
    verify_clean(&projections, Projection::Sales).await;
}
