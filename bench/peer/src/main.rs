//! Chorus's command path against cqrs-es 0.5 with postgres-es, side by side in one run:
//! `cargo run --release --manifest-path bench/peer/Cargo.toml -- [--quick]`.
//!
//! The same aggregate (inventory's `StockItem`), the same commands, the same concurrency
//! (16 or 64 writers, each on aggregates of its own) and the same pool size (16 connections)
//! go through
//! 1. cqrs-es's `CqrsFramework` with postgres-es's event repository, as `postgres_cqrs`
//!    builds it (no snapshots, no queries: the defaults a user gets), and
//! 2. Chorus's `eventstore::Repository` (aggregate cache, outbox rows in the same statement,
//!    group commit of concurrent units of work), once with one command per unit of work (what
//!    a context's command service does for a request) and once with 100 (what its consumers
//!    do with a batch of ready messages),
//!
//! each on a fresh database of the same PostgreSQL server, created and dropped by the run.
//! After each measurement the database must hold exactly one event per command (and, for
//! Chorus, one outbox row per event), or the run fails without reporting a rate.
//!
//! The figures and the machine they were measured on are kept in `docs/performance.md`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use events::Metadata;
use events::values::{OrderId, Quantity, Sku};
use eventstore::{Repository, Store, UnitOfWork};
use harness::TestDatabase;
use inventory::{StockCommand, StockItem};
use postgres_es::{PostgresCqrs, postgres_cqrs};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

/// Connections in each side's pool: one per writer when there are 16 writers.
const CONNECTIONS: u32 = 16;

/// The events table postgres-es 0.5 reads and writes (its default name, `events`). Snapshots
/// are not used, so their table is not created.
const PEER_SCHEMA: &str = "
CREATE TABLE events (
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint NOT NULL CHECK (sequence >= 0),
    event_type     text   NOT NULL,
    event_version  text   NOT NULL,
    payload        json   NOT NULL,
    metadata       json   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
)";

/// How many commands run on how many aggregates, by how many concurrent writers (each one
/// command at a time, on `aggregates / writers` aggregates of its own).
#[derive(Debug, Clone, Copy)]
struct Case {
    name: &'static str,
    aggregates: usize,
    commands: usize,
    writers: usize,
}

impl Case {
    /// The `i`th command of writer `w`. A writer goes round its own SKUs; each SKU in turn
    /// receives a unit, reserves it for an order, and commits it when the order ships.
    fn command(&self, w: usize, i: usize) -> anyhow::Result<(String, StockCommand)> {
        let per_writer = self.aggregates / self.writers;
        let aggregate = w * per_writer + i % per_writer;
        let round = i / per_writer;
        let sku: Sku = format!("SKU-{aggregate}").parse()?;
        let order_id = OrderId(Uuid::from_u64_pair(aggregate as u64, (round / 3) as u64));
        let quantity = Quantity::try_from(1)?;
        let id = sku.to_string();
        let command = match round % 3 {
            0 => StockCommand::Receive { sku, quantity },
            1 => StockCommand::Reserve { order_id, quantity },
            _ => StockCommand::Commit { order_id },
        };
        Ok((id, command))
    }
}

/// Commands per unit of work on the batched side: what a context's consumer commits at once
/// when that many messages are ready (its batches hold up to 256).
const UNIT: usize = 100;

/// One side of the comparison.
enum Engine {
    /// `CqrsFramework::execute`: one command, one transaction.
    Peer(PostgresCqrs<StockItem>),
    /// `Repository::handle`: one command, one unit of work (a command service's request).
    Chorus(Repository<StockItem>),
    /// `Repository::execute` into units of work of [`UNIT`] commands (a consumer's batch).
    ChorusUnits(Repository<StockItem>),
}

impl Engine {
    fn label(&self) -> String {
        match self {
            Engine::Peer(_) => "cqrs-es + postgres-es".to_owned(),
            Engine::Chorus(_) => "Chorus, one command per unit of work".to_owned(),
            Engine::ChorusUnits(_) => format!("Chorus, {UNIT} commands per unit of work"),
        }
    }

