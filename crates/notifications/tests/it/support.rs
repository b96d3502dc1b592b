//! A world per test: a private server with the contract's streams, a directory for sink files,
//! and the service started, stopped and crashed in-process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use notifications::contract::{CONSUMER, STREAM};
use notifications::{Notification, Options, Service, Sink};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::publish::provision_streams;
use crate::server::{NatsServer, wait_until};

pub struct World {
    pub server: NatsServer,
    pub js: jetstream::Context,
    pub dir: tempfile::TempDir,
}

impl World {
    pub async fn new() -> Self {
        let server = NatsServer::start().await;
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client);
        provision_streams(&js).await;
        Self {
            server,
            js,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts a service process's worth: its own connection, the consumer provisioned, the
    /// loop running in a task.
    pub async fn start<S: Sink>(&self, sink: S, options: Options) -> Running {
        let client = notifications::connect(self.server.url()).await.unwrap();
        let service = Service::start(client, sink, options).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(service.run(async move {
            stopped.await.ok();
        }));
        Running {
            stop: Some(stop),
            task,
        }
    }

    /// The durable consumer's state on the server.
    pub async fn consumer(&self) -> consumer::Info {
        self.js
            .get_stream(STREAM)
            .await
            .unwrap()
            .consumer_info(CONSUMER)
            .await
            .unwrap()
    }

    /// The consumer has nothing left to deliver and nothing delivered unacked.
    pub async fn drained(&self) -> bool {
        let info = self.consumer().await;
        info.num_pending == 0 && info.num_ack_pending == 0
    }

    pub async fn wait_drained(&self) {
        wait_until("the consumer has handled every message", || self.drained()).await;
    }

    /// Messages delivered and neither acked nor terminated.
    pub async fn ack_pending(&self) -> usize {
        self.consumer().await.num_ack_pending
    }

    /// The headers of every dead letter, in order.
    pub async fn dead_letters(&self) -> Vec<async_nats::HeaderMap> {
        let stream = self.js.get_stream("DEAD_LETTERS").await.unwrap();
        let state = stream.get_info().await.unwrap().state;
        let mut headers = Vec::new();
        if state.messages == 0 {
            return headers;
        }
        for sequence in state.first_sequence..=state.last_sequence {
            headers.push(stream.get_raw_message(sequence).await.unwrap().headers);
        }
        headers
    }

    /// Removes the durable consumer: the next start provisions it anew, from the start of the
    /// stream.
    pub async fn delete_consumer(&self) {
        self.js
            .get_stream(STREAM)
            .await
            .unwrap()
            .delete_consumer(CONSUMER)
            .await
            .unwrap();
    }
}

/// A running service.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Asks it to stop (as SIGTERM does) and waits until it has.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        (&mut self.task).await.unwrap().unwrap();
    }

    /// Ends it wherever it is, as a killed process ends: nothing after the current await
    /// point runs, nothing is acked.
    pub async fn crash(self) {
        self.task.abort();
        let outcome = self.task.await;
        assert!(
            outcome.as_ref().is_err_and(|e| e.is_cancelled()),
            "the service ended before it was crashed: {outcome:?}"
        );
    }
}

/// Options with short delays, so that retries happen within a test's patience.
pub fn quick() -> Options {
    Options {
        retry_delay: Duration::from_millis(200),
        max_retry_delay: Duration::from_secs(2),
        ..Options::default()
    }
}

/// The notifications a file sink holds, in file order.
pub fn notifications_in(path: &Path) -> Vec<Notification> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// How many lines of each key a file sink holds.
pub fn keys_in(path: &Path) -> BTreeMap<String, usize> {
    let mut keys = BTreeMap::new();
    for n in notifications_in(path) {
        *keys.entry(n.key).or_default() += 1;
    }
    keys
}

/// The keys of a confirmed and a shipped notification per order.
pub fn confirmed_and_shipped(orders: &[crate::publish::Order]) -> BTreeMap<String, usize> {
    let pairs: Vec<_> = orders
        .iter()
        .flat_map(|order| [("order-confirmed", order), ("order-shipped", order)])
        .collect();
    expected(&pairs)
}

/// The keys of one notification of each listed kind per order.
pub fn expected(pairs: &[(&str, &crate::publish::Order)]) -> BTreeMap<String, usize> {
    pairs
        .iter()
        .map(|(kind, order)| (format!("{kind}.{}", order.id), 1))
        .collect()
}
