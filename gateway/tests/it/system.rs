//! The whole of Chorus behind the gateway, for one test: a private nats-server, a database per
//! context and one for the projections, the four context services and the projections service
//! as their `service::start` builds them, and the gateway on 127.0.0.1:0.
//!
//! Tests talk to it over HTTP only. They read the event stores only to check that what was
//! refused appended nothing.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use events::BoundedContext;
use eventstore::Store;
use gateway::Gateway;
use gateway::auth::Verifier;
use gateway::settings::{CorsOrigins, RateLimit, Settings};
use harness::{NatsServer, TestDatabase};
use payments::{ResiliencePolicy, Resilient, Simulator};
use serde_json::Value;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::Api;

/// How long a test waits for the saga to reach a state. Generous: a slow, shared machine
/// must not fail a test that is merely slow.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// One system at a time in this test process: each holds about thirty PostgreSQL
/// connections, and the server's limit is shared with whoever else runs tests.
static SYSTEMS: Semaphore = Semaphore::const_new(1);

/// What a system is started with.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub payment_timeout: chrono::Duration,
    pub rate_limit: RateLimit,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            payment_timeout: chrono::Duration::seconds(60),
            rate_limit: generous(),
        }
    }
}

/// A rate limit no test reaches by accident.
pub fn generous() -> RateLimit {
    RateLimit {
        per_second: 10_000.try_into().unwrap(),
        burst: 10_000.try_into().unwrap(),
    }
}

/// The settings of a test gateway on `nats`.
pub fn settings(nats: &NatsServer, rate_limit: RateLimit) -> Settings {
    Settings {
        addr: "127.0.0.1:0".parse().unwrap(),
        nats_url: nats.url(),
        verifier: Verifier::hs256(crate::SECRET),
        idempotency_ttl: Duration::from_secs(600),
        rate_limit,
        max_body_bytes: 4 * 1024,
        request_timeout: Duration::from_secs(10),
        cors_origins: CorsOrigins::None,
    }
}

/// A gateway running in this process.
#[derive(Debug)]
pub struct RunningGateway {
    pub api: Api,
    shutdown: CancellationToken,
}

