//! The runtime's promises on hand-made events: a writer killed in the middle of a batch
//! resumes without loss or double counting, a poison message is dead-lettered while the
//! projection goes on, and an interrupted rebuild changes nothing and can be run again.

use chrono::{TimeZone, Utc};
use events::BoundedContext;
use events::headers;
use events::naming::DEAD_LETTER_STREAM;
use events::ordering::{Address, OrderConfirmed, OrderEvent, OrderLine, OrderPlaced};
use events::values::{CustomerId, Money, OrderId};
use harness::NatsServer;
use projections::Projection;

use crate::support::{Projections, Publisher, terminate_when_waiting, wait};

pub fn address() -> Address {
    Address {
        name: "Ada Lovelace".to_owned(),
        line1: "12 St James's Square".to_owned(),
        line2: None,
        city: "London".to_owned(),
        postal_code: "SW1Y 4JH".to_owned(),
        country: "GB".to_owned(),
    }
}

pub fn placed(order_id: OrderId, customer_id: CustomerId, total_minor: i64) -> OrderPlaced {
    let eur = "EUR".parse().unwrap();
    OrderPlaced {
        order_id,
        customer_id,
        lines: vec![OrderLine {
            sku: "BOOK".parse().unwrap(),
            quantity: 1.try_into().unwrap(),
            unit_price: Money::new(total_minor, eur),
        }],
        total: Money::new(total_minor, eur),
        shipping_address: address(),
        payment_token: "tok_success".to_owned(),
    }
}