    /// Runs writer `w`'s commands of `case` and returns each command's latency: until its
    /// commit, which on the batched side is the commit of its unit.
    async fn write(&self, case: Case, w: usize) -> anyhow::Result<Vec<Duration>> {
        let count = case.commands / case.writers;
        let mut latencies = Vec::with_capacity(count);
        let metadata = Metadata::default();
        let unit = match self {
            Engine::ChorusUnits(_) => UNIT,
            Engine::Peer(_) | Engine::Chorus(_) => 1,
        };
        for first in (0..count).step_by(unit) {
            let started = Instant::now();
            let commands = (first..count.min(first + unit)).map(|i| case.command(w, i));
            match self {
                Engine::Peer(cqrs) => {
                    for command in commands {
                        let (id, command) = command?;
                        cqrs.execute(&id, command)
                            .await
                            .with_context(|| format!("writer {w} on {id}"))?;
                    }
                }
                Engine::Chorus(repository) => {
                    for command in commands {
                        let (id, command) = command?;
                        repository
                            .handle(&id, command, &metadata)
                            .await
                            .with_context(|| format!("writer {w} on {id}"))?;
                    }
                }
                Engine::ChorusUnits(repository) => {
                    let mut uow = UnitOfWork::new(repository.store());
                    for command in commands {
                        let (id, command) = command?;
                        repository
                            .execute(&mut uow, &id, command, &metadata)
                            .await
                            .with_context(|| format!("writer {w} on {id}"))?;
                    }
                    uow.commit().await.with_context(|| format!("writer {w}"))?;
                }
            }
            let took = started.elapsed();
            latencies.extend(std::iter::repeat_n(took, unit.min(count - first)));
        }
        Ok(latencies)
    }
}

/// What one side did in one case.
#[derive(Debug)]
struct Measured {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--quick") => true,
        Some(other) => anyhow::bail!("unknown argument {other:?}; the only option is --quick"),
    };
    let scale = if quick { 10 } else { 1 };
    let cases = [
        Case {
            name: "1,600 aggregates, 16 writers",
            aggregates: 1_600,
            commands: 160_000 / scale,
            writers: 16,
        },
        // As many requests as a context's command endpoint serves at once (`Host::serve`).
        Case {
            name: "1,600 aggregates, 64 writers",
            aggregates: 1_600,
            commands: 160_000 / scale,
            writers: 64,
        },
        Case {
            name: "16 aggregates, long histories, 16 writers",
            aggregates: 16,
            commands: 16_000 / scale,
            writers: 16,
        },
    ];

    println!("{}", header().await?);
    println!(
        "| case | store | commands | commands/s | p50 | p99 | CPU per command: this process | PostgreSQL backends |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for case in cases {
        let peer = measure(case, peer().await?).await?;
        for units in [false, true] {
            let ours = measure(case, chorus(units).await?).await?;
            println!(
                "| {} | ratio Chorus / peer | | **{:.1}×** | {:.2}× | {:.2}× | | |",
                case.name,
                ours.rate / peer.rate,
                ours.p50.as_secs_f64() / peer.p50.as_secs_f64(),
                ours.p99.as_secs_f64() / peer.p99.as_secs_f64(),
            );
        }
    }
    println!("\nload average at the end: {}", load_average());
    Ok(())
}

