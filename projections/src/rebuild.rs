//! Rebuilding, verifying and inspecting projections: the library behind `chorus replay` and
//! `chorus projections status`.
//!
//! **Rebuild** ([`rebuild`]): the projection is built again from JetStream into a new schema,
//! `<name>_rebuild`, by the same runtime as the live writer (ordered consumers, batches,
//! checkpoints in the schema), while the live schema keeps serving queries and its writer keeps
//! applying new events. Once the new schema has read every source stream up to its last
//! sequence as measured at the start, it catches up once more, then is swapped in:
//! in one transaction holding the live schema's apply lock (so no live batch runs across the
//! swap), the rebuild reads the live checkpoints, applies whatever the live model has and the
//! new one does not yet, renames `<name>` to `<name>_retired` and `<name>_rebuild` to `<name>`,
//! and drops the retired schema. Data and checkpoints swap together, since both are in the
//! schema; the live writer's next compare-and-set on its checkpoints fails and it resumes from
//! the swapped-in ones. Nothing is lost (the new model has everything the old one had), nothing
//! is applied twice (the writer continues from the new checkpoints), and queries never see an
//! empty model.
//!
//! **Bulk loads.** Until the swap nobody reads the new schema and the rebuild is its only
//! writer, so it is loaded the cheap way (see the runner's module docs): the orders' secondary
//! indexes are built once at the end of the load, `applied` is kept in memory and written
//! once, and batches are larger ([`REBUILD_BATCH_SIZE`]). A verification loads its scratch
//! schema the same way, without the indexes.
//!
//! A leftover `<name>_rebuild` from an interrupted run is dropped at the start, so running
//! again is always safe; an interrupted run changes nothing live. Only one rebuild or
//! verification of a projection runs at a time (an advisory lock).
//!
//! **From a point** ([`StartAt`]): a rebuild from a sequence or a time reads each source stream
//! from there; events before it are not in the rebuilt model (an order placed before the start
//! has no summary, and its sales are not counted). The start is kept in the checkpoints
//! (`first_sequence`), so that a verification rebuilds from the same point.
//!
//! **Verify** ([`verify`]): builds the projection into a scratch schema `<name>_verify` up to
//! exactly the live checkpoints and compares the tables row by row. The live writer is not
//! paused: the live checkpoints and tables are read in one repeatable-read snapshot, taken at
//! the start and held until the comparison ends, which sees the live model exactly as it was
//! at those checkpoints while the writer goes on.
//!
//! **Status** ([`status`]): each projection's checkpoint per source stream, the stream's last
//! sequence, and the lag between them.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use chrono::{DateTime, Utc};
use events::BoundedContext;
use events::query::{ProjectionStatus, StreamStatus};
use futures::StreamExt;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::projection::{Layout, Projection, create_schema_with, ddl_lock, lock_key, quote_ident};
use crate::runner::{
    Counts, Ended, NOTIFY_CHANNEL, Positions, Runner, SessionError, stream_state, to_i64,
};

/// Messages a rebuild or verification applies per transaction, at most, unless configured
/// otherwise: more than the live writer's batches, since nobody waits for a rebuild's batch
/// and each transaction costs its round trips and its commit.
pub const REBUILD_BATCH_SIZE: usize = 5_000;

/// Where a rebuild starts reading each source stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// From each stream's first message.
    Beginning,
    /// From this stream sequence in each source stream (or the stream's end, if it is shorter).
    Sequence(u64),
    /// From the first message each stream stored at or after this time.
    Time(DateTime<Utc>),
}

/// In which order a rebuild reads its source streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceOrder {
    /// All source streams at once, batches taking whatever is ready from any of them (the
    /// live writer's way, and the fastest).
    Interleaved,
    /// Each stream read to its end before the next, in this order (streams not named come
    /// last). A projection gives the same model whatever the interleaving; this order puts
    /// that to the test, and spares the database and NATS the concurrent load.
    OneAfterAnother(Vec<BoundedContext>),
}

/// How to rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildOptions {
    pub from: StartAt,
    pub order: SourceOrder,
    /// Messages applied per transaction, at most.
    pub batch_size: usize,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self {
            from: StartAt::Beginning,
            order: SourceOrder::Interleaved,
            batch_size: REBUILD_BATCH_SIZE,
        }
    }
}

