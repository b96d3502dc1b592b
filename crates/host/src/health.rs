//! Whether a context's service can do its work, for the gateway's `/readyz`, an orchestrator's
//! probes and an operator.
//!
//! A [`HealthReport`] is put together when it is asked for, from checks of what the service
//! depends on rather than from what its tasks believe about themselves:
//!
//! - **database**: a `SELECT 1` on the store's pool, within [`PROBE_TIMEOUT`];
//! - **jetstream**: the NATS connection is up and the context's stream answers for its info,
//!   within the same bound;
//! - **relay**: who holds the relay's advisory lock, read from `pg_locks`. The relay runs on a
//!   connection of its own and keeps no state anyone can read, but PostgreSQL knows which
//!   session holds the lock: *active* when it is a session of this instance (every connection
//!   of the instance carries its name as `application_name`), *standby* when another instance
//!   holds it (its relay publishes; this one takes over if that one dies), *failing* when no
//!   session holds it (this relay cannot connect or is between attempts, and no other relay
//!   publishes either). The events waiting in the outbox, and for how long, come with it;
//! - **consumers** and **tickers**: the tasks the host runs, as they report themselves:
//!   running, failing (a ticker whose last tick failed) or stopped.
//!
//! The service is ready when every check is, and not while it is stopping. The same report is
//! served over NATS (`chorus.<context>.health`) and over HTTP (`GET /readyz`, see [`crate::http`]).
//!
//! A service that is not a context (the projections) puts its report together from the same
//! parts: [`database`], [`jetstream`], [`Tasks`] for what its tasks say of themselves,
//! [`report`], and [`start_service`] to answer `chorus.<service>.health`.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::connection::State as ConnectionState;
use async_nats::service::{Service, ServiceExt as _};
use events::BoundedContext;
use events::command::{QUEUE_GROUP, command_subject};
pub use events::health::{
    Check, CheckKind, CheckState, HEALTH_ENDPOINT, HealthReport, health_subject,
};
use eventstore::Store;
use futures::StreamExt as _;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::http::Observed;

/// How long the database and the JetStream checks may take before they count as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Health requests answered at once, at most; more wait for a turn.
const CONCURRENT_HEALTH_REQUESTS: usize = 8;

/// A name for this instance of `service`: `chorus-<service>-<pid>-<random>`, unique among
/// instances on one host and, by its random part, across hosts.
pub fn instance_name(service: &str) -> String {
    let random = uuid::Uuid::now_v7().simple().to_string();
    // The last hex digits of a v7 id are random.
    let suffix = &random[random.len() - 8..];
    format!("chorus-{service}-{}-{suffix}", std::process::id())
}

/// Starts the NATS service `name` (queue group `chorus`) with its health endpoint
/// `chorus.<name>.health`, answered from `observed`. Returns the service, for more endpoints,
/// and the task that answers health requests until `shutdown`.
pub async fn start_service<O: Observed>(
    client: &async_nats::Client,
    name: &str,
    description: String,
    observed: O,
    shutdown: CancellationToken,
) -> anyhow::Result<(Service, impl Future<Output = ()> + Send + 'static)> {
    let service = client
        .service_builder()
        .description(description)
        .queue_group(QUEUE_GROUP)
        .start(name, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the {name} NATS service: {e}"))?;
    let subject = command_subject(name, HEALTH_ENDPOINT);
    let endpoint = service
        .endpoint_builder()
        .name(HEALTH_ENDPOINT)
        .add(&subject)
        .await
        .map_err(|e| anyhow::anyhow!("cannot add endpoint {subject}: {e}"))?;
    let answering = async move {
        endpoint
            .take_until(shutdown.cancelled_owned())
            .for_each_concurrent(CONCURRENT_HEALTH_REQUESTS, |request| {
                let (observed, subject) = (&observed, &subject);
                async move {
                    let report = observed.health().await;
                    let body = serde_json::to_vec(&report).unwrap_or_default();
                    if let Err(e) = request.respond(Ok(body.into())).await {
                        tracing::warn!(endpoint = %subject, error = %e, "cannot reply");
                    }
                }
            })
            .await;
    };
    Ok((service, answering))
}

/// What a task reports about itself.
#[derive(Debug)]
struct TaskStatus {
    kind: CheckKind,
    name: String,
    state: CheckState,
    detail: Option<String>,
    since: Instant,
}

/// A task's handle to report its state.
#[derive(Debug, Clone)]
pub struct TaskReporter {
    tasks: Arc<Mutex<Vec<TaskStatus>>>,
    index: usize,
}

impl TaskReporter {
    /// Records the task's state; the time it entered it changes only with the state.
    pub fn set(&self, state: CheckState, detail: Option<String>) {
        let mut tasks = lock(&self.tasks);
        if let Some(task) = tasks.get_mut(self.index) {
            if task.state != state {
                task.since = Instant::now();
            }
            task.state = state;
            task.detail = detail;
        }
    }
}

fn lock(tasks: &Mutex<Vec<TaskStatus>>) -> std::sync::MutexGuard<'_, Vec<TaskStatus>> {
    // Every update is one assignment: a poisoned list is still consistent.
    tasks
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The tasks of a service that report their own state (consumers, tickers, writers).
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tasks: Arc<Mutex<Vec<TaskStatus>>>,
}

