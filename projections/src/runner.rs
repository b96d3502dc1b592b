//! The projection runtime: one writer per projection, reading its source streams with ordered
//! consumers and committing each batch, with its checkpoints, in one transaction.
//!
//! **Progress lives in the projection's database, not in JetStream.** A session reads the
//! checkpoints (last stream sequence applied, per source stream), opens an ordered consumer
//! on each stream starting right after its checkpoint (no durable consumer, no acks), and then
//! takes whatever messages are ready, up to a batch, across its streams. One transaction
//! applies the batch to the read model, records the last event applied per aggregate
//! (`applied`) and moves each stream's checkpoint with a compare-and-set. So the effect of a
//! message is exactly once: the checkpoint moves if and only if the data does. Any failure
//! (database, NATS, a consumer that ends) drops the consumers; the next session starts again
//! from what the database says. A durable consumer with acks would hold a second copy of the
//! progress, and a message redelivered after a failed batch could arrive after later ones.
//!
//! **Idempotent per aggregate.** An event whose aggregate already has an `applied` sequence at
//! or above its own is skipped. That makes a projection indifferent to events published twice
//! (a republish beyond JetStream's duplicate window) and to a stream deleted, recreated and
//! republished: the checkpoint keeps the stream's creation time, and when it differs the
//! checkpoint goes back to 0 and the new stream is read again, its known events skipped.
//!
//! **Compare-and-set, and the apply lock.** Each batch transaction first takes a
//! transaction-scoped advisory lock on its schema, then moves the checkpoints only from the
//! values the session holds. A rebuild swaps its schema in under the same lock, so a batch
//! runs entirely before or entirely after a swap; after one, the checkpoints differ and the
//! writer starts a new session from the swapped-in checkpoints (nothing lost, nothing twice).
//!
//! **One live writer per projection.** A live writer holds a session-scoped advisory lock on a
//! connection of its own; other instances stand by until it is released. After each commit it
//! notifies [`NOTIFY_CHANNEL`] with the projection's name, which wakes read-your-writes queries.
//!
//! **Poison messages** (envelope or payload that cannot be read) are copied by the live writer
//! to the dead-letter stream with the reason, before the batch that passes over them commits;
//! rebuilds only count and log them (the live writer dead-lettered them already).
//!
//! **Statistics.** The live writer analyzes its schema's tables each time they double
//! ([`eventstore::Analyzer`], in a task of its own), so that its prepared statements, planned
//! when the tables were small, are planned again.
//!
//! Batches commit with `synchronous_commit = off`: a crash of PostgreSQL may lose the last
//! batches, but never one without its checkpoint, so the writer reads them again.
//!
//! **Bulk loads.** A rebuild or a verification writes into a schema nobody reads yet, created
//! without its secondary indexes ([`Layout::Bulk`](crate::projection::Layout)). Its runner
//! keeps `applied` in memory instead of reading and writing the table in every batch (it is
//! the schema's only writer, so what it committed is what the table would say).
//! [`Runner::finish_bulk`] writes `applied` and builds the indexes; from then on the runner
//! writes the live way. Past [`SPILL_AT`] aggregates, `applied` is written out and those no
//! longer in memory are looked up in the table. A commit with `synchronous_commit = off` can be
//! lost only with a restart of PostgreSQL, after which memory would be ahead of the tables: a
//! bulk session that finds the server restarted since the load began fails the load, to be run
//! again.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use chrono::{DateTime, Utc};
use events::naming::dead_letter_subject;
use events::{BoundedContext, headers};
use futures::{Stream, StreamExt};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::metrics::WriterMetrics;
use crate::model;
use crate::projection::{Projection, build_indexes, lock_key};
use crate::source::{self, Read, SourceEvent};

/// The channel notified after every commit of a live writer; the payload is the projection's
/// name.
pub const NOTIFY_CHANNEL: &str = "projection_advanced";

/// Messages applied per transaction, at most, unless configured otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 1_000;

/// How long a live writer with a batch begun waits for more messages, unless configured
/// otherwise: a transaction costs a dozen round trips whatever its size, and under load the
/// messages of a few milliseconds make one batch instead of one each.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(10);

/// Pause after a failed session before the next one.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// How often a live writer checks that the connection holding its lock is still there.
const LOCK_CHECK: Duration = Duration::from_secs(5);

/// How often a session checks that its streams are the ones it opened (a stream deleted and
/// recreated under an ordered consumer is read on from the old position, silently), and a
/// live writer whether its tables have grown enough to be analyzed.
const STREAM_CHECK: Duration = Duration::from_secs(2);

/// Aggregates a bulk runner keeps in memory (about 100 bytes each) before it writes them to
/// `applied` and looks up the ones it no longer holds there.
const SPILL_AT: usize = 1_000_000;

/// What sessions did, added up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Stream messages read past (applied, skipped as known, passed over, or poison).
    pub messages: u64,
    /// Events applied to the read model.
    pub applied: u64,
    /// Messages that could not be read.
    pub poison: u64,
}

