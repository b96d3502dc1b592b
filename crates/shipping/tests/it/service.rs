//! The shipping service: its command endpoints over a private nats-server, its store in a
//! database of its own, the metrics its HTTP listener serves, and a clean stop.

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use bytes::Bytes;
use events::command::{CommandReply, command_subject};
use events::ordering::{OrderConfirmed, OrderEvent};
use events::shipping::{ShipmentDelivered, ShipmentDispatched, ShipmentEvent};
use events::values::OrderId;
use events::{BoundedContext, Event as _, headers};
use eventstore::{Store, UnitOfWork};
use harness::{NatsServer, TestDatabase};
use host::Settings;
use host::metrics::read_sum;
use shipping::reactions::{Reactions, consumers};
use shipping::service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{address, confirmed};

/// A running shipping service and a client to send it commands.
struct Service {
    client: async_nats::Client,
    store: Store,
    /// The HTTP listener: health and metrics.
    http: SocketAddr,
    stop: CancellationToken,
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
            context: BoundedContext::Shipping,
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
        let stop = host.shutdown_token();
        let run = tokio::spawn(host.run(std::future::pending()));
        Self {
            client: nats.connect().await.unwrap(),
            store,
            http,
            stop,
            run,
            _nats: nats,
            _db: db,
        }
    }

    /// Sends the command `name` with `body` and returns the reply.
    async fn send(&self, name: &str, body: impl Into<Bytes>) -> CommandReply {
        let subject = command_subject(BoundedContext::Shipping.name(), name);
        let reply = self.client.request(subject, body.into()).await.unwrap();
        serde_json::from_slice(&reply.payload).unwrap()
    }

    async fn dispatch(&self, order: OrderId, tracking_number: Option<&str>) -> CommandReply {
        let body = serde_json::json!({ "order_id": order, "tracking_number": tracking_number });
        self.send("dispatch-shipment", body.to_string()).await
    }

    async fn deliver(&self, order: OrderId) -> CommandReply {
        let body = serde_json::json!({ "order_id": order });
        self.send("deliver-shipment", body.to_string()).await
    }

    /// Schedules the order's shipment as the reactions do on `OrderConfirmed`: in a unit of
    /// work of shipping's store, through the reactions' own repository (not the commands').
    async fn schedule(&self, order: OrderId) {
        use bus::Handler as _;
        let reactions = Reactions::new(&self.store);
        let mut uow = UnitOfWork::new(&self.store);
        reactions.handle(&mut uow, &confirmed(order)).await.unwrap();
        uow.commit().await.unwrap();
    }

    async fn events(&self, order: OrderId) -> Vec<ShipmentEvent> {
        self.store
            .aggregate_events("shipment", &order.to_string(), 0)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.decode::<ShipmentEvent>().unwrap().payload)
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

    /// Cancels the shutdown token: the service must stop cleanly.
    async fn stop(self) {
        self.stop.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(30), self.run)
            .await
            .expect("the service did not stop within 30 s");
        stopped.unwrap().unwrap();
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

fn accepted(reply: &CommandReply) -> (String, i64, u64) {
    match reply {
        CommandReply::Accepted {
            aggregate_id,
            position,
            version,
        } => (aggregate_id.clone(), *position, *version),
        other => panic!("expected an acceptance, got {other:?}"),
    }
}

