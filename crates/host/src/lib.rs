//! Runs one bounded context as a service process.
//!
//! A [`Host`] owns what every context needs: its event store (migrated at start), a NATS
//! connection (refusing servers older than 2.12), the provisioned streams, its outbox relay,
//! and the NATS service `<context>` with its health endpoint (`chorus.<context>.health`, see
//! [`health`]). The context adds its reactions ([`Host::react`]), its deadline tickers
//! ([`Host::tick`]), its command endpoints ([`Host::serve`], one endpoint per command in the
//! same service, queue group `chorus`) and, when it is configured, the HTTP listener
//! ([`Host::listen_http`]: health probes and Prometheus metrics). [`Host::run`] then runs until
//! told to stop or until a task fails, and stops in order: no new work, the batch in hand
//! finished and acked.
//!
//! Every host has its own metrics registry (see [`metrics`]), which it hands to what it
//! runs: the store counts the events appended, the relay and the consumers report through the
//! observers of `bus`, the command endpoints and the tickers count in the host itself.
//!
//! Each command is handled in a span (`command`, with the context as its `service`), a child
//! of the request's `traceparent`; the events it appends carry the span's trace context, so
//! the reactions they cause continue the caller's trace (see [`telemetry`]).
//!
//! A service that is not a context (the projections) reports its health and metrics with the
//! same parts, keyed by its name: [`health::start_service`] and the checks of [`health`],
//! [`http::listen`] for any [`http::Observed`], and [`metrics::Registry`].
//!
//! The host holds no domain logic; the context's crate does.

pub mod health;
pub mod http;
pub mod metrics;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::service::Service;
use bus::{Consumer, ConsumerSpec, Handler, Relay};
use events::command::{CommandReply, command_subject};
use events::{BoundedContext, Metadata, headers};
use eventstore::{DeadlineHandler, Store, Ticker};
use futures::StreamExt;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::health::Monitor;
use crate::metrics::{CommandMetrics, Metrics, Scraper};
pub use health::{Check, CheckKind, CheckState, HealthReport, health_subject};
pub use http::{
    former_http_addr_var, http_addr_from_env, http_addr_from_vars, http_addr_var, parse_http_addr,
};

/// A context's settings, read once from the environment. (The HTTP listener's address,
/// `<CONTEXT>_HTTP_ADDR`, is read apart, by [`http_addr_from_env`], and given to
/// [`Host::listen_http`]: only a service process listens for HTTP.)
#[derive(Debug, Clone)]
pub struct Settings {
    pub context: BoundedContext,
    /// `<CONTEXT>_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/chorus_<context>`.
    /// Its `application_name`, if it has one, is replaced by the instance's name (see
    /// [`HealthReport::instance`]).
    pub database_url: String,
    /// `NATS_URL`, default `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// `<CONTEXT>_DATABASE_CONNECTIONS`, default 8.
    pub database_connections: u32,
}

impl Settings {
    pub fn from_env(context: BoundedContext) -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let prefix = context.name().to_uppercase();
        let connections_var = format!("{prefix}_DATABASE_CONNECTIONS");
        let database_connections = match var(&connections_var) {
            None => 8,
            Some(n) => n
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("{connections_var}={n:?} is not a positive number"))?,
        };
        Ok(Self {
            context,
            database_url: var(&format!("{prefix}_DATABASE_URL")).unwrap_or_else(|| {
                format!(
                    "postgres://postgres@127.0.0.1:5432/chorus_{}",
                    context.name()
                )
            }),
            nats_url: var("NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned()),
            database_connections,
        })
    }
}

/// How many requests of one command endpoint run at once.
const COMMANDS_IN_FLIGHT: usize = 64;

/// Runs one command request and answers it, in a span that the events it appends carry on.
async fn answer<C: Commands>(
    commands: &C,
    context: &'static str,
    name: &'static str,
    subject: &str,
    request: async_nats::service::Request,
    metrics: &CommandMetrics,
) {
    let started = Instant::now();
    let span = tracing::info_span!(
        "command",
        otel.name = %subject,
        otel.kind = "server",
        service = context,
        command = name,
        rejected = tracing::field::Empty,
    );
    let received = request_metadata(&request.message);
    // The events the command appends carry this span's trace context.
    let metadata = bus::traced(&span, &received).unwrap_or(received);
    let reply = commands
        .run(name, &request.message.payload, metadata)
        .instrument(span.clone())
        .await;
    let rejected = match &reply {
        CommandReply::Rejected { code, .. } => Some(code.as_str()),
        CommandReply::Accepted { .. } => None,
    };
    if let Some(code) = rejected {
        span.record("rejected", code);
    }
    metrics.answered(started, rejected);
    let body = serde_json::to_vec(&reply).unwrap_or_default();
    if let Err(e) = request.respond(Ok(body.into())).await {
        tracing::warn!(endpoint = %subject, error = %e, "cannot reply");
    }
}