async fn header() -> anyhow::Result<String> {
    let admin_url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| harness::DEFAULT_DATABASE_URL.to_owned());
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url)
        .await
        .context("cannot connect to PostgreSQL (DATABASE_URL)")?;
    let (version, synchronous_commit): (String, String) = sqlx::query_as(
        "SELECT current_setting('server_version'), current_setting('synchronous_commit')",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    Ok(format!(
        "Chorus eventstore::Repository against cqrs-es 0.5 CqrsFramework + postgres-es 0.5 \
         (sqlx 0.8), no snapshots.\n\
         PostgreSQL {version} (synchronous_commit = {synchronous_commit}), a fresh database per \
         measurement; 16 or 64 concurrent writers (as the case says), one command at a time \
         each, on aggregates of their own; a pool of {CONNECTIONS} connections on each side.\n\
         Aggregate: inventory's StockItem (one per SKU). Command mix, each SKU in turn: \
         Receive 1 unit (a delivery), Reserve it for an order (OrderPlaced), Commit it \
         (ShipmentDispatched): what the saga asks of inventory for one order line, one event \
         per command.\n\
         Chorus runs each case twice: one command per unit of work (a command service's request), \
         and {UNIT} commands per unit of work (a consumer's batch of ready messages; a command's \
         latency is then its unit's). cqrs-es commits every command on its own.\n\
         CPU per command: user and system time of this process, and of the PostgreSQL backends \
         serving the measured database (not the server's WAL writer or checkpointer), divided \
         by the commands.\n\
         load average at the start: {}\n",
        load_average()
    ))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// cqrs-es's framework on postgres-es, as `postgres_cqrs` builds it, in a fresh database.
async fn peer() -> anyhow::Result<(Engine, TestDatabase)> {
    let db = TestDatabase::create().await?;
    let pool = PgPoolOptions::new()
        .max_connections(CONNECTIONS)
        .connect(&db.url())
        .await
        .with_context(|| format!("cannot open a pool to {}", db.name()))?;
    sqlx::query(PEER_SCHEMA).execute(&pool).await?;
    Ok((Engine::Peer(postgres_cqrs(pool, vec![], ())), db))
}

/// Chorus's repository, with its migrations, in a fresh database; committing a unit of work
/// per command, or per [`UNIT`] commands.
async fn chorus(units: bool) -> anyhow::Result<(Engine, TestDatabase)> {
    let db = TestDatabase::create().await?;
    let store = Store::from_pool(db.pool(CONNECTIONS).await?);
    store.migrate().await?;
    let repository = Repository::new(store, ());
    let engine = if units {
        Engine::ChorusUnits(repository)
    } else {
        Engine::Chorus(repository)
    };
    Ok((engine, db))
}

/// Runs the case on one side, checks what it stored, and prints its row.
async fn measure(case: Case, (engine, db): (Engine, TestDatabase)) -> anyhow::Result<Measured> {
    let engine = Arc::new(engine);
    let observer = PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url())
        .await?;
    let cpu_before = cpu(&observer).await?;
    let started = Instant::now();
    let writers: Vec<_> = (0..case.writers)
        .map(|w| {
            let engine = Arc::clone(&engine);
            tokio::spawn(async move { engine.write(case, w).await })
        })
        .collect();
    let mut latencies = Vec::with_capacity(case.commands);
    for writer in writers {
        latencies.extend(writer.await??);
    }
    let elapsed = started.elapsed();
    let cpu_after = cpu(&observer).await?;
    check(&engine, &observer, case, latencies.len()).await?;
    observer.close().await;

    latencies.sort_unstable();
    let commands = latencies.len() as f64;
    let measured = Measured {
        rate: commands / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    };
    let micros = |seconds: f64| format!("{:.0} µs", seconds * 1e6 / commands);
    let backends = match (cpu_before.backends, cpu_after.backends) {
        (Some(before), Some(after)) => micros(after - before),
        _ => "n/a".to_owned(),
    };
    println!(
        "| {} | {} | {} | {:.0} | {:.2} ms | {:.2} ms | {} | {} |",
        case.name,
        engine.label(),
        latencies.len(),
        measured.rate,
        measured.p50.as_secs_f64() * 1e3,
        measured.p99.as_secs_f64() * 1e3,
        micros(cpu_after.process - cpu_before.process),
        backends,
    );
    Ok(measured)
}

/// CPU time used so far, in seconds.
#[derive(Debug)]
struct Cpu {
    /// By this process.
    process: f64,
    /// By the PostgreSQL backends connected to the measured database; `None` when PostgreSQL
    /// does not run on this machine (or its processes cannot be read).
    backends: Option<f64>,
}

async fn cpu(observer: &PgPool) -> anyhow::Result<Cpu> {
    let pids: Vec<(i32,)> =
        sqlx::query_as("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            .fetch_all(observer)
            .await?;
    Ok(Cpu {
        process: cpu_seconds("self").context("cannot read /proc/self/stat")?,
        backends: pids
            .iter()
            .map(|(pid,)| cpu_seconds(&pid.to_string()))
            .sum(),
    })
}

/// User and system CPU time of process `pid` from `/proc/<pid>/stat` (Linux), in seconds.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (in parentheses, and it may hold spaces) start at
    // the state; utime and stime are the 12th and 13th of them, in ticks of 1/100 s (USER_HZ).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The database must hold one event per command, spread over every aggregate of the case;
/// Chorus's also one outbox row per event (no relay runs here).
async fn check(
    engine: &Engine,
    observer: &PgPool,
    case: Case,
    commands: usize,
) -> anyhow::Result<()> {
    let (events, aggregates): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT aggregate_id) FROM events WHERE aggregate_type = 'stock'",
    )
    .fetch_one(observer)
    .await?;
    let label = engine.label();
    ensure!(
        events == commands as i64,
        "{label}: {events} events stored for {commands} commands"
    );
    ensure!(
        aggregates == case.aggregates as i64,
        "{label}: events on {aggregates} aggregates, expected {}",
        case.aggregates
    );
    if let Engine::Chorus(_) | Engine::ChorusUnits(_) = engine {
        let (outbox,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox")
            .fetch_one(observer)
            .await?;
        ensure!(
            outbox == events,
            "{label}: {outbox} outbox rows for {events} events"
        );
    }
    Ok(())
}

/// The nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