/// How a session ended without failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Every bounded stream reached its bound.
    Reached,
    /// Asked to stop; the batch in hand was committed.
    Cancelled,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// A checkpoint is not what the session last wrote: a rebuild was swapped in, or another
    /// writer ran. Start again from the database.
    #[error("the checkpoint of {0} moved under the writer")]
    Moved(String),
    /// PostgreSQL restarted during a bulk load: it may have lost the last batches, which the
    /// runner's memory of `applied` holds. The load must be run again from its start.
    #[error(
        "PostgreSQL restarted while {0} was loaded, and may have lost its last batches; \
         run it again"
    )]
    Lost(String),
    /// A live writer found its writer lock gone (the connection holding it was lost, and
    /// another instance may have taken it): it must stop writing.
    #[error("the writer of {0} no longer holds its writer lock")]
    Deposed(Projection),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl From<sqlx::Error> for SessionError {
    fn from(error: sqlx::Error) -> Self {
        Self::Failed(error.into())
    }
}

/// One stream's position per source context.
pub(crate) type Positions = BTreeMap<BoundedContext, u64>;

/// A message from a source stream, with its stream sequence and the time the stream stored it
/// (microseconds since the epoch), read from its JetStream info once.
type Item = (
    BoundedContext,
    Result<(jetstream::Message, u64, i64), String>,
);
type Reader = Pin<Box<dyn Stream<Item = Item> + Send>>;

/// A message as the reader hands it to the writer: already decoded, so that decoding the next
/// batch overlaps with committing this one.
#[derive(Debug)]
struct Incoming {
    context: BoundedContext,
    sequence: u64,
    read: Read,
    /// Kept for a poison message only: it is copied to the dead letters as it came.
    message: Option<Box<jetstream::Message>>,
    /// A live writer's span of the message, in the trace of its headers; it ends when the
    /// batch it is in has committed.
    span: Option<tracing::Span>,
}

/// Writes one projection into one schema.
#[derive(Debug, Clone)]
pub(crate) struct Runner {
    pool: PgPool,
    js: jetstream::Context,
    projection: Projection,
    schema: String,
    batch_size: usize,
    /// How long a batch that is not full waits for more messages (live writers only).
    linger: Duration,
    /// A live writer dead-letters poison messages and notifies waiting queries.
    live: bool,
    /// A bulk load's `applied`, kept in memory (see the module docs).
    bulk: Option<Arc<tokio::sync::Mutex<Bulk>>>,
    /// Aggregates a bulk load holds in memory before it writes them to `applied`.
    spill_at: usize,
    /// A live writer's series.
    metrics: Option<Arc<WriterMetrics>>,
    /// A live writer's lock, checked in every batch's transaction.
    writer_lock: Option<WriterLock>,
}

/// The session-level advisory lock that makes a live writer the only one: its key, and the
/// backend holding it.
#[derive(Debug, Clone, Copy)]
struct WriterLock {
    key: i64,
    pid: i32,
}

/// What a bulk runner applied, as committed: the last event per aggregate (type, then id).
#[derive(Debug, Default)]
struct Bulk {
    applied: HashMap<String, HashMap<String, Applied, FastHash>, FastHash>,
    entries: usize,
    /// `applied` in the table holds rows written earlier (a spill): an aggregate missing here
    /// may be there.
    spilled: bool,
    /// When the server the load began on started (`pg_postmaster_start_time()`).
    server_started: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy)]
struct Applied {
    sequence: i64,
    position: i64,
}

impl Bulk {
    fn get(&self, aggregate_type: &str, aggregate_id: &str) -> Option<Applied> {
        self.applied.get(aggregate_type)?.get(aggregate_id).copied()
    }

    fn set(&mut self, aggregate_type: &str, aggregate_id: &str, applied: Applied) {
        let ids = match self.applied.get_mut(aggregate_type) {
            Some(ids) => ids,
            None => self.applied.entry(aggregate_type.to_owned()).or_default(),
        };
        match ids.get_mut(aggregate_id) {
            Some(known) => *known = applied,
            None => {
                ids.insert(aggregate_id.to_owned(), applied);
                self.entries += 1;
            }
        }
    }
}

impl Runner {
    pub(crate) fn new(
        pool: PgPool,
        js: jetstream::Context,
        projection: Projection,
        schema: String,
        batch_size: usize,
        live: bool,
    ) -> Self {
        Self {
            pool,
            js,
            projection,
            schema,
            batch_size: batch_size.max(1),
            linger: Duration::ZERO,
            live,
            bulk: None,
            spill_at: SPILL_AT,
            metrics: None,
            writer_lock: None,
        }
    }

