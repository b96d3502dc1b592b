//! The ordering service as a process runs it: a private nats-server, a database of its own,
//! commands over NATS request/reply, the reactions on its durable consumers, and the metrics
//! its HTTP listener serves.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use events::command::{CommandReply, command_subject};
use events::inventory::{ProductDefined, ProductEvent};
use events::ordering::{OrderCancelled, OrderEvent};
use events::values::{Money, OrderId};
use events::{BoundedContext, Event, Metadata};
use eventstore::{Store, StoredEvent};
use harness::{NatsServer, TestDatabase};
use host::metrics::read_sum;
use ordering::catalogue::CatalogueReplica;
use ordering::{MAX_CANCEL_REASON_CHARS, service};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::{eur, sku};

/// A running ordering service and what a test needs to talk to it and look at its store.
struct Service {
    client: async_nats::Client,
    store: Store,
    catalogue: CatalogueReplica,
    /// The HTTP listener: health and metrics.
    http: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    _db: TestDatabase,
    _nats: NatsServer,
}

impl Service {
    async fn start() -> Self {
        let nats = NatsServer::start().await.unwrap();
        // The streams this context reads, which the other contexts would create.
        nats.provision_event_streams().await.unwrap();
        let db = TestDatabase::create().await.unwrap();
        let settings = host::Settings {
            context: BoundedContext::Ordering,
            database_url: db.url(),
            nats_url: nats.url(),
            database_connections: 4,
        };
        let mut host = service::start(&settings, chrono::Duration::minutes(15))
            .await
            .unwrap();
        let http = host
            .listen_http("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let shutdown = host.shutdown_token();
        let task = tokio::spawn(host.run(std::future::pending()));
        let pool = db.pool(2).await.unwrap();
        Self {
            client: nats.connect().await.unwrap(),
            store: Store::from_pool(pool.clone()),
            catalogue: CatalogueReplica::new(pool),
            http,
            shutdown,
            task,
            _db: db,
            _nats: nats,
        }
    }

    async fn request(&self, command: &str, body: impl Into<Bytes>) -> CommandReply {
        let subject = command_subject(BoundedContext::Ordering.name(), command);
        let reply = self.client.request(subject, body.into()).await.unwrap();
        serde_json::from_slice(&reply.payload).unwrap()
    }

    async fn place(&self, body: &Value) -> CommandReply {
        self.request("place-order", body.to_string()).await
    }

    async fn cancel(&self, body: &Value) -> CommandReply {
        self.request("cancel-order", body.to_string()).await
    }

    /// Publishes inventory's `ProductDefined` on the INVENTORY stream as inventory's relay
    /// would, and waits until the reactions have it in the replica.
    async fn define_product(&self, s: &str, name: &str, price: Money) {
        let event = ProductEvent::from(ProductDefined {
            sku: sku(s),
            name: name.into(),
            price,
        });
        let stored = StoredEvent {
            position: 1,
            event_id: uuid::Uuid::now_v7(),
            aggregate_type: "product".into(),
            aggregate_id: s.into(),
            sequence: 1,
            event_type: event.event_type().into(),
            schema_version: 1,
            payload: event.to_payload().to_string(),
            metadata: Metadata::default(),
            recorded_at: chrono::Utc::now(),
        };
        let subject = BoundedContext::Inventory
            .stream()
            .event_subject("product", s, event.event_type())
            .unwrap();
        let js = async_nats::jetstream::new(self.client.clone());
        js.publish_with_headers(
            subject,
            bus::event_headers(&stored),
            stored.payload.into_bytes().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        let wanted = sku(s);
        harness::wait_until(
            &format!("{s} in the replica"),
            Duration::from_secs(10),
            || async { self.catalogue.entry(&wanted).await.unwrap().is_some() },
        )
        .await
        .unwrap();
    }

    async fn order_events(&self, order: &str) -> Vec<OrderEvent> {
        self.store
            .aggregate_events("order", order, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.decode::<OrderEvent>().unwrap().payload)
            .collect()
    }

    async fn head(&self) -> i64 {
        self.store.head().await.unwrap()
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

    /// Stops the service as a signal would; the run must end cleanly.
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
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

fn address() -> Value {
    json!({
        "name": "Ada Lovelace",
        "line1": "12 St James's Square",
        "city": "London",
        "postal_code": "SW1Y 4JH",
        "country": "GB",
    })
}

fn place_body(order: Option<OrderId>, lines: &[(&str, u32)]) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(s, quantity)| json!({ "sku": s, "quantity": quantity }))
        .collect();
    let mut body = json!({
        "customer_id": uuid::Uuid::now_v7(),
        "lines": lines,
        "shipping_address": address(),
        "payment_token": "tok_success",
    });
    if let Some(order) = order {
        body["order_id"] = json!(order);
    }
    body
}

fn rejected(code: &str, field: Option<&str>) -> impl Fn(&CommandReply) -> bool {
    move |reply| {
        matches!(reply, CommandReply::Rejected { code: c, field: f, .. }
            if c == code && f.as_deref() == field)
    }
}

#[track_caller]
fn assert_rejected(reply: &CommandReply, code: &str, field: Option<&str>) {
    assert!(
        rejected(code, field)(reply),
        "expected a rejection {code} on {field:?}, got {reply:?}"
    );
}

/// The order id, position and version of an accepted command.
#[track_caller]
fn accepted(reply: &CommandReply) -> (String, i64, u64) {
    match reply {
        CommandReply::Accepted {
            aggregate_id,
            position,
            version,
        } => (aggregate_id.clone(), *position, *version),
        other => panic!("expected the command to be accepted, got {other:?}"),
    }
}

#[tokio::test]
async fn orders_are_placed_priced_from_the_replica_and_cancelled_over_nats() {
    let s = Service::start().await;
    let from_inventory = ("consumer", "ordering-from-inventory");
    let before = s
        .metrics_until("the consumers' lag", |text| {
            read_sum(text, "chorus_consumer_pending_messages", &[from_inventory]).is_some()
        })
        .await;
    for (name, labels) in [
        (
            "chorus_commands_handled_total",
            &[("command", "place-order")][..],
        ),
        (
            "chorus_commands_handled_total",
            &[("command", "cancel-order")],
        ),
        ("chorus_consumer_messages_total", &[from_inventory]),
        ("chorus_relay_events_published_total", &[]),
        (
            "chorus_deadlines_fired_total",
            &[("kind", ordering::PAYMENT_TIMEOUT)],
        ),
    ] {
        assert_eq!(
            read_sum(&before, name, labels),
            Some(0.0),
            "{name} {labels:?}"
        );
    }
    assert_eq!(read_sum(&before, "chorus_events_appended_total", &[]), None);

    s.define_product("MUG", "Mug", eur(250)).await;
    s.define_product("BOOK", "Book", eur(1000)).await;

    // With the client's own id.
    let order = OrderId::new();
    let reply = s
        .place(&place_body(Some(order), &[("MUG", 2), ("BOOK", 1)]))
        .await;
    let (id, position, version) = accepted(&reply);
    assert_eq!((id.as_str(), version), (order.to_string().as_str(), 1));
    assert!(position > 0, "position {position}");
    let events = s.order_events(&id).await;
    let [OrderEvent::OrderPlaced(placed)] = events.as_slice() else {
        panic!("expected one OrderPlaced, got {events:?}");
    };
    assert_eq!(placed.order_id, order);
    assert_eq!(placed.total, eur(1500));
    assert_eq!(placed.shipping_address.city, "London");
    assert_eq!(placed.payment_token, "tok_success");
    assert_eq!(s.head().await, position);

    // Placing it again (a client's retry) is refused and appends nothing.
    let again = s.place(&place_body(Some(order), &[("MUG", 2)])).await;
    assert_rejected(&again, "already_placed", None);
    assert_eq!(s.order_events(&id).await.len(), 1);

    // Without an id: the service makes one.
    let reply = s.place(&place_body(None, &[("BOOK", 3)])).await;
    let (generated, second, version) = accepted(&reply);
    let generated_id: OrderId = generated.parse().unwrap();
    assert_eq!(version, 1);
    assert!(second > position);
    let events = s.order_events(&generated).await;
    assert!(
        matches!(events.as_slice(), [OrderEvent::OrderPlaced(p)] if p.order_id == generated_id && p.total == eur(3000)),
        "{events:?}"
    );

    // Cancelled, once.
    let cancel = json!({ "order_id": order, "reason": "changed my mind" });
    let (cancelled, third, version) = accepted(&s.cancel(&cancel).await);
    assert_eq!((cancelled, version), (order.to_string(), 2));
    assert!(third > second);
    assert_eq!(
        s.order_events(&id).await.last(),
        Some(&OrderEvent::OrderCancelled(OrderCancelled {
            order_id: order,
            reason: Some("changed my mind".into()),
        }))
    );
    let head = s.head().await;
    let again = s.cancel(&json!({ "order_id": order })).await;
    assert_rejected(&again, "already_cancelled", None);
    assert_eq!(s.head().await, head);

    // The metrics moved with it: three events appended and published, the two products
    // handled from inventory's stream, five commands answered and two of them rejected.
    let text = s
        .metrics_until("the events published and the products handled", |text| {
            read_sum(text, "chorus_relay_events_published_total", &[]) == Some(3.0)
                && read_sum(
                    text,
                    "chorus_consumer_messages_total",
                    &[from_inventory, ("outcome", "handled")],
                ) == Some(2.0)
                && read_sum(text, "chorus_outbox_backlog_events", &[]) == Some(0.0)
                && read_sum(text, "chorus_consumer_pending_messages", &[from_inventory])
                    == Some(0.0)
        })
        .await;
    let sum = |name, labels: &[(&str, &str)]| read_sum(&text, name, labels);
    let ordering = ("context", "ordering");
    let (place, cancel) = (("command", "place-order"), ("command", "cancel-order"));
    assert_eq!(
        sum("chorus_commands_handled_total", &[ordering, place]),
        Some(3.0)
    );
    assert_eq!(sum("chorus_commands_handled_total", &[cancel]), Some(2.0));
    assert_eq!(sum("chorus_command_duration_seconds_count", &[]), Some(5.0));
    assert_eq!(
        sum(
            "chorus_commands_rejected_total",
            &[place, ("code", "already_placed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sum(
            "chorus_commands_rejected_total",
            &[cancel, ("code", "already_cancelled")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sum(
            "chorus_events_appended_total",
            &[("event_type", "OrderPlaced")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sum(
            "chorus_events_appended_total",
            &[("event_type", "OrderCancelled")]
        ),
        Some(1.0)
    );
    assert_eq!(sum("chorus_relay_latency_seconds_count", &[]), Some(3.0));
    assert!(
        sum(
            "chorus_consumer_batch_duration_seconds_count",
            &[from_inventory]
        ) >= Some(1.0)
    );
    assert_eq!(
        sum(
            "chorus_consumer_messages_total",
            &[from_inventory, ("outcome", "dead_lettered")]
        ),
        Some(0.0)
    );

    s.stop().await;
}

#[tokio::test]
async fn requests_that_do_not_parse_are_refused_with_the_field_at_fault() {
    let s = Service::start().await;
    s.catalogue
        .apply(&sku("MUG"), Some("Mug"), eur(250), 1)
        .await
        .unwrap();
    let valid = place_body(None, &[("MUG", 1)]);
    // The valid body with the value at `pointer` set (an object's member added if missing).
    let with = |pointer: &str, value: Value| {
        let mut body = valid.clone();
        let (parent, last) = pointer.rsplit_once('/').unwrap();
        match body.pointer_mut(parent).unwrap() {
            Value::Object(object) => {
                object.insert(last.to_owned(), value);
            }
            Value::Array(array) => array[last.parse::<usize>().unwrap()] = value,
            other => panic!("{parent} is {other}"),
        }
        body.to_string()
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("place-order", "not json".into(), "body"),
        ("place-order", String::new(), "body"),
        ("place-order", format!("{valid} {{}}"), "body"),
        ("place-order", "[]".into(), "body"),
        (
            "place-order",
            {
                let mut body = valid.clone();
                body["discount"] = json!(10);
                body.to_string()
            },
            "discount",
        ),
        (
            "place-order",
            {
                let mut body = valid.clone();
                body["shipping_address"]["state"] = json!("CA");
                body.to_string()
            },
            "shipping_address.state",
        ),
        (
            "place-order",
            with("/lines/0/quantity", json!("two")),
            "lines[0].quantity",
        ),
        (
            "place-order",
            with("/lines/0/quantity", json!(0)),
            "lines[0].quantity",
        ),
        (
            "place-order",
            with("/lines/0/quantity", json!(-1)),
            "lines[0].quantity",
        ),
        (
            "place-order",
            with("/lines/0/sku", json!("mug")),
            "lines[0].sku",
        ),
        (
            "place-order",
            with("/customer_id", json!("nobody")),
            "customer_id",
        ),
        ("place-order", with("/order_id", json!(42)), "order_id"),
        ("place-order", with("/lines", json!({})), "lines"),
        (
            "place-order",
            with("/shipping_address/line2", json!(7)),
            "shipping_address.line2",
        ),
        (
            "place-order",
            with("/payment_token", Value::Null),
            "payment_token",
        ),
        (
            "place-order",
            {
                let mut body = valid.clone();
                body["shipping_address"]
                    .as_object_mut()
                    .unwrap()
                    .remove("city");
                body.to_string()
            },
            "shipping_address",
        ),
        (
            "place-order",
            {
                let mut body = valid.clone();
                body.as_object_mut().unwrap().remove("customer_id");
                body.to_string()
            },
            "body",
        ),
        ("cancel-order", "{".into(), "body"),
        (
            "place-order",
            valid.to_string().replacen(':', ":,", 1),
            "body",
        ),
        (
            "cancel-order",
            json!({ "order_id": "x" }).to_string(),
            "order_id",
        ),
        (
            "cancel-order",
            json!({ "order_id": OrderId::new(), "reason": 5 }).to_string(),
            "reason",
        ),
        (
            "cancel-order",
            json!({ "order_id": OrderId::new(), "why": "x" }).to_string(),
            "why",
        ),
    ];
    let head = s.head().await;
    for (command, body, field) in cases {
        let reply = s.request(command, body.clone()).await;
        assert!(
            rejected("invalid_request", Some(field))(&reply),
            "{command} {body}: expected invalid_request on {field}, got {reply:?}"
        );
    }
    assert_eq!(s.head().await, head, "nothing is appended");
    assert_eq!(s.store.outbox_backlog().await.unwrap(), 0);

    // The valid body it was all made from is accepted.
    accepted(&s.place(&valid).await);
    s.stop().await;
}

#[tokio::test]
async fn domain_rejections_carry_the_orders_code_and_the_field() {
    let s = Service::start().await;
    for (name, price) in [("MUG", 250), ("BOOK", 1000)] {
        s.catalogue
            .apply(&sku(name), Some(name), eur(price), 1)
            .await
            .unwrap();
    }
    let valid = place_body(None, &[("MUG", 1), ("BOOK", 1)]);
    let head = s.head().await;

    let reply = s.place(&place_body(None, &[("MUG", 1), ("NOPE", 2)])).await;
    assert_rejected(&reply, "unknown_sku", Some("lines[1].sku"));
    let reply = s.place(&place_body(None, &[])).await;
    assert_rejected(&reply, "empty_order", Some("lines"));
    let reply = s
        .place(&place_body(None, &[("MUG", 1), ("BOOK", 1), ("MUG", 2)]))
        .await;
    assert_rejected(&reply, "duplicate_sku", Some("lines[2].sku"));
    let mut body = valid.clone();
    body["shipping_address"]["country"] = json!("gb");
    let reply = s.place(&body).await;
    assert_rejected(&reply, "invalid_address", Some("shipping_address.country"));
    let mut body = valid.clone();
    body["shipping_address"]["line1"] = json!("  ");
    let reply = s.place(&body).await;
    assert_rejected(&reply, "invalid_address", Some("shipping_address.line1"));
    let mut body = valid.clone();
    body["payment_token"] = json!("");
    let reply = s.place(&body).await;
    assert_rejected(&reply, "invalid_payment_token", Some("payment_token"));
    let reply = s.cancel(&json!({ "order_id": OrderId::new() })).await;
    assert_rejected(&reply, "not_placed", None);
    assert_eq!(s.head().await, head, "a rejected command writes nothing");

    let (order, _, _) = accepted(&s.place(&valid).await);
    let head = s.head().await;
    let too_long = "x".repeat(MAX_CANCEL_REASON_CHARS + 1);
    let reply = s
        .cancel(&json!({ "order_id": order, "reason": too_long }))
        .await;
    assert_rejected(&reply, "invalid_reason", Some("reason"));
    assert_eq!(s.head().await, head);

    s.stop().await;
}

#[tokio::test]
async fn the_service_reports_itself_ready_with_its_consumers_and_its_payment_ticker() {
    let service = Service::start().await;
    let report = harness::ready_report(&service.client, BoundedContext::Ordering).await;
    let consumers: Vec<String> = ordering::reactions::consumers()
        .into_iter()
        .map(|spec| spec.name)
        .collect();
    assert_eq!(report.names(host::CheckKind::Consumer), consumers);
    assert_eq!(
        report.names(host::CheckKind::Ticker),
        [ordering::PAYMENT_TIMEOUT]
    );
    service.stop().await;
}