impl RunningGateway {
    pub async fn start(settings: Settings) -> Self {
        let gateway = Gateway::start(settings)
            .await
            .unwrap_or_else(|e| panic!("the gateway does not start: {e:#}"));
        let api = Api::new(format!("http://{}", gateway.addr()));
        let shutdown = gateway.shutdown_token();
        tokio::spawn(gateway.run(std::future::pending()));
        Self { api, shutdown }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A whole Chorus behind a gateway.
#[derive(Debug)]
pub struct System {
    pub api: Api,
    pub nats: NatsServer,
    gateway: RunningGateway,
    stops: Vec<CancellationToken>,
    stores: BTreeMap<BoundedContext, Store>,
    _databases: Vec<TestDatabase>,
    _permit: SemaphorePermit<'static>,
}

impl System {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        let permit = SYSTEMS
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let nats = NatsServer::start().await.expect("nats-server starts");
        let mut databases = Vec::new();
        let mut stops = Vec::new();
        let provider: Arc<dyn payments::PaymentProvider> = Arc::new(Resilient::new(
            Simulator::default(),
            ResiliencePolicy::default(),
        ));
        let mut urls = BTreeMap::new();
        for context in BoundedContext::ALL {
            let db = TestDatabase::create().await.expect("test database");
            let settings = host::Settings {
                context,
                database_url: db.url(),
                nats_url: nats.url(),
                database_connections: 4,
            };
            let started = match context {
                BoundedContext::Ordering => {
                    ordering::service::start(&settings, options.payment_timeout).await
                }
                BoundedContext::Inventory => inventory::service::start(&settings).await,
                BoundedContext::Payments => {
                    payments::service::start(&settings, Arc::clone(&provider)).await
                }
                BoundedContext::Shipping => shipping::service::start(&settings).await,
            };
            let host = started.unwrap_or_else(|e| panic!("{context} does not start: {e:#}"));
            stops.push(host.shutdown_token());
            tokio::spawn(host.run(std::future::pending()));
            urls.insert(context, db.url());
            databases.push(db);
        }
        let db = TestDatabase::create().await.expect("projections database");
        let projections = projections::service::start(&projections::service::Settings {
            database_url: db.url(),
            nats_url: nats.url(),
            database_connections: 4,
            batch_size: projections::DEFAULT_BATCH_SIZE,
            linger: projections::DEFAULT_LINGER,
        })
        .await
        .unwrap_or_else(|e| panic!("the projections service does not start: {e:#}"));
        stops.push(projections.shutdown_token());
        tokio::spawn(projections.run(std::future::pending()));
        databases.push(db);

        let mut stores = BTreeMap::new();
        for (context, url) in urls {
            stores.insert(context, Store::connect(&url, 1).await.expect("read pool"));
        }
        let gateway = RunningGateway::start(settings(&nats, options.rate_limit)).await;
        let api = gateway.api.clone();
        let system = Self {
            api,
            nats,
            gateway,
            stops,
            stores,
            _databases: databases,
            _permit: permit,
        };
        system.wait_ready().await;
        system
    }

    /// Waits until `/readyz` says every service answers.
    pub async fn wait_ready(&self) {
        wait("the gateway to be ready", || async {
            self.api.get("/readyz", None).await.status == 200
        })
        .await;
    }

    /// Another gateway on the same system (another instance behind the balancer).
    pub async fn another_gateway(&self, rate_limit: RateLimit) -> RunningGateway {
        RunningGateway::start(settings(&self.nats, rate_limit)).await
    }

    /// How many events each context's store holds.
    pub async fn event_counts(&self) -> BTreeMap<BoundedContext, usize> {
        let mut counts = BTreeMap::new();
        for (context, store) in &self.stores {
            let events = store.events_after(0, 1_000_000).await.expect("events");
            counts.insert(*context, events.len());
        }
        counts
    }

    /// How many events of `event_type` `context`'s store holds.
    pub async fn events_of_type(&self, context: BoundedContext, event_type: &str) -> usize {
        let events = self.stores[&context]
            .events_after(0, 1_000_000)
            .await
            .expect("events");
        events.iter().filter(|e| e.event_type == event_type).count()
    }

    // ---- what an operator does -----------------------------------------------------------

    /// Defines `sku` at `price_minor` euro cents and waits until an order can be priced
    /// with it (ordering's replica of the catalogue learns of it from inventory's events).
    pub async fn define_product(&self, operator: &str, sku: &str, price_minor: i64) {
        let answer = self
            .api
            .put(
                &format!("/products/{sku}"),
                operator,
                serde_json::json!({
                    "name": format!("Product {sku}"),
                    "price": { "amount_minor": price_minor, "currency": "EUR" },
                }),
            )
            .await
            .expect(201);
        let token = answer.token();
        self.api
            .get(&format!("/products/{sku}?after={token}&wait_ms=5000"), None)
            .await
            .expect(200);
        // Orders are priced from ordering's replica of the catalogue, which learns of the
        // product from inventory's events too.
        let replica =
            ordering::CatalogueReplica::new(self.stores[&BoundedContext::Ordering].pool().clone());
        let sku: events::values::Sku = sku.parse().unwrap();
        wait(&format!("ordering's replica to price {sku}"), || async {
            replica
                .entry(&sku)
                .await
                .ok()
                .flatten()
                .is_some_and(|entry| entry.price.amount_minor == price_minor)
        })
        .await;
    }

    pub async fn receive(&self, operator: &str, sku: &str, quantity: u32) -> String {
        self.api
            .post(
                &format!("/inventory/{sku}/receipts"),
                operator,
                serde_json::json!({ "quantity": quantity }),
            )
            .await
            .expect(200)
            .token()
    }

    /// Waits until the order's status (as `GET /orders/{id}` tells it) is `status`; returns
    /// the order.
    pub async fn wait_for_status(&self, token: &str, order_id: &str, status: &str) -> Value {
        let path = format!("/orders/{order_id}");
        let last = RefCell::new(Value::Null);
        let reached =
            harness::wait_until(&format!("order {order_id} {status}"), PATIENCE, || async {
                let answer = self.api.get(&path, Some(token)).await;
                let done = answer.status == 200 && answer.json["status"] == status;
                *last.borrow_mut() = answer.json;
                done
            })
            .await;
        if let Err(e) = reached {
            panic!("{e:#}; the order is {:#}", last.borrow());
        }
        last.into_inner()
    }
}

impl Drop for System {
    /// Stops every service before the databases are dropped under them.
    fn drop(&mut self) {
        self.gateway.shutdown.cancel();
        for stop in &self.stops {
            stop.cancel();
        }
    }
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
