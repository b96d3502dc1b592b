//! Integration tests of the relay and the consumer runtime against a real PostgreSQL (a
//! database per store per test) and a real nats-server (a private one per test), and of what
//! they tell their observers.

// A test fails by panicking; helpers unwrap like the tests do.
#![allow(clippy::unwrap_used)]

mod consumer;
mod observers;
mod provision;
mod relay;
mod tls;

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use events::headers;
use events::naming::StreamName;
use eventstore::Store;
use harness::{NatsServer, TestDatabase};

/// How long a test waits for something that should take well under a second.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A private nats-server with the `ledger` stream and the dead-letter stream, and an event
/// store for the `ledger` context.
#[derive(Debug)]
pub struct World {
    pub nats: NatsServer,
    pub js: jetstream::Context,
    pub ledger: StreamName,
    pub store: Store,
    _db: TestDatabase,
}

impl World {
    pub async fn new() -> Self {
        let nats = NatsServer::start().await.expect("nats-server starts");
        let client = bus::connect(&nats.url(), "test").await.expect("connects");
        let js = jetstream::new(client);
        let ledger = StreamName::for_context("ledger");
        bus::provision::streams(&js, std::slice::from_ref(&ledger), 1)
            .await
            .expect("streams provisioned");
        let (store, db) = new_store().await;
        Self {
            nats,
            js,
            ledger,
            store,
            _db: db,
        }
    }

    /// Every message of a stream, in stream order.
    pub async fn messages(&self, stream: &str) -> Vec<StreamMessage> {
        let mut stream = self.js.get_stream(stream).await.expect("stream exists");
        let last = stream
            .info()
            .await
            .expect("stream info")
            .state
            .last_sequence;
        let mut found = Vec::new();
        for sequence in 1..=last {
            if let Ok(raw) = stream.direct_get(sequence).await {
                found.push(StreamMessage {
                    subject: raw.subject.to_string(),
                    headers: raw
                        .headers
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.to_string(),
                                v.first().map(|v| v.to_string()).unwrap_or_default(),
                            )
                        })
                        .collect(),
                    payload: raw.payload.to_vec(),
                });
            }
        }
        found
    }

    pub async fn message_count(&self, stream: &str) -> u64 {
        let mut stream = self.js.get_stream(stream).await.expect("stream exists");
        stream.info().await.expect("stream info").state.messages
    }
}

pub async fn new_store() -> (Store, TestDatabase) {
    let db = TestDatabase::create().await.expect("test database");
    let store = Store::from_pool(db.pool(10).await.expect("pool"));
    store.migrate().await.expect("migrations");
    (store, db)
}

#[derive(Debug, Clone)]
pub struct StreamMessage {
    pub subject: String,
    pub headers: HashMap<String, String>,
    pub payload: Vec<u8>,
}

impl StreamMessage {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    /// (aggregate id, sequence)
    pub fn aggregate_sequence(&self) -> (String, i64) {
        (
            self.header(headers::AGGREGATE_ID).to_owned(),
            self.header(headers::SEQUENCE)
                .parse()
                .expect("sequence header"),
        )
    }
}
