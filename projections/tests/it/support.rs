//! What the tests run on: a private nats-server, a private projections database with the
//! projections service on it, and either the four context services (a real workload, driven by
//! commands, checked against the event stores) or a publisher of hand-made events with the
//! relay's headers (for what a workload cannot stage on purpose).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::RequestErrorKind;
use async_nats::jetstream::{self, context::PublishAckFuture};
use chrono::{DateTime, Utc};
use events::command::{CommandReply, command_subject};
use events::query::{QueryReply, query_subject};
use events::values::{CustomerId, OrderId};
use events::{BoundedContext, Event, Metadata};
use eventstore::{Repository, Store, StoredEvent};
use harness::{NatsServer, TestDatabase};
use payments::{ResiliencePolicy, Resilient, Simulator};
use projections::Projection;
use projections::service::{Service, Settings};
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for a state. Generous: a slow, shared machine must not fail a test
/// that is merely slow.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// At most this many full systems (four contexts) at once in the test process.
static SYSTEMS: Semaphore = Semaphore::const_new(1);

/// Waits until `check` holds, or fails the test.
pub async fn wait<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if let Err(e) = harness::wait_until(what, PATIENCE, check).await {
        panic!("{e:#}");
    }
}

/// The projections service on its own database.
#[derive(Debug)]
pub struct Projections {
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub client: async_nats::Client,
    settings: Settings,
    running: Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    _db: TestDatabase,
}

impl Projections {
    pub async fn start(nats: &NatsServer) -> Self {
        Self::start_with_batch(nats, projections::DEFAULT_BATCH_SIZE).await
    }

    pub async fn start_with_batch(nats: &NatsServer, batch_size: usize) -> Self {
        let db = TestDatabase::create().await.expect("projections database");
        let settings = Settings {
            database_url: db.url(),
            nats_url: nats.url(),
            database_connections: 8,
            batch_size,
            linger: projections::DEFAULT_LINGER,
        };
        let client = bus::connect(&nats.url(), "projections-test")
            .await
            .expect("connects");
        let js = jetstream::new(client.clone());
        // The contexts' streams, as each context creates its own at its start (the service
        // provisions none): hand-made events need them before any context runs.
        nats.provision_event_streams()
            .await
            .expect("streams provisioned");
        let pool = db.pool(6).await.expect("pool");
        let mut projections = Self {
            pool,
            js,
            client,
            settings,
            running: None,
            _db: db,
        };
        projections.start_service().await;
        projections
    }

    pub async fn start_service(&mut self) {
        assert!(self.running.is_none(), "the service is running");
        let service: Service = projections::service::start(&self.settings)
            .await
            .unwrap_or_else(|e| panic!("the projections service does not start: {e:#}"));
        let token = service.shutdown_token();
        let task = tokio::spawn(service.run(std::future::pending()));
        self.running = Some((token, task));
    }

    /// Stops the service started with the projections, as a process taking a SIGTERM would
    /// (its writers finish their batch and release their locks).
    pub async fn stop_service(&mut self) {
        let (token, task) = self.running.take().expect("the service is running");
        token.cancel();
        let stopped = tokio::time::timeout(PATIENCE, task)
            .await
            .expect("the service stops in time");
        stopped
            .expect("no panic")
            .unwrap_or_else(|e| panic!("the service stopped with an error: {e:#}"));
    }

    /// Starts one more instance of the projections service on the same database, as a second
    /// process would run, its connections named `name` (`application_name`).
    pub async fn start_instance(&self, name: &str) -> Instance {
        let mut settings = self.settings.clone();
        // The fewest the service takes for its shared pool (its writers connect on their own).
        settings.database_connections = 4;
        let separator = if settings.database_url.contains('?') {
            '&'
        } else {
            '?'
        };
        settings.database_url = format!(
            "{}{separator}application_name={name}",
            settings.database_url
        );
        let service = projections::service::start(&settings)
            .await
            .unwrap_or_else(|e| panic!("instance {name} does not start: {e:#}"));
        let token = service.shutdown_token();
        let task = tokio::spawn(service.run(std::future::pending()));
        Instance { token, _task: task }
    }

