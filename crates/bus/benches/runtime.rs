//! Throughput and latency of the event-sourcing runtime against a real PostgreSQL and a
//! private nats-server: `cargo bench -p bus --bench runtime`. Add `-- --quick` for a run a tenth
//! the size, `-- --only relay` (or `commands`, `batched`, `latency`) for one benchmark.
//!
//! Measures, each on a fresh database:
//! 1. command appends with 16 concurrent writers (one command, one commit each);
//! 2. batched units of work (100 commands on 100 aggregates per commit, 4 writers);
//! 3. the relay, from a full outbox to acknowledged JetStream publishes;
//! 4. command latency at an aggregate with 10,000 prior events against one with 10.
//!
//! The figures and the machine they were measured on are kept in `docs/performance.md`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bus::{Relay, RelayConfig};
use events::Metadata;
use events::naming::StreamName;
use eventstore::{Repository, Store, UnitOfWork};
use harness::account::{Account, AccountCommand};
use harness::{NatsServer, TestDatabase, wait_until};
use tokio_util::sync::CancellationToken;

struct Scale {
    commands: usize,
    batched_events: usize,
    relay_events: usize,
    latency_samples: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let scale = if quick {
        Scale {
            commands: 16_000,
            batched_events: 40_000,
            relay_events: 50_000,
            latency_samples: 500,
        }
    } else {
        Scale {
            commands: 160_000,
            batched_events: 400_000,
            relay_events: 500_000,
            latency_samples: 5_000,
        }
    };
    println!("| benchmark | result |");
    println!("|---|---|");
    if run("commands") {
        commands(&scale).await?;
    }
    if run("batched") {
        batched(&scale).await?;
    }
    if run("relay") {
        relay(&scale).await?;
    }
    if run("latency") {
        latency(&scale).await?;
    }
    Ok(())
}

async fn fresh_store(connections: u32) -> anyhow::Result<(Store, TestDatabase)> {
    let db = TestDatabase::create().await?;
    let store = Store::from_pool(db.pool(connections).await?);
    store.migrate().await?;
    Ok((store, db))
}

