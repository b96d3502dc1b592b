//! The inventory service as its process runs it: a private nats-server, a database of its own,
//! commands sent as NATS requests and answered with a `CommandReply`, and the metrics its HTTP
//! listener serves.

use std::net::SocketAddr;
use std::time::Duration;

use events::BoundedContext;
use events::command::{CommandReply, command_subject};
use events::inventory::{ProductEvent, StockEvent};
use events::values::{Currency, Money, Quantity, Sku};
use eventstore::Store;
use harness::{NatsServer, TestDatabase};
use host::Settings;
use host::metrics::read_sum;
use inventory::service;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running inventory service and a client to talk to it.
struct Service {
    client: async_nats::Client,
    store: Store,
    /// The HTTP listener: health and metrics.
    http: SocketAddr,
    shutdown: CancellationToken,
    run: JoinHandle<anyhow::Result<()>>,
    _nats: NatsServer,
    _db: TestDatabase,
}

impl Service {
    async fn start() -> Self {
        let nats = NatsServer::start().await.unwrap();
        // The streams this context reads, which the other contexts would create.
        nats.provision_event_streams().await.unwrap();
        let db = TestDatabase::create().await.unwrap();
        let settings = Settings {
            context: BoundedContext::Inventory,
            database_url: db.url(),
            nats_url: nats.url(),
            database_connections: 4,
        };
        let mut host = service::start(&settings).await.unwrap();
        let http = host
            .listen_http("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let store = host.store().clone();
        let shutdown = host.shutdown_token();
        let run = tokio::spawn(host.run(std::future::pending()));
        let client = nats.connect().await.unwrap();
        Self {
            client,
            store,
            http,
            shutdown,
            run,
            _nats: nats,
            _db: db,
        }
    }

    /// Sends `body` to the command `name` and parses the reply.
    async fn send(&self, name: &str, body: impl Into<Vec<u8>>) -> CommandReply {
        let subject = command_subject(BoundedContext::Inventory.name(), name);
        let reply = self
            .client
            .request(subject, body.into().into())
            .await
            .unwrap();
        serde_json::from_slice(&reply.payload).unwrap()
    }

    async fn send_json(&self, name: &str, body: Value) -> CommandReply {
        self.send(name, body.to_string()).await
    }

    async fn product_events(&self, sku: &str) -> Vec<ProductEvent> {
        let stored = self
            .store
            .aggregate_events("product", sku, 0)
            .await
            .unwrap();
        stored
            .into_iter()
            .map(|e| e.decode::<ProductEvent>().unwrap().payload)
            .collect()
    }

    async fn stock_events(&self, sku: &str) -> Vec<StockEvent> {
        let stored = self.store.aggregate_events("stock", sku, 0).await.unwrap();
        stored
            .into_iter()
            .map(|e| e.decode::<StockEvent>().unwrap().payload)
            .collect()
    }

    /// Scrapes `GET /metrics` until `want` holds for the text; returns the text.
    async fn metrics_until(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let last = std::cell::RefCell::new(String::new());
        let found = harness::wait_until(what, Duration::from_secs(10), || async {
            let text = scrape(self.http).await;
            let found = want(&text);
            *last.borrow_mut() = text;
            found
        })
        .await;
        let last = last.into_inner();
        found.unwrap_or_else(|e| panic!("{e:#}; last scrape:\n{last}"));
        last
    }

    /// Stops the service as a signal would; it must stop cleanly.
    async fn stop(self) {
        self.shutdown.cancel();
        self.run.await.unwrap().unwrap();
    }
}

/// `GET /metrics` on `addr`: the body of a 200.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

fn eur(amount_minor: i64) -> Money {
    Money::new(amount_minor, "EUR".parse::<Currency>().unwrap())
}

fn sku(s: &str) -> Sku {
    s.parse().unwrap()
}

fn define(sku: &str, amount_minor: i64) -> Value {
    json!({
        "sku": sku,
        "name": "Mug",
        "price": { "amount_minor": amount_minor, "currency": "EUR" },
    })
}

fn accepted(aggregate_id: &str, version: u64, reply: &CommandReply) {
    match reply {
        CommandReply::Accepted {
            aggregate_id: id,
            position,
            version: v,
        } => {
            assert_eq!(id, aggregate_id, "{reply:?}");
            assert_eq!(*v, version, "{reply:?}");
            assert!(*position > 0, "{reply:?}");
        }
        other => panic!("expected accepted, got {other:?}"),
    }
}

fn rejected(code: &str, field: Option<&str>, reply: &CommandReply) {
    match reply {
        CommandReply::Rejected {
            code: c,
            field: f,
            message,
        } => {
            assert_eq!(c, code, "{reply:?}");
            assert_eq!(f.as_deref(), field, "{reply:?}");
            assert!(!message.is_empty(), "{reply:?}");
        }
        other => panic!("expected rejected {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn define_reprice_and_receive_are_accepted_and_stored() {
    let service = Service::start().await;

    let reply = service
        .send_json("define-product", define("MUG-1", 1299))
        .await;
    accepted("MUG-1", 1, &reply);
    let reprice = json!({ "sku": "MUG-1", "price": { "amount_minor": 999, "currency": "EUR" } });
    let reply = service.send_json("reprice-product", reprice).await;
    accepted("MUG-1", 2, &reply);
    let receive = json!({ "sku": "MUG-1", "quantity": 20 });
    let reply = service.send_json("receive-stock", receive).await;
    accepted("MUG-1", 1, &reply);

    let events = service.product_events("MUG-1").await;
    assert_eq!(events.len(), 2, "{events:?}");
    match &events[0] {
        ProductEvent::ProductDefined(e) => {
            assert_eq!(e.sku, sku("MUG-1"));
            assert_eq!(e.name, "Mug");
            assert_eq!(e.price, eur(1299));
        }
        other => panic!("expected ProductDefined, got {other:?}"),
    }
    match &events[1] {
        ProductEvent::ProductRepriced(e) => {
            assert_eq!(e.sku, sku("MUG-1"));
            assert_eq!(e.price, eur(999));
        }
        other => panic!("expected ProductRepriced, got {other:?}"),
    }
    let events = service.stock_events("MUG-1").await;
    match events.as_slice() {
        [StockEvent::StockReceived(e)] => {
            assert_eq!(e.sku, sku("MUG-1"));
            assert_eq!(e.quantity, Quantity::try_from(20).unwrap());
        }
        other => panic!("expected one StockReceived, got {other:?}"),
    }
    // The position a reply names is where the store's head is.
    let reply = service
        .send_json("receive-stock", json!({ "sku": "MUG-1", "quantity": 5 }))
        .await;
    accepted("MUG-1", 2, &reply);
    let CommandReply::Accepted { position, .. } = reply else {
        unreachable!()
    };
    assert_eq!(service.store.head().await.unwrap(), position);

    // Four commands, four events appended and published; every consumer's series there, with
    // nothing to do.
    let text = service
        .metrics_until("the events published and every consumer's lag", |text| {
            read_sum(text, "chorus_relay_events_published_total", &[]) == Some(4.0)
                && read_sum(text, "chorus_outbox_backlog_events", &[]) == Some(0.0)
                && inventory::reactions::consumers().iter().all(|spec| {
                    read_sum(
                        text,
                        "chorus_consumer_pending_messages",
                        &[("consumer", &spec.name)],
                    ) == Some(0.0)
                })
        })
        .await;
    let sum = |name, labels: &[(&str, &str)]| read_sum(&text, name, labels);
    let inventory = ("context", "inventory");
    for (command, answered) in [
        ("define-product", 1.0),
        ("reprice-product", 1.0),
        ("receive-stock", 2.0),
    ] {
        let labels = [inventory, ("command", command)];
        assert_eq!(
            sum("chorus_commands_handled_total", &labels),
            Some(answered)
        );
    }
    assert_eq!(sum("chorus_commands_rejected_total", &[]), None);
    for (event_type, appended) in [
        ("ProductDefined", 1.0),
        ("ProductRepriced", 1.0),
        ("StockReceived", 2.0),
    ] {
        let labels = [inventory, ("event_type", event_type)];
        assert_eq!(sum("chorus_events_appended_total", &labels), Some(appended));
    }
    assert_eq!(sum("chorus_relay_latency_seconds_count", &[]), Some(4.0));
    for spec in inventory::reactions::consumers() {
        let labels = [("consumer", spec.name.as_str())];
        assert_eq!(sum("chorus_consumer_messages_total", &labels), Some(0.0));
    }

    service.stop().await;
}

#[tokio::test]
async fn a_bad_request_is_refused_naming_the_field_and_writes_nothing() {
    let service = Service::start().await;

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("define-product", b"not json".to_vec(), "body"),
        ("receive-stock", b"".to_vec(), "body"),
        ("receive-stock", b"[1, 2]".to_vec(), "body"),
        // Not the fields in order either: a request is an object.
        ("receive-stock", br#"["MUG-1", 3]"#.to_vec(), "body"),
        ("receive-stock", b"{\"sku\": \"MUG-1\",".to_vec(), "body"),
        ("receive-stock", br#"{"sku": "MUG-1", "quantity": 3x}"#.to_vec(), "body"),
        (
            "define-product",
            json!({ "sku": "MUG-1", "name": "Mug", "price": { "amount_minor": 1299, "currency": "EUR" }, "colour": "red" })
                .to_string()
                .into_bytes(),
            "colour",
        ),
        (
            "receive-stock",
            json!({ "sku": "MUG-1", "quantity": "many" }).to_string().into_bytes(),
            "quantity",
        ),
        (
            "define-product",
            json!({ "sku": "MUG-1", "name": "Mug", "price": { "amount_minor": "12.99", "currency": "EUR" } })
                .to_string()
                .into_bytes(),
            "price.amount_minor",
        ),
        (
            "receive-stock",
            json!({ "sku": "MUG-1", "quantity": 0 }).to_string().into_bytes(),
            "quantity",
        ),
        (
            "receive-stock",
            json!({ "sku": "MUG-1", "quantity": -3 }).to_string().into_bytes(),
            "quantity",
        ),
        (
            "define-product",
            define("mug-1", 1299).to_string().into_bytes(),
            "sku",
        ),
        (
            "receive-stock",
            json!({ "sku": "mug-1", "quantity": 3 }).to_string().into_bytes(),
            "sku",
        ),
        (
            "reprice-product",
            json!({ "sku": "MUG-1", "price": { "amount_minor": 999, "currency": "eur" } })
                .to_string()
                .into_bytes(),
            "price.currency",
        ),
        (
            "receive-stock",
            json!({ "sku": "MUG-1" }).to_string().into_bytes(),
            "body",
        ),
    ];
    for (name, body, field) in cases {
        let text = String::from_utf8_lossy(&body).into_owned();
        let reply = service.send(name, body).await;
        match &reply {
            CommandReply::Rejected { code, field: f, .. } => {
                assert_eq!(code, "invalid_request", "{name} {text}: {reply:?}");
                assert_eq!(f.as_deref(), Some(field), "{name} {text}: {reply:?}");
            }
            other => panic!("{name} {text}: expected invalid_request, got {other:?}"),
        }
    }
    assert_eq!(service.store.head().await.unwrap(), 0, "nothing appended");

    service.stop().await;
}

#[tokio::test]
async fn a_domain_refusal_carries_its_code_and_writes_nothing() {
    let service = Service::start().await;

    let reply = service
        .send_json("define-product", define("MUG-1", 1299))
        .await;
    accepted("MUG-1", 1, &reply);
    let head = service.store.head().await.unwrap();

    let reply = service
        .send_json("define-product", define("MUG-1", 1299))
        .await;
    rejected("already_defined", Some("sku"), &reply);
    let reprice = json!({ "sku": "BOWL-1", "price": { "amount_minor": 999, "currency": "EUR" } });
    let reply = service.send_json("reprice-product", reprice).await;
    rejected("not_defined", Some("sku"), &reply);
    let reply = service
        .send_json("define-product", define("PLATE-1", 0))
        .await;
    rejected("invalid_price", Some("price.amount_minor"), &reply);
    let reprice = json!({ "sku": "MUG-1", "price": { "amount_minor": 0, "currency": "EUR" } });
    let reply = service.send_json("reprice-product", reprice).await;
    rejected("invalid_price", Some("price.amount_minor"), &reply);
    let reprice = json!({ "sku": "MUG-1", "price": { "amount_minor": 999, "currency": "USD" } });
    let reply = service.send_json("reprice-product", reprice).await;
    rejected("currency_change", Some("price.currency"), &reply);
    let mut blank = define("CUP-1", 500);
    blank["name"] = json!("   ");
    let reply = service.send_json("define-product", blank).await;
    rejected("invalid_name", Some("name"), &reply);

    assert_eq!(
        service.store.head().await.unwrap(),
        head,
        "nothing appended"
    );
    assert_eq!(service.product_events("MUG-1").await.len(), 1);
    assert!(service.product_events("BOWL-1").await.is_empty());
    assert!(service.product_events("PLATE-1").await.is_empty());

    // Counted by their codes; the one event appended, and only it.
    let text = service.metrics_until("a scrape", |_| true).await;
    let sum = |name, labels: &[(&str, &str)]| read_sum(&text, name, labels);
    for (command, code, rejected) in [
        ("define-product", "already_defined", 1.0),
        ("define-product", "invalid_price", 1.0),
        ("define-product", "invalid_name", 1.0),
        ("reprice-product", "not_defined", 1.0),
        ("reprice-product", "invalid_price", 1.0),
        ("reprice-product", "currency_change", 1.0),
    ] {
        let labels = [("command", command), ("code", code)];
        assert_eq!(
            sum("chorus_commands_rejected_total", &labels),
            Some(rejected),
            "{command} {code}"
        );
    }
    assert_eq!(sum("chorus_commands_rejected_total", &[]), Some(6.0));
    assert_eq!(sum("chorus_commands_handled_total", &[]), Some(7.0));
    assert_eq!(sum("chorus_events_appended_total", &[]), Some(1.0));

    service.stop().await;
}

#[tokio::test]
async fn the_service_reports_itself_ready_with_its_consumers() {
    let service = Service::start().await;
    let report = harness::ready_report(&service.client, BoundedContext::Inventory).await;
    let consumers: Vec<String> = inventory::reactions::consumers()
        .into_iter()
        .map(|spec| spec.name)
        .collect();
    assert_eq!(report.names(host::CheckKind::Consumer), consumers);
    assert!(report.names(host::CheckKind::Ticker).is_empty());
    service.stop().await;
}