    /// Waits until every projection's checkpoint is at its streams' last sequence.
    pub async fn caught_up(&self) {
        wait("the projections to catch up", || async {
            match projections::rebuild::status(&self.pool, &self.js).await {
                Ok(statuses) => statuses
                    .iter()
                    .all(|p| p.streams.iter().all(|s| s.lag == 0)),
                Err(_) => false,
            }
        })
        .await;
    }

    /// Sends a query and decodes its reply.
    pub async fn query<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        body: serde_json::Value,
    ) -> QueryReply<T> {
        let subject = query_subject(endpoint);
        let payload = serde_json::to_vec(&body).expect("JSON");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match self
                .client
                .request(subject.clone(), payload.clone().into())
                .await
            {
                Ok(reply) => {
                    return serde_json::from_slice(&reply.payload).unwrap_or_else(|e| {
                        panic!(
                            "{subject}: not a reply ({e}): {}",
                            String::from_utf8_lossy(&reply.payload)
                        )
                    });
                }
                Err(e)
                    if e.kind() == RequestErrorKind::NoResponders
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{subject}: {e}"),
            }
        }
    }

    /// Every row of every table of `projection`'s live schema, as JSON, by table, sorted.
    pub async fn snapshot(&self, projection: Projection) -> BTreeMap<String, Vec<String>> {
        let mut tables = BTreeMap::new();
        for table in projection.tables() {
            let sql = format!(
                "SELECT to_jsonb(t)::text FROM {}.{} t ORDER BY 1",
                projection.schema(),
                table.name
            );
            let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_all(&self.pool)
                .await
                .expect("table rows");
            tables.insert(table.name.to_owned(), rows);
        }
        tables
    }
}

/// Waits until the backend that `waiting` (a query of `pg_stat_activity` for one pid) finds
/// waits for a lock inside its transaction, then terminates it, as a crash of its process would.
pub async fn terminate_when_waiting(pool: &PgPool, waiting: &'static str, what: &str) {
    wait(what, || async {
        sqlx::query_scalar::<_, i32>(waiting)
            .fetch_optional(pool)
            .await
            .unwrap()
            .is_some()
    })
    .await;
    let pid: i32 = sqlx::query_scalar(waiting).fetch_one(pool).await.unwrap();
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(terminated, "{what}: backend {pid} terminated");
}

/// A projections service started beside the first; stopped when dropped.
#[derive(Debug)]
pub struct Instance {
    token: CancellationToken,
    _task: JoinHandle<anyhow::Result<()>>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Fails with the first rows that differ, table by table, when two snapshots differ.
pub fn assert_same(
    found: &BTreeMap<String, Vec<String>>,
    expected: &BTreeMap<String, Vec<String>>,
    what: &str,
) {
    for (table, rows) in expected {
        let other = found.get(table).cloned().unwrap_or_default();
        let missing: Vec<&String> = rows.iter().filter(|r| !other.contains(r)).take(3).collect();
        let extra: Vec<&String> = other.iter().filter(|r| !rows.contains(r)).take(3).collect();
        assert!(
            missing.is_empty() && extra.is_empty() && other.len() == rows.len(),
            "{what}: table {table} has {} rows instead of {}; missing {missing:#?}; unexpected {extra:#?}",
            other.len(),
            rows.len()
        );
    }
    assert_eq!(found.len(), expected.len(), "{what}: tables");
}

impl Drop for Projections {
    fn drop(&mut self) {
        if let Some((token, _)) = &self.running {
            token.cancel();
        }
    }
}

/// The four context services, each on its database, driven by commands.
#[derive(Debug)]
pub struct Contexts {
    provider: Arc<Resilient<Simulator>>,
    client: async_nats::Client,
    js: jetstream::Context,
    running: HashMap<BoundedContext, (CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    stores: HashMap<BoundedContext, Store>,
    _databases: Vec<TestDatabase>,
    _permit: SemaphorePermit<'static>,
}

impl Contexts {
    pub async fn start(nats: &NatsServer) -> Self {
        let permit = SYSTEMS.acquire().await.expect("never closed");
        let client = bus::connect(&nats.url(), "contexts-test")
            .await
            .expect("connects");
        let js = jetstream::new(client.clone());
        let provider = Arc::new(Resilient::new(
            Simulator::default(),
            ResiliencePolicy::default(),
        ));
        let mut running = HashMap::new();
        let mut stores = HashMap::new();
        let mut databases = Vec::new();
        for context in BoundedContext::ALL {
            let db = TestDatabase::create().await.expect("context database");
            let settings = host::Settings {
                context,
                database_url: db.url(),
                nats_url: nats.url(),
                database_connections: 4,
            };
            let started = match context {
                BoundedContext::Ordering => {
                    ordering::service::start(&settings, chrono::Duration::seconds(120)).await
                }
                BoundedContext::Inventory => inventory::service::start(&settings).await,
                BoundedContext::Payments => {
                    let provider: Arc<dyn payments::PaymentProvider> = provider.clone();
                    payments::service::start(&settings, provider).await
                }
                BoundedContext::Shipping => shipping::service::start(&settings).await,
            };
            let host = started.unwrap_or_else(|e| panic!("{context} does not start: {e:#}"));
            let token = host.shutdown_token();
            running.insert(
                context,
                (token, tokio::spawn(host.run(std::future::pending()))),
            );
            stores.insert(context, Store::connect(&db.url(), 2).await.expect("store"));
            databases.push(db);
        }
        Self {
            provider,
            client,
            js,
            running,
            stores,
            _databases: databases,
            _permit: permit,
        }
    }