/// What a rebuild or verification is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Creating the new schema and finding where each stream starts.
    Preparing,
    /// Reading the streams up to their last sequence as measured at the start.
    Rebuilding,
    /// Reading what arrived meanwhile.
    CatchingUp,
    /// Applying the last few events under the live lock, and swapping the schemas.
    Swapping,
    /// Comparing the scratch tables with the live ones.
    Comparing,
    Done,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Preparing => "preparing",
            Phase::Rebuilding => "rebuilding",
            Phase::CatchingUp => "catching up",
            Phase::Swapping => "swapping",
            Phase::Comparing => "comparing",
            Phase::Done => "done",
        })
    }
}

/// Hears how a rebuild or verification goes: the CLI shows it (events/s, ETA).
pub trait Progress: Send + Sync {
    /// A new phase begins.
    fn phase(&self, projection: Projection, phase: Phase);
    /// `events` more stream messages are to be read (the total grows as streams grow).
    fn add_total(&self, events: u64);
    /// `events` more stream messages were read and committed.
    fn advance(&self, events: u64);
}

/// Progress that nobody watches.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _: Projection, _: Phase) {}
    fn add_total(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// The rebuild or verification was cancelled: its scratch schema is dropped (or left for the
/// next run to drop) and the live read model is untouched.
#[derive(Debug, thiserror::Error)]
#[error("the {0} rebuild was interrupted; the live read model is unchanged")]
pub struct Interrupted(pub Projection);

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildReport {
    pub projection: Projection,
    /// Stream messages read (applied, known, passed over or poison).
    pub messages: u64,
    /// Events applied to the new model.
    pub applied: u64,
    /// Messages that could not be read (the live writer dead-letters them; a rebuild passes).
    pub poison: u64,
    /// The swapped-in checkpoint per stream.
    pub checkpoints: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

/// How a rebuilt row differs from the live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DifferenceKind {
    /// The rebuild has the row, the live model does not.
    Missing,
    /// The live model has a row the rebuild does not.
    Extra,
    /// Both have the row, with different values.
    Different,
}

/// One row on which the live model and a rebuild disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub table: String,
    /// The row's primary key, its columns joined by `|`.
    pub key: String,
    pub kind: DifferenceKind,
    /// The live row as JSON, if there is one.
    pub live: Option<String>,
    /// The rebuilt row as JSON, if there is one.
    pub rebuilt: Option<String>,
}