/// The code and field of a rejection.
fn rejected(reply: &CommandReply) -> (&str, Option<&str>) {
    match reply {
        CommandReply::Rejected { code, field, .. } => (code.as_str(), field.as_deref()),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn an_operator_dispatches_then_delivers_over_nats() {
    let s = Service::start().await;
    let order = OrderId::new();

    // Before the order is confirmed there is nothing to dispatch.
    let reply = s.dispatch(order, Some("1Z-999")).await;
    assert_eq!(rejected(&reply), ("not_scheduled", None), "{reply:?}");
    assert!(s.events(order).await.is_empty());

    // The shipment is scheduled behind the commands' back: they must see it anyway.
    s.schedule(order).await;

    let subject = command_subject(BoundedContext::Shipping.name(), "dispatch-shipment");
    let mut request_headers = async_nats::HeaderMap::new();
    request_headers.insert(headers::CORRELATION_ID, "req-1");
    let body = serde_json::json!({ "order_id": order, "tracking_number": "1Z-999" });
    let message = s
        .client
        .request_with_headers(subject, request_headers, body.to_string().into())
        .await
        .unwrap();
    let reply: CommandReply = serde_json::from_slice(&message.payload).unwrap();
    let (aggregate_id, dispatched_at, version) = accepted(&reply);
    assert_eq!((aggregate_id, version), (order.to_string(), 2));
    assert!(dispatched_at > 0, "{reply:?}");

    let reply = s.deliver(order).await;
    let (aggregate_id, delivered_at, version) = accepted(&reply);
    assert_eq!((aggregate_id, version), (order.to_string(), 3));
    assert!(delivered_at > dispatched_at, "{reply:?}");
    assert_eq!(s.store.head().await.unwrap(), delivered_at);

    let events = s.events(order).await;
    assert_eq!(
        events[1..],
        [
            ShipmentEvent::from(ShipmentDispatched {
                order_id: order,
                tracking_number: Some("1Z-999".into()),
            }),
            ShipmentEvent::from(ShipmentDelivered { order_id: order }),
        ]
    );
    let stored = s
        .store
        .aggregate_events("shipment", &order.to_string(), 0)
        .await
        .unwrap();
    assert_eq!(
        stored[1].metadata.correlation_id.as_deref(),
        Some("req-1"),
        "the request's correlation id is recorded with the event"
    );

    // Delivered twice: refused, nothing appended.
    let reply = s.deliver(order).await;
    assert_eq!(rejected(&reply), ("already_delivered", None), "{reply:?}");
    assert_eq!(s.events(order).await.len(), 3);
    s.stop().await;
}

#[tokio::test]
async fn domain_refusals_come_back_with_their_codes_and_append_nothing() {
    let s = Service::start().await;
    let order = OrderId::new();
    s.schedule(order).await;

    let reply = s.dispatch(order, Some("not a number")).await;
    assert_eq!(
        rejected(&reply),
        ("invalid_tracking_number", Some("tracking_number")),
        "{reply:?}"
    );
    let reply = s.deliver(order).await;
    assert_eq!(rejected(&reply), ("not_dispatched", None), "{reply:?}");
    let reply = s.deliver(OrderId::new()).await;
    assert_eq!(rejected(&reply), ("not_scheduled", None), "{reply:?}");
    assert_eq!(s.events(order).await.len(), 1, "only ShipmentScheduled");

    // Without a tracking number (absent or null) the dispatch goes through.
    let body = serde_json::json!({ "order_id": order });
    let reply = s.send("dispatch-shipment", body.to_string()).await;
    assert_eq!(accepted(&reply).2, 2, "{reply:?}");
    s.stop().await;
}

#[tokio::test]
async fn bodies_that_do_not_parse_are_refused_naming_the_field() {
    let s = Service::start().await;
    let order = OrderId::new();
    s.schedule(order).await;
    let head = s.store.head().await.unwrap();

    let cases = [
        ("dispatch-shipment", "not json".to_owned(), "body"),
        ("dispatch-shipment", "[]".to_owned(), "body"),
        ("dispatch-shipment", "{}".to_owned(), "order_id"),
        (
            "dispatch-shipment",
            format!(r#"{{"order_id":"{order}","colour":"red"}}"#),
            "colour",
        ),
        (
            "dispatch-shipment",
            r#"{"order_id":42}"#.to_owned(),
            "order_id",
        ),
        (
            "dispatch-shipment",
            r#"{"order_id":"not-a-uuid"}"#.to_owned(),
            "order_id",
        ),
        (
            "dispatch-shipment",
            format!(r#"{{"order_id":"{order}","tracking_number":7}}"#),
            "tracking_number",
        ),
        ("deliver-shipment", "".to_owned(), "body"),
        (
            "deliver-shipment",
            format!(r#"{{"order_id":"{order}","tracking_number":"1Z"}}"#),
            "tracking_number",
        ),
        (
            "deliver-shipment",
            r#"{"order_id":true}"#.to_owned(),
            "order_id",
        ),
    ];
    for (command, body, field) in cases {
        let reply = s.send(command, body.clone()).await;
        assert_eq!(
            rejected(&reply),
            ("invalid_request", Some(field)),
            "{command} {body}: {reply:?}"
        );
    }
    assert_eq!(s.store.head().await.unwrap(), head, "nothing appended");
    assert_eq!(s.events(order).await.len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn an_order_confirmed_on_ordering_stream_schedules_the_shipment_to_dispatch() {
    let s = Service::start().await;
    let js = async_nats::jetstream::new(s.client.clone());
    let [spec] = <[_; 1]>::try_from(consumers()).unwrap();
    harness::wait_until(
        "shipping's durable consumer",
        Duration::from_secs(10),
        || async {
            js.get_consumer_from_stream::<pull::Config, _, _>(&spec.name, spec.stream.name())
                .await
                .is_ok()
        },
    )
    .await
    .unwrap();
    let consumer = ("consumer", "shipping-from-ordering");
    let before = s
        .metrics_until("the consumer's lag", |text| {
            read_sum(text, "chorus_consumer_pending_messages", &[consumer]).is_some()
        })
        .await;
    for (name, labels) in [
        ("chorus_consumer_messages_total", &[consumer][..]),
        (
            "chorus_commands_handled_total",
            &[("command", "dispatch-shipment")],
        ),
        ("chorus_relay_events_published_total", &[]),
    ] {
        assert_eq!(
            read_sum(&before, name, labels),
            Some(0.0),
            "{name} {labels:?}"
        );
    }

    // Published as ordering's relay publishes it.
    let order = OrderId::new();
    let event = OrderEvent::from(OrderConfirmed {
        order_id: order,
        shipping_address: address(),
    });
    let id = order.to_string();
    let subject = BoundedContext::Ordering
        .stream()
        .event_subject("order", &id, event.event_type())
        .unwrap();
    let event_id = uuid::Uuid::now_v7().to_string();
    let mut message_headers = async_nats::HeaderMap::new();
    message_headers.insert(headers::MSG_ID, event_id.as_str());
    message_headers.insert(headers::EVENT_ID, event_id.as_str());
    message_headers.insert(headers::EVENT_TYPE, event.event_type());
    message_headers.insert(
        headers::SCHEMA_VERSION,
        event.schema_version().to_string().as_str(),
    );
    message_headers.insert(headers::AGGREGATE_TYPE, "order");
    message_headers.insert(headers::AGGREGATE_ID, id.as_str());
    message_headers.insert(headers::SEQUENCE, "2");
    js.publish_with_headers(
        subject,
        message_headers,
        event.to_payload().to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    harness::wait_until(
        "the shipment scheduled",
        Duration::from_secs(10),
        || async { !s.events(order).await.is_empty() },
    )
    .await
    .unwrap();
    let reply = s.dispatch(order, None).await;
    assert_eq!(accepted(&reply).2, 2, "{reply:?}");

    // The message handled, the shipment scheduled and dispatched, both events published.
    let text = s
        .metrics_until("the events published", |text| {
            read_sum(text, "chorus_relay_events_published_total", &[]) == Some(2.0)
                && read_sum(
                    text,
                    "chorus_consumer_messages_total",
                    &[consumer, ("outcome", "handled")],
                ) == Some(1.0)
                && read_sum(text, "chorus_consumer_pending_messages", &[consumer]) == Some(0.0)
                && read_sum(text, "chorus_outbox_backlog_events", &[]) == Some(0.0)
        })
        .await;
    let shipping = ("context", "shipping");
    for event_type in ["ShipmentScheduled", "ShipmentDispatched"] {
        assert_eq!(
            read_sum(
                &text,
                "chorus_events_appended_total",
                &[shipping, ("event_type", event_type)]
            ),
            Some(1.0),
            "{event_type}"
        );
    }
    assert_eq!(
        read_sum(
            &text,
            "chorus_commands_handled_total",
            &[("command", "dispatch-shipment")]
        ),
        Some(1.0)
    );
    assert_eq!(read_sum(&text, "chorus_commands_rejected_total", &[]), None);
    assert!(
        read_sum(
            &text,
            "chorus_consumer_batch_duration_seconds_count",
            &[consumer]
        ) >= Some(1.0)
    );
    s.stop().await;
}

#[tokio::test]
async fn the_service_reports_itself_ready_with_its_consumer() {
    let service = Service::start().await;
    let report = harness::ready_report(&service.client, BoundedContext::Shipping).await;
    assert_eq!(
        report.names(host::CheckKind::Consumer),
        ["shipping-from-ordering"]
    );
    service.stop().await;
}