    /// Stops every context service (their stores stay readable).
    pub async fn stop(&mut self) {
        for (context, (token, task)) in self.running.drain() {
            token.cancel();
            let stopped = tokio::time::timeout(PATIENCE, task)
                .await
                .unwrap_or_else(|_| panic!("{context} does not stop in time"));
            stopped
                .expect("no panic")
                .unwrap_or_else(|e| panic!("{context} stopped with an error: {e:#}"));
        }
    }

    pub fn store(&self, context: BoundedContext) -> &Store {
        &self.stores[&context]
    }

    pub async fn command(
        &self,
        context: BoundedContext,
        name: &str,
        body: serde_json::Value,
    ) -> CommandReply {
        let subject = command_subject(context.name(), name);
        let payload = serde_json::to_vec(&body).expect("JSON");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match self
                .client
                .request(subject.clone(), payload.clone().into())
                .await
            {
                Ok(reply) => return serde_json::from_slice(&reply.payload).expect("a reply"),
                Err(e)
                    if e.kind() == RequestErrorKind::NoResponders
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{subject}: {e}"),
            }
        }
    }

    pub async fn accepted(
        &self,
        context: BoundedContext,
        name: &str,
        body: serde_json::Value,
    ) -> (String, i64) {
        match self.command(context, name, body.clone()).await {
            CommandReply::Accepted {
                aggregate_id,
                position,
                ..
            } => (aggregate_id, position),
            other => panic!("{context} {name} {body} was refused: {other:?}"),
        }
    }

    /// Defines a product and waits until ordering can price it.
    pub async fn define_product(&self, sku: &str, price_minor: i64) {
        let body = serde_json::json!({
            "sku": sku,
            "name": format!("Product {sku}"),
            "price": { "amount_minor": price_minor, "currency": "EUR" },
        });
        self.accepted(BoundedContext::Inventory, "define-product", body)
            .await;
        let replica =
            ordering::CatalogueReplica::new(self.store(BoundedContext::Ordering).pool().clone());
        let sku: events::values::Sku = sku.parse().expect("SKU");
        wait(&format!("ordering to price {sku}"), || async {
            replica.entry(&sku).await.ok().flatten().is_some()
        })
        .await;
    }

    pub async fn receive(&self, sku: &str, quantity: u32) {
        let body = serde_json::json!({ "sku": sku, "quantity": quantity });
        self.accepted(BoundedContext::Inventory, "receive-stock", body)
            .await;
    }

