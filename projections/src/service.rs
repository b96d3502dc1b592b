//! The projections service: the three live writers and the query service, in one process.
//!
//! [`start`] connects to the projections database and NATS, creates the live schemas that do
//! not exist yet, and starts a writer per projection, the listener that wakes read-your-writes queries,
//! and the query endpoints. [`Service::run`] runs until told to stop or until a task fails,
//! then stops in order: writers finish and commit the batch in hand.
//!
//! It provisions no stream (its NATS user may not): each context creates its own. Started
//! before a context, a writer finds that context's stream missing, fails its session and
//! starts again after a pause until the stream is there.
//!
//! Several instances may run: the writers stand by behind their locks, the query endpoints
//! share the load through their queue group.
//!
//! The service reports its health on `chorus.projections.health` (the NATS service
//! `projections`) and, with [`Service::listen_http`], on `GET /readyz`, next to `GET /metrics`
//! (see the private `health` and `metrics` modules). Each query is answered in a span
//! (`query`), a child of the request's `traceparent`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::service::ServiceExt;
use events::command::QUEUE_GROUP;
use events::query::{ENDPOINTS, SERVICE, query_subject};
use futures::StreamExt;
use host::health::{CheckKind, CheckState, HealthReport, Tasks};
use host::http::Observed as _;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use crate::health::NAME;
use crate::health::Observer;
use crate::metrics::Metrics;
use crate::projection::{Projection, create_schema, ddl_lock};
use crate::query::{Advances, Queries};
use crate::runner::{DEFAULT_BATCH_SIZE, DEFAULT_LINGER, Runner, follow_headers};

/// The setting of the projections database.
pub const DATABASE_URL_VAR: &str = "PROJECTIONS_DATABASE_URL";
/// The setting of the projections database's pool size.
pub const DATABASE_CONNECTIONS_VAR: &str = "PROJECTIONS_DATABASE_CONNECTIONS";
/// The setting of the batch size of the writers.
pub const BATCH_SIZE_VAR: &str = "PROJECTIONS_BATCH_SIZE";
/// The setting of how long a live writer waits for more messages to fill a batch.
pub const LINGER_VAR: &str = "PROJECTIONS_LINGER_MS";
/// The setting of the HTTP listener (`/healthz`, `/readyz`, `/metrics`), read by the binary
/// with `host::http_addr_from_env` and given to [`Service::listen_http`].
pub const HTTP_ADDR_VAR: &str = "PROJECTIONS_HTTP_ADDR";

/// The service's settings, read once from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `PROJECTIONS_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/chorus_projections`.
    pub database_url: String,
    /// `NATS_URL`, default `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// `PROJECTIONS_DATABASE_CONNECTIONS`, default 8: the shared pool's (queries, listener,
    /// rebuilds). Each live writer holds three more of its own (its lock, its batches).
    pub database_connections: u32,
    /// `PROJECTIONS_BATCH_SIZE`: messages per transaction, at most; default 1,000.
    pub batch_size: usize,
    /// `PROJECTIONS_LINGER_MS`: how long a live writer that has a batch begun waits for more
    /// messages before it commits, in milliseconds; default 10, 0 for no wait.
    pub linger: Duration,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Settings from `var` (the environment, or a test's map); empty values count as unset.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        let positive = |name: &str, default: u32| -> anyhow::Result<u32> {
            match var(name) {
                None => Ok(default),
                Some(v) => v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("{name}={v:?} is not a positive number")),
            }
        };
        Ok(Self {
            database_url: var(DATABASE_URL_VAR).unwrap_or_else(|| {
                "postgres://postgres@127.0.0.1:5432/chorus_projections".to_owned()
            }),
            nats_url: var("NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned()),
            database_connections: positive(DATABASE_CONNECTIONS_VAR, 8)?,
            batch_size: positive(BATCH_SIZE_VAR, DEFAULT_BATCH_SIZE as u32)? as usize,
            linger: match var(LINGER_VAR) {
                None => DEFAULT_LINGER,
                Some(v) => Duration::from_millis(
                    v.parse::<u64>()
                        .ok()
                        .filter(|ms| *ms <= 1_000)
                        .with_context(|| {
                            format!(
                                "{LINGER_VAR}={v:?} is not a number of milliseconds from 0 to 1000"
                            )
                        })?,
                ),
            },
        })
    }
}

