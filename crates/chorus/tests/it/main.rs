//! The operator commands run as an operator runs them: the real `chorus` binary against a
//! private nats-server and a private database per test, with real relays and consumers
//! producing what the commands work on.

// A test fails by panicking; helpers unwrap like the tests do.
#![allow(clippy::unwrap_used)]

mod bench;
mod dev;
mod dlq;
mod errors;
mod replay;
mod republish;
mod token;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream;
use bus::{Relay, RelayConfig};
use events::naming::StreamName;
use events::{BoundedContext, Metadata};
use eventstore::{Repository, Store};
use harness::account::{Account, AccountCommand};
use harness::{NatsServer, TestDatabase, wait_until};
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should take well under a second.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A private nats-server with the ordering stream and the dead-letter stream, and an event
/// store playing the ordering context's (its events are `account` events).
#[derive(Debug)]
pub struct World {
    pub nats: NatsServer,
    pub js: jetstream::Context,
    pub stream: StreamName,
    pub store: Store,
    pub db: TestDatabase,
}

impl World {
    pub async fn new() -> Self {
        let nats = NatsServer::start().await.expect("nats-server starts");
        let client = bus::connect(&nats.url(), "test").await.expect("connects");
        let js = jetstream::new(client);
        let stream = BoundedContext::Ordering.stream();
        bus::provision::streams(&js, std::slice::from_ref(&stream), 1)
            .await
            .expect("streams provisioned");
        let (store, db) = new_store().await;
        Self {
            nats,
            js,
            stream,
            store,
            db,
        }
    }

    /// Deposits `amount` into account `id` of the store.
    pub async fn deposit(&self, id: &str, amount: u64) {
        Repository::<Account>::new(self.store.clone(), ())
            .handle(id, AccountCommand::Deposit(amount), &meta())
            .await
            .unwrap();
    }

    /// Runs the store's relay until the stream holds `count` messages and the outbox is
    /// empty, then stops it.
    pub async fn relay_until(&self, count: u64) {
        let relay = Relay::new(self.store.clone(), self.js.clone(), self.stream.clone())
            .with_config(RelayConfig {
                poll_interval: Duration::from_millis(100),
                retry_delay: Duration::from_millis(50),
                ..RelayConfig::default()
            });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(relay.run(shutdown.clone()));
        wait_until("the relay to publish the outbox", PATIENCE, || async {
            self.store.outbox_backlog().await.unwrap() == 0
                && self.message_count(&self.stream.name()).await == count
        })
        .await
        .unwrap();
        shutdown.cancel();
        task.await.unwrap();
    }

    /// Every message of a stream, in stream order.
    pub async fn messages(&self, stream: &str) -> Vec<StreamMessage> {
        let mut stream = self.js.get_stream(stream).await.expect("stream exists");
        let last = stream.info().await.unwrap().state.last_sequence;
        let mut found = Vec::new();
        for sequence in 1..=last {
            if let Ok(raw) = stream.get_raw_message(sequence).await {
                found.push(StreamMessage {
                    sequence: raw.sequence,
                    subject: raw.subject.to_string(),
                    headers: raw
                        .headers
                        .iter()
                        .map(|(k, v)| {
                            let values = v.iter().map(|v| v.as_str().to_owned()).collect();
                            (k.to_string(), values)
                        })
                        .collect(),
                    payload: raw.payload.to_vec(),
                });
            }
        }
        found
    }

    pub async fn message_count(&self, stream: &str) -> u64 {
        match self.js.get_stream(stream).await {
            Ok(mut stream) => stream.info().await.unwrap().state.messages,
            Err(_) => 0,
        }
    }

    /// Runs `chorus <args>` against this world's nats-server and event store.
    pub async fn chorus(&self, args: &[&str]) -> Run {
        let url = self.nats.url();
        let db = self.db.url();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--nats-url", url.as_str()]);
        if args.first() == Some(&"republish") {
            all.extend(["--database-url", db.as_str()]);
        }
        chorus(&all, &[]).await
    }
}

pub fn meta() -> Metadata {
    Metadata {
        correlation_id: Some("corr-1".into()),
        causation_id: None,
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        tracestate: None,
    }
}

/// A fresh, migrated event store.
pub async fn new_store() -> (Store, TestDatabase) {
    let db = TestDatabase::create().await.expect("test database");
    let store = Store::from_pool(db.pool(5).await.expect("pool"));
    store.migrate().await.expect("migrations");
    (store, db)
}

#[derive(Debug, Clone)]
pub struct StreamMessage {
    pub sequence: u64,
    pub subject: String,
    pub headers: HashMap<String, Vec<String>>,
    pub payload: Vec<u8>,
}

impl StreamMessage {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map_or("", String::as_str)
    }
}

/// What a run of the binary left: its exit code and output.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Fails the test, showing the output, unless the command succeeded.
    pub fn success(self) -> Self {
        assert_eq!(self.code, Some(0), "chorus failed: {self:#?}");
        self
    }

    /// Fails the test unless the command failed with `code` and one line on stderr.
    pub fn failure(self, code: i32) -> Self {
        assert_eq!(self.code, Some(code), "unexpected exit code: {self:#?}");
        self
    }
}

/// Runs the `chorus` binary with `args` and `env`, without the environment's NATS and
/// database settings.
pub async fn chorus(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_chorus"));
    command
        .args(args)
        .env_remove("NATS_URL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for context in BoundedContext::ALL {
        command.env_remove(format!("{}_DATABASE_URL", context.name().to_uppercase()));
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().await.expect("chorus runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A TCP port on which nothing listens.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
