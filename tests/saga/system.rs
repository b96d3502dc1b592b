//! The whole of Chorus for one test: a private nats-server, a database per context, and the
//! four context services, each run as its `service::start` builds it.
//!
//! A test drives the system as a client would (commands over NATS request/reply) and reads
//! the outcome from the event stores, never from a service's memory. A service can be stopped
//! and started again on its database, as an operator would restart a process.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{HeaderMap, RequestErrorKind};
use events::command::{CommandReply, command_subject};
use events::inventory::AllocationEvent;
use events::naming::DEAD_LETTER_STREAM;
use events::ordering::{OrderEvent, RejectionReason};
use events::values::{Currency, CustomerId, Money, OrderId, Sku};
use events::{BoundedContext, Event, headers};
use eventstore::{Repository, Store, StoredEvent};
use futures::StreamExt;
use harness::{NatsServer, TestDatabase};
use host::Settings;
use inventory::{Allocation, StockItem};
use ordering::{CatalogueReplica, Order, OrderStatus};
use payments::{Payment, ResiliencePolicy, Resilient, Simulator};
use shipping::Shipment;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::security::{self, SecureNats};

/// How long a test waits for the saga to reach a state. Generous: a slow machine running
/// several systems at once must not fail a test that is merely slow.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// At most this many systems run at once in the test process, whatever `--test-threads`
/// says: each holds about thirty PostgreSQL connections, and the server's limit is shared
/// with whoever else runs tests on the machine.
static SYSTEMS: Semaphore = Semaphore::const_new(2);

/// The four contexts, in the order they are started.
pub const CONTEXTS: [BoundedContext; 4] = BoundedContext::ALL;

/// A system to start: how long ordering waits for an order's payment before it rejects it,
/// and whether it runs under the accounts of `nats/` (`secure`): the server on
/// `nats/secure.conf`, each service as its own user, the test's commands sent as the gateway
/// and its reads of JetStream done as the operator.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub payment_timeout: chrono::Duration,
    pub secure: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            payment_timeout: chrono::Duration::seconds(60),
            secure: false,
        }
    }
}

/// The private nats-server of a system: open, or on `nats/secure.conf` with its users.
#[derive(Debug)]
enum Nats {
    Open(NatsServer),
    Secure(SecureNats),
}

impl Nats {
    fn server(&self) -> &NatsServer {
        match self {
            Nats::Open(server) => server,
            Nats::Secure(secure) => secure.server(),
        }
    }

    /// The URL `context`'s service connects with: as its own user on a secure server.
    fn url(&self, context: BoundedContext) -> String {
        match self {
            Nats::Open(server) => server.url(),
            Nats::Secure(secure) => secure.url(context.name()),
        }
    }
}

/// One running service: how to stop it and how to learn that it stopped.
#[derive(Debug)]
struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// A whole Chorus: nats-server, four databases, four services.
#[derive(Debug)]
pub struct System {
    options: Options,
    /// The payment provider every start of payments gets: it stands for an outside service,
    /// which outlives the payments process.
    provider: Arc<Resilient<Simulator>>,
    running: HashMap<BoundedContext, Running>,
    client: async_nats::Client,
    js: jetstream::Context,
    /// Read access to each context's event store (the test's own pools).
    stores: HashMap<BoundedContext, Store>,
    databases: HashMap<BoundedContext, TestDatabase>,
    nats: Nats,
    _permit: SemaphorePermit<'static>,
}

