//! The outbox relay: publishes a context's committed events to its JetStream stream.
//!
//! **One active relay per store.** A relay first takes a PostgreSQL advisory lock on a
//! connection of its own ([`RelayLock`]) and does all its outbox work on that connection. The
//! others wait for the lock; if the active relay dies, its session ends, the lock is released,
//! and one of them takes over. (Leasing rows with `FOR UPDATE SKIP LOCKED` would let two relays
//! publish parts of one aggregate's history in parallel, out of order.) `chorus republish`
//! takes the same lock, so that it never races a relay on one aggregate's events.
//!
//! **Fail-over after host or network loss.** A relay process that exits or crashes closes its
//! connection, and PostgreSQL ends the session at once. A host that vanishes (power, network
//! partition) sends nothing: the server would keep the dead session, and its lock, until the
//! operating system's TCP keepalive gives up, two hours and more by default. So the lock
//! connection sets the server-side keepalive of its own session
//! ([`RelayConfig::keepalive_idle`], `_interval`, `_count`; by default 10 s, 5 s, 3 probes) and
//! `tcp_user_timeout` to the same total, which also bounds the case where the server was
//! sending to the vanished host when it went. PostgreSQL then ends the dead session, and
//! releases the lock, at most `idle + interval × count` after the last sign of life (25 s by
//! default); a standby takes over within its `retry_delay` after that. The settings apply to
//! TCP connections: over a Unix-domain socket the relay and the server share a host, and
//! there is no host to lose without the server.
//!
//! **Exactly once in the stream.** Each event is published with `Nats-Msg-Id` = its event id
//! and removed from the outbox only after JetStream acknowledged it. A relay that dies between
//! the two leaves the rows; the next one publishes them again and JetStream drops the
//! duplicates (within its duplicate window; consumers' inboxes cover the rest).
//!
//! **Per-aggregate order, pipelined.** A batch is split into waves: wave *k* holds the *k*-th
//! event of each aggregate in the batch. All publishes of a wave are in flight at once; the
//! next wave starts when every ack of this one is in. A failed publish stops the batch, so no
//! event is ever published before an earlier event of its aggregate is acknowledged.
//!
//! **Traced.** Each publish is a span (`publish`, producer, from the publish to its ack), a
//! child of the span that recorded the event (its stored `traceparent`); the message carries
//! the publish span's trace context, so the consumer's span is a child of the publish, and the
//! trace shows the time an event spent in the outbox. The stored event keeps its recorder's
//! context.
//!
//! **The store's statistics.** The active relay is the one process that looks after its store:
//! besides vacuuming the outbox and the deadlines, it analyzes the store's tables each time
//! they double ([`eventstore::Analyzer`], in a task beside the relay's own), so that the
//! statements every connection keeps prepared are planned again for the tables' sizes,
//! whether or not autovacuum runs.
//!
//! **Observed, not measured here.** A [`RelayObserver`] is told of every round JetStream
//! acknowledged; what it makes of it (the service's metrics) is not this crate's concern.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use events::naming::StreamName;
use eventstore::{OUTBOX_CHANNEL, Store, StoredEvent};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::message::event_headers;

/// How soon a relay that has just published looks at the outbox again, notified or not.
const BUSY_POLL: Duration = Duration::from_millis(5);

/// Tuning of a relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Outbox rows read and published per round.
    pub batch_size: i64,
    /// How often to look at the outbox when no notification arrives.
    pub poll_interval: Duration,
    /// Pause after a failure, and between attempts to take the lock.
    pub retry_delay: Duration,
    /// How long the lock connection may be silent before PostgreSQL probes the relay's host
    /// (`tcp_keepalives_idle`; whole seconds, at least 1).
    pub keepalive_idle: Duration,
    /// Time between two unanswered probes (`tcp_keepalives_interval`; whole seconds, at least 1).
    pub keepalive_interval: Duration,
    /// Unanswered probes after which PostgreSQL ends the session and releases the lock
    /// (`tcp_keepalives_count`).
    pub keepalive_count: u32,
    /// Rows deleted from the outbox between two vacuums by the relay of the outbox and the
    /// deadlines ([`Store::vacuum_queues`]). Every published row leaves a dead tuple that each
    /// read of the outbox's head steps over until a vacuum: the relay does not leave this to
    /// autovacuum, which may be off or a minute away.
    pub vacuum_every: usize,
    /// How often to ask which of the store's tables have grown enough to be analyzed
    /// ([`eventstore::analyze_grown`]).
    pub statistics_every: Duration,
}

impl RelayConfig {
    /// How long after the relay's host vanished PostgreSQL releases its lock, at most:
    /// `idle + interval × count`.
    pub fn failover_bound(&self) -> Duration {
        let (idle, interval, count) = self.keepalive();
        Duration::from_secs(idle + interval * u64::from(count))
    }

