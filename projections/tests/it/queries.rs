//! The query service as the gateway uses it: pagination by cursor, filters, refusals of bad
//! requests, and read-your-writes waits.

use std::collections::BTreeSet;

use chrono::{Duration, TimeZone, Utc};
use events::BoundedContext;
use events::inventory::{
    ProductDefined, ProductEvent, StockEvent, StockItemReserved, StockReceived,
};
use events::ordering::{OrderConfirmed, OrderEvent};
use events::payments::{PaymentEvent, PaymentRequested};
use events::query::{
    OrderPage, OrderState, OrderSummary, ProductPage, ProductView, ProjectionsStatus, QueryReply,
    SalesReport,
};
use events::values::{CustomerId, Money, OrderId};
use harness::NatsServer;
use serde_json::json;

use crate::runtime::{address, placed};
use crate::support::{Projections, Publisher};

fn field<T: std::fmt::Debug>(reply: &QueryReply<T>) -> Option<&str> {
    match reply {
        QueryReply::Rejected { code, field, .. } => {
            assert_eq!(code, "invalid_request", "{reply:?}");
            field.as_deref()
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

async fn all_pages(
    projections: &Projections,
    filter: serde_json::Value,
    limit: u32,
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut body = filter.clone();
        body["limit"] = json!(limit);
        if let Some(cursor) = &cursor {
            body["cursor"] = json!(cursor);
        }
        let reply: QueryReply<OrderPage> = projections.query("orders", body).await;
        let QueryReply::Found(page) = reply else {
            panic!("{reply:?}");
        };
        assert!(page.orders.len() <= limit as usize);
        seen.extend(page.orders.iter().map(|o| o.order_id.clone()));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return seen,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_paged_by_cursor_and_filtered() {
    let nats = NatsServer::start().await.unwrap();
    let projections = Projections::start(&nats).await;
    let publisher = Publisher::new(projections.js.clone());
    let (ada, bob) = (CustomerId::new(), CustomerId::new());
    let start = Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap();
    let mut adas = Vec::new();
    let mut confirmed = BTreeSet::new();
    for n in 0..30i64 {
        let order_id = OrderId::new();
        let customer = if n % 6 == 5 { bob } else { ada };
        // Two orders share each time: the order id breaks the tie.
        let at = start + Duration::minutes(n / 2);
        publisher
            .publish_at::<OrderEvent>(
                BoundedContext::Ordering,
                &order_id.to_string(),
                placed(order_id, customer, 100 + n),
                at,
            )
            .await;
        if n % 3 == 0 {
            publisher
                .publish_at::<OrderEvent>(
                    BoundedContext::Ordering,
                    &order_id.to_string(),
                    OrderConfirmed {
                        order_id,
                        shipping_address: address(),
                    },
                    at + Duration::seconds(1),
                )
                .await;
            confirmed.insert(order_id.to_string());
        }
        if customer == ada {
            adas.push((at, order_id.to_string()));
        }
    }
    // Payments heard of an order ordering has not published: it is not shown.
    let ghost = OrderId::new();
    publisher
        .publish::<PaymentEvent>(
            BoundedContext::Payments,
            &ghost.to_string(),
            PaymentRequested {
                order_id: ghost,
                amount: Money::new(1, "EUR".parse().unwrap()),
                payment_token: "tok_success".to_owned(),
            },
        )
        .await;
    projections.caught_up().await;

    // Newest first, by time then order id; every one of Ada's orders exactly once.
    adas.sort();
    adas.reverse();
    let expected: Vec<String> = adas.into_iter().map(|(_, id)| id).collect();
    let paged = all_pages(&projections, json!({ "customer_id": ada }), 7).await;
    assert_eq!(paged, expected);

    // Orders placed while paging are newer than any cursor: the pages stay the same.
    let first: QueryReply<OrderPage> = projections
        .query("orders", json!({ "customer_id": ada, "limit": 10 }))
        .await;
    let QueryReply::Found(first) = first else {
        panic!("{first:?}");
    };
    for n in 0..3 {
        let order_id = OrderId::new();
        publisher
            .publish_at::<OrderEvent>(
                BoundedContext::Ordering,
                &order_id.to_string(),
                placed(order_id, ada, 1),
                start + Duration::days(1) + Duration::minutes(n),
            )
            .await;
    }
    projections.caught_up().await;
    let mut rest = Vec::new();
    let mut cursor = first.next_cursor.clone();
    while let Some(c) = cursor {
        let reply: QueryReply<OrderPage> = projections
            .query(
                "orders",
                json!({ "customer_id": ada, "limit": 10, "cursor": c }),
            )
            .await;
        let QueryReply::Found(page) = reply else {
            panic!("{reply:?}");
        };
        rest.extend(page.orders.into_iter().map(|o| o.order_id));
        cursor = page.next_cursor;
    }
    let mut resumed: Vec<String> = first.orders.into_iter().map(|o| o.order_id).collect();
    resumed.extend(rest);
    assert_eq!(resumed, expected);

    let bobs = all_pages(&projections, json!({ "customer_id": bob }), 100).await;
    assert_eq!(bobs.len(), 5);
    let found: BTreeSet<String> = all_pages(&projections, json!({ "status": "confirmed" }), 4)
        .await
        .into_iter()
        .collect();
    assert_eq!(found, confirmed);
    let all = all_pages(&projections, json!({}), 100).await;
    assert_eq!(all.len(), 33);
    assert!(!all.contains(&ghost.to_string()));
    let reply: QueryReply<OrderSummary> = projections
        .query("order", json!({ "order_id": ghost }))
        .await;
    assert_eq!(reply, QueryReply::NotFound);

    // Bad requests name their field and look nothing up.
    let cases = [
        (json!({ "cursor": "o1zz" }), "cursor"),
        (json!({ "cursor": "not-a-cursor" }), "cursor"),
        (json!({ "limit": 0 }), "limit"),
        (json!({ "limit": 101 }), "limit"),
        (json!({ "customer_id": "ada" }), "customer_id"),
        (json!({ "status": "lost" }), "status"),
    ];
    for (body, expected) in cases {
        let reply: QueryReply<OrderPage> = projections.query("orders", body.clone()).await;
        assert_eq!(field(&reply), Some(expected), "{body}");
    }
    let unknown: QueryReply<OrderPage> = projections
        .query("orders", json!({ "colour": "red" }))
        .await;
    let QueryReply::Rejected { message, .. } = &unknown else {
        panic!("{unknown:?}");
    };
    assert!(message.contains("colour"), "{message}");
    let not_json: QueryReply<OrderPage> = projections.query("orders", json!("[")).await;
    assert!(field(&not_json).is_some());
    let bad_id: QueryReply<OrderSummary> = projections
        .query("order", json!({ "order_id": "42" }))
        .await;
    assert_eq!(field(&bad_id), Some("order_id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_products_sales_and_status_answer() {
    let nats = NatsServer::start().await.unwrap();
    let projections = Projections::start(&nats).await;
    let publisher = Publisher::new(projections.js.clone());
    let eur = "EUR".parse().unwrap();
    for (n, sku) in ["APPLE", "BOOK", "CHAIR", "DESK", "EASEL"]
        .iter()
        .enumerate()
    {
        let price = Money::new(100 * (n as i64 + 1), eur);
        publisher
            .publish::<ProductEvent>(
                BoundedContext::Inventory,
                sku,
                ProductDefined {
                    sku: sku.parse().unwrap(),
                    name: format!("Product {sku}"),
                    price,
                },
            )
            .await;
        publisher
            .publish::<StockEvent>(
                BoundedContext::Inventory,
                sku,
                StockReceived {
                    sku: sku.parse().unwrap(),
                    quantity: 10.try_into().unwrap(),
                },
            )
            .await;
    }
    let order_id = OrderId::new();
    let day = Utc.with_ymd_and_hms(2026, 2, 1, 10, 0, 0).unwrap();
    publisher
        .publish_at::<OrderEvent>(
            BoundedContext::Ordering,
            &order_id.to_string(),
            placed(order_id, CustomerId::new(), 700),
            day,
        )
        .await;
    publisher
        .publish::<StockEvent>(
            BoundedContext::Inventory,
            "BOOK",
            StockItemReserved {
                sku: "BOOK".parse().unwrap(),
                order_id,
                quantity: 3.try_into().unwrap(),
            },
        )
        .await;
    publisher
        .publish_at::<OrderEvent>(
            BoundedContext::Ordering,
            &order_id.to_string(),
            OrderConfirmed {
                order_id,
                shipping_address: address(),
            },
            day + Duration::hours(1),
        )
        .await;
    projections.caught_up().await;

    let reply: QueryReply<OrderSummary> = projections
        .query("order", json!({ "order_id": order_id }))
        .await;
    let QueryReply::Found(summary) = reply else {
        panic!("{reply:?}");
    };
    assert_eq!(summary.status, OrderState::Confirmed);
    assert_eq!(summary.lines.len(), 1);
    let steps: Vec<&str> = summary
        .timeline
        .iter()
        .map(|t| t.event_type.as_str())
        .collect();
    assert_eq!(steps, vec!["OrderPlaced", "OrderConfirmed"]);

    let book: QueryReply<ProductView> =
        projections.query("product", json!({ "sku": "BOOK" })).await;
    let QueryReply::Found(book) = book else {
        panic!("{book:?}");
    };
    assert_eq!((book.on_hand, book.reserved, book.available), (10, 3, 7));
    assert_eq!(book.price.amount_minor, 200);
    let missing: QueryReply<ProductView> =
        projections.query("product", json!({ "sku": "NOPE" })).await;
    assert_eq!(missing, QueryReply::NotFound);
    let lower: QueryReply<ProductView> =
        projections.query("product", json!({ "sku": "book" })).await;
    assert_eq!(field(&lower), Some("sku"));

    let mut skus = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut body = json!({ "limit": 2 });
        if let Some(c) = &cursor {
            body["cursor"] = json!(c);
        }
        let reply: QueryReply<ProductPage> = projections.query("products", body).await;
        let QueryReply::Found(page) = reply else {
            panic!("{reply:?}");
        };
        skus.extend(page.products.into_iter().map(|p| p.sku));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(skus, vec!["APPLE", "BOOK", "CHAIR", "DESK", "EASEL"]);
    let order_cursor: QueryReply<ProductPage> = projections
        .query("products", json!({ "cursor": "o1aa" }))
        .await;
    assert_eq!(field(&order_cursor), Some("cursor"));

    let sales: QueryReply<SalesReport> = projections
        .query("sales", json!({ "from": "2026-01-01", "to": "2026-03-01" }))
        .await;
    let QueryReply::Found(sales) = sales else {
        panic!("{sales:?}");
    };
    assert_eq!(sales.days.len(), 1);
    assert_eq!(sales.days[0].day, day.date_naive());
    assert_eq!(
        (sales.days[0].orders_confirmed, sales.days[0].revenue_minor),
        (1, 700)
    );
    for (body, expected) in [
        (json!({ "from": "2026-02-01", "to": "2026-01-01" }), "to"),
        (json!({ "from": "2024-01-01", "to": "2026-01-01" }), "to"),
        (json!({ "from": "2026-02-30", "to": "2026-03-01" }), "from"),
    ] {
        let reply: QueryReply<SalesReport> = projections.query("sales", body.clone()).await;
        assert_eq!(field(&reply), Some(expected), "{body}");
    }

    let status: QueryReply<ProjectionsStatus> = projections.query("status", json!({})).await;
    let QueryReply::Found(status) = status else {
        panic!("{status:?}");
    };
    let names: Vec<&str> = status
        .projections
        .iter()
        .map(|p| p.projection.as_str())
        .collect();
    assert_eq!(names, vec!["orders", "catalogue", "sales"]);
    assert!(status.projections.iter().all(|p| {
        p.streams
            .iter()
            .all(|s| s.lag == 0 && s.checkpoint == s.last_sequence)
    }));
    let waiting_status: QueryReply<ProjectionsStatus> =
        projections.query("status", json!({ "wait": {} })).await;
    assert!(field(&waiting_status).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_waits_for_its_write_or_says_not_yet() {
    let nats = NatsServer::start().await.unwrap();
    let projections = Projections::start(&nats).await;
    let publisher = Publisher::new(projections.js.clone());
    // Positions a context's store would give: the publisher counts them per context.
    let warmup = OrderId::new();
    publisher
        .publish::<OrderEvent>(
            BoundedContext::Ordering,
            &warmup.to_string(),
            placed(warmup, CustomerId::new(), 1),
        )
        .await;
    projections.caught_up().await;

    let order_id = OrderId::new();
    let event: OrderEvent = placed(order_id, CustomerId::new(), 4_200).into();
    let stored = publisher.stored(
        BoundedContext::Ordering,
        &order_id.to_string(),
        &event,
        Utc::now(),
    );
    let wait = json!({
        "aggregate_type": "order",
        "aggregate_id": order_id,
        "position": stored.position,
        "timeout_ms": 5_000,
    });
    // The query is asked before the event is even published, and answers once it is applied.
    let query =
        projections.query::<OrderSummary>("order", json!({ "order_id": order_id, "wait": wait }));
    let publish = async {
        tokio::task::yield_now().await;
        publisher
            .send(BoundedContext::Ordering, &stored)
            .await
            .await
            .unwrap();
    };
    let (reply, ()) = tokio::join!(query, publish);
    let QueryReply::Found(summary) = reply else {
        panic!("{reply:?}");
    };
    assert_eq!(summary.total.amount_minor, 4_200);

    // A position the model will not reach in time.
    let reply: QueryReply<OrderSummary> = projections
        .query(
            "order",
            json!({ "order_id": order_id, "wait": {
                "aggregate_type": "order", "aggregate_id": order_id,
                "position": stored.position + 1_000, "timeout_ms": 200 } }),
        )
        .await;
    assert_eq!(
        reply,
        QueryReply::NotYet {
            aggregate_type: "order".to_owned(),
            aggregate_id: order_id.to_string(),
            position: stored.position + 1_000,
            reached: Some(stored.position),
        }
    );
    // A wait on an aggregate the read model does not apply is refused.
    let reply: QueryReply<OrderSummary> = projections
        .query(
            "order",
            json!({ "order_id": order_id, "wait": {
                "aggregate_type": "stock", "aggregate_id": "BOOK", "position": 1 } }),
        )
        .await;
    assert_eq!(field(&reply), Some("wait.aggregate_type"));
    let reply: QueryReply<OrderSummary> = projections
        .query(
            "order",
            json!({ "order_id": order_id, "wait": {
                "aggregate_type": "order", "aggregate_id": order_id, "position": 1, "extra": 1 } }),
        )
        .await;
    assert!(
        field(&reply).is_some_and(|f| f.starts_with("wait")),
        "{reply:?}"
    );
}