impl System {
    /// Starts everything with the default options (a 60 s payment timeout).
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        let permit = SYSTEMS
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let nats = if options.secure {
            Nats::Secure(SecureNats::start().await)
        } else {
            Nats::Open(NatsServer::start().await.expect("nats-server starts"))
        };
        let created = futures::future::join_all(CONTEXTS.map(|_| TestDatabase::create())).await;
        let databases: HashMap<_, _> = CONTEXTS
            .into_iter()
            .zip(created)
            .map(|(context, db)| (context, db.expect("test database")))
            .collect();
        // Commands go out on `client`, JetStream is read through `js`: on a secure server, as
        // the gateway and the operator would.
        let (client, js) = match &nats {
            Nats::Open(server) => {
                let client = bus::connect(&server.url(), "e2e")
                    .await
                    .expect("the test connects to nats-server");
                (client.clone(), jetstream::new(client))
            }
            Nats::Secure(secure) => {
                let gateway = secure.connect("gateway").await.client;
                let operator = secure.connect("operator").await.client;
                (gateway, jetstream::new(operator))
            }
        };
        let provider = Arc::new(Resilient::new(
            Simulator::default(),
            ResiliencePolicy::default(),
        ));
        let mut system = Self {
            options,
            provider,
            running: HashMap::new(),
            client,
            js,
            stores: HashMap::new(),
            databases,
            nats,
            _permit: permit,
        };
        for context in CONTEXTS {
            system.start_service(context).await;
        }
        // The services have migrated their stores: the test's read pools can open now.
        for context in CONTEXTS {
            let url = system.databases[&context].url();
            let store = Store::connect(&url, 2).await.expect("read pool");
            system.stores.insert(context, store);
        }
        system
    }

    fn settings(&self, context: BoundedContext) -> Settings {
        Settings {
            context,
            database_url: self.databases[&context].url(),
            nats_url: self.nats.url(context),
            database_connections: 4,
        }
    }

    /// Starts `context`'s service (again) on its database and runs it in the background.
    pub async fn start_service(&mut self, context: BoundedContext) {
        assert!(
            !self.running.contains_key(&context),
            "{context} is already running"
        );
        let settings = self.settings(context);
        let started = match context {
            BoundedContext::Ordering => {
                ordering::service::start(&settings, self.options.payment_timeout).await
            }
            BoundedContext::Inventory => inventory::service::start(&settings).await,
            BoundedContext::Payments => {
                let provider: Arc<dyn payments::PaymentProvider> = self.provider.clone();
                payments::service::start(&settings, provider).await
            }
            BoundedContext::Shipping => shipping::service::start(&settings).await,
        };
        let host = started.unwrap_or_else(|e| panic!("{context} does not start: {e:#}"));
        let shutdown = host.shutdown_token();
        let task = tokio::spawn(host.run(std::future::pending()));
        self.running.insert(context, Running { shutdown, task });
    }

    /// Stops `context`'s service as a signal would, and waits until it has stopped.
    pub async fn stop_service(&mut self, context: BoundedContext) {
        let running = self
            .running
            .remove(&context)
            .unwrap_or_else(|| panic!("{context} is not running"));
        running.shutdown.cancel();
        let stopped = tokio::time::timeout(PATIENCE, running.task)
            .await
            .unwrap_or_else(|_| panic!("{context} did not stop within {PATIENCE:?}"));
        match stopped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{context} stopped with an error: {e:#}"),
            Err(e) => panic!("{context} panicked: {e}"),
        }
    }

    pub fn store(&self, context: BoundedContext) -> &Store {
        &self.stores[&context]
    }

    pub fn simulator(&self) -> &Simulator {
        self.provider.inner()
    }

    /// The permission violations the server has logged so far (its log lines naming one).
    pub fn permission_violations(&self) -> Vec<String> {
        security::logged_violations(self.nats.server())
    }

    // ---- commands ----------------------------------------------------------------------

    /// Sends command `name` to `context` and returns its reply. A service whose endpoints are
    /// not registered yet ("no responders") is asked again.
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
                Ok(reply) => {
                    return serde_json::from_slice(&reply.payload).unwrap_or_else(|e| {
                        panic!(
                            "{subject}: the reply is not a CommandReply ({e}): {:?}",
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

    /// Sends a command that must be accepted.
    pub async fn accepted(&self, context: BoundedContext, name: &str, body: serde_json::Value) {
        let reply = self.command(context, name, body.clone()).await;
        assert!(
            matches!(reply, CommandReply::Accepted { .. }),
            "{context} {name} {body} was refused: {reply:?}"
        );
    }

    /// Adds a product at `price_minor` euro cents, and waits until ordering's replica of the
    /// catalogue knows it (only then can an order be priced with it).
    pub async fn define_product(&self, sku: &str, price_minor: i64) {
        let body = serde_json::json!({
            "sku": sku,
            "name": format!("Product {sku}"),
            "price": { "amount_minor": price_minor, "currency": "EUR" },
        });
        self.accepted(BoundedContext::Inventory, "define-product", body)
            .await;
        let replica = CatalogueReplica::new(self.store(BoundedContext::Ordering).pool().clone());
        let sku: Sku = sku.parse().expect("SKU");
        let expected = Money::new(price_minor, eur());
        wait(&format!("ordering's replica to price {sku}"), || async {
            replica
                .entry(&sku)
                .await
                .ok()
                .flatten()
                .is_some_and(|entry| entry.price == expected)
        })
        .await;
    }

    /// Units of `sku` arrive at the warehouse.
    pub async fn receive(&self, sku: &str, quantity: u32) {
        let body = serde_json::json!({ "sku": sku, "quantity": quantity });
        self.accepted(BoundedContext::Inventory, "receive-stock", body)
            .await;
    }

    /// Places an order for `lines` (SKU, quantity), paid with `token`; it must be accepted.
    pub async fn place(&self, lines: &[(&str, u32)], token: &str) -> OrderId {
        let order_id = OrderId::new();
        let reply = self
            .command(
                BoundedContext::Ordering,
                "place-order",
                place_order_body(order_id, lines, token),
            )
            .await;
        match reply {
            CommandReply::Accepted { aggregate_id, .. } => {
                assert_eq!(aggregate_id, order_id.to_string());
            }
            other => panic!("place-order {lines:?} was refused: {other:?}"),
        }
        order_id
    }

    pub async fn cancel(&self, order_id: OrderId) -> CommandReply {
        let body = serde_json::json!({ "order_id": order_id, "reason": "changed my mind" });
        self.command(BoundedContext::Ordering, "cancel-order", body)
            .await
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

    // ---- reading the stores ------------------------------------------------------------

    pub async fn order(&self, order_id: OrderId) -> Order {
        load(
            self.store(BoundedContext::Ordering),
            (),
            &order_id.to_string(),
        )
        .await
    }

    pub async fn order_status(&self, order_id: OrderId) -> Option<OrderStatus> {
        self.order(order_id).await.status()
    }

    /// Why the order was rejected, from its `OrderRejected` event.
    pub async fn rejection_reason(&self, order_id: OrderId) -> Option<RejectionReason> {
        self.aggregate_events::<OrderEvent>(BoundedContext::Ordering, &order_id.to_string())
            .await
            .into_iter()
            .find_map(|event| match event {
                OrderEvent::OrderRejected(rejected) => Some(rejected.reason),
                _ => None,
            })
    }

    pub async fn allocation(&self, order_id: OrderId) -> Allocation {
        load(
            self.store(BoundedContext::Inventory),
            (),
            &order_id.to_string(),
        )
        .await
    }

    pub async fn allocation_events(&self, order_id: OrderId) -> Vec<AllocationEvent> {
        self.aggregate_events(BoundedContext::Inventory, &order_id.to_string())
            .await
    }

    pub async fn stock(&self, sku: &str) -> StockItem {
        load(self.store(BoundedContext::Inventory), (), sku).await
    }

    pub async fn payment(&self, order_id: OrderId) -> Payment {
        let provider: Arc<dyn payments::PaymentProvider> = self.provider.clone();
        load(
            self.store(BoundedContext::Payments),
            provider,
            &order_id.to_string(),
        )
        .await
    }

    pub async fn shipment(&self, order_id: OrderId) -> Shipment {
        load(
            self.store(BoundedContext::Shipping),
            (),
            &order_id.to_string(),
        )
        .await
    }

    /// The payment deadline of the order, if ordering still holds one.
    pub async fn payment_deadline(&self, order_id: OrderId) -> Option<eventstore::Deadline> {
        self.store(BoundedContext::Ordering)
            .deadline(ordering::PAYMENT_TIMEOUT, &order_id.to_string())
            .await
            .expect("deadline lookup")
    }

    /// The events of one aggregate of `context`'s store, decoded.
    pub async fn aggregate_events<E: Event>(&self, context: BoundedContext, id: &str) -> Vec<E> {
        self.store(context)
            .aggregate_events(E::AGGREGATE_TYPE, id, 0)
            .await
            .expect("aggregate events")
            .into_iter()
            .map(|stored| stored.decode::<E>().expect("decodes").payload)
            .collect()
    }

    /// Every event of `context`'s store, in position order.
    pub async fn events(&self, context: BoundedContext) -> Vec<StoredEvent> {
        let store = self.store(context);
        let mut all = Vec::new();
        loop {
            let after = all.last().map_or(0, |e: &StoredEvent| e.position);
            let page = store.events_after(after, 1_000).await.expect("events");
            if page.is_empty() {
                return all;
            }
            all.extend(page);
        }
    }

    /// The ids of every aggregate of `aggregate_type` in `context`'s store.
    pub async fn aggregate_ids(
        &self,
        context: BoundedContext,
        aggregate_type: &str,
    ) -> Vec<String> {
        let mut ids: Vec<String> = self
            .events(context)
            .await
            .into_iter()
            .filter(|e| e.aggregate_type == aggregate_type)
            .map(|e| e.aggregate_id)
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// How many events each context's store holds.
    pub async fn event_counts(&self) -> BTreeMap<BoundedContext, usize> {
        let mut counts = BTreeMap::new();
        for context in CONTEXTS {
            counts.insert(context, self.events(context).await.len());
        }
        counts
    }

    // ---- waiting -----------------------------------------------------------------------

    /// Waits until the order has `status`; on timeout, fails with what the order is and
    /// every dead letter.
    pub async fn wait_for_status(&self, order_id: OrderId, status: OrderStatus) {
        self.wait_for_order(order_id, &format!("{status:?}"), |s| s == Some(status))
            .await;
    }

    /// Waits until the order's status satisfies `pred`.
    pub async fn wait_for_order(
        &self,
        order_id: OrderId,
        what: &str,
        pred: impl Fn(Option<OrderStatus>) -> bool,
    ) {
        let reached =
            harness::wait_until(&format!("order {order_id} {what}"), PATIENCE, || async {
                pred(self.order_status(order_id).await)
            })
            .await;
        if let Err(e) = reached {
            panic!(
                "{e:#}; it is {:?}; dead letters: {:#?}",
                self.order_status(order_id).await,
                self.dead_letters().await
            );
        }
    }

    /// Waits until every outbox is empty and every durable consumer has handled (acked)
    /// everything in its stream, three polls in a row: the system has nothing left to do
    /// but wait for a deadline.
    pub async fn settle(&self) {
        assert_eq!(
            self.running.len(),
            CONTEXTS.len(),
            "a system settles only with every service running"
        );
        let settled = async {
            let mut quiet = 0;
            while quiet < 3 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                quiet = if self.quiet().await { quiet + 1 } else { 0 };
            }
        };
        if tokio::time::timeout(PATIENCE, settled).await.is_err() {
            panic!(
                "the system did not settle within {PATIENCE:?}: {:#?}; dead letters: {:#?}",
                self.backlog().await,
                self.dead_letters().await
            );
        }
    }

    async fn quiet(&self) -> bool {
        self.backlog().await.is_empty()
    }

    /// What is still to be done: outbox rows per context, and pending or unacknowledged
    /// messages per consumer. Consumers first: a handler commits its events (and their outbox
    /// rows) before it acks the message that caused them.
    async fn backlog(&self) -> Vec<String> {
        let mut backlog = Vec::new();
        for context in CONTEXTS {
            let stream = self
                .js
                .get_stream(context.stream().name())
                .await
                .expect("stream");
            let mut consumers = stream.consumers();
            while let Some(info) = consumers.next().await {
                let info = info.expect("consumer info");
                if info.num_pending > 0 || info.num_ack_pending > 0 {
                    backlog.push(format!(
                        "{}: {} pending, {} unacked",
                        info.name, info.num_pending, info.num_ack_pending
                    ));
                }
            }
        }
        for context in CONTEXTS {
            let rows = self
                .store(context)
                .outbox_backlog()
                .await
                .expect("outbox backlog");
            if rows > 0 {
                backlog.push(format!("{context} outbox: {rows} rows"));
            }
        }
        backlog
    }

    // ---- JetStream ---------------------------------------------------------------------

    /// Every message of the dead-letter stream: consumer, subject and error.
    pub async fn dead_letters(&self) -> Vec<String> {
        let Ok(mut stream) = self.js.get_stream(DEAD_LETTER_STREAM).await else {
            return Vec::new();
        };
        let last = match stream.info().await {
            Ok(info) => info.state.last_sequence,
            Err(_) => return Vec::new(),
        };
        let mut letters = Vec::new();
        for sequence in 1..=last {
            if let Ok(message) = stream.direct_get(sequence).await {
                let header = |name: &str| {
                    message
                        .headers
                        .get(name)
                        .map_or_else(String::new, |v| v.to_string())
                };
                letters.push(format!(
                    "{} on {}: {}",
                    header(headers::DLQ_CONSUMER),
                    header(headers::DLQ_SUBJECT),
                    header(headers::DLQ_ERROR)
                ));
            }
        }
        letters
    }

    /// Every message `context`'s stream holds, in stream order: subject, headers, payload.
    pub async fn published(&self, context: BoundedContext) -> Vec<(String, HeaderMap, Vec<u8>)> {
        let mut stream = self
            .js
            .get_stream(context.stream().name())
            .await
            .expect("stream");
        let state = stream.info().await.expect("stream info").state.clone();
        let mut messages = Vec::new();
        for sequence in state.first_sequence..=state.last_sequence {
            if state.messages == 0 {
                break;
            }
            let message = stream.direct_get(sequence).await.expect("stream message");
            messages.push((
                message.subject.to_string(),
                message.headers,
                message.payload.to_vec(),
            ));
        }
        messages
    }

    /// How many messages `context`'s stream holds.
    pub async fn stream_messages(&self, context: BoundedContext) -> u64 {
        let mut stream = self
            .js
            .get_stream(context.stream().name())
            .await
            .expect("stream");
        stream.info().await.expect("stream info").state.messages
    }

    /// Publishes every event of `context`'s store to its stream again, as an operator's replay
    /// (or a relay with a lost memory) would, under new `Nats-Msg-Id`s so that JetStream's
    /// duplicate window does not drop them: only the consumers' inboxes stand between them
    /// and a second effect. Returns how many were published.
    pub async fn republish(&self, context: BoundedContext) -> usize {
        let events = self.events(context).await;
        let stream = context.stream();
        let mut acks = Vec::with_capacity(events.len());
        for event in &events {
            let subject = stream
                .event_subject(
                    &event.aggregate_type,
                    &event.aggregate_id,
                    &event.event_type,
                )
                .expect("subject");
            let mut map: HeaderMap = bus::event_headers(event);
            map.insert(headers::MSG_ID, uuid::Uuid::now_v7().to_string().as_str());
            let ack = self
                .js
                .publish_with_headers(subject, map, event.payload.clone().into())
                .await
                .expect("publish");
            acks.push(ack);
        }
        for ack in acks {
            let ack = ack.await.expect("publish ack");
            assert!(
                !ack.duplicate,
                "JetStream took a republished event as a duplicate"
            );
        }
        events.len()
    }
}

impl Drop for System {
    /// Stops every service before the databases are dropped under them.
    fn drop(&mut self) {
        for running in self.running.values() {
            running.shutdown.cancel();
        }
    }
}

/// Loads an aggregate as committed, bypassing any cache.
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

pub fn eur() -> Currency {
    "EUR".parse().expect("currency")
}

/// The body of `place-order`.
pub fn place_order_body(
    order_id: OrderId,
    lines: &[(&str, u32)],
    token: &str,
) -> serde_json::Value {
    let lines: Vec<_> = lines
        .iter()
        .map(|(sku, quantity)| serde_json::json!({ "sku": sku, "quantity": quantity }))
        .collect();
    serde_json::json!({
        "order_id": order_id,
        "customer_id": CustomerId::new(),
        "lines": lines,
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "12 St James's Square",
            "city": "London",
            "postal_code": "SW1Y 4JH",
            "country": "GB",
        },
        "payment_token": token,
    })
}