    /// The keepalive settings as PostgreSQL takes them: seconds, seconds, probes.
    fn keepalive(&self) -> (u64, u64, u32) {
        (
            self.keepalive_idle.as_secs().max(1),
            self.keepalive_interval.as_secs().max(1),
            self.keepalive_count.max(1),
        )
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 1_000,
            poll_interval: Duration::from_secs(1),
            retry_delay: Duration::from_millis(500),
            keepalive_idle: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(5),
            keepalive_count: 3,
            vacuum_every: 10_000,
            statistics_every: Duration::from_secs(10),
        }
    }
}

/// What a publish round achieved.
#[derive(Debug, Default)]
pub struct Published {
    /// Positions of the events JetStream acknowledged, duplicates included.
    pub acked: Vec<i64>,
    /// How many of them JetStream acknowledged as duplicates of a message it already had
    /// (same `Nats-Msg-Id` within its duplicate window) and did not store again.
    pub duplicates: u64,
    /// Why the round stopped early, if it did.
    pub failure: Option<anyhow::Error>,
}

/// Told what a [`Relay`] publishes, e.g. to count it and time it.
pub trait RelayObserver: Send + Sync + 'static {
    /// JetStream acknowledged `events` (in one round, just now); `duplicates` of them it
    /// already had and did not store again. Called before they leave the outbox.
    fn published(&self, events: &[&StoredEvent], duplicates: u64);
}

/// The connection a relay works on: it holds the advisory lock of one stream's relay, and
/// PostgreSQL ends its session (and so releases the lock) soon after its host vanishes.
#[derive(Debug)]
pub struct RelayLock {
    conn: PgConnection,
    key: i64,
}

impl RelayLock {
    /// Opens a connection of its own to `store`'s database and sets its session's TCP
    /// keepalive from `config`. It does not take the lock yet.
    pub async fn connect(
        store: &Store,
        stream: &StreamName,
        config: &RelayConfig,
    ) -> anyhow::Result<Self> {
        let mut conn = PgConnection::connect_with(&store.pool().connect_options())
            .await
            .context("cannot connect to the event store")?;
        let (idle, interval, count) = config.keepalive();
        let user_timeout_ms = config.failover_bound().as_millis().to_string();
        // The session's only writes are the deletions of published rows, and they need not
        // wait for the disk: a deletion lost in a crash publishes its rows again, which
        // JetStream drops as duplicates (and the consumers' inboxes would skip).
        sqlx::query(
            "SELECT set_config('tcp_keepalives_idle', $1, false), \
                    set_config('tcp_keepalives_interval', $2, false), \
                    set_config('tcp_keepalives_count', $3, false), \
                    set_config('tcp_user_timeout', $4, false), \
                    set_config('synchronous_commit', 'off', false)",
        )
        .bind(idle.to_string())
        .bind(interval.to_string())
        .bind(count.to_string())
        .bind(user_timeout_ms)
        .execute(&mut conn)
        .await
        .context("cannot set the TCP keepalive of the relay's session")?;
        Ok(Self {
            conn,
            key: relay_lock_key(stream),
        })
    }

    /// Takes the lock unless another session holds it; true when this session holds it.
    /// Once taken, it is held until the connection closes.
    pub async fn try_acquire(&mut self) -> anyhow::Result<bool> {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(self.key)
            .fetch_one(&mut self.conn)
            .await
            .context("cannot ask for the relay lock")?;
        Ok(locked)
    }

    /// The connection, for the outbox work done under the lock.
    pub fn connection(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// Drains one context's outbox into its stream.
#[derive(Clone)]
pub struct Relay {
    store: Store,
    js: jetstream::Context,
    stream: StreamName,
    config: RelayConfig,
    observer: Option<Arc<dyn RelayObserver>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("stream", &self.stream)
            .field("config", &self.config)
            .field("observed", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl Relay {
    pub fn new(store: Store, js: jetstream::Context, stream: StreamName) -> Self {
        Self {
            store,
            js,
            stream,
            config: RelayConfig::default(),
            observer: None,
        }
    }

    pub fn with_config(mut self, config: RelayConfig) -> Self {
        self.config = config;
        self
    }

    /// Tells `observer` of every round JetStream acknowledged.
    pub fn with_observer(mut self, observer: Arc<dyn RelayObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Runs until `shutdown`: waits for the lock, then publishes whatever the outbox holds,
    /// woken by a commit through its store in this process ([`Store::committed`]), by
    /// LISTEN/NOTIFY (commits of other processes), or by the poll interval. Failures are
    /// logged and retried.
    pub async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.lead(&shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(stream = %self.stream.name(), error = format!("{e:#}"), "relay failed; starting over");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(self.config.retry_delay) => {}
                    }
                }
            }
        }
    }

    /// Holds the lock and relays until shutdown (`Ok`) or a database failure (`Err`).
    async fn lead(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut lock = RelayLock::connect(&self.store, &self.stream, &self.config)
            .await
            .context("relay cannot open its lock connection")?;
        while !lock.try_acquire().await? {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.config.retry_delay) => {}
            }
        }
        tracing::info!(stream = %self.stream.name(), "relay is active");