    /// Lets a batch that is not full wait up to `linger` for more messages.
    pub(crate) fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Counts batches, messages and moved checkpoints in `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<WriterMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The runner of a bulk load into a schema created with the bulk layout: it keeps
    /// `applied` in memory until [`Runner::finish_bulk`].
    pub(crate) fn bulk(mut self) -> Self {
        self.bulk = Some(Arc::default());
        self
    }

    /// Ends a bulk load: writes `applied`, then, with `indexes`, builds the secondary indexes
    /// (a verification's scratch schema, compared and dropped, needs none). The runner writes
    /// the live way from then on.
    pub(crate) async fn finish_bulk(&mut self, indexes: bool) -> anyhow::Result<()> {
        let Some(bulk) = self.bulk.take() else {
            return Ok(());
        };
        let mut state = bulk.lock().await;
        let outcome = async {
            self.spill(&mut state)
                .await
                .context("cannot write the rebuilt `applied`")?;
            if indexes {
                let mut tx = self.begin().await?;
                build_indexes(&mut tx, self.projection, &self.schema)
                    .await
                    .context("cannot index the rebuilt tables")?;
                tx.commit().await?;
            }
            anyhow::Ok(())
        }
        .await;
        drop(state);
        if outcome.is_err() {
            self.bulk = Some(bulk);
        }
        outcome
    }

    /// Writes what `bulk` holds to `applied` and forgets it.
    async fn spill(&self, bulk: &mut Bulk) -> sqlx::Result<()> {
        /// Rows per statement: arrays of this size take a few tens of milliseconds.
        const ROWS: usize = 50_000;
        if bulk.entries == 0 {
            return Ok(());
        }
        let mut rows: Vec<(&str, &str, Applied)> = Vec::with_capacity(bulk.entries);
        for (aggregate_type, ids) in &bulk.applied {
            for (aggregate_id, applied) in ids {
                rows.push((aggregate_type, aggregate_id, *applied));
            }
        }
        // In key order, each row lands next to the previous one in the primary key.
        rows.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut tx = self.begin().await?;
        for chunk in rows.chunks(ROWS) {
            let mut types = Vec::with_capacity(chunk.len());
            let mut ids = Vec::with_capacity(chunk.len());
            let mut sequences = Vec::with_capacity(chunk.len());
            let mut positions = Vec::with_capacity(chunk.len());
            for &(t, i, applied) in chunk {
                types.push(t);
                ids.push(i);
                sequences.push(applied.sequence);
                positions.push(applied.position);
            }
            upsert_applied(&mut tx, &types, &ids, &sequences, &positions).await?;
        }
        tx.commit().await?;
        bulk.applied.clear();
        bulk.entries = 0;
        bulk.spilled = true;
        Ok(())
    }

    pub(crate) fn projection(&self) -> Projection {
        self.projection
    }

    /// The checkpoints as committed.
    pub(crate) async fn checkpoints(&self) -> anyhow::Result<Positions> {
        Ok(self
            .stored()
            .await?
            .into_iter()
            .map(|(context, (_, sequence))| (context, sequence))
            .collect())
    }

    /// The creation time of each stream as the checkpoints know it.
    pub(crate) async fn checkpoint_created(
        &self,
    ) -> anyhow::Result<BTreeMap<BoundedContext, DateTime<Utc>>> {
        Ok(self
            .stored()
            .await?
            .into_iter()
            .map(|(context, (created, _))| (context, created))
            .collect())
    }

    async fn stored(&self) -> anyhow::Result<BTreeMap<BoundedContext, (DateTime<Utc>, u64)>> {
        let mut tx = self.begin().await?;
        let rows: Vec<(String, DateTime<Utc>, i64)> =
            sqlx::query_as("SELECT stream, stream_created, sequence FROM checkpoints")
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(self
            .projection
            .sources()
            .iter()
            .filter_map(|&context| {
                let name = context.stream().name();
                rows.iter()
                    .find(|(stream, _, _)| *stream == name)
                    .map(|(_, created, sequence)| {
                        (context, (*created, u64::try_from(*sequence).unwrap_or(0)))
                    })
            })
            .collect())
    }

    /// Runs as the live writer until `shutdown`: waits for the writer lock, then runs sessions,
    /// starting a new one after any failure.
    pub(crate) async fn run_live(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.lead(&shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(projection = %self.projection, error = format!("{e:#}"),
                        "projection writer failed; starting over");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(RETRY_DELAY) => {}
                    }
                }
            }
        }
    }

    async fn lead(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut lock = PgConnection::connect_with(&self.pool.connect_options())
            .await
            .context("cannot connect for the writer lock")?;
        let key = lock_key("writer", self.projection.name());
        loop {
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut lock)
                .await?;
            if locked {
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(RETRY_DELAY) => {}
            }
        }
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut lock)
            .await?;
        // Connections of its own, which plan each statement once (ADR 0013): the statements
        // every projection's writer runs (checkpoints, `applied`) resolve their tables by the
        // schema's search path, and a session that last ran one of them under another schema
        // plans it again. Two: one for the analyzer. The queries keep PostgreSQL's default.
        let pool = eventstore::pool_options()
            .max_connections(2)
            .connect_lazy_with(eventstore::generic_plans(
                (*self.pool.connect_options()).clone(),
            ));
        let writer = Self {
            pool,
            writer_lock: Some(WriterLock { key, pid }),
            ..self.clone()
        };
        tracing::info!(projection = %self.projection, "projection writer is live");
        let mut counts = Counts::default();
        loop {
            let outcome = tokio::select! {
                outcome = writer.session(None, &mut counts, &|_| {}, shutdown) => outcome,
                lost = lock_lost(&mut lock) => return Err(lost),
            };
            match outcome {
                Ok(Ended::Cancelled) => {
                    lock.close().await.ok();
                    tracing::info!(projection = %self.projection, "projection writer stopped");
                    return Ok(());
                }
                Ok(Ended::Reached) => {
                    tracing::warn!(projection = %self.projection, "every source stream ended; reopening them");
                }
                Err(SessionError::Moved(stream)) => {
                    if let Some(metrics) = &self.metrics {
                        metrics.rebuilt();
                    }
                    tracing::info!(projection = %self.projection, stream,
                        "checkpoint moved (a rebuild was swapped in) or stream recreated; \
                         resuming from the database");
                    continue;
                }
                Err(e @ SessionError::Deposed(_)) => return Err(e.into()),
                Err(e @ (SessionError::Failed(_) | SessionError::Lost(_))) => {
                    tracing::warn!(projection = %self.projection, error = format!("{:#}", anyhow!(e)),
                        "projection session failed; starting again from the checkpoints");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(RETRY_DELAY) => {}
            }
        }
    }

    /// One session: reads the checkpoints, then applies batches until `cancel`, or (with
    /// `bounds`) until each stream named there has been applied up to its sequence; streams
    /// not named are not read. `on_batch` hears how many messages each batch read past.
    pub(crate) async fn session(
        &self,
        bounds: Option<&Positions>,
        counts: &mut Counts,
        on_batch: &(dyn Fn(u64) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<Ended, SessionError> {
        let (mut checkpoints, created) = self.prepare().await?;
        let mut readers: Vec<Reader> = Vec::new();
        for (&context, &after) in &checkpoints {
            let until = match bounds {
                None => None,
                Some(bounds) => match bounds.get(&context) {
                    Some(&until) if until > after => Some(until),
                    _ => continue,
                },
            };
            readers.push(self.open(context, after, until).await?);
        }
        if readers.is_empty() {
            return Ok(Ended::Reached);
        }
        // Reading runs ahead while a batch commits: what arrived meanwhile is the next batch.
        let (sender, mut received) = tokio::sync::mpsc::channel(self.batch_size * 4);
        let mut merged = futures::stream::select_all(readers);
        let aggregate_types = self.projection.aggregate_types();
        let (live, projection) = (self.live, self.projection);
        let _reading = AbortOnDrop(tokio::spawn(async move {
            while let Some((context, message)) = merged.next().await {
                let incoming = message.map(|(message, sequence, published)| {
                    let read = source::read(context, &message, published, aggregate_types);
                    let span = live.then(|| message_span(projection, context, sequence, &message));
                    let message = matches!(read, Read::Poison(_)).then(|| Box::new(message));
                    Incoming {
                        context,
                        sequence,
                        read,
                        message,
                        span,
                    }
                });
                let incoming = incoming.map_err(|e| (context, e));
                if sender.send(incoming).await.is_err() {
                    return;
                }
            }
        }));
        let mut analyzer = self.live.then(|| {
            eventstore::Analyzer::new(self.pool.clone(), Some(self.schema.clone()), STREAM_CHECK)
        });
        let mut check = tokio::time::interval(STREAM_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            let taken = tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(Ended::Cancelled),
                taken = received.recv_many(&mut batch, self.batch_size) => taken,
                _ = check.tick() => {
                    for (&context, &opened) in &created {
                        if stream_state(&self.js, context).await?.0 != opened {
                            return Err(SessionError::Moved(context.stream().name()));
                        }
                    }
                    if let Some(analyzer) = &mut analyzer {
                        analyzer.tick();
                    }
                    continue;
                }
            };
            if taken == 0 {
                return Ok(Ended::Reached);
            }
            if !self.linger.is_zero() {
                let until = tokio::time::Instant::now() + self.linger;
                while batch.len() < self.batch_size {
                    let room = self.batch_size - batch.len();
                    match tokio::time::timeout_at(until, received.recv_many(&mut batch, room)).await
                    {
                        // The end of the reading: the batch commits, and the next look sees it.
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            }
            let batch = std::mem::replace(&mut batch, Vec::with_capacity(self.batch_size));
            let read = self.handle(batch, &mut checkpoints, bounds, counts).await?;
            on_batch(read);
        }
    }

    /// Reads the checkpoints, creating missing ones and resetting those of recreated streams.
    async fn prepare(
        &self,
    ) -> Result<(Positions, BTreeMap<BoundedContext, DateTime<Utc>>), SessionError> {
        let mut streams = Vec::new();
        for &context in self.projection.sources() {
            let (created, last) = stream_state(&self.js, context).await?;
            streams.push((context, created, last));
        }
        let mut tx = self.begin().await?;
        if let Some(bulk) = &self.bulk {
            let started: DateTime<Utc> = sqlx::query_scalar("SELECT pg_postmaster_start_time()")
                .fetch_one(&mut *tx)
                .await?;
            let mut bulk = bulk.lock().await;
            if *bulk.server_started.get_or_insert(started) != started {
                return Err(SessionError::Lost(self.schema.clone()));
            }
        }
        let mut checkpoints = Positions::new();
        let mut opened = BTreeMap::new();
        for (context, created, last) in streams {
            opened.insert(context, created);
            let name = context.stream().name();
            sqlx::query(
                "INSERT INTO checkpoints (stream, stream_created, sequence) VALUES ($1, $2, 0) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&name)
            .bind(created)
            .execute(&mut *tx)
            .await?;
            let (stored_created, sequence): (DateTime<Utc>, i64) = sqlx::query_as(
                "SELECT stream_created, sequence FROM checkpoints WHERE stream = $1",
            )
            .bind(&name)
            .fetch_one(&mut *tx)
            .await?;
            let mut sequence = u64::try_from(sequence).unwrap_or(0);
            if stored_created != created || sequence > last {
                tracing::warn!(projection = %self.projection, schema = %self.schema, stream = %name,
                    checkpoint = sequence, last_sequence = last,
                    "the stream was recreated since the projection read it; reading it again \
                     from its start (events applied before are skipped)");
                sqlx::query(
                    "UPDATE checkpoints SET stream_created = $2, sequence = 0, first_sequence = 0 \
                     WHERE stream = $1",
                )
                .bind(&name)
                .bind(created)
                .execute(&mut *tx)
                .await?;
                sequence = 0;
            }
            checkpoints.insert(context, sequence);
        }
        tx.commit().await?;
        Ok((checkpoints, opened))
    }

    /// An ordered consumer on `context`'s stream from `after + 1`, ending after `until`.
    async fn open(
        &self,
        context: BoundedContext,
        after: u64,
        until: Option<u64>,
    ) -> anyhow::Result<Reader> {
        let stream = context.stream().name();
        let config = OrderedConfig {
            description: Some(format!("projection {} ({})", self.projection, self.schema)),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ..Default::default()
        };
        let messages = self
            .js
            .create_consumer_on_stream(config, &stream)
            .await
            .with_context(|| format!("cannot create an ordered consumer on {stream}"))?
            .messages()
            .await
            .with_context(|| format!("cannot read stream {stream}"))?
            .map(move |m| {
                let m = m.map_err(|e| e.to_string()).and_then(|message| {
                    let info = message
                        .info()
                        .map_err(|e| format!("not a JetStream message: {e}"))?;
                    let sequence = info.stream_sequence;
                    let published =
                        i64::try_from(info.published.unix_timestamp_nanos() / 1_000).unwrap_or(0);
                    Ok((message, sequence, published))
                });
                (context, m)
            });
        let Some(until) = until else {
            return Ok(Box::pin(messages));
        };
        // Ends after the message at `until` (or past it, should `until` have been deleted).
        let bounded =
            futures::stream::unfold((messages, false), move |(mut messages, done)| async move {
                if done {
                    return None;
                }
                let item = messages.next().await?;
                let last = matches!(item.1, Ok((_, sequence, _)) if sequence >= until);
                Some((item, (messages, last)))
            });
        Ok(Box::pin(bounded))
    }

    /// Applies one batch and moves the checkpoints; returns how many messages it read past.
    async fn handle(
        &self,
        batch: Vec<Result<Incoming, (BoundedContext, String)>>,
        checkpoints: &mut Positions,
        bounds: Option<&Positions>,
        counts: &mut Counts,
    ) -> Result<u64, SessionError> {
        let mut advanced = checkpoints.clone();
        let mut events = Vec::with_capacity(batch.len());
        let mut poison = Vec::new();
        let mut read = 0;
        let mut per_stream = BTreeMap::new();
        let mut spans = Vec::new();
        for incoming in batch {
            let Incoming {
                context,
                sequence,
                read: what,
                message,
                span,
            } = incoming.map_err(|(context, e)| {
                anyhow!("reading stream {}: {e}", context.stream().name())
            })?;
            let position = advanced.entry(context).or_insert(0);
            // A consumer recreated by the client may start over; what is behind is done.
            if sequence <= *position {
                continue;
            }
            if let Some(&until) = bounds.and_then(|b| b.get(&context))
                && sequence > until
            {
                *position = (*position).max(until);
                continue;
            }
            *position = sequence;
            read += 1;
            *per_stream.entry(context).or_insert(0) += 1;
            spans.extend(span);
            match (what, message) {
                (Read::Event(event), _) => events.push(event),
                (Read::Poison(reason), Some(message)) => poison.push((message, reason)),
                (Read::Ignored | Read::Poison(_), _) => {}
            }
        }
        if advanced == *checkpoints {
            return Ok(0);
        }
        for (message, reason) in &poison {
            if self.live {
                self.dead_letter(message, reason).await?;
            } else {
                tracing::warn!(projection = %self.projection, schema = %self.schema,
                    subject = %message.subject, reason, "message cannot be read; passed over");
            }
        }
        let started = Instant::now();
        let batch_span = tracing::info_span!("projection.batch", projection = %self.projection,
            schema = %self.schema, messages = read);
        let applied = if self.live {
            self.commit(checkpoints, &advanced, events)
                .instrument(batch_span)
                .await?
        } else {
            self.commit(checkpoints, &advanced, events).await?
        };
        if let Some(metrics) = &self.metrics {
            metrics.committed(&per_stream, started.elapsed());
        }
        drop(spans);
        *checkpoints = advanced;
        counts.messages += read;
        counts.applied += applied;
        counts.poison += poison.len() as u64;
        Ok(read)
    }

    /// Begins a transaction on the projection's schema, holding its apply lock.
    async fn begin(&self) -> sqlx::Result<Transaction<'static, Postgres>> {
        Ok(self.begin_holding(None).await?.0)
    }

    /// Begins a transaction on the projection's schema, holding its apply lock; with a live
    /// writer's `lock`, tells in the same statement whether this session still holds it (true
    /// without one). The check reads the lock table once the apply lock is granted: it runs on
    /// the row that takes it. Once another instance holds the writer lock, no batch of this
    /// one commits.
    async fn begin_holding(
        &self,
        lock: Option<WriterLock>,
    ) -> sqlx::Result<(Transaction<'static, Postgres>, bool)> {
        let mut tx = self.pool.begin().await?;
        let held: bool = sqlx::query_scalar(
            "WITH applying AS MATERIALIZED ( \
                 SELECT pg_advisory_xact_lock($1)::text AS taken, \
                        set_config('search_path', $2, true), \
                        set_config('synchronous_commit', 'off', true), \
                        set_config('application_name', $3, true)) \
             SELECT $4::int4 IS NULL OR EXISTS (SELECT 1 FROM pg_locks \
                 WHERE locktype = 'advisory' AND granted AND pid = $4 \
                   AND classid::bigint = $5 AND objid::bigint = $6 AND objsubid = 1 \
                   AND applying.taken IS NOT NULL) \
             FROM applying",
        )
        .bind(lock_key("apply", &self.schema))
        .bind(&self.schema)
        .bind(format!("projection {}", self.schema))
        .bind(lock.map(|l| l.pid))
        .bind(lock.map(|l| (l.key >> 32) & 0xffff_ffff))
        .bind(lock.map(|l| l.key & 0xffff_ffff))
        .fetch_one(&mut *tx)
        .await?;
        Ok((tx, held))
    }

    /// One transaction: checkpoints (compare-and-set, with a live writer's notification), new
    /// events, `applied`.
    #[allow(
        clippy::vec_box,
        reason = "the reader boxed each event; unboxing would copy every one again"
    )]
    async fn commit(
        &self,
        from: &Positions,
        to: &Positions,
        events: Vec<Box<SourceEvent>>,
    ) -> Result<u64, SessionError> {
        let (mut tx, held) = self.begin_holding(self.writer_lock).await?;
        if !held {
            return Err(SessionError::Deposed(self.projection));
        }
        let mut streams = Vec::new();
        let mut old = Vec::new();
        let mut new = Vec::new();
        for (context, &sequence) in to {
            let before = from.get(context).copied().unwrap_or(0);
            if sequence != before {
                streams.push(context.stream().name());
                old.push(to_i64(before));
                new.push(to_i64(sequence));
            }
        }
        // A live writer's notification goes with it: NOTIFY is sent at commit, so it is only
        // ever heard once the batch is visible.
        let update = sqlx::query_scalar(if self.live {
            "WITH moved AS (UPDATE checkpoints AS c SET sequence = u.new \
                 FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(stream, old, new) \
                 WHERE c.stream = u.stream AND c.sequence = u.old RETURNING 1), \
             notified AS MATERIALIZED (SELECT pg_notify($4, $5)) \
             SELECT (SELECT count(*) FROM moved) FROM notified"
        } else {
            "WITH moved AS (UPDATE checkpoints AS c SET sequence = u.new \
                 FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(stream, old, new) \
                 WHERE c.stream = u.stream AND c.sequence = u.old RETURNING 1) \
             SELECT count(*) FROM moved"
        })
        .bind(&streams)
        .bind(&old)
        .bind(&new);
        let update = if self.live {
            update.bind(NOTIFY_CHANNEL).bind(self.projection.name())
        } else {
            update
        };
        let moved: i64 = update.fetch_one(&mut *tx).await?;
        if moved != streams.len() as i64 {
            tx.rollback().await.ok();
            return Err(SessionError::Moved(streams.join(", ")));
        }

        // The last event applied per aggregate of the batch: known ones are skipped.
        let mut last: HashMap<(&str, &str), Last, FastHash> =
            HashMap::with_capacity_and_hasher(events.len(), FastHash::default());
        for event in &events {
            last.entry((&event.aggregate_type, &event.aggregate_id))
                .or_default();
        }
        let mut bulk = match &self.bulk {
            Some(bulk) => Some(bulk.lock().await),
            None => None,
        };
        let lookup: Vec<(&str, &str)> = match &bulk {
            None => last.keys().copied().collect(),
            Some(bulk) => {
                let mut missing = Vec::new();
                for (&(t, i), entry) in &mut last {
                    match bulk.get(t, i) {
                        Some(applied) => {
                            entry.sequence = applied.sequence;
                            entry.position = applied.position;
                        }
                        None if bulk.spilled => missing.push((t, i)),
                        None => {}
                    }
                }
                missing
            }
        };
        if !lookup.is_empty() {
            let (types, ids): (Vec<&str>, Vec<&str>) = lookup.iter().copied().unzip();
            // A lookup per key: a join could pick a scan of the whole table, which grows.
            let known: Vec<(i64, i64)> = sqlx::query_as(
                "SELECT k.n, a.sequence \
                 FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(t, i, n) \
                 CROSS JOIN LATERAL (SELECT sequence FROM applied \
                     WHERE aggregate_type = k.t AND aggregate_id = k.i) a",
            )
            .bind(&types)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
            for (n, sequence) in known {
                let key = usize::try_from(n - 1).ok().and_then(|n| lookup.get(n));
                if let Some(entry) = key.and_then(|key| last.get_mut(key)) {
                    entry.sequence = sequence;
                }
            }
        }
        let mut fresh = Vec::with_capacity(events.len());
        for event in &events {
            let Some(entry) = last.get_mut(&(&event.aggregate_type, &event.aggregate_id)) else {
                continue;
            };
            if event.sequence <= entry.sequence {
                continue;
            }
            entry.sequence = event.sequence;
            entry.position = entry.position.max(event.position);
            entry.touched = true;
            fresh.push(&**event);
        }
        model::apply(self.projection, &mut tx, &fresh).await?;

        if bulk.is_none() {
            let mut types = Vec::new();
            let mut ids = Vec::new();
            let mut sequences = Vec::new();
            let mut positions = Vec::new();
            for (&(t, i), entry) in last.iter().filter(|(_, e)| e.touched) {
                types.push(t);
                ids.push(i);
                sequences.push(entry.sequence);
                positions.push(entry.position);
            }
            if !types.is_empty() {
                upsert_applied(&mut tx, &types, &ids, &sequences, &positions).await?;
            }
        }
        tx.commit().await?;
        if let Some(bulk) = &mut bulk {
            for (&(t, i), entry) in last.iter().filter(|(_, e)| e.touched) {
                let applied = Applied {
                    sequence: entry.sequence,
                    position: entry.position,
                };
                bulk.set(t, i, applied);
            }
            // The batch is committed whatever happens here: a failed spill is tried again
            // after the next batch.
            if bulk.entries >= self.spill_at
                && let Err(e) = self.spill(bulk).await
            {
                tracing::warn!(projection = %self.projection, schema = %self.schema,
                    error = %e, "cannot write the rebuild's `applied` yet; kept in memory");
            }
        }
        Ok(fresh.len() as u64)
    }

    /// Copies a message that cannot be read to the dead-letter stream, with the reason, as the
    /// bus consumers do (same headers; de-duplicated per projection, stream and sequence).
    async fn dead_letter(&self, message: &jetstream::Message, reason: &str) -> anyhow::Result<()> {
        let consumer = format!("projection-{}", self.projection);
        let info = message.info().ok();
        let stream = info.as_ref().map_or("", |i| i.stream).to_owned();
        let stream_sequence = info.as_ref().map_or(0, |i| i.stream_sequence);
        let mut map = message.headers.clone().unwrap_or_default();
        let reason: String = reason
            .chars()
            .filter(|c| !c.is_control())
            .take(2_000)
            .collect();
        map.insert(headers::DLQ_CONSUMER, consumer.as_str());
        map.insert(headers::DLQ_ERROR, reason.as_str());
        map.insert(headers::DLQ_ATTEMPTS, "1");
        map.insert(headers::DLQ_STREAM, stream.as_str());
        map.insert(
            headers::DLQ_STREAM_SEQUENCE,
            stream_sequence.to_string().as_str(),
        );
        map.insert(headers::DLQ_SUBJECT, message.subject.as_str());
        let dedup = format!("{consumer}:{stream}:{stream_sequence}");
        map.insert(headers::MSG_ID, dedup.as_str());
        self.js
            .publish_with_headers(dead_letter_subject(&consumer), map, message.payload.clone())
            .await
            .context("cannot dead-letter a poison message")?
            .await
            .context("the dead-letter stream did not take a poison message")?;
        tracing::error!(projection = %self.projection, stream, stream_sequence, reason,
            "message cannot be read; dead-lettered and passed over");
        Ok(())
    }
}

/// Aborts the task when dropped: a session's reader ends with the session.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The hasher of the maps keyed by aggregate (every event of a batch goes through them):
/// foldhash, seeded per map, a few times faster than the standard SipHash on ids of a few dozen
/// bytes. It is not built to withstand collisions crafted against it; the keys are aggregate
/// ids from the projection's own streams.
type FastHash = foldhash::fast::RandomState;

#[derive(Debug, Default)]
struct Last {
    sequence: i64,
    position: i64,
    touched: bool,
}

/// Records the last event applied per aggregate (sequence and store position); a position is
/// never moved back.
async fn upsert_applied(
    conn: &mut PgConnection,
    types: &[&str],
    ids: &[&str],
    sequences: &[i64],
    positions: &[i64],
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO applied AS a (aggregate_type, aggregate_id, sequence, position) \
         SELECT unnest($1::text[]), unnest($2::text[]), unnest($3::bigint[]), \
             unnest($4::bigint[]) \
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET \
             sequence = EXCLUDED.sequence, \
             position = GREATEST(a.position, EXCLUDED.position)",
    )
    .bind(types)
    .bind(ids)
    .bind(sequences)
    .bind(positions)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A stream's creation time (to the microsecond, as PostgreSQL keeps it) and last sequence.
pub(crate) async fn stream_state(
    js: &jetstream::Context,
    context: BoundedContext,
) -> anyhow::Result<(DateTime<Utc>, u64)> {
    let name = context.stream().name();
    let mut stream = js
        .get_stream(&name)
        .await
        .with_context(|| format!("cannot find stream {name}"))?;
    let info = stream
        .info()
        .await
        .with_context(|| format!("cannot read the state of stream {name}"))?;
    let micros = i64::try_from(info.created.unix_timestamp_nanos() / 1_000).unwrap_or(0);
    let created = DateTime::from_timestamp_micros(micros).unwrap_or_default();
    Ok((created, info.state.last_sequence))
}

/// The span of a message a live writer applies, a child of the trace context in its headers:
/// the saga's trace goes on into the read models.
fn message_span(
    projection: Projection,
    context: BoundedContext,
    sequence: u64,
    message: &jetstream::Message,
) -> tracing::Span {
    let span = tracing::info_span!(
        "project",
        otel.name = %format!("project {}", message.subject),
        otel.kind = "consumer",
        service = "projections",
        projection = %projection,
        stream = %context.stream().name(),
        stream_sequence = sequence,
    );
    follow_headers(&span, message.headers.as_ref());
    span
}

/// Makes `span` a child of the W3C trace context in `headers`, if they carry one.
pub(crate) fn follow_headers(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    let header = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    bus::follow_trace(
        span,
        header(headers::TRACEPARENT).as_deref(),
        header(headers::TRACESTATE).as_deref(),
    );
}

/// Resolves when the connection holding the writer lock stops answering.
async fn lock_lost(conn: &mut PgConnection) -> anyhow::Error {
    let mut tick = tokio::time::interval(LOCK_CHECK);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = sqlx::query("SELECT 1").execute(&mut *conn).await {
            return anyhow!(e).context("lost the connection holding the writer lock");
        }
    }
}

pub(crate) fn to_i64(sequence: u64) -> i64 {
    i64::try_from(sequence).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::TimeZone;
    use events::ordering::{Address, OrderConfirmed, OrderEvent, OrderLine, OrderPlaced};
    use events::values::{CustomerId, Money, OrderId};
    use events::{Event, Metadata};
    use eventstore::StoredEvent;
    use harness::{NatsServer, TestDatabase};

    use super::*;
    use crate::projection::{Layout, create_schema_with};

    fn stored(aggregate_id: &str, sequence: i64, event: &OrderEvent) -> StoredEvent {
        StoredEvent {
            position: sequence,
            event_id: sqlx::types::Uuid::now_v7(),
            aggregate_type: OrderEvent::AGGREGATE_TYPE.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            sequence,
            event_type: event.event_type().to_owned(),
            schema_version: i32::try_from(event.schema_version()).unwrap(),
            payload: event.to_payload().to_string(),
            metadata: Metadata::default(),
            recorded_at: Utc.with_ymd_and_hms(2026, 3, 14, 9, 0, 0).unwrap(),
        }
    }

    async fn rows(pool: &PgPool, schema: &str, projection: Projection) -> Vec<String> {
        let mut all = Vec::new();
        for table in projection.tables() {
            let sql = format!(
                "SELECT to_jsonb(t)::text FROM {schema}.{} t ORDER BY 1",
                table.name
            );
            let found: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_all(pool)
                .await
                .unwrap();
            all.extend(
                found
                    .into_iter()
                    .map(|row| format!("{}: {row}", table.name)),
            );
        }
        all
    }

    /// A bulk load that writes `applied` out every few aggregates (and then looks up those it
    /// no longer holds, events published twice among them) builds what a live writer builds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bulk_load_that_spills_applied_builds_what_the_live_way_builds() {
        let nats = NatsServer::start().await.unwrap();
        let js = jetstream::new(bus::connect(&nats.url(), "runner-test").await.unwrap());
        let streams: Vec<_> = BoundedContext::ALL.iter().map(|c| c.stream()).collect();
        bus::provision::streams(&js, &streams, 1).await.unwrap();
        let eur = "EUR".parse().unwrap();
        let address = Address {
            name: "Ada Lovelace".to_owned(),
            line1: "12 St James's Square".to_owned(),
            line2: None,
            city: "London".to_owned(),
            postal_code: "SW1Y 4JH".to_owned(),
            country: "GB".to_owned(),
        };
        let mut messages = Vec::new();
        for n in 0..12 {
            let order_id = OrderId::new();
            let id = order_id.to_string();
            let placed: OrderEvent = OrderPlaced {
                order_id,
                customer_id: CustomerId::new(),
                lines: vec![OrderLine {
                    sku: "BOOK".parse().unwrap(),
                    quantity: 1.try_into().unwrap(),
                    unit_price: Money::new(100 + n, eur),
                }],
                total: Money::new(100 + n, eur),
                shipping_address: address.clone(),
                payment_token: "tok_success".to_owned(),
            }
            .into();
            let confirmed: OrderEvent = OrderConfirmed {
                order_id,
                shipping_address: address.clone(),
            }
            .into();
            messages.push(stored(&id, 1, &placed));
            messages.push(stored(&id, 2, &confirmed));
        }
        // Published again past the duplicate window: the same events, stored twice.
        let twice: Vec<StoredEvent> = messages[..6].to_vec();
        messages.extend(twice);
        for (n, message) in messages.iter().enumerate() {
            let subject = BoundedContext::Ordering
                .stream()
                .event_subject(
                    &message.aggregate_type,
                    &message.aggregate_id,
                    &message.event_type,
                )
                .unwrap();
            let mut headers = bus::event_headers(message);
            headers.insert(events::headers::MSG_ID, format!("copy-{n}").as_str());
            js.publish_with_headers(subject, headers, message.payload.clone().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let last = stream_state(&js, BoundedContext::Ordering).await.unwrap().1;
        assert_eq!(last, 30);
        let bounds = Positions::from([(BoundedContext::Ordering, last)]);

        let db = TestDatabase::create().await.unwrap();
        let pool = db.pool(2).await.unwrap();
        let projection = Projection::Orders;
        let cancel = CancellationToken::new();
        let mut built = Vec::new();
        for (schema, bulk) in [("live_way", false), ("bulk_way", true)] {
            let layout = if bulk { Layout::Bulk } else { Layout::Live };
            let mut conn = pool.acquire().await.unwrap();
            assert!(
                create_schema_with(&mut conn, projection, schema, layout)
                    .await
                    .unwrap()
            );
            drop(conn);
            let mut runner = Runner::new(
                pool.clone(),
                js.clone(),
                projection,
                schema.to_owned(),
                3,
                false,
            );
            if bulk {
                runner = runner.bulk();
                runner.spill_at = 2;
            }
            let mut counts = Counts::default();
            let ended = runner
                .session(Some(&bounds), &mut counts, &|_| {}, &cancel)
                .await
                .unwrap();
            assert_eq!(ended, Ended::Reached);
            assert_eq!(counts.messages, 30, "{schema}");
            assert_eq!(counts.applied, 24, "{schema}: the copies are skipped");
            if bulk {
                let spilled = runner.bulk.as_ref().unwrap().lock().await.spilled;
                assert!(spilled, "applied was written out during the load");
                runner.finish_bulk(true).await.unwrap();
                assert!(runner.bulk.is_none());
            }
            built.push(rows(&pool, schema, projection).await);
        }
        assert_eq!(
            built[0]
                .iter()
                .filter(|r| r.starts_with("applied: "))
                .count(),
            12
        );
        assert_eq!(built[0], built[1]);
    }
}
