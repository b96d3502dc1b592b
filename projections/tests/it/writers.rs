//! Two instances of the projections service on one database: one writer per projection
//! applies, the other stands by on the writer lock and takes over when the first stops or loses
//! the connection holding its lock. The read models end as one writer would have left them.
//!
//! Who wrote is read from the commits' notifications: a live writer notifies
//! `projection_advanced` in every batch's transaction, and a notification names the backend
//! that sent it; the instance started second names its connections [`STANDBY`].

use std::ops::Range;
use std::sync::{Arc, Mutex};

use chrono::{TimeZone, Utc};
use events::BoundedContext;
use events::ordering::{OrderConfirmed, OrderEvent};
use events::payments::{PaymentCaptured, PaymentEvent, PaymentRequested};
use events::values::{CustomerId, Money, OrderId};
use harness::NatsServer;
use projections::Projection;
use projections::rebuild::{self, NoProgress};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::runtime::{address, placed};
use crate::support::{Instance, Projections, Publisher, wait};

/// The `application_name` of the second instance's connections.
const STANDBY: &str = "standby";

/// The backends that sent a commit notification, in commit order.
struct Commits {
    senders: Arc<Mutex<Vec<u32>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Commits {
    async fn listen(pool: &PgPool) -> Self {
        let mut listener = PgListener::connect_with(pool).await.unwrap();
        listener.listen(projections::NOTIFY_CHANNEL).await.unwrap();
        let senders = Arc::new(Mutex::new(Vec::new()));
        let heard = Arc::clone(&senders);
        let task = tokio::spawn(async move {
            while let Ok(notification) = listener.recv().await {
                heard.lock().unwrap().push(notification.process_id());
            }
        });
        Self { senders, task }
    }

    /// Which commits the standby's backends (`standby`) sent, in commit order.
    fn by_standby(&self, standby: &[u32]) -> Vec<bool> {
        let senders = self.senders.lock().unwrap();
        senders.iter().map(|pid| standby.contains(pid)).collect()
    }
}

impl Drop for Commits {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `application_name` of each backend holding a writer lock, sorted. Writer locks are the
/// only session-level advisory locks of the service; a batch's transaction-level lock is held
/// by a backend inside a transaction.
async fn writer_locks(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND a.xact_start IS NULL \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn wait_for_writers(pool: &PgPool, name: &str) {
    let expected = vec![name.to_owned(); Projection::ALL.len()];
    wait(&format!("{name:?} to hold every writer lock"), || async {
        writer_locks(pool).await == expected
    })
    .await;
}

/// The backends of the standby instance (idle ones carry its name).
async fn standby_backends(pool: &PgPool) -> Vec<u32> {
    let pids: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
            .bind(STANDBY)
            .fetch_all(pool)
            .await
            .unwrap();
    pids.into_iter()
        .map(|pid| u32::try_from(pid).unwrap())
        .collect()
}

/// Places, prices, pays and confirms the orders numbered `orders` (a total of 100 + n each),
/// on the ordering and payments streams.
pub async fn publish_orders(publisher: &Publisher, orders: Range<i64>) {
    let day = Utc.with_ymd_and_hms(2026, 3, 14, 9, 0, 0).unwrap();
    let eur = "EUR".parse().unwrap();
    let mut acks = Vec::new();
    for n in orders {
        let order_id = OrderId::new();
        let id = order_id.to_string();
        let at = day + chrono::Duration::seconds(n);
        let amount = Money::new(100 + n, eur);
        let steps: [(BoundedContext, eventstore::StoredEvent); 4] = [
            (
                BoundedContext::Ordering,
                publisher.stored::<OrderEvent>(
                    BoundedContext::Ordering,
                    &id,
                    &placed(order_id, CustomerId::new(), 100 + n).into(),
                    at,
                ),
            ),
            (
                BoundedContext::Payments,
                publisher.stored::<PaymentEvent>(
                    BoundedContext::Payments,
                    &id,
                    &PaymentRequested {
                        order_id,
                        amount,
                        payment_token: "tok_success".to_owned(),
                    }
                    .into(),
                    at,
                ),
            ),
            (
                BoundedContext::Payments,
                publisher.stored::<PaymentEvent>(
                    BoundedContext::Payments,
                    &id,
                    &PaymentCaptured {
                        order_id,
                        amount,
                        provider_reference: format!("ref-{n}"),
                    }
                    .into(),
                    at,
                ),
            ),
            (
                BoundedContext::Ordering,
                publisher.stored::<OrderEvent>(
                    BoundedContext::Ordering,
                    &id,
                    &OrderConfirmed {
                        order_id,
                        shipping_address: address(),
                    }
                    .into(),
                    at,
                ),
            ),
        ];
        for (context, stored) in &steps {
            acks.push(publisher.send(*context, stored).await);
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// Every read model is what its streams say (a rebuild compared row by row finds nothing),
/// and holds each of `orders` orders once.
async fn assert_models(projections: &Projections, orders: i64) {
    let cancel = CancellationToken::new();
    for projection in Projection::ALL {
        let differences = rebuild::verify(
            &projections.pool,
            &projections.js,
            projection,
            &NoProgress,
            &cancel,
        )
        .await
        .unwrap();
        assert!(differences.is_empty(), "{projection}: {differences:#?}");
    }
    let (confirmed, captured): (i64, i64) = sqlx::query_as(
        "SELECT count(*), sum(captured_minor)::bigint FROM orders.orders \
         WHERE status = 'confirmed'",
    )
    .fetch_one(&projections.pool)
    .await
    .unwrap();
    let totals: i64 = (0..orders).map(|n| 100 + n).sum();
    assert_eq!((confirmed, captured), (orders, totals), "orders");
    let (counted, revenue): (i64, i64) = sqlx::query_as(
        "SELECT sum(orders_confirmed)::bigint, sum(revenue_minor)::bigint FROM sales.daily_sales",
    )
    .fetch_one(&projections.pool)
    .await
    .unwrap();
    assert_eq!((counted, revenue), (orders, totals), "sales");
}

/// The first writer's commits all come before the standby's, and both wrote.
async fn assert_handed_over(projections: &Projections, commits: &Commits) {
    let standby = standby_backends(&projections.pool).await;
    wait("a commit of the standby to be heard", || async {
        commits.by_standby(&standby).contains(&true)
    })
    .await;
    let order = commits.by_standby(&standby);
    let first = order.iter().take_while(|by_standby| !**by_standby).count();
    assert!(first > 0, "the first writer committed nothing");
    assert!(
        order[first..].iter().all(|by_standby| *by_standby),
        "the first writer committed after the standby took over: {order:?}"
    );
}

/// The projections service and a second instance standing by, with 150 orders applied by the
/// first: the commits heard from the start, the standby, and the publisher of further orders.
async fn two_instances(nats: &NatsServer) -> (Projections, Commits, Instance, Publisher) {
    let projections = Projections::start(nats).await;
    let commits = Commits::listen(&projections.pool).await;
    wait_for_writers(&projections.pool, "").await;
    let standby = projections.start_instance(STANDBY).await;
    let publisher = Publisher::new(projections.js.clone());
    publish_orders(&publisher, 0..150).await;
    projections.caught_up().await;
    (projections, commits, standby, publisher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_stands_by_and_takes_over_when_the_first_stops() {
    let nats = NatsServer::start().await.unwrap();
    let (mut projections, commits, _standby, publisher) = two_instances(&nats).await;
    assert_eq!(
        writer_locks(&projections.pool).await,
        vec![String::new(); Projection::ALL.len()],
        "the standby holds no writer lock while the first writer runs"
    );

    // Orders keep coming while the first writer stops.
    let publishing = tokio::spawn(async move { publish_orders(&publisher, 150..300).await });
    projections.stop_service().await;
    wait_for_writers(&projections.pool, STANDBY).await;
    publishing.await.unwrap();
    projections.caught_up().await;

    assert_handed_over(&projections, &commits).await;
    assert_models(&projections, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_loses_its_lock_connection_stops_and_the_standby_goes_on() {
    let nats = NatsServer::start().await.unwrap();
    let (projections, commits, _standby, publisher) = two_instances(&nats).await;

    // The connections holding the first instance's writer locks go while orders flow.
    let publishing = tokio::spawn(async move { publish_orders(&publisher, 150..300).await });
    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(a.pid)) \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = '' \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&projections.pool)
    .await
    .unwrap();
    assert_eq!(terminated, 3, "one lock connection per projection");
    wait_for_writers(&projections.pool, STANDBY).await;
    publishing.await.unwrap();
    projections.caught_up().await;

    // The first instance reconnected and stands by: it holds no lock and wrote nothing since.
    wait("the first instance to stand by again", || async {
        let standing_by: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = '' AND query = 'SELECT pg_try_advisory_lock($1)'",
        )
        .fetch_one(&projections.pool)
        .await
        .unwrap();
        standing_by == 3
    })
    .await;
    assert_eq!(
        writer_locks(&projections.pool).await,
        vec![STANDBY.to_owned(); Projection::ALL.len()]
    );
    assert_handed_over(&projections, &commits).await;
    assert_models(&projections, 300).await;
}
