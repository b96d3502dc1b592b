//! One order's saga is one trace: the gateway and the four contexts, run in this process as
//! their binaries run them, with an in-memory span exporter as the process's tracer, and one
//! `POST /orders` carrying a client's `traceparent`.
//!
//! The spans of every service must share the client's trace id, and every span's parent must
//! be the client's span or another span of the trace: a hop that started a trace of its own,
//! or handed on the context it received instead of its own, breaks one or the other. The
//! events stored carry the context of the span that recorded them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use events::BoundedContext;
use eventstore::{Store, StoredEvent};
use gateway::auth::Verifier;
use gateway::settings::{CorsOrigins, RateLimit};
use harness::{NatsServer, TestDatabase};
use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use payments::{ResiliencePolicy, Resilient, Simulator};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::PATIENCE;

const SECRET: &[u8] = b"the-secret-of-the-traced-gateway-0123456789";

/// The spans this test process exports, kept in memory. Installed once for the process, as
/// `host::telemetry` installs the OTLP exporter in a service.
fn exported() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    let (exporter, _) = EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        tracing_subscriber::registry()
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("chorus-test"))
                    .with_filter(LevelFilter::INFO),
            )
            .try_init()
            .expect("no other subscriber in this test process");
        (exporter, provider)
    });
    exporter
}

/// The four contexts and the gateway, each on its own database, around a private server.
struct System {
    http: reqwest::Client,
    base: String,
    stores: BTreeMap<BoundedContext, Store>,
    stops: Vec<CancellationToken>,
    _databases: Vec<TestDatabase>,
    _nats: NatsServer,
}