        // A pool of its own: a listener holds its connection for as long as it listens, which
        // would otherwise take one from the store's pool (and its group commit).
        let options = self.store.pool().connect_options();
        let listening = eventstore::pool_options()
            .max_connections(1)
            .connect_with(options.as_ref().clone())
            .await?;
        let mut listener = PgListener::connect_with(&listening).await?;
        listener.listen(OUTBOX_CHANNEL).await?;
        let mut wait = self.config.poll_interval;
        let mut removed = 0;
        let mut analyzer = eventstore::Analyzer::new(
            self.store.pool().clone(),
            None,
            self.config.statistics_every,
        );
        loop {
            let busy = self
                .drain(lock.connection(), shutdown, &mut removed)
                .await?;
            analyzer.tick();
            // A commit that raced with the last read of a busy outbox sends no notification
            // (the trigger saw older rows, since deleted): look again soon while work comes
            // in, and back off to the poll interval once it stops.
            wait = if busy {
                BUSY_POLL.min(self.config.poll_interval)
            } else {
                (wait * 2).min(self.config.poll_interval)
            };
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                notified = listener.recv() => { notified?; }
                () = self.store.committed() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Publishes outbox batches until a read finds fewer rows than a batch (the outbox held no
    /// more when it was read), or shutdown is asked for; whether it published anything.
    /// `removed` counts the rows deleted since the outbox was last vacuumed.
    ///
    /// A short batch ends the round without reading the outbox again: rows committed since
    /// the read wake the relay (a commit in this process at once, through
    /// [`Store::committed`]; another's by its NOTIFY or by the busy poll of [`Self::lead`]),
    /// and under light load the read that would find nothing was one statement in three.
    async fn drain(
        &self,
        conn: &mut PgConnection,
        shutdown: &CancellationToken,
        removed: &mut usize,
    ) -> anyhow::Result<bool> {
        let mut busy = false;
        while !shutdown.is_cancelled() {
            let batch = Store::outbox_batch(conn, self.config.batch_size).await?;
            if batch.is_empty() {
                return Ok(busy);
            }
            busy = true;
            let published = publish_events(&self.js, &self.stream, &batch).await;
            if let Some(observer) = &self.observer
                && !published.acked.is_empty()
            {
                let acked: HashSet<i64> = published.acked.iter().copied().collect();
                let events: Vec<&StoredEvent> = batch
                    .iter()
                    .filter(|e| acked.contains(&e.position))
                    .collect();
                observer.published(&events, published.duplicates);
            }
            Store::outbox_remove(conn, &published.acked).await?;
            *removed += published.acked.len();
            if *removed >= self.config.vacuum_every {
                Store::vacuum_queues(conn).await?;
                *removed = 0;
            }
            if let Some(failure) = published.failure {
                tracing::warn!(stream = %self.stream.name(), error = format!("{failure:#}"), "publish failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(busy),
                    () = tokio::time::sleep(self.config.retry_delay) => {}
                }
            } else if (batch.len() as i64) < self.config.batch_size {
                return Ok(busy);
            }
        }
        Ok(busy)
    }
}

/// Most publishes awaiting their ack at once: a large wave is acknowledged in slices, below
/// the JetStream context's limit of pending acks (it would otherwise wait on itself).
const MAX_IN_FLIGHT: usize = 1_000;

/// Publishes `events` (in position order) to `stream` as the relay does, and reports what was
/// acknowledged. Used by the relay for its outbox batches and by `chorus republish` for the
/// event store, so that both publish the same messages the same way.
///
/// Each event goes to its subject from [`StreamName::event_subject`] with the
/// [`event_headers`] of its envelope (`Nats-Msg-Id` = event id). The events are published
/// wave by wave: wave *k* holds the *k*-th event of each aggregate, all in flight at once, and
/// the next wave starts when every ack of this one is in. The first failure stops the round,
/// so no event is ever published before an earlier event of its aggregate is acknowledged.
/// It touches no outbox.
pub async fn publish_events(
    js: &jetstream::Context,
    stream: &StreamName,
    events: &[StoredEvent],
) -> Published {
    let mut published = Published::default();
    for wave in waves(events) {
        for slice in wave.chunks(MAX_IN_FLIGHT) {
            let mut pending = Vec::with_capacity(slice.len());
            for event in slice {
                let span = tracing::info_span!(
                    "publish",
                    otel.name = %format_args!("publish {}", event.event_type),
                    otel.kind = "producer",
                    otel.status_code = tracing::field::Empty,
                    service = %stream.context(),
                    event_type = %event.event_type,
                    event_id = %event.event_id,
                    aggregate_id = %event.aggregate_id,
                );
                match send(js, stream, event, &span).await {
                    Ok(ack) => pending.push((event.position, ack, span)),
                    Err(e) => {
                        span.record("otel.status_code", "ERROR");
                        published.failure = Some(e);
                        break;
                    }
                }
            }
            // Each span ends with its ack.
            for (position, ack, span) in pending {
                match ack.await {
                    Ok(ack) => {
                        published.acked.push(position);
                        published.duplicates += u64::from(ack.duplicate);
                    }
                    Err(e) => {
                        span.record("otel.status_code", "ERROR");
                        published.failure.get_or_insert_with(|| {
                            anyhow!(e).context(format!("no ack for event at position {position}"))
                        });
                    }
                }
            }
            if published.failure.is_some() {
                return published;
            }
        }
    }
    published
}

/// Publishes `event` from `span`: the message carries the span's trace context, when it has
/// one, instead of the recorder's.
async fn send(
    js: &jetstream::Context,
    stream: &StreamName,
    event: &StoredEvent,
    span: &tracing::Span,
) -> anyhow::Result<jetstream::context::PublishAckFuture> {
    let subject = stream.event_subject(
        &event.aggregate_type,
        &event.aggregate_id,
        &event.event_type,
    )?;
    let payload = Bytes::from(event.payload.clone().into_bytes());
    let mut headers = event_headers(event);
    let metadata = &event.metadata;
    if let Some(trace) = crate::message::follow_trace(
        span,
        metadata.traceparent.as_deref(),
        metadata.tracestate.as_deref(),
    ) {
        // The span's trace state is the recorder's: it inherits it.
        headers.insert(events::headers::TRACEPARENT, trace.traceparent.as_str());
        if let Some(state) = &trace.tracestate {
            headers.insert(events::headers::TRACESTATE, state.as_str());
        }
    }
    let message = PublishMessage::build().payload(payload).headers(headers);
    js.send_publish(subject, message)
        .instrument(span.clone())
        .await
        .with_context(|| format!("cannot publish event at position {}", event.position))
}

/// Splits a batch into waves: wave k holds the k-th event of each aggregate, in batch order.
fn waves(batch: &[StoredEvent]) -> Vec<Vec<&StoredEvent>> {
    let mut waves: Vec<Vec<&StoredEvent>> = Vec::new();
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    for event in batch {
        let count = seen
            .entry((&event.aggregate_type, &event.aggregate_id))
            .or_insert(0);
        if waves.len() <= *count {
            waves.push(Vec::new());
        }
        waves[*count].push(event);
        *count += 1;
    }
    waves
}

/// The advisory-lock key of a stream's relay: a stable 64-bit FNV-1a hash of its name. Health
/// checks read who holds it from `pg_locks`.
pub fn relay_lock_key(stream: &StreamName) -> i64 {
    let hash = format!("chorus-relay:{}", stream.name())
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    i64::from_ne_bytes(hash.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: i64, aggregate: &str) -> StoredEvent {
        StoredEvent {
            position,
            event_id: uuid::Uuid::now_v7(),
            aggregate_type: "t".into(),
            aggregate_id: aggregate.into(),
            sequence: 1,
            event_type: "E".into(),
            schema_version: 1,
            payload: "{}".into(),
            metadata: Default::default(),
            recorded_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_wave_never_holds_two_events_of_one_aggregate() {
        let batch = [
            event(1, "a"),
            event(2, "b"),
            event(3, "a"),
            event(4, "a"),
            event(5, "c"),
        ];
        let positions: Vec<Vec<i64>> = waves(&batch)
            .iter()
            .map(|w| w.iter().map(|e| e.position).collect())
            .collect();
        assert_eq!(positions, vec![vec![1, 2, 5], vec![3], vec![4]]);
    }

    #[test]
    fn each_stream_has_its_own_lock() {
        let a = relay_lock_key(&StreamName::for_context("ordering"));
        let b = relay_lock_key(&StreamName::for_context("inventory"));
        assert_ne!(a, b);
        assert_eq!(a, relay_lock_key(&StreamName::for_context("ordering")));
    }
}