/// 16 writers, each running one command per unit of work on aggregates of its own (the store
/// merges units committed at the same time into shared statements).
async fn commands(scale: &Scale) -> anyhow::Result<()> {
    const WRITERS: usize = 16;
    let (store, _db) = fresh_store(WRITERS as u32).await?;
    let accounts = Arc::new(Repository::<Account>::new(store.clone(), ()));
    let per_writer = scale.commands / WRITERS;
    let started = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let accounts = Arc::clone(&accounts);
            tokio::spawn(async move {
                let metadata = Metadata::default();
                for i in 0..per_writer {
                    let id = format!("w{w}-{}", i % 100);
                    accounts
                        .handle(&id, AccountCommand::Deposit(1), &metadata)
                        .await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let rate = (per_writer * WRITERS) as f64 / elapsed.as_secs_f64();
    println!(
        "| command appends, 16 concurrent writers, one command per unit of work | {rate:.0} commands/s ({} commands in {elapsed:.2?}) |",
        per_writer * WRITERS
    );
    Ok(())
}

/// 4 writers, each committing units of 100 commands on 100 aggregates.
async fn batched(scale: &Scale) -> anyhow::Result<()> {
    const WRITERS: usize = 4;
    const UNIT: usize = 100;
    let (store, _db) = fresh_store(WRITERS as u32).await?;
    let accounts = Arc::new(Repository::<Account>::new(store.clone(), ()));
    let units_per_writer = scale.batched_events / UNIT / WRITERS;
    let started = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let accounts = Arc::clone(&accounts);
            let store = store.clone();
            tokio::spawn(async move {
                let metadata = Metadata::default();
                for u in 0..units_per_writer {
                    let mut uow = UnitOfWork::new(&store);
                    for i in 0..UNIT {
                        let id = format!("w{w}-{}", (u * UNIT + i) % 1_000);
                        accounts
                            .execute(&mut uow, &id, AccountCommand::Deposit(1), &metadata)
                            .await?;
                    }
                    uow.commit().await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let events = units_per_writer * UNIT * WRITERS;
    let rate = events as f64 / elapsed.as_secs_f64();
    println!(
        "| batched unit of work, 100 commands per commit, 4 writers | {rate:.0} events/s ({events} events in {elapsed:.2?}) |"
    );
    Ok(())
}

/// The relay drains a full outbox (10,000 aggregates) into a private nats-server.
async fn relay(scale: &Scale) -> anyhow::Result<()> {
    let (store, _db) = fresh_store(4).await?;
    let accounts = Repository::<Account>::new(store.clone(), ());
    let metadata = Metadata {
        correlation_id: Some("bench".into()),
        ..Metadata::default()
    };
    for chunk in 0..scale.relay_events / 1_000 {
        let mut uow = UnitOfWork::new(&store);
        for i in 0..1_000 {
            let id = format!("a{}", (chunk * 1_000 + i) % 10_000);
            accounts
                .execute(&mut uow, &id, AccountCommand::Deposit(1), &metadata)
                .await?;
        }
        uow.commit().await?;
    }
    let nats = NatsServer::start().await?;
    let js = async_nats::jetstream::new(bus::connect(&nats.url(), "bench").await?);
    let stream = StreamName::for_context("bench");
    bus::provision::streams(&js, std::slice::from_ref(&stream), 1).await?;

    let shutdown = CancellationToken::new();
    let relay = Relay::new(store.clone(), js.clone(), stream).with_config(RelayConfig {
        batch_size: 2_000,
        ..RelayConfig::default()
    });
    let started = Instant::now();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    wait_until("the outbox to drain", Duration::from_secs(600), || async {
        store
            .outbox_backlog()
            .await
            .map(|n| n == 0)
            .unwrap_or(false)
    })
    .await?;
    let elapsed = started.elapsed();
    shutdown.cancel();
    task.await?;
    let mut info = js.get_stream("BENCH").await?;
    let in_stream = info.info().await?.state.messages;
    anyhow::ensure!(
        in_stream == scale.relay_events as u64,
        "stream holds {in_stream} messages"
    );
    let rate = scale.relay_events as f64 / elapsed.as_secs_f64();
    println!(
        "| relay, outbox to acknowledged JetStream publish | {rate:.0} events/s ({} events in {elapsed:.2?}) |",
        scale.relay_events
    );
    Ok(())
}

/// Sequential commands on an aggregate with 10 prior events and on one with 10,000.
async fn latency(scale: &Scale) -> anyhow::Result<()> {
    let (store, _db) = fresh_store(2).await?;
    let accounts = Repository::<Account>::new(store.clone(), ());
    let metadata = Metadata::default();
    for (id, history) in [("short", 10), ("long", 10_000)] {
        for _ in 0..history / 1_000 {
            accounts
                .handle(id, AccountCommand::DepositEach(vec![1; 1_000]), &metadata)
                .await?;
        }
        if history % 1_000 > 0 {
            accounts
                .handle(
                    id,
                    AccountCommand::DepositEach(vec![1; history % 1_000]),
                    &metadata,
                )
                .await?;
        }
    }
    // A cold load replays the whole history once; after that the aggregate is cached.
    let cold = Repository::<Account>::new(store.clone(), ());
    let started = Instant::now();
    let (_, version) = cold.load("long").await?;
    let cold_load = started.elapsed();
    anyhow::ensure!(version == 10_000, "long history has {version} events");

    let mut medians = Vec::new();
    for id in ["short", "long", "short", "long"] {
        let mut samples = Vec::with_capacity(scale.latency_samples);
        for _ in 0..scale.latency_samples {
            let started = Instant::now();
            cold.handle(id, AccountCommand::Deposit(1), &metadata)
                .await
                .context("command")?;
            samples.push(started.elapsed());
        }
        samples.sort();
        medians.push((
            id,
            samples[samples.len() / 2],
            samples[samples.len() * 99 / 100],
        ));
    }
    // The first round of each warms up; report the second.
    let (_, short_p50, short_p99) = medians[2];
    let (_, long_p50, long_p99) = medians[3];
    let ratio = long_p50.as_secs_f64() / short_p50.as_secs_f64();
    println!("| command latency, 10 prior events | p50 {short_p50:.2?}, p99 {short_p99:.2?} |");
    println!(
        "| command latency, 10,000 prior events | p50 {long_p50:.2?}, p99 {long_p99:.2?} (ratio of p50s {ratio:.2}) |"
    );
    println!("| cold load of 10,000 events (once, then cached) | {cold_load:.2?} |");
    Ok(())
}