impl System {
    async fn start() -> Self {
        let nats = NatsServer::start().await.unwrap();
        let provider: Arc<dyn payments::PaymentProvider> = Arc::new(Resilient::new(
            Simulator::default(),
            ResiliencePolicy::default(),
        ));
        let (mut stores, mut stops, mut databases) = (BTreeMap::new(), Vec::new(), Vec::new());
        for context in BoundedContext::ALL {
            let db = TestDatabase::create().await.unwrap();
            let settings = host::Settings {
                context,
                database_url: db.url(),
                nats_url: nats.url(),
                database_connections: 4,
            };
            let started = match context {
                BoundedContext::Ordering => {
                    ordering::service::start(&settings, chrono::Duration::seconds(60)).await
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
            stores.insert(context, Store::connect(&db.url(), 1).await.unwrap());
            databases.push(db);
        }
        let generous = RateLimit {
            per_second: 10_000.try_into().unwrap(),
            burst: 10_000.try_into().unwrap(),
        };
        let gateway = gateway::Gateway::start(gateway::Settings {
            addr: "127.0.0.1:0".parse().unwrap(),
            nats_url: nats.url(),
            verifier: Verifier::hs256(SECRET),
            idempotency_ttl: Duration::from_secs(600),
            rate_limit: generous,
            max_body_bytes: 4 * 1024,
            request_timeout: Duration::from_secs(10),
            cors_origins: CorsOrigins::None,
        })
        .await
        .unwrap();
        let base = format!("http://{}", gateway.addr());
        stops.push(gateway.shutdown_token());
        tokio::spawn(gateway.run(std::future::pending()));
        Self {
            http: reqwest::Client::new(),
            base,
            stores,
            stops,
            _databases: databases,
            _nats: nats,
        }
    }

    /// Sends `method path` with `token`, a fresh idempotency key, `body` and `extra` headers;
    /// returns the status and the JSON answer.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: serde_json::Value,
        extra: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("Idempotency-Key", uuid::Uuid::now_v7().to_string())
            .json(&body);
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// The events of `context`'s store.
    async fn events(&self, context: BoundedContext) -> Vec<StoredEvent> {
        self.stores[&context]
            .events_after(0, 1_000_000)
            .await
            .unwrap()
    }

    /// Waits until `context` has stored an event of `event_type` about `order_id`; returns it.
    async fn wait_for_event(
        &self,
        context: BoundedContext,
        event_type: &str,
        order_id: &str,
    ) -> StoredEvent {
        let found = std::cell::RefCell::new(None);
        let waited = harness::wait_until(
            &format!("{context} to record {event_type} for {order_id}"),
            PATIENCE,
            || async {
                let event = self.events(context).await.into_iter().find(|e| {
                    e.event_type == event_type
                        && (e.aggregate_id == order_id || e.payload.contains(order_id))
                });
                let done = event.is_some();
                *found.borrow_mut() = event;
                done
            },
        )
        .await;
        if let Err(e) = waited {
            panic!("{e:#}");
        }
        found.into_inner().unwrap()
    }
}

impl Drop for System {
    fn drop(&mut self) {
        for stop in &self.stops {
            stop.cancel();
        }
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn service(span: &SpanData) -> String {
    attribute(span, "service").unwrap_or_default()
}

/// `(trace id, span id)` of a W3C `traceparent`.
fn ids(traceparent: &str) -> (TraceId, SpanId) {
    let parts: Vec<_> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "not a traceparent: {traceparent}");
    (
        TraceId::from_hex(parts[1]).unwrap(),
        SpanId::from_hex(parts[2]).unwrap(),
    )
}

fn describe(spans: &[&SpanData]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {:?} service={} span={} parent={}",
                s.name,
                s.span_kind,
                service(s),
                s.span_context.span_id(),
                s.parent_span_id
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_order_is_one_trace_across_the_gateway_and_the_four_contexts() {
    let exporter = exported();
    let system = System::start().await;
    let ops = gateway::mint(
        SECRET,
        gateway::Role::Operator,
        "ops@chorus",
        Duration::from_secs(3_600),
    )
    .unwrap();
    let customer = uuid::Uuid::now_v7().to_string();
    let shopper = gateway::mint(
        SECRET,
        gateway::Role::Shopper,
        &customer,
        Duration::from_secs(3_600),
    )
    .unwrap();

    // A product in stock, priced in ordering's replica of the catalogue.
    let product = serde_json::json!({
        "name": "Lamp",
        "price": { "amount_minor": 4_200, "currency": "EUR" },
    });
    let (status, answer) = system
        .send(reqwest::Method::PUT, "/products/LAMP", &ops, product, &[])
        .await;
    assert_eq!(status, 201, "{answer}");
    let receipt = serde_json::json!({ "quantity": 5 });
    let (status, answer) = system
        .send(
            reqwest::Method::POST,
            "/inventory/LAMP/receipts",
            &ops,
            receipt,
            &[],
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let replica =
        ordering::CatalogueReplica::new(system.stores[&BoundedContext::Ordering].pool().clone());
    let sku: events::values::Sku = "LAMP".parse().unwrap();
    harness::wait_until("ordering's replica to price LAMP", PATIENCE, || async {
        replica.entry(&sku).await.ok().flatten().is_some()
    })
    .await
    .unwrap();

    // The client's span: the root of the trace, not exported by this process.
    let trace_id = TraceId::from_bytes(*uuid::Uuid::now_v7().as_bytes());
    // The last bytes of a v7 id are random.
    let client_span = SpanId::from_bytes(uuid::Uuid::now_v7().as_bytes()[8..].try_into().unwrap());
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    let order = serde_json::json!({
        "lines": [{ "sku": "LAMP", "quantity": 2 }],
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "12 St James's Square",
            "city": "London",
            "postal_code": "SW1Y 4JH",
            "country": "GB",
        },
        "payment_token": "tok_success",
    });
    let (status, answer) = system
        .send(
            reqwest::Method::POST,
            "/orders",
            &shopper,
            order,
            &[("traceparent", traceparent.as_str())],
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    let order_id = answer["aggregate_id"].as_str().unwrap().to_owned();

    // The saga's end: the order confirmed, its shipment scheduled. A consumer's span ends
    // before its batch commits, so every span of these hops has been exported by now.
    let confirmed = system
        .wait_for_event(BoundedContext::Ordering, "OrderConfirmed", &order_id)
        .await;
    let scheduled = system
        .wait_for_event(BoundedContext::Shipping, "ShipmentScheduled", &order_id)
        .await;
    let placed = system
        .wait_for_event(BoundedContext::Ordering, "OrderPlaced", &order_id)
        .await;

    let spans = exporter.get_finished_spans().unwrap();
    let trace: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace_id)
        .collect();
    let listing = describe(&trace);

    // Every service took part in the client's trace.
    let services: BTreeSet<String> = trace.iter().map(|s| service(s)).collect();
    for expected in ["gateway", "ordering", "inventory", "payments", "shipping"] {
        assert!(
            services.contains(expected),
            "no span of {expected} in the trace; its spans:\n{listing}"
        );
    }

    // One tree: each span's parent is the client's span or another span of the trace.
    let by_id: HashMap<SpanId, &SpanData> = trace
        .iter()
        .map(|s| (s.span_context.span_id(), *s))
        .collect();
    for span in &trace {
        assert!(
            span.parent_span_id == client_span || by_id.contains_key(&span.parent_span_id),
            "{} of {} hangs outside the trace; its spans:\n{listing}",
            span.name,
            service(span)
        );
    }

    // The gateway's request is the client's child; the command is the gateway's.
    let request = trace
        .iter()
        .find(|s| service(s) == "gateway" && s.span_kind == SpanKind::Server)
        .unwrap_or_else(|| panic!("no request span; the trace:\n{listing}"));
    assert_eq!(request.parent_span_id, client_span, "{listing}");
    let command = trace
        .iter()
        .find(|s| service(s) == "ordering" && s.name == "chorus.ordering.place-order")
        .unwrap_or_else(|| panic!("no place-order span; the trace:\n{listing}"));
    assert_eq!(
        service(by_id[&command.parent_span_id]),
        "gateway",
        "{listing}"
    );

    // Each context's reaction is a child of the relay's publish of the event, in the service
    // that recorded it, and the publish a child of the span that recorded the event.
    for context in ["inventory", "payments", "shipping", "ordering"] {
        let consumed: Vec<_> = trace
            .iter()
            .filter(|s| service(s) == context && s.span_kind == SpanKind::Consumer)
            .collect();
        assert!(
            !consumed.is_empty(),
            "{context} consumed nothing in the trace:\n{listing}"
        );
        for span in consumed {
            let parent = by_id.get(&span.parent_span_id).unwrap_or_else(|| {
                panic!(
                    "{} of {context} has no parent in the trace:\n{listing}",
                    span.name
                )
            });
            assert_eq!(parent.span_kind, SpanKind::Producer, "{listing}");
            assert_ne!(service(parent), context, "{listing}");
            let recorder = by_id.get(&parent.parent_span_id).unwrap_or_else(|| {
                panic!("{} has no parent in the trace:\n{listing}", parent.name)
            });
            assert_eq!(service(recorder), service(parent), "{listing}");
            assert_ne!(recorder.span_kind, SpanKind::Producer, "{listing}");
        }
    }

    // The events carry the context of the span that recorded them.
    let (trace_of_placed, placed_by) = ids(placed.metadata.traceparent.as_deref().unwrap());
    assert_eq!(trace_of_placed, trace_id);
    assert_eq!(placed_by, command.span_context.span_id(), "{listing}");
    for (event, context) in [(&confirmed, "ordering"), (&scheduled, "shipping")] {
        let (trace_of, recorded_by) = ids(event.metadata.traceparent.as_deref().unwrap());
        assert_eq!(trace_of, trace_id, "{}", event.event_type);
        let recorder = by_id.get(&recorded_by).unwrap_or_else(|| {
            panic!(
                "{} names a span outside the trace:\n{listing}",
                event.event_type
            )
        });
        assert_eq!(service(recorder), context, "{listing}");
        assert_eq!(recorder.span_kind, SpanKind::Consumer, "{listing}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_firing_is_a_span_of_its_own() {
    let exporter = exported();
    let infra = crate::Infra::new().await;
    let running = crate::Running::start(&infra, BoundedContext::Payments).await;
    let store = Store::from_pool(infra.db.pool(2).await.unwrap());
    let key = uuid::Uuid::now_v7().to_string();
    let mut uow = eventstore::UnitOfWork::new(&store);
    uow.schedule_deadline(
        crate::REMINDER,
        &key,
        chrono::Utc::now(),
        serde_json::json!({}),
    );
    uow.commit().await.unwrap();

    let fired = || {
        exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .find(|s| attribute(s, "key").as_deref() == Some(key.as_str()))
    };
    harness::wait_until("the firing's span is exported", PATIENCE, || async {
        fired().is_some()
    })
    .await
    .unwrap();
    let span = fired().unwrap();
    assert_eq!(span.name, format!("deadline {}", crate::REMINDER));
    assert_eq!(attribute(&span, "kind").as_deref(), Some(crate::REMINDER));
    // Nothing of the deadline's origin is stored: the firing starts a trace.
    assert_eq!(
        span.parent_span_id,
        SpanId::INVALID,
        "{}",
        describe(&[&span])
    );
    running.stop().await;
}