/// Rebuilds `projection` from `from` and swaps it in (see the module docs). `db` is the
/// projections database (at least two connections: the swap holds one while the last events
/// are applied on another).
pub async fn rebuild(
    db: &PgPool,
    js: &jetstream::Context,
    projection: Projection,
    from: StartAt,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> anyhow::Result<RebuildReport> {
    let options = RebuildOptions {
        from,
        ..RebuildOptions::default()
    };
    rebuild_with(db, js, projection, &options, progress, cancel).await
}

/// [`rebuild`] with every option.
pub async fn rebuild_with(
    db: &PgPool,
    js: &jetstream::Context,
    projection: Projection,
    options: &RebuildOptions,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> anyhow::Result<RebuildReport> {
    let started = Instant::now();
    let lock = Exclusive::take(db, projection).await?;
    let schema = projection.rebuild_schema();
    let outcome = async {
        progress.phase(projection, Phase::Preparing);
        recreate_schema(db, projection, &schema).await?;
        let mut starts = Positions::new();
        let mut targets = Positions::new();
        for &context in projection.sources() {
            let (created, last) = stream_state(js, context).await?;
            let after = start_after(js, context, options.from, last).await?;
            insert_checkpoint(db, &schema, context, created, after, after).await?;
            starts.insert(context, after);
            targets.insert(context, last);
        }
        progress.add_total(distance(&starts, &targets));
        let mut runner = Runner::new(
            db.clone(),
            js.clone(),
            projection,
            schema.clone(),
            options.batch_size,
            false,
        )
        .bulk();
        let mut counts = Counts::default();
        progress.phase(projection, Phase::Rebuilding);
        match &options.order {
            SourceOrder::Interleaved => {
                run_bounded(&runner, &targets, &mut counts, progress, cancel).await?;
            }
            SourceOrder::OneAfterAnother(order) => {
                let mut order: Vec<BoundedContext> = order
                    .iter()
                    .copied()
                    .filter(|c| targets.contains_key(c))
                    .collect();
                for &context in projection.sources() {
                    if !order.contains(&context) {
                        order.push(context);
                    }
                }
                for context in order {
                    let one = Positions::from([(context, targets[&context])]);
                    run_bounded(&runner, &one, &mut counts, progress, cancel).await?;
                }
            }
        }

        // Caught up once more in bulk, then `applied` written and the indexes built, then
        // caught up with what arrived meanwhile the live way; the swap applies what arrives
        // after that.
        progress.phase(projection, Phase::CatchingUp);
        let mut reached = targets;
        for bulk in [true, false] {
            let mut now = Positions::new();
            for &context in projection.sources() {
                now.insert(context, stream_state(js, context).await?.1);
            }
            progress.add_total(distance(&reached, &now));
            run_bounded(&runner, &now, &mut counts, progress, cancel).await?;
            if bulk {
                runner.finish_bulk(true).await?;
            }
            reached = now;
        }

        progress.phase(projection, Phase::Swapping);
        let checkpoints = swap(db, &runner, projection, &mut counts, progress, cancel).await?;
        progress.phase(projection, Phase::Done);
        anyhow::Ok(RebuildReport {
            projection,
            messages: counts.messages,
            applied: counts.applied,
            poison: counts.poison,
            checkpoints: checkpoints
                .into_iter()
                .map(|(c, s)| (c.stream().name(), s))
                .collect(),
            elapsed: started.elapsed(),
        })
    }
    .await;
    if outcome.is_err() {
        // Best effort: the next run drops it anyway.
        drop_schema(db, &schema).await.ok();
    }
    lock.release().await;
    outcome
}

/// Builds `projection` into a scratch schema up to the live checkpoints and returns every row
/// on which the live model differs (see the module docs). Empty: the live model is exactly
/// what its streams say.
pub async fn verify(
    db: &PgPool,
    js: &jetstream::Context,
    projection: Projection,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> anyhow::Result<Vec<Difference>> {
    let lock = Exclusive::take(db, projection).await?;
    let schema = projection.verify_schema();
    let outcome = async {
        progress.phase(projection, Phase::Preparing);
        let mut live = db.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *live)
            .await?;
        if !schema_exists(&mut live, projection.schema()).await? {
            bail!("projection {projection} has no live read model to verify");
        }
        let rows: Vec<(String, DateTime<Utc>, i64, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT stream, stream_created, sequence, first_sequence FROM {}.checkpoints",
            quote_ident(projection.schema())
        )))
        .fetch_all(&mut *live)
        .await?;
        let live_checkpoints: BTreeMap<String, (DateTime<Utc>, u64, u64)> = rows
            .into_iter()
            .map(|(stream, created, sequence, first)| {
                let sequence = u64::try_from(sequence).unwrap_or(0);
                (
                    stream,
                    (created, sequence, u64::try_from(first).unwrap_or(0)),
                )
            })
            .collect();

        recreate_schema(db, projection, &schema).await?;
        let mut starts = Positions::new();
        let mut bounds = Positions::new();
        for &context in projection.sources() {
            let stream = context.stream().name();
            let (created, _) = stream_state(js, context).await?;
            let (first, until) = match live_checkpoints.get(&stream) {
                Some(&(live_created, sequence, first)) if live_created == created => {
                    (first, sequence)
                }
                Some(_) => bail!(
                    "stream {stream} was recreated since the live {projection} model read it; \
                     verify again once the model has caught up"
                ),
                None => (0, 0),
            };
            insert_checkpoint(db, &schema, context, created, first, first).await?;
            starts.insert(context, first);
            bounds.insert(context, until);
        }
        progress.add_total(distance(&starts, &bounds));
        let mut runner = Runner::new(
            db.clone(),
            js.clone(),
            projection,
            schema.clone(),
            REBUILD_BATCH_SIZE,
            false,
        )
        .bulk();
        progress.phase(projection, Phase::Rebuilding);
        let mut counts = Counts::default();
        run_bounded(&runner, &bounds, &mut counts, progress, cancel).await?;
        runner.finish_bulk(false).await?;

        progress.phase(projection, Phase::Comparing);
        let mut scratch = db.acquire().await?;
        let mut differences = Vec::new();
        for table in projection.tables() {
            let found = compare(
                &mut live,
                projection.schema(),
                &mut scratch,
                &schema,
                table.name,
                table.key,
            )
            .await?;
            differences.extend(found);
        }
        live.rollback().await.ok();
        progress.phase(projection, Phase::Done);
        anyhow::Ok(differences)
    }
    .await;
    drop_schema(db, &schema).await.ok();
    lock.release().await;
    outcome
}

