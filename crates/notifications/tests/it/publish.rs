//! Publishes ordering events exactly as the contract describes them: subject
//! `ordering.order.<order id>.<event type>` on stream `ORDERING`, the envelope in headers, and a
//! payload checked against its committed schema before it is sent.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use serde_json::{Value, json};

/// The committed schemas, read as another team would read them.
pub fn schema_path(event_type: &str, version: u32) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../events/schemas/ordering")
        .join(format!("{event_type}.v{version}.json"))
}

pub fn load_schema(event_type: &str, version: u32) -> Value {
    let path = schema_path(event_type, version);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Fails the test unless `payload` is valid against the schema of `event_type` v`version`.
pub fn assert_valid(event_type: &str, version: u32, payload: &Value) {
    let schema = load_schema(event_type, version);
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let errors: Vec<String> = validator
        .iter_errors(payload)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{event_type} v{version} sample is invalid: {errors:?}\n{payload:#}"
    );
}

/// Creates the streams the Chorus services provision, as the contract names them.
pub async fn provision_streams(js: &jetstream::Context) {
    for (name, subjects) in [("ORDERING", "ordering.>"), ("DEAD_LETTERS", "deadletter.>")] {
        js.create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![subjects.to_owned()],
            storage: stream::StorageType::File,
            duplicate_window: std::time::Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

/// One order of the test, with ids derived from its number.
#[derive(Debug, Clone)]
pub struct Order {
    pub n: u64,
    pub id: String,
    pub customer_id: String,
    pub recipient: String,
    pub total_minor: i64,
}

impl Order {
    pub fn new(n: u64) -> Self {
        Self {
            n,
            id: format!("0190f5c2-7d3e-7c1a-9a57-{n:012x}"),
            customer_id: format!("0190f5c2-aaaa-7aaa-8aaa-{n:012x}"),
            recipient: format!("Customer {n}"),
            total_minor: 1_000 + i64::try_from(n).unwrap(),
        }
    }

    fn address(&self) -> Value {
        json!({
            "name": self.recipient,
            "line1": "1 Main Street",
            "line2": null,
            "city": "Lyon",
            "postal_code": "69001",
            "country": "FR"
        })
    }

    /// Sequence 1: the saga starts.
    pub fn placed(&self) -> Event {
        let unit = self.total_minor;
        self.event(
            "OrderPlaced",
            1,
            json!({
                "order_id": self.id,
                "customer_id": self.customer_id,
                "lines": [{
                    "sku": "SKU-1",
                    "quantity": 1,
                    "unit_price": {"amount_minor": unit, "currency": "EUR"}
                }],
                "total": {"amount_minor": self.total_minor, "currency": "EUR"},
                "shipping_address": self.address(),
                "payment_token": "tok_success"
            }),
        )
    }

    /// Sequence 2 (after `StockReserved` and `PaymentCaptured`, which ordering does not store
    /// as its own events).
    pub fn confirmed(&self) -> Event {
        self.event(
            "OrderConfirmed",
            2,
            json!({"order_id": self.id, "shipping_address": self.address()}),
        )
    }

    /// Sequence 3.
    pub fn shipped(&self) -> Event {
        self.event("OrderShipped", 3, json!({"order_id": self.id}))
    }

    /// An event of this order with its own sequence (and so its own event id).
    pub fn event(&self, event_type: &str, sequence: u64, payload: Value) -> Event {
        Event {
            event_type: event_type.to_owned(),
            order_id: self.id.clone(),
            event_id: format!("0190f5c2-0000-7000-8000-{:08x}{sequence:04x}", self.n),
            sequence,
            version: 1,
            payload: serde_json::to_vec(&payload).unwrap(),
            validate: true,
        }
    }
}

/// One event as it goes on the stream.
#[derive(Debug, Clone)]
pub struct Event {
    pub event_type: String,
    pub order_id: String,
    pub event_id: String,
    pub sequence: u64,
    pub version: u32,
    pub payload: Vec<u8>,
    /// Checked against its schema before publishing; off for deliberately broken payloads.
    pub validate: bool,
}

impl Event {
    pub fn subject(&self) -> String {
        format!("ordering.order.{}.{}", self.order_id, self.event_type)
    }

    /// The same event with a payload no schema allows.
    pub fn with_raw_payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self.validate = false;
        self
    }

    /// The same payload under another schema version (one that is not published).
    pub fn with_version(mut self, version: u32) -> Self {
        self.version = version;
        self.validate = false;
        self
    }

    pub fn headers(&self, msg_id: &str) -> HeaderMap {
        static POSITION: AtomicU64 = AtomicU64::new(1);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        headers.insert("Chorus-Event-Id", self.event_id.as_str());
        headers.insert("Chorus-Event-Type", self.event_type.as_str());
        headers.insert("Chorus-Schema-Version", self.version.to_string().as_str());
        headers.insert("Chorus-Aggregate-Type", "order");
        headers.insert("Chorus-Aggregate-Id", self.order_id.as_str());
        headers.insert("Chorus-Sequence", self.sequence.to_string().as_str());
        headers.insert(
            "Chorus-Position",
            POSITION
                .fetch_add(1, Ordering::Relaxed)
                .to_string()
                .as_str(),
        );
        headers.insert("Chorus-Occurred-At", "2025-06-01T12:00:00Z");
        headers.insert("Chorus-Correlation-Id", self.order_id.as_str());
        headers
    }
}

/// Publishes `event` with `Nats-Msg-Id` = its event id, as the relay does.
pub async fn publish(js: &jetstream::Context, event: &Event) {
    publish_as(js, event, &event.event_id.clone()).await;
}

/// Publishes `event` under the given `Nats-Msg-Id` (an operator publishing it again gets a
/// new one past JetStream's duplicate filter) and waits for the stream to store it.
pub async fn publish_as(js: &jetstream::Context, event: &Event, msg_id: &str) {
    if event.validate {
        let payload: Value = serde_json::from_slice(&event.payload).unwrap();
        assert_valid(&event.event_type, event.version, &payload);
    }
    let ack = js
        .publish_with_headers(
            event.subject(),
            event.headers(msg_id),
            event.payload.clone().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        !ack.duplicate,
        "{} was refused as a duplicate",
        event.subject()
    );
}
