//! Integration tests of the host against a real PostgreSQL (a database per test) and a real
//! nats-server (a private one per test): the health of a service as NATS and HTTP report it,
//! with its dependencies working and failing, its metrics as they move with real work, its
//! settings, and one order's saga as one trace across the gateway and the four contexts.

// A test fails by panicking; helpers unwrap like the tests do.
#![allow(clippy::unwrap_used)]

mod health;
mod metrics;
mod settings;
mod traces;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bus::{ConsumerSpec, Handler, HandlerError, Received};
use chrono::{DateTime, Utc};
use events::BoundedContext;
use eventstore::{Deadline, DeadlineHandler, UnitOfWork};
use harness::{NatsServer, TestDatabase};
use host::{Check, CheckKind, HealthReport, Host, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should take well under a second.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The deadline kind the tests' hosts tick.
pub const REMINDER: &str = "reminder";

/// A private nats-server and a database for one context.
#[derive(Debug)]
pub struct Infra {
    pub nats: NatsServer,
    pub db: TestDatabase,
}

impl Infra {
    pub async fn new() -> Self {
        Self {
            nats: NatsServer::start().await.unwrap(),
            db: TestDatabase::create().await.unwrap(),
        }
    }

    pub fn settings(&self, context: BoundedContext) -> Settings {
        Settings {
            context,
            database_url: self.db.url(),
            nats_url: self.nats.url(),
            database_connections: 4,
        }
    }

    /// Drops the database under the running services, closing their sessions.
    pub async fn drop_database(&self) {
        let admin = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| harness::DEFAULT_DATABASE_URL.to_owned());
        let pool = sqlx::PgPool::connect(&admin).await.unwrap();
        let sql = format!(r#"DROP DATABASE "{}" WITH (FORCE)"#, self.db.name());
        sqlx::Executor::execute(&pool, sqlx::AssertSqlSafe(sql))
            .await
            .unwrap();
        pool.close().await;
    }
}

/// Takes every message.
#[derive(Debug)]
pub struct Accept;

impl Handler for Accept {
    async fn handle(&self, _: &mut UnitOfWork, _: &Received) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Does nothing when a deadline is due.
#[derive(Debug)]
pub struct Ignore;

impl DeadlineHandler for Ignore {
    async fn fire(&self, _: &mut UnitOfWork, _: &Deadline, _: DateTime<Utc>) -> Result<(), String> {
        Ok(())
    }
}

/// A host of `context` running in the background, with a consumer, a ticker and the HTTP
/// listener on a free port.
#[derive(Debug)]
pub struct Running {
    pub context: BoundedContext,
    pub client: async_nats::Client,
    pub http: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn start(infra: &Infra, context: BoundedContext) -> Self {
        let mut host = Host::start(&infra.settings(context)).await.unwrap();
        let from_ordering = ConsumerSpec::new(context.name(), BoundedContext::Ordering.stream());
        host.react(vec![from_ordering], Arc::new(Accept));
        host.tick(REMINDER, Arc::new(Ignore));
        let http = host
            .listen_http("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let shutdown = host.shutdown_token();
        Self {
            context,
            client: infra.nats.connect().await.unwrap(),
            http,
            shutdown,
            task: tokio::spawn(host.run(std::future::pending())),
        }
    }

    /// The report `chorus.<context>.health` answers.
    pub async fn health(&self) -> Result<HealthReport, async_nats::RequestError> {
        let reply = self
            .client
            .request(host::health_subject(self.context), "".into())
            .await?;
        Ok(serde_json::from_slice(&reply.payload).unwrap())
    }

    /// Waits until the NATS health endpoint says `what`.
    pub async fn wait_for(&self, what: &str, check: impl Fn(&HealthReport) -> bool) {
        let found = harness::wait_until(what, PATIENCE, || async {
            self.health().await.is_ok_and(|report| check(&report))
        })
        .await;
        if let Err(e) = found {
            panic!("{e:#}; last report: {:#?}", self.health().await);
        }
    }

    /// Stops the host and waits until it has stopped.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the host stops")
            .unwrap()
            .unwrap();
    }
}

/// The check of `kind` named `name`.
pub fn check<'a>(report: &'a HealthReport, kind: CheckKind, name: &str) -> &'a Check {
    report
        .checks
        .iter()
        .find(|c| c.kind == kind && c.name == name)
        .unwrap_or_else(|| panic!("no {kind:?} check {name}: {report:#?}"))
}

/// `GET path` on `addr`: the status and the body.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Ok((status, body.to_owned()))
}

/// Asks `GET /readyz` on `addr` until `want` holds for its status and report; returns them.
pub async fn readyz_until(
    addr: SocketAddr,
    what: &str,
    want: impl Fn(u16, &HealthReport) -> bool,
) -> (u16, HealthReport) {
    let last = std::cell::RefCell::new(None);
    let found = harness::wait_until(what, PATIENCE, || async {
        let (status, body) = get(addr, "/readyz").await.unwrap();
        let report: HealthReport = serde_json::from_str(&body).unwrap();
        let found = want(status, &report);
        *last.borrow_mut() = Some((status, report));
        found
    })
    .await;
    let last = last.into_inner();
    if let Err(e) = found {
        panic!("{e:#}; last answer: {last:#?}");
    }
    last.unwrap()
}

/// Scrapes `GET /metrics` on `addr` until `want` holds for the text; returns the text.
pub async fn metrics_until(addr: SocketAddr, what: &str, want: impl Fn(&str) -> bool) -> String {
    let last = std::cell::RefCell::new(String::new());
    let found = harness::wait_until(what, PATIENCE, || async {
        let (status, text) = get(addr, "/metrics").await.unwrap();
        assert_eq!(status, 200, "{text}");
        let found = want(&text);
        *last.borrow_mut() = text;
        found
    })
    .await;
    let last = last.into_inner();
    if let Err(e) = found {
        panic!("{e:#}; last scrape:\n{last}");
    }
    last
}