impl Tasks {
    /// Adds a task to the report, running.
    pub fn register(&self, kind: CheckKind, name: &str) -> TaskReporter {
        let mut tasks = lock(&self.tasks);
        tasks.push(TaskStatus {
            kind,
            name: name.to_owned(),
            state: CheckState::Running,
            detail: None,
            since: Instant::now(),
        });
        TaskReporter {
            tasks: Arc::clone(&self.tasks),
            index: tasks.len() - 1,
        }
    }

    /// A check per task, as it last reported itself.
    pub fn checks(&self) -> Vec<Check> {
        let now = Instant::now();
        lock(&self.tasks)
            .iter()
            .map(|task| Check {
                kind: task.kind,
                name: task.name.clone(),
                state: task.state,
                ready: task.state.is_ready(),
                detail: task.detail.clone(),
                duration_ms: 0.0,
                since_ms: Some(
                    u64::try_from(now.duration_since(task.since).as_millis()).unwrap_or(u64::MAX),
                ),
            })
            .collect()
    }
}

/// The report of `service`'s `instance`, from `checks` made since `started`: ready when every
/// check is and the service is not stopping.
pub fn report(
    service: &str,
    instance: &str,
    stopping: bool,
    started: Instant,
    checks: Vec<Check>,
) -> HealthReport {
    HealthReport {
        context: service.to_owned(),
        instance: instance.to_owned(),
        ready: !stopping && checks.iter().all(|c| c.ready),
        stopping,
        duration_ms: millis(started.elapsed()),
        checks,
    }
}

/// `SELECT 1` on `pool` within [`PROBE_TIMEOUT`]; the check is named after the database.
pub async fn database(pool: &PgPool) -> Check {
    let started = Instant::now();
    let name = pool
        .connect_options()
        .get_database()
        .unwrap_or("database")
        .to_owned();
    let ping = sqlx::query("SELECT 1").execute(pool);
    let (state, detail) = match tokio::time::timeout(PROBE_TIMEOUT, ping).await {
        Ok(Ok(_)) => (CheckState::Up, None),
        Ok(Err(e)) => (CheckState::Down, Some(e.to_string())),
        Err(_) => (CheckState::Down, Some(no_answer())),
    };
    check(CheckKind::Database, name, state, detail, started)
}