/// The running service.
#[derive(Debug)]
pub struct Service {
    pool: PgPool,
    client: async_nats::Client,
    /// The NATS service `projections`: its health endpoint.
    health_service: async_nats::service::Service,
    observer: Observer,
    shutdown: CancellationToken,
    tasks: JoinSet<(String, anyhow::Result<()>)>,
}

/// Starts the projections service on `settings` (see the module docs). The caller runs the
/// returned service (`service.run(stop)`).
pub async fn start(settings: &Settings) -> anyhow::Result<Service> {
    // The listener, the queries and the rebuilds: each live writer connects on its own.
    let pool = eventstore::pool_options()
        .max_connections(settings.database_connections.max(4))
        .connect(&settings.database_url)
        .await
        .with_context(|| format!("cannot open the projections database ({DATABASE_URL_VAR})"))?;
    create_live_schemas(&pool)
        .await
        .context("cannot create the projections' schemas")?;
    let client = bus::connect(&settings.nats_url, "projections")
        .await
        .context("NATS_URL")?;
    let js = async_nats::jetstream::new(client.clone());

    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let observer = Observer {
        instance: host::health::instance_name(NAME),
        pool: pool.clone(),
        client: client.clone(),
        js: js.clone(),
        tasks: Tasks::default(),
        metrics: Arc::new(Metrics::new().context("cannot register the metrics")?),
        shutdown: shutdown.clone(),
        sampling: Arc::default(),
    };
    for projection in Projection::ALL {
        let runner = Runner::new(
            pool.clone(),
            js.clone(),
            projection,
            projection.schema().to_owned(),
            settings.batch_size,
            true,
        )
        .with_linger(settings.linger)
        .with_metrics(Arc::new(observer.metrics.writer(projection)));
        let token = shutdown.clone();
        let health = observer
            .tasks
            .register(CheckKind::Projection, projection.name());
        tasks.spawn(async move {
            runner.run_live(token).await;
            health.set(CheckState::Stopped, Some("stopped".to_owned()));
            (format!("writer {projection}"), Ok(()))
        });
    }
    let advances = Advances::new();
    let listener = advances.clone();
    let (listen_pool, token) = (pool.clone(), shutdown.clone());
    tasks.spawn(async move {
        listener.listen(listen_pool, token).await;
        ("notification listener".to_owned(), Ok(()))
    });

    let queries = Arc::new(Queries::new(pool.clone(), js.clone(), advances));
    let service = client
        .service_builder()
        .description("Queries of the Chorus read models")
        .queue_group(QUEUE_GROUP)
        .start(SERVICE, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the query service: {e}"))?;
    let service = Arc::new(service);
    let query_health = observer.tasks.register(CheckKind::Service, SERVICE);
    for name in ENDPOINTS {
        let subject = query_subject(name);
        let mut endpoint = service
            .endpoint_builder()
            .name(name)
            .add(&subject)
            .await
            .map_err(|e| anyhow::anyhow!("cannot add endpoint {subject}: {e}"))?;
        let queries = Arc::clone(&queries);
        let token = shutdown.clone();
        let service = Arc::clone(&service);
        let (health, metrics) = (query_health.clone(), Arc::clone(&observer.metrics));
        tasks.spawn(async move {
            // Keeps the service (and its stats) alive as long as an endpoint runs.
            let _service = service;
            // Requests are answered concurrently: one waiting for its read model must not
            // hold up the others.
            let mut answering = JoinSet::new();
            loop {
                let request = tokio::select! {
                    () = token.cancelled() => break,
                    Some(_) = answering.join_next(), if !answering.is_empty() => continue,
                    request = endpoint.next() => match request {
                        Some(request) => request,
                        None => break,
                    },
                };
                let queries = Arc::clone(&queries);
                let subject = subject.clone();
                let metrics = Arc::clone(&metrics);
                let started = Instant::now();
                let span = query_span(&subject, name, &request.message);
                let answer = async move {
                    let (body, outcome) = queries.answer(name, &request.message.payload).await;
                    tracing::Span::current().record("outcome", outcome);
                    metrics.answered(name, outcome, started);
                    if let Err(e) = request.respond(Ok(body.into())).await {
                        tracing::warn!(endpoint = %subject, error = %e, "cannot reply");
                    }
                };
                answering.spawn(answer.instrument(span));
            }
            while answering.join_next().await.is_some() {}
            health.set(
                CheckState::Stopped,
                Some(format!("endpoint {subject} stopped")),
            );
            (format!("endpoint {subject}"), Ok(()))
        });
    }
    let (health_service, answering) = host::health::start_service(
        &client,
        NAME,
        "The projections: their writers, the query service and their health".to_owned(),
        observer.clone(),
        shutdown.clone(),
    )
    .await?;
    tasks.spawn(async move {
        answering.await;
        ("health endpoint".to_owned(), Ok(()))
    });
    Ok(Service {
        pool,
        client,
        health_service,
        observer,
        shutdown,
        tasks,
    })
}

/// The span of a query, a child of the trace context in the request's headers.
fn query_span(subject: &str, name: &str, message: &async_nats::Message) -> tracing::Span {
    let span = tracing::info_span!(
        "query",
        otel.name = %subject,
        otel.kind = "server",
        service = NAME,
        query = name,
        outcome = tracing::field::Empty,
    );
    follow_headers(&span, message.headers.as_ref());
    span
}

/// Creates the live schema of every projection that has none.
async fn create_live_schemas(pool: &PgPool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    ddl_lock(&mut tx).await?;
    for projection in Projection::ALL {
        if create_schema(&mut tx, projection, projection.schema()).await? {
            tracing::info!(projection = %projection, "created the projection's schema");
        }
    }
    tx.commit().await?;
    Ok(())
}

impl Service {
    /// The projections database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Cancelling it stops the service, as a signal would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The service's health now, as `chorus.projections.health` answers it.
    pub async fn health(&self) -> HealthReport {
        self.observer.health().await
    }

    /// Serves `GET /healthz`, `GET /readyz` and `GET /metrics` on `addr` (see `host::http`)
    /// until the service stops. Returns the address it listens on (with port 0, the port the
    /// system chose). An address it cannot listen on fails here, naming
    /// `PROJECTIONS_HTTP_ADDR`.
    pub async fn listen_http(&mut self, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
        let (local, serving) =
            host::http::listen(NAME, addr, self.observer.clone(), self.shutdown.clone()).await?;
        self.tasks
            .spawn(async move { (format!("HTTP listener {local}"), serving.await) });
        Ok(local)
    }

    /// Runs until `stop` completes or a task fails, then stops every task in order.
    pub async fn run(mut self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        tracing::info!("projections running");
        let failure = tokio::select! {
            biased;
            () = stop => None,
            () = self.shutdown.cancelled() => None,
            Some(done) = self.tasks.join_next() => match done {
                _ if self.shutdown.is_cancelled() => None,
                Ok((name, Ok(()))) => Some(anyhow::anyhow!("{name} stopped on its own")),
                Ok((name, Err(e))) => Some(e.context(name)),
                Err(e) => Some(anyhow::anyhow!("a task panicked: {e}")),
            },
        };
        self.shutdown.cancel();
        if let Err(e) = self.health_service.stop().await {
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
        self.pool.close().await;
        tracing::info!("projections stopped");
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn settings_default_for_local_use() {
        let s = settings(&[]).unwrap();
        assert_eq!(
            s.database_url,
            "postgres://postgres@127.0.0.1:5432/chorus_projections"
        );
        assert_eq!(s.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(s.database_connections, 8);
        assert_eq!(s.batch_size, DEFAULT_BATCH_SIZE);
        assert_eq!(s.linger, Duration::from_millis(10));
        assert_eq!(
            settings(&[(LINGER_VAR, "0")]).unwrap().linger,
            Duration::ZERO
        );
    }

    #[test]
    fn the_http_listener_is_named_after_the_service() {
        assert_eq!(host::http_addr_var(NAME), HTTP_ADDR_VAR);
    }

    #[test]
    fn a_bad_setting_names_its_variable() {
        for (name, bad) in [
            (DATABASE_CONNECTIONS_VAR, "0"),
            (DATABASE_CONNECTIONS_VAR, "many"),
            (BATCH_SIZE_VAR, "-1"),
            (LINGER_VAR, "-1"),
            (LINGER_VAR, "5000"),
            (LINGER_VAR, "soon"),
        ] {
            let error = format!("{:#}", settings(&[(name, bad)]).unwrap_err());
            assert!(error.contains(name), "{name}={bad}: {error}");
        }
    }
}