/// Publishes `orders` orders placed and confirmed, the `n`-th at `day` + `n` seconds, for
/// `100 + n`, and waits for JetStream's acks.
async fn place_and_confirm(publisher: &Publisher, orders: i64, day: chrono::DateTime<Utc>) {
    let mut acks = Vec::new();
    for n in 0..orders {
        let order_id = OrderId::new();
        let at = day + chrono::Duration::seconds(n);
        let id = order_id.to_string();
        let event: OrderEvent = placed(order_id, CustomerId::new(), 100 + n).into();
        let first = publisher.stored(BoundedContext::Ordering, &id, &event, at);
        acks.push(publisher.send(BoundedContext::Ordering, &first).await);
        let event: OrderEvent = OrderConfirmed {
            order_id,
            shipping_address: address(),
        }
        .into();
        let second = publisher.stored(BoundedContext::Ordering, &id, &event, at);
        acks.push(publisher.send(BoundedContext::Ordering, &second).await);
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_in_the_middle_of_a_batch_resumes_without_loss_or_double_counting() {
    let nats = NatsServer::start().await.unwrap();
    let projections = Projections::start(&nats).await;
    let publisher = Publisher::new(projections.js.clone());
    // Every batch that confirms an order writes `daily_sales`: holding that table makes the
    // sales writer wait inside its batch's transaction, after its first writes.
    let mut blocker = projections.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE sales.daily_sales IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();

    let day = Utc.with_ymd_and_hms(2026, 3, 14, 9, 0, 0).unwrap();
    let orders = 300;
    place_and_confirm(&publisher, orders, day).await;

    // Waiting inside its batch: it moved its checkpoint and wrote `order_totals` already.
    const WAITING: &str = "SELECT pid FROM pg_stat_activity \
        WHERE application_name = 'projection sales' AND state = 'active' \
        AND wait_event_type = 'Lock' AND query LIKE '%daily_sales%'";
    terminate_when_waiting(
        &projections.pool,
        WAITING,
        "the sales writer to wait inside its batch",
    )
    .await;
    blocker.rollback().await.unwrap();

    projections.caught_up().await;
    let (confirmed, revenue): (i64, i64) = sqlx::query_as(
        "SELECT orders_confirmed, revenue_minor FROM sales.daily_sales WHERE day = $1",
    )
    .bind(day.date_naive())
    .fetch_one(&projections.pool)
    .await
    .unwrap();
    assert_eq!(confirmed, orders, "orders confirmed");
    assert_eq!(revenue, (0..orders).map(|n| 100 + n).sum::<i64>());
    let known: i64 = sqlx::query_scalar("SELECT count(*) FROM sales.order_totals")
        .fetch_one(&projections.pool)
        .await
        .unwrap();
    assert_eq!(known, orders);
    // The orders projection, never blocked, agrees.
    let placed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders.orders WHERE status = 'confirmed'")
            .fetch_one(&projections.pool)
            .await
            .unwrap();
    assert_eq!(placed, orders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_with_its_reason_and_the_projection_goes_on() {
    let nats = NatsServer::start().await.unwrap();
    let projections = Projections::start(&nats).await;
    let publisher = Publisher::new(projections.js.clone());
    let first = OrderId::new();
    publisher
        .publish::<OrderEvent>(
            BoundedContext::Ordering,
            &first.to_string(),
            placed(first, CustomerId::new(), 1_000),
        )
        .await;

    // A payload that is not the event its headers name, and a message with no envelope.
    let bad = OrderId::new();
    let event: OrderEvent = placed(bad, CustomerId::new(), 5).into();
    let mut stored = publisher.stored(
        BoundedContext::Ordering,
        &bad.to_string(),
        &event,
        Utc::now(),
    );
    stored.payload = r#"{"order_id":"not an order"}"#.to_owned();
    publisher
        .send(BoundedContext::Ordering, &stored)
        .await
        .await
        .unwrap();
    projections
        .js
        .publish("ordering.order.x.OrderPlaced", "no headers".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let second = OrderId::new();
    publisher
        .publish::<OrderEvent>(
            BoundedContext::Ordering,
            &second.to_string(),
            placed(second, CustomerId::new(), 2_000),
        )
        .await;
    projections.caught_up().await;

    let in_model: Vec<String> =
        sqlx::query_scalar("SELECT order_id FROM orders.orders ORDER BY total_minor")
            .fetch_all(&projections.pool)
            .await
            .unwrap();
    assert_eq!(in_model, vec![first.to_string(), second.to_string()]);
    let known: i64 = sqlx::query_scalar("SELECT count(*) FROM sales.order_totals")
        .fetch_one(&projections.pool)
        .await
        .unwrap();
    assert_eq!(known, 2);

    // Both projections reading ordering's stream dead-lettered both messages.
    let stream = projections.js.get_stream(DEAD_LETTER_STREAM).await.unwrap();
    wait("four dead letters", || async {
        stream
            .get_info()
            .await
            .is_ok_and(|info| info.state.messages == 4)
    })
    .await;
    let mut letters = Vec::new();
    for sequence in 1..=4 {
        let message = stream.direct_get(sequence).await.unwrap();
        let header = |name: &str| message.headers.get(name).unwrap().to_string();
        letters.push((
            header(headers::DLQ_CONSUMER),
            header(headers::DLQ_STREAM),
            header(headers::DLQ_ERROR),
        ));
    }
    letters.sort();
    for projection in [Projection::Orders, Projection::Sales] {
        let theirs: Vec<_> = letters
            .iter()
            .filter(|(consumer, _, _)| *consumer == format!("projection-{projection}"))
            .collect();
        assert_eq!(theirs.len(), 2, "{letters:#?}");
        assert!(theirs.iter().all(|(_, stream, _)| stream == "ORDERING"));
        assert!(
            theirs
                .iter()
                .any(|(_, _, error)| error.contains("does not match its schema")),
            "{theirs:#?}"
        );
        assert!(
            theirs
                .iter()
                .any(|(_, _, error)| error.contains("is missing")),
            "{theirs:#?}"
        );
    }
}

/// Cancels the rebuild as soon as it has made progress, as Ctrl-C in the CLI would.
struct CancelOnProgress(tokio_util::sync::CancellationToken);

impl projections::rebuild::Progress for CancelOnProgress {
    fn phase(&self, _: Projection, _: projections::rebuild::Phase) {}
    fn add_total(&self, _: u64) {}
    fn advance(&self, _: u64) {
        self.0.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rebuild_changes_nothing_and_runs_again() {
    use projections::rebuild::{self, Interrupted, NoProgress, RebuildOptions};

    let nats = NatsServer::start().await.unwrap();
    let projections = Projections::start(&nats).await;
    let publisher = Publisher::new(projections.js.clone());
    let mut acks = Vec::new();
    for n in 0..500 {
        let order_id = OrderId::new();
        let event: OrderEvent = placed(order_id, CustomerId::new(), n).into();
        let stored = publisher.stored(
            BoundedContext::Ordering,
            &order_id.to_string(),
            &event,
            Utc::now(),
        );
        acks.push(publisher.send(BoundedContext::Ordering, &stored).await);
    }
    for ack in acks {
        ack.await.unwrap();
    }
    projections.caught_up().await;
    let live = projections.snapshot(Projection::Sales).await;

    let cancel = tokio_util::sync::CancellationToken::new();
    let options = RebuildOptions {
        batch_size: 50,
        ..RebuildOptions::default()
    };
    let interrupted = rebuild::rebuild_with(
        &projections.pool,
        &projections.js,
        Projection::Sales,
        &options,
        &CancelOnProgress(cancel.clone()),
        &cancel,
    )
    .await
    .unwrap_err();
    assert!(interrupted.is::<Interrupted>(), "{interrupted:#}");
    crate::support::assert_same(
        &projections.snapshot(Projection::Sales).await,
        &live,
        "sales after an interrupted rebuild",
    );
    // A leftover of a run killed outright is dropped by the next run.
    sqlx::raw_sql(
        "CREATE SCHEMA IF NOT EXISTS sales_rebuild; CREATE TABLE sales_rebuild.junk (x int)",
    )
    .execute(&projections.pool)
    .await
    .unwrap();
    let report = rebuild::rebuild(
        &projections.pool,
        &projections.js,
        Projection::Sales,
        rebuild::StartAt::Beginning,
        &NoProgress,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.messages, 500);
    crate::support::assert_same(
        &projections.snapshot(Projection::Sales).await,
        &live,
        "sales rebuilt after an interruption",
    );
    let junk: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_tables WHERE tablename = 'junk')")
            .fetch_one(&projections.pool)
            .await
            .unwrap();
    assert!(!junk);
}

/// A `PaymentDeclined` published as schema version 1 (a free-text `reason`, before decline
/// codes) is read as version 2 by the orders projection, live and in a rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decline_published_as_version_1_is_read_as_version_2() {
    use events::payments::{PaymentEvent, PaymentRequested};

    let nats = NatsServer::start().await.unwrap();
    let projections = Projections::start(&nats).await;
    let publisher = Publisher::new(projections.js.clone());
    let order = OrderId::new();
    let id = order.to_string();
    publisher
        .publish::<OrderEvent>(
            BoundedContext::Ordering,
            &id,
            placed(order, CustomerId::new(), 1_000),
        )
        .await;
    publisher
        .publish::<PaymentEvent>(
            BoundedContext::Payments,
            &id,
            PaymentRequested {
                order_id: order,
                amount: Money::new(1_000, "EUR".parse().unwrap()),
                payment_token: "tok_decline".to_owned(),
            },
        )
        .await;
    // The second payment event, as payments published it before version 2.
    let current: PaymentEvent = events::payments::PaymentDeclined {
        order_id: order,
        code: events::payments::DeclineCode::Refused,
        detail: String::new(),
    }
    .into();
    let mut v1 = publisher.stored(BoundedContext::Payments, &id, &current, Utc::now());
    v1.schema_version = 1;
    v1.payload = serde_json::json!({ "order_id": id, "reason": "card declined" }).to_string();
    publisher
        .send(BoundedContext::Payments, &v1)
        .await
        .await
        .unwrap();
    projections.caught_up().await;

    let read = |pool: sqlx::PgPool| async move {
        let status: Option<String> =
            sqlx::query_scalar("SELECT payment_status FROM orders.orders WHERE order_id = $1")
                .bind(order.to_string())
                .fetch_one(&pool)
                .await
                .unwrap();
        let detail: String = sqlx::query_scalar(
            "SELECT detail FROM orders.timeline \
             WHERE order_id = $1 AND event_type = 'PaymentDeclined'",
        )
        .bind(order.to_string())
        .fetch_one(&pool)
        .await
        .unwrap();
        (status, detail)
    };
    let expected = (
        Some("declined".to_owned()),
        "payment declined (unclassified): card declined".to_owned(),
    );
    assert_eq!(read(projections.pool.clone()).await, expected);

    let cancel = tokio_util::sync::CancellationToken::new();
    projections::rebuild::rebuild(
        &projections.pool,
        &projections.js,
        Projection::Orders,
        projections::rebuild::StartAt::Beginning,
        &projections::rebuild::NoProgress,
        &cancel,
    )
    .await
    .unwrap();
    assert_eq!(read(projections.pool.clone()).await, expected, "rebuilt");
}

/// The read models grow from empty while the writer's prepared statements keep the plans made
/// when they were small: the live writer analyzes its tables each time they double.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_writer_analyzes_its_tables_as_they_grow() {
    let nats = NatsServer::start().await.unwrap();
    let projections = Projections::start(&nats).await;
    let publisher = Publisher::new(projections.js.clone());
    let day = Utc.with_ymd_and_hms(2026, 3, 14, 9, 0, 0).unwrap();
    // 1,200 timeline rows: more than `ANALYZE_AFTER`.
    place_and_confirm(&publisher, 600, day).await;
    projections.caught_up().await;
    wait("the orders projection's timeline analyzed", || async {
        let analyzed: Option<i64> = sqlx::query_scalar(
            "SELECT analyze_count FROM pg_stat_user_tables \
             WHERE schemaname = 'orders' AND relname = 'timeline'",
        )
        .fetch_optional(&projections.pool)
        .await
        .unwrap();
        analyzed.is_some_and(|n| n > 0)
    })
    .await;
    let estimated: f32 = sqlx::query_scalar(
        "SELECT reltuples FROM pg_class WHERE oid = 'orders.timeline'::regclass",
    )
    .fetch_one(&projections.pool)
    .await
    .unwrap();
    assert!(estimated >= 1_000.0, "{estimated}");
}