/// Every projection's checkpoint per source stream, with the stream's last sequence and the
/// lag. A projection whose schema does not exist yet stands at 0.
pub async fn status(db: &PgPool, js: &jetstream::Context) -> anyhow::Result<Vec<ProjectionStatus>> {
    let mut last = BTreeMap::new();
    for context in BoundedContext::ALL {
        last.insert(context, stream_state(js, context).await?.1);
    }
    let mut conn = db.acquire().await?;
    let mut statuses = Vec::new();
    for projection in Projection::ALL {
        let checkpoints: BTreeMap<String, i64> =
            if schema_exists(&mut conn, projection.schema()).await? {
                sqlx::query_as::<_, (String, i64)>(AssertSqlSafe(format!(
                    "SELECT stream, sequence FROM {}.checkpoints",
                    quote_ident(projection.schema())
                )))
                .fetch_all(&mut *conn)
                .await?
                .into_iter()
                .collect()
            } else {
                BTreeMap::new()
            };
        let streams = projection
            .sources()
            .iter()
            .map(|context| {
                let stream = context.stream().name();
                let checkpoint = checkpoints
                    .get(&stream)
                    .map_or(0, |&s| u64::try_from(s).unwrap_or(0));
                let last_sequence = last[context];
                StreamStatus {
                    stream,
                    checkpoint,
                    last_sequence,
                    lag: last_sequence.saturating_sub(checkpoint),
                }
            })
            .collect();
        statuses.push(ProjectionStatus {
            projection: projection.name().to_owned(),
            streams,
        });
    }
    Ok(statuses)
}