/// The NATS connection is up and `stream` answers for its info within [`PROBE_TIMEOUT`].
pub async fn jetstream(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Check {
    let started = Instant::now();
    let name = stream.to_owned();
    let connection = client.connection_state();
    if connection != ConnectionState::Connected {
        let detail = format!("the NATS connection is {connection}");
        return check(
            CheckKind::Jetstream,
            name,
            CheckState::Down,
            Some(detail),
            started,
        );
    }
    // Getting the stream asks the server for its info.
    let info = async {
        let stream = js.get_stream(stream).await?;
        anyhow::Ok(stream.cached_info().state.clone())
    };
    let (state, detail) = match tokio::time::timeout(PROBE_TIMEOUT, info).await {
        Ok(Ok(stream)) => (
            CheckState::Up,
            Some(format!(
                "{} messages, last sequence {}",
                stream.messages, stream.last_sequence
            )),
        ),
        Ok(Err(e)) => (CheckState::Down, Some(format!("{e:#}"))),
        Err(_) => (CheckState::Down, Some(no_answer())),
    };
    check(CheckKind::Jetstream, name, state, detail, started)
}

/// Puts health reports together for one host.
#[derive(Debug, Clone)]
pub(crate) struct Monitor {
    context: BoundedContext,
    instance: String,
    store: Store,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    shutdown: CancellationToken,
    tasks: Tasks,
}

impl Monitor {
    pub(crate) fn new(
        context: BoundedContext,
        instance: String,
        store: Store,
        client: async_nats::Client,
        js: async_nats::jetstream::Context,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            context,
            instance,
            store,
            client,
            js,
            shutdown,
            tasks: Tasks::default(),
        }
    }

    /// Adds a task to the report, running.
    pub(crate) fn register(&self, kind: CheckKind, name: &str) -> TaskReporter {
        self.tasks.register(kind, name)
    }

    pub(crate) async fn report(&self) -> HealthReport {
        let started = Instant::now();
        let stream = self.context.stream().name();
        let (database, jetstream, relay) = tokio::join!(
            database(self.store.pool()),
            jetstream(&self.client, &self.js, &stream),
            self.relay()
        );
        let mut checks = vec![database, jetstream, relay];
        checks.extend(self.tasks.checks());
        report(
            self.context.name(),
            &self.instance,
            self.shutdown.is_cancelled(),
            started,
            checks,
        )
    }

    async fn relay(&self) -> Check {
        let started = Instant::now();
        let (state, detail) = match tokio::time::timeout(PROBE_TIMEOUT, self.relay_lock()).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => (
                CheckState::Failing,
                Some(format!("cannot tell who holds the relay lock: {e}")),
            ),
            Err(_) => (CheckState::Failing, Some(no_answer())),
        };
        check(
            CheckKind::Relay,
            self.context.stream().name(),
            state,
            detail,
            started,
        )
    }

    /// Who holds the relay's lock, and what waits in the outbox.
    async fn relay_lock(&self) -> Result<(CheckState, Option<String>), sqlx::Error> {
        // A bigint advisory lock shows in pg_locks as its two halves, unsigned.
        let holder: Option<Option<String>> = sqlx::query_scalar(
            "SELECT a.application_name FROM pg_locks l \
             LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.classid::bigint = ($1::bigint >> 32) & 4294967295 \
               AND l.objid::bigint = $1::bigint & 4294967295 \
             LIMIT 1",
        )
        .bind(bus::relay_lock_key(&self.context.stream()))
        .fetch_optional(self.store.pool())
        .await?;
        let (waiting, oldest): (i64, Option<f64>) = sqlx::query_as(
            // The oldest waiting event is the one with the lowest position: one index lookup,
            // where a join could scan the whole events table.
            "SELECT (SELECT count(*) FROM outbox), \
                    EXTRACT(EPOCH FROM now() - (SELECT recorded_at FROM events \
                        WHERE position = (SELECT min(position) FROM outbox)))::float8",
        )
        .fetch_one(self.store.pool())
        .await?;
        let outbox = match oldest {
            Some(seconds) if waiting > 0 => {
                format!("{waiting} events in the outbox, the oldest for {seconds:.1} s")
            }
            _ => "the outbox is empty".to_owned(),
        };
        Ok(match holder {
            Some(Some(name)) if name == self.instance => {
                (CheckState::Active, Some(format!("this instance; {outbox}")))
            }
            Some(name) => {
                let name = name.filter(|n| !n.is_empty());
                let name = name.as_deref().unwrap_or("a session without a name");
                (
                    CheckState::Standby,
                    Some(format!("{name} is active; {outbox}")),
                )
            }
            None => (
                CheckState::Failing,
                Some(format!("no relay holds the lock; {outbox}")),
            ),
        })
    }
}

/// A check of `kind` made since `started`, ready when `state` is.
pub fn check(
    kind: CheckKind,
    name: String,
    state: CheckState,
    detail: Option<String>,
    started: Instant,
) -> Check {
    Check {
        kind,
        name,
        state,
        ready: state.is_ready(),
        detail,
        duration_ms: millis(started.elapsed()),
        since_ms: None,
    }
}

fn no_answer() -> String {
    format!("no answer within {PROBE_TIMEOUT:?}")
}

/// Milliseconds, to the microsecond.
fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_working_states_are_ready() {
        let ready: Vec<_> = [
            CheckState::Up,
            CheckState::Down,
            CheckState::Active,
            CheckState::Standby,
            CheckState::Failing,
            CheckState::Running,
            CheckState::Stopped,
        ]
        .into_iter()
        .filter(|s| s.is_ready())
        .collect();
        assert_eq!(
            ready,
            [
                CheckState::Up,
                CheckState::Active,
                CheckState::Standby,
                CheckState::Running
            ]
        );
    }

    #[test]
    fn the_health_subject_is_in_the_context_namespace() {
        assert_eq!(
            health_subject(BoundedContext::Payments),
            "chorus.payments.health"
        );
    }

    #[test]
    fn durations_keep_microseconds() {
        assert_eq!(millis(Duration::from_micros(1_234_567)), 1_234.567);
    }
}