/// A context's commands, answered over NATS request/reply.
pub trait Commands: Send + Sync + 'static {
    /// The command names, each an endpoint `chorus.<context>.<name>`.
    fn names(&self) -> &'static [&'static str];

    /// Runs the command `name` with its JSON `body`. A body that does not parse is answered
    /// with a rejection naming the field, never dropped.
    fn run(
        &self,
        name: &str,
        body: &[u8],
        metadata: Metadata,
    ) -> impl Future<Output = CommandReply> + Send;
}

/// One context's service process.
#[derive(Debug)]
pub struct Host {
    context: BoundedContext,
    store: Store,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    /// The NATS service `<context>`: the health endpoint and the command endpoints.
    service: Service,
    monitor: Monitor,
    metrics: Arc<Metrics>,
    scraper: Scraper,
    shutdown: CancellationToken,
    tasks: JoinSet<(String, anyhow::Result<()>)>,
}

impl Host {
    /// Connects, migrates the store, provisions the streams, starts the relay and the NATS
    /// service `<context>` with its health endpoint.
    pub async fn start(settings: &Settings) -> anyhow::Result<Self> {
        let context = settings.context;
        let metrics = Arc::new(Metrics::new(context).context("cannot register the metrics")?);
        let database_var = format!("{}_DATABASE_URL", context.name().to_uppercase());
        let instance = health::instance_name(context.name());
        let options: PgConnectOptions = settings
            .database_url
            .parse()
            .with_context(|| format!("{database_var} is not a PostgreSQL URL"))?;
        // Every session of this instance carries its name: the health check tells this
        // instance's relay from another's by it.
        let options = eventstore::generic_plans(options.application_name(&instance));
        let pool = eventstore::pool_options()
            .max_connections(settings.database_connections)
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open the {context} event store ({database_var})"))?;
        let counting = Arc::clone(&metrics);
        let store =
            Store::from_pool(pool).on_append(move |event_type| counting.appended(event_type));
        store
            .migrate()
            .await
            .with_context(|| format!("cannot migrate the {context} event store"))?;
        let client = bus::connect(&settings.nats_url, context.name())
            .await
            .context("NATS_URL")?;
        let js = async_nats::jetstream::new(client.clone());
        // Its own stream and the dead letters only: the other streams are their contexts',
        // and the consumers on them wait for them (see `react`).
        bus::provision::streams(&js, std::slice::from_ref(&context.stream()), 1).await?;

        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let relay =
            Relay::new(store.clone(), js.clone(), context.stream()).with_observer(metrics.relay());
        let token = shutdown.clone();
        tasks.spawn(async move {
            relay.run(token).await;
            ("relay".to_owned(), Ok(()))
        });

        let monitor = Monitor::new(
            context,
            instance,
            store.clone(),
            client.clone(),
            js.clone(),
            shutdown.clone(),
        );
        let scraper = Scraper::new(Arc::clone(&metrics), store.clone(), js.clone());
        let sources = Sources {
            monitor: monitor.clone(),
            scraper: scraper.clone(),
        };
        let (service, answering) = health::start_service(
            &client,
            context.name(),
            format!("The {context} context: its commands and its health"),
            sources,
            shutdown.clone(),
        )
        .await?;
        tasks.spawn(async move {
            answering.await;
            (format!("endpoint {}", health_subject(context)), Ok(()))
        });
        Ok(Self {
            context,
            store,
            client,
            js,
            service,
            monitor,
            metrics,
            scraper,
            shutdown,
            tasks,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Cancelling it stops the host, as a signal would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The service's health now, as `chorus.<context>.health` answers it.
    pub async fn health(&self) -> HealthReport {
        self.monitor.report().await
    }

    /// The metrics now, as `GET /metrics` serves them: the sampled series (outbox backlog,
    /// consumer lag) read first.
    pub async fn scrape_metrics(&self) -> String {
        self.scraper.scrape().await
    }

    /// Serves `GET /healthz`, `GET /readyz` and `GET /metrics` on `addr` (see [`http`]) until
    /// the host stops. Returns the address it listens on (with port 0, the port the system
    /// chose). An address it cannot listen on fails here, naming `<CONTEXT>_HTTP_ADDR`.
    pub async fn listen_http(&mut self, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
        let sources = Sources {
            monitor: self.monitor.clone(),
            scraper: self.scraper.clone(),
        };
        let (local, serving) =
            http::listen(self.context, addr, sources, self.shutdown.clone()).await?;
        self.tasks
            .spawn(async move { (format!("HTTP listener {local}"), serving.await) });
        Ok(local)
    }

    /// Runs `handler` on each of the durable consumers `specs`. A consumer whose stream does
    /// not exist yet (its context has not started) waits for it, and its check says so
    /// ([`CheckState::Waiting`], not ready) until the stream is there.
    pub fn react<H: Handler>(&mut self, specs: Vec<ConsumerSpec>, handler: Arc<H>) {
        for spec in specs {
            let name = spec.name.clone();
            let health = self.monitor.register(CheckKind::Consumer, &name);
            self.scraper.add_consumer(&spec.stream.name(), &name);
            let js = self.js.clone();
            let consumer = Consumer::new(
                self.store.clone(),
                self.js.clone(),
                spec.clone(),
                Arc::clone(&handler),
            )
            .with_observer(self.metrics.consumer(&name));
            let token = self.shutdown.clone();
            self.tasks.spawn(async move {
                let waiting = health.clone();
                let found = bus::provision::consumer_when_stream_exists(&js, &spec, |why| {
                    waiting.set(CheckState::Waiting, Some(why));
                });
                let found = tokio::select! {
                    () = token.cancelled() => Ok(None),
                    found = found => found.map(Some),
                };
                let outcome = match found {
                    // The runtime creates the consumer again (which changes nothing) and pulls.
                    Ok(Some(_)) => {
                        health.set(CheckState::Running, None);
                        consumer.run(token).await
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                let detail = match &outcome {
                    Ok(()) => "stopped".to_owned(),
                    Err(e) => format!("{e:#}"),
                };
                health.set(CheckState::Stopped, Some(detail));
                (name, outcome)
            });
        }
    }

    /// Fires the due deadlines of `kind` with `handler`.
    pub fn tick<H: DeadlineHandler>(&mut self, kind: &str, handler: Arc<H>) {
        let ticker = Ticker::new(self.store.clone(), kind, handler);
        let token = self.shutdown.clone();
        let name = format!("ticker {kind}");
        let health = self.monitor.register(CheckKind::Ticker, kind);
        let metrics = self.metrics.ticker(kind);
        self.tasks.spawn(async move {
            let observer = health.clone();
            ticker
                .run_observed(token, move |tick| {
                    metrics.ticked(tick);
                    match &tick.error {
                        None => observer.set(CheckState::Running, None),
                        Some(e) => observer.set(
                            CheckState::Failing,
                            Some(format!("the last tick failed: {e}")),
                        ),
                    }
                })
                .await;
            health.set(CheckState::Stopped, Some("stopped".to_owned()));
            (name, Ok(()))
        });
    }

    /// Serves `commands` in the NATS service `<context>`, one endpoint per command.
    pub async fn serve<C: Commands>(&mut self, commands: Arc<C>) -> anyhow::Result<()> {
        let context = self.context.name();
        let health = health::HEALTH_ENDPOINT;
        anyhow::ensure!(
            !commands.names().contains(&health),
            "a command cannot be named {health}: chorus.{context}.{health} is the health endpoint"
        );
        for name in commands.names() {
            let subject = command_subject(context, name);
            let mut endpoint = self
                .service
                .endpoint_builder()
                .name(*name)
                .add(&subject)
                .await
                .map_err(|e| anyhow::anyhow!("cannot add endpoint {subject}: {e}"))?;
            let commands = Arc::clone(&commands);
            let token = self.shutdown.clone();
            let metrics = Arc::new(self.metrics.command(name));
            self.tasks.spawn(async move {
                // Requests run side by side, up to a bound, so that concurrent commands share
                // the event store's group commits; one at a time, every command would wait for
                // a commit of its own.
                let in_flight = Arc::new(Semaphore::new(COMMANDS_IN_FLIGHT));
                let mut running = JoinSet::new();
                loop {
                    let permit = tokio::select! {
                        () = token.cancelled() => break,
                        permit = Arc::clone(&in_flight).acquire_owned() => {
                            permit.expect("the semaphore is never closed")
                        }
                    };
                    let request = tokio::select! {
                        () = token.cancelled() => break,
                        request = endpoint.next() => match request {
                            Some(request) => request,
                            None => break,
                        },
                    };
                    while running.try_join_next().is_some() {}
                    let commands = Arc::clone(&commands);
                    let metrics = Arc::clone(&metrics);
                    let subject = subject.clone();
                    running.spawn(async move {
                        answer(&*commands, context, name, &subject, request, &metrics).await;
                        drop(permit);
                    });
                }
                // The commands in hand are finished and answered before the service stops.
                while running.join_next().await.is_some() {}
                (format!("endpoint {subject}"), Ok(()))
            });
        }
        Ok(())
    }

    /// Runs until `stop` completes or a task fails, then stops every task in order: the NATS
    /// service leaves (requests go to the other instances), the tasks finish their work in
    /// hand, the health listener closes.
    pub async fn run(mut self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        tracing::info!(context = %self.context, "running");
        let failure = tokio::select! {
            biased;
            () = stop => None,
            () = self.shutdown.cancelled() => None,
            Some(done) = self.tasks.join_next() => match done {
                // A task that ends because the host is stopping is not a failure.
                _ if self.shutdown.is_cancelled() => None,
                Ok((name, Ok(()))) => Some(anyhow::anyhow!("{name} stopped on its own")),
                Ok((name, Err(e))) => Some(e.context(name)),
                Err(e) => Some(anyhow::anyhow!("a task panicked: {e}")),
            },
        };
        self.shutdown.cancel();
        if let Err(e) = self.service.stop().await {
            tracing::warn!(error = %e, "cannot stop the NATS service");
        }
        let drain = async {
            while let Some(done) = self.tasks.join_next().await {
                if let Ok((name, Err(e))) = done {
                    tracing::warn!(task = %name, error = format!("{e:#}"), "stopped with an error");
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), drain)
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop within 30 s");
        }
        if tokio::time::timeout(Duration::from_secs(5), self.client.flush())
            .await
            .is_err()
        {
            tracing::warn!("NATS did not take the last messages within 5 s");
        }
        tracing::info!(context = %self.context, "stopped");
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// What a host answers its probes and scrapes from.
#[derive(Debug, Clone)]
struct Sources {
    monitor: Monitor,
    scraper: Scraper,
}

impl http::Observed for Sources {
    async fn health(&self) -> HealthReport {
        self.monitor.report().await
    }

    async fn metrics(&self) -> String {
        self.scraper.scrape().await
    }
}

/// Correlation and trace context from a request's headers.
fn request_metadata(message: &async_nats::Message) -> Metadata {
    let get = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    Metadata {
        correlation_id: get(headers::CORRELATION_ID),
        causation_id: None,
        traceparent: get(headers::TRACEPARENT),
        tracestate: get(headers::TRACESTATE),
    }
}

/// The `main` of a service binary: sets up logs and traces (see [`telemetry`]), runs `run` on
/// a multi-threaded runtime, exports the last spans, and exits with 1 (the error on stderr,
/// with its causes) if it fails.
///
/// Logs go to stderr, filtered by `RUST_LOG` (default `info,sqlx=warn`), as text or, with
/// `CHORUS_LOG_FORMAT=json`, as JSON lines; traces go over OTLP when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, under `OTEL_SERVICE_NAME` or else `name`.
pub fn main<F, Fut>(name: &str, run: F) -> std::process::ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let outcome = telemetry::init(name).and_then(|telemetry| {
        let outcome = tokio::runtime::Runtime::new()
            .context("cannot start the async runtime")
            .and_then(|runtime| runtime.block_on(run()));
        telemetry.shutdown();
        outcome
    });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{name} failed");
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves when the process gets Ctrl-C or SIGTERM.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                ctrl_c.await.ok();
            }
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.ok();
}