    /// Places an order of `customer` (accepted) and returns its id and the position written.
    pub async fn place(
        &self,
        customer: CustomerId,
        lines: &[(&str, u32)],
        token: &str,
    ) -> (OrderId, i64) {
        let order_id = OrderId::new();
        let lines: Vec<_> = lines
            .iter()
            .map(|(sku, quantity)| serde_json::json!({ "sku": sku, "quantity": quantity }))
            .collect();
        let body = serde_json::json!({
            "order_id": order_id,
            "customer_id": customer,
            "lines": lines,
            "shipping_address": {
                "name": "Ada Lovelace",
                "line1": "12 St James's Square",
                "city": "London",
                "postal_code": "SW1Y 4JH",
                "country": "GB",
            },
            "payment_token": token,
        });
        let (_, position) = self
            .accepted(BoundedContext::Ordering, "place-order", body)
            .await;
        (order_id, position)
    }

    pub async fn cancel(&self, order_id: OrderId) {
        let body = serde_json::json!({ "order_id": order_id, "reason": "changed my mind" });
        self.accepted(BoundedContext::Ordering, "cancel-order", body)
            .await;
    }

    pub async fn dispatch(&self, order_id: OrderId) {
        let body = serde_json::json!({ "order_id": order_id, "tracking_number": "TRACK-1" });
        self.accepted(BoundedContext::Shipping, "dispatch-shipment", body)
            .await;
    }

    pub async fn deliver(&self, order_id: OrderId) {
        let body = serde_json::json!({ "order_id": order_id });
        self.accepted(BoundedContext::Shipping, "deliver-shipment", body)
            .await;
    }

    pub async fn order(&self, order_id: OrderId) -> ordering::Order {
        load(
            self.store(BoundedContext::Ordering),
            (),
            &order_id.to_string(),
        )
        .await
    }

    pub async fn wait_for_status(&self, order_id: OrderId, status: ordering::OrderStatus) {
        wait(&format!("order {order_id} to be {status:?}"), || async {
            self.order(order_id).await.status() == Some(status)
        })
        .await;
    }

    pub async fn wait_for_shipment(&self, order_id: OrderId) {
        wait(&format!("the shipment of {order_id}"), || async {
            self.shipment(order_id).await.status() == shipping::ShipmentStatus::Scheduled
        })
        .await;
    }

    pub async fn allocation(&self, order_id: OrderId) -> inventory::Allocation {
        load(
            self.store(BoundedContext::Inventory),
            (),
            &order_id.to_string(),
        )
        .await
    }

    pub async fn payment(&self, order_id: OrderId) -> payments::Payment {
        let provider: Arc<dyn payments::PaymentProvider> = self.provider.clone();
        load(
            self.store(BoundedContext::Payments),
            provider,
            &order_id.to_string(),
        )
        .await
    }

    pub async fn shipment(&self, order_id: OrderId) -> shipping::Shipment {
        load(
            self.store(BoundedContext::Shipping),
            (),
            &order_id.to_string(),
        )
        .await
    }

    pub async fn stock(&self, sku: &str) -> inventory::StockItem {
        load(self.store(BoundedContext::Inventory), (), sku).await
    }

    /// Every event of `context`'s store, in position order.
    pub async fn events(&self, context: BoundedContext) -> Vec<StoredEvent> {
        let store = self.store(context);
        let mut all: Vec<StoredEvent> = Vec::new();
        loop {
            let after = all.last().map_or(0, |e| e.position);
            let page = store.events_after(after, 1_000).await.expect("events");
            if page.is_empty() {
                return all;
            }
            all.extend(page);
        }
    }

    /// Waits until every durable consumer has acked everything and every outbox is empty,
    /// three looks in a row.
    pub async fn settle(&self) {
        let settled = async {
            let mut quiet = 0;
            while quiet < 3 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                quiet = if self.busy().await { 0 } else { quiet + 1 };
            }
        };
        tokio::time::timeout(PATIENCE, settled)
            .await
            .expect("the contexts settle");
    }