/// Runs bounded sessions until every stream of `bounds` is applied up to its sequence.
/// Failures start a new session; five in a row without progress end the run.
async fn run_bounded(
    runner: &Runner,
    bounds: &Positions,
    counts: &mut Counts,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    const MAX_FAILURES: u32 = 5;
    let mut failures = 0;
    loop {
        let before = counts.messages;
        let advance = |n: u64| progress.advance(n);
        let outcome = runner.session(Some(bounds), counts, &advance, cancel).await;
        let error = match outcome {
            Ok(Ended::Cancelled) => return Err(Interrupted(runner.projection()).into()),
            Ok(Ended::Reached) => {
                let reached = runner.checkpoints().await?;
                if bounds
                    .iter()
                    .all(|(c, &until)| reached.get(c).is_some_and(|&s| s >= until))
                {
                    return Ok(());
                }
                anyhow::anyhow!("a source stream ended before its last sequence")
            }
            Err(e @ SessionError::Lost(_)) => return Err(e.into()),
            Err(e) => anyhow::Error::new(e),
        };
        failures = if counts.messages > before {
            1
        } else {
            failures + 1
        };
        if failures >= MAX_FAILURES {
            return Err(error.context(format!("{MAX_FAILURES} sessions in a row failed")));
        }
        tracing::warn!(projection = %runner.projection(), error = format!("{error:#}"),
            "rebuild session failed; starting again from its checkpoints");
        tokio::select! {
            () = cancel.cancelled() => return Err(Interrupted(runner.projection()).into()),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Applies what the live model has beyond the rebuilt one, then swaps the schemas, all under
/// the live schema's apply lock. Returns the swapped-in checkpoints.
async fn swap(
    db: &PgPool,
    runner: &Runner,
    projection: Projection,
    counts: &mut Counts,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> anyhow::Result<Positions> {
    let live = projection.schema();
    let mut tx = db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_key("apply", live))
        .execute(&mut *tx)
        .await?;
    ddl_lock(&mut tx).await?;
    let live_exists = schema_exists(&mut tx, live).await?;
    let rebuilt = runner.checkpoints().await?;
    if live_exists {
        let rows: Vec<(String, DateTime<Utc>, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT stream, stream_created, sequence FROM {}.checkpoints FOR UPDATE",
            quote_ident(live)
        )))
        .fetch_all(&mut *tx)
        .await?;
        let created = runner.checkpoint_created().await?;
        let mut bounds = Positions::new();
        for (stream, live_created, sequence) in rows {
            let sequence = u64::try_from(sequence).unwrap_or(0);
            let Some(&context) = projection
                .sources()
                .iter()
                .find(|c| c.stream().name() == stream)
            else {
                continue;
            };
            let behind = rebuilt.get(&context).is_some_and(|&r| r < sequence);
            let same_stream = created.get(&context) == Some(&live_created);
            if behind && same_stream {
                bounds.insert(context, sequence);
            }
        }
        if !bounds.is_empty() {
            progress.add_total(distance(&rebuilt, &bounds));
            run_bounded(runner, &bounds, counts, progress, cancel).await?;
        }
    }
    let swapped = runner.checkpoints().await?;
    let retired = quote_ident(&projection.retired_schema());
    let mut ddl = format!("DROP SCHEMA IF EXISTS {retired} CASCADE;\n");
    if live_exists {
        ddl.push_str(&format!(
            "ALTER SCHEMA {} RENAME TO {retired};\n",
            quote_ident(live)
        ));
    }
    ddl.push_str(&format!(
        "ALTER SCHEMA {} RENAME TO {};\nDROP SCHEMA IF EXISTS {retired} CASCADE;\n",
        quote_ident(&projection.rebuild_schema()),
        quote_ident(live)
    ));
    sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&mut *tx).await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(NOTIFY_CHANNEL)
        .bind(projection.name())
        .execute(&mut *tx)
        .await?;
    tx.commit().await.context("cannot commit the swap")?;
    tracing::info!(projection = %projection, "rebuilt read model swapped in");
    Ok(swapped)
}

/// Where reading `context`'s stream starts: the sequence the model starts after.
async fn start_after(
    js: &jetstream::Context,
    context: BoundedContext,
    from: StartAt,
    last: u64,
) -> anyhow::Result<u64> {
    match from {
        StartAt::Beginning => Ok(0),
        StartAt::Sequence(sequence) => Ok(sequence.saturating_sub(1).min(last)),
        StartAt::Time(time) => {
            let nanos = i128::from(time.timestamp_micros()) * 1_000;
            let start_time = async_nats::datetime::from_nanos(nanos)
                .map_err(|e| anyhow::anyhow!("{time} cannot be a start time: {e}"))?;
            let stream = context.stream().name();
            let config = OrderedConfig {
                description: Some("where a rebuild starts".to_owned()),
                deliver_policy: DeliverPolicy::ByStartTime { start_time },
                ..Default::default()
            };
            // The server picks the first sequence at or after the time when it creates the
            // consumer, and reports the one before it as delivered.
            let consumer = js
                .create_consumer_on_stream(config, &stream)
                .await
                .with_context(|| format!("cannot find where {stream} reaches {time}"))?;
            let info = consumer.cached_info().clone();
            js.delete_consumer_from_stream(&info.name, &stream)
                .await
                .ok();
            Ok(info.delivered.stream_sequence.min(last))
        }
    }
}

/// Drops `schema` if it exists and creates it anew with `projection`'s tables, laid out for a
/// bulk load.
async fn recreate_schema(db: &PgPool, projection: Projection, schema: &str) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    ddl_lock(&mut tx).await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        quote_ident(schema)
    )))
    .execute(&mut *tx)
    .await?;
    create_schema_with(&mut tx, projection, schema, Layout::Bulk).await?;
    tx.commit().await?;
    Ok(())
}

async fn drop_schema(db: &PgPool, schema: &str) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    ddl_lock(&mut tx).await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        quote_ident(schema)
    )))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn insert_checkpoint(
    db: &PgPool,
    schema: &str,
    context: BoundedContext,
    created: DateTime<Utc>,
    sequence: u64,
    first: u64,
) -> anyhow::Result<()> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {}.checkpoints (stream, stream_created, sequence, first_sequence) \
         VALUES ($1, $2, $3, $4)",
        quote_ident(schema)
    )))
    .bind(context.stream().name())
    .bind(created)
    .bind(to_i64(sequence))
    .bind(to_i64(first))
    .execute(db)
    .await?;
    Ok(())
}

async fn schema_exists(conn: &mut PgConnection, schema: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(&mut *conn)
        .await
}

/// Messages from `from` to `to`, summed over the streams.
fn distance(from: &Positions, to: &Positions) -> u64 {
    to.iter()
        .map(|(c, &t)| t.saturating_sub(from.get(c).copied().unwrap_or(0)))
        .sum()
}

/// Compares one table of two schemas, row by row in key order, on two connections (the live
/// one inside its snapshot).
async fn compare(
    live: &mut PgConnection,
    live_schema: &str,
    rebuilt: &mut PgConnection,
    rebuilt_schema: &str,
    table: &str,
    key: &[&str],
) -> anyhow::Result<Vec<Difference>> {
    let key_expr = key
        .iter()
        .map(|k| format!("t.{}::text", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = |schema: &str| {
        format!(
            "SELECT concat_ws('|', {key_expr}) COLLATE \"C\" AS k, to_jsonb(t)::text AS r \
             FROM {}.{} t ORDER BY 1",
            quote_ident(schema),
            quote_ident(table)
        )
    };
    let mut left =
        sqlx::query_as::<_, (String, String)>(AssertSqlSafe(sql(live_schema))).fetch(live);
    let mut right =
        sqlx::query_as::<_, (String, String)>(AssertSqlSafe(sql(rebuilt_schema))).fetch(rebuilt);
    let mut differences = Vec::new();
    let mut l = left.next().await.transpose()?;
    let mut r = right.next().await.transpose()?;
    let difference = |key: &str, kind, live: Option<&str>, rebuilt: Option<&str>| Difference {
        table: table.to_owned(),
        key: key.to_owned(),
        kind,
        live: live.map(str::to_owned),
        rebuilt: rebuilt.map(str::to_owned),
    };
    loop {
        match (&l, &r) {
            (None, None) => break,
            (Some((lk, lr)), Some((rk, rr))) if lk == rk => {
                if lr != rr {
                    differences.push(difference(
                        lk,
                        DifferenceKind::Different,
                        Some(lr),
                        Some(rr),
                    ));
                }
                l = left.next().await.transpose()?;
                r = right.next().await.transpose()?;
            }
            (Some((lk, lr)), Some((rk, _))) if lk.as_bytes() < rk.as_bytes() => {
                differences.push(difference(lk, DifferenceKind::Extra, Some(lr), None));
                l = left.next().await.transpose()?;
            }
            (Some((lk, lr)), None) => {
                differences.push(difference(lk, DifferenceKind::Extra, Some(lr), None));
                l = left.next().await.transpose()?;
            }
            (_, Some((rk, rr))) => {
                differences.push(difference(rk, DifferenceKind::Missing, None, Some(rr)));
                r = right.next().await.transpose()?;
            }
        }
    }
    Ok(differences)
}

/// The lock that lets one rebuild or verification of a projection run at a time, held by a
/// connection of its own for the whole run.
struct Exclusive {
    conn: PgConnection,
    key: i64,
}

impl Exclusive {
    async fn take(db: &PgPool, projection: Projection) -> anyhow::Result<Self> {
        let mut conn = PgConnection::connect_with(&db.connect_options())
            .await
            .context("cannot connect to the projections database")?;
        let key = lock_key("rebuild", projection.name());
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await?;
        if !locked {
            bail!("a rebuild or verification of {projection} is already running");
        }
        Ok(Self { conn, key })
    }

    /// Unlocks, then closes. Closing alone is not enough: the server frees a closed session's
    /// locks only when its backend has exited, and a rebuild started right after could find
    /// the lock still held.
    async fn release(mut self) {
        // If the unlock fails the connection is gone, and its lock with it.
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .execute(&mut self.conn)
            .await;
        self.conn.close().await.ok();
    }
}