    async fn busy(&self) -> bool {
        for context in BoundedContext::ALL {
            let Ok(stream) = self.js.get_stream(context.stream().name()).await else {
                return true;
            };
            let mut consumers = stream.consumers();
            while let Some(info) = futures::StreamExt::next(&mut consumers).await {
                match info {
                    Ok(info) if info.config.durable_name.is_some() => {
                        if info.num_pending > 0 || info.num_ack_pending > 0 {
                            return true;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return true,
                }
            }
            if self.store(context).outbox_backlog().await.unwrap_or(1) > 0 {
                return true;
            }
        }
        false
    }

    /// Publishes every event of `context`'s store again, with the relay's headers.
    pub async fn republish(&self, context: BoundedContext) -> usize {
        let events = self.events(context).await;
        let stream = context.stream();
        let mut acks = Vec::new();
        for event in &events {
            let subject = stream
                .event_subject(
                    &event.aggregate_type,
                    &event.aggregate_id,
                    &event.event_type,
                )
                .expect("subject");
            let ack = self
                .js
                .publish_with_headers(
                    subject,
                    bus::event_headers(event),
                    event.payload.clone().into(),
                )
                .await
                .expect("publish");
            acks.push(ack);
        }
        for ack in acks {
            ack.await.expect("publish ack");
        }
        events.len()
    }
}

impl Drop for Contexts {
    fn drop(&mut self) {
        for (token, _) in self.running.values() {
            token.cancel();
        }
    }
}

async fn load<A>(store: &Store, services: A::Services, id: &str) -> A
where
    A: cqrs_es::Aggregate + Clone + 'static,
    A::Command: Clone,
    A::Event: Event,
{
    Repository::<A>::new(store.clone(), services)
        .with_cache_capacity(0)
        .load(id)
        .await
        .unwrap_or_else(|e| panic!("cannot load {} {id}: {e}", A::TYPE))
        .0
}

/// The last position per context and the last sequence per aggregate.
type Counters = (HashMap<BoundedContext, i64>, HashMap<(String, String), i64>);

/// Publishes hand-made events with the relay's headers: positions per context and sequences
/// per aggregate counted as an event store would.
#[derive(Debug)]
pub struct Publisher {
    js: jetstream::Context,
    counters: Mutex<Counters>,
}

impl Publisher {
    pub fn new(js: jetstream::Context) -> Self {
        Self {
            js,
            counters: Mutex::default(),
        }
    }

    /// The stored form of `event`, next in its aggregate and its context's store.
    pub fn stored<E: Event>(
        &self,
        context: BoundedContext,
        aggregate_id: &str,
        event: &E,
        occurred_at: DateTime<Utc>,
    ) -> StoredEvent {
        let mut counters = self.counters.lock().expect("not poisoned");
        let position = counters.0.entry(context).or_insert(0);
        *position += 1;
        let position = *position;
        let sequence = counters
            .1
            .entry((E::AGGREGATE_TYPE.to_owned(), aggregate_id.to_owned()))
            .or_insert(0);
        *sequence += 1;
        StoredEvent {
            position,
            event_id: uuid::Uuid::now_v7(),
            aggregate_type: E::AGGREGATE_TYPE.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            sequence: *sequence,
            event_type: event.event_type().to_owned(),
            schema_version: i32::try_from(event.schema_version()).expect("version"),
            payload: event.to_payload().to_string(),
            metadata: Metadata::default(),
            recorded_at: occurred_at,
        }
    }

    /// Publishes a stored event without waiting for its ack.
    pub async fn send(&self, context: BoundedContext, event: &StoredEvent) -> PublishAckFuture {
        let subject = context
            .stream()
            .event_subject(
                &event.aggregate_type,
                &event.aggregate_id,
                &event.event_type,
            )
            .expect("subject");
        self.js
            .publish_with_headers(
                subject,
                bus::event_headers(event),
                event.payload.clone().into(),
            )
            .await
            .expect("publish")
    }

    /// Publishes `event` as the next of its aggregate, recorded at `occurred_at`, and waits for
    /// JetStream to store it.
    pub async fn publish_at<E: Event>(
        &self,
        context: BoundedContext,
        aggregate_id: &str,
        event: impl Into<E>,
        occurred_at: DateTime<Utc>,
    ) -> StoredEvent {
        let stored = self.stored(context, aggregate_id, &event.into(), occurred_at);
        self.send(context, &stored).await.await.expect("stored");
        stored
    }

    pub async fn publish<E: Event>(
        &self,
        context: BoundedContext,
        aggregate_id: &str,
        event: impl Into<E>,
    ) -> StoredEvent {
        self.publish_at(context, aggregate_id, event, Utc::now())
            .await
    }
}
