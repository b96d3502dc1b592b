//! `chorus republish`: a context's event store published to its JetStream stream again.
//!
//! NATS acknowledges a write before it reaches disk; PostgreSQL is the source of truth. When a
//! context's stream is lost or cut short, this command provisions it again (a deleted stream
//! is recreated as the services create it) and publishes the events of the store, in position
//! order from `--from`, exactly as the relay does: `bus::publish_events`, the relay's own
//! publishing (same subjects, envelope headers, `Nats-Msg-Id` = event id, per-aggregate waves).
//!
//! **No race with the relay.** It takes the context's relay lock (`bus::RelayLock`) for its
//! whole run, and refuses to start while a relay holds it: a relay publishing new events
//! meanwhile could put an aggregate's later event on the stream before an earlier one
//! republished here. A service started during the run waits, as a standby relay does, and
//! publishes its outbox afterwards. Like the relay, it removes from the outbox the events
//! JetStream acknowledged.
//!
//! **Duplicates are safe.** An event still in the stream's duplicate window is dropped by
//! JetStream (the summary counts them); one republished later reaches the consumers again, and
//! they skip it: the contexts' consumers by their inbox of event ids, the projections by each
//! aggregate's sequence.
//!
//! The events are read in batches of [`BATCH_SIZE`] with a cursor on the position
//! (`Store::events_after`); one batch is published completely before the next is read, so an
//! aggregate's order holds across batches too.

use std::time::Instant;

use anyhow::{Context as _, bail};
use bus::{RelayConfig, RelayLock};
use events::BoundedContext;
use eventstore::Store;

use crate::connect::{NatsArgs, StoreArgs};

/// Events read from the store and published per round.
const BATCH_SIZE: i64 = 5_000;

/// Publish a context's event store to its JetStream stream again.
///
/// For a stream that was lost or cut short: provisions the context's stream (recreating a
/// deleted one), then publishes the events of its event store, from position --from on, as
/// the relay does (same subjects and headers, Nats-Msg-Id = event id, each aggregate's events
/// in order). Duplicates are safe: JetStream drops those still in its duplicate window (two
/// minutes), and consumers skip the others, the contexts' consumers by their inbox of event
/// ids, the projections by each aggregate's sequence.
///
/// It takes the context's relay lock, so stop the context's service first (with `chorus dev`,
/// stop it); a service started meanwhile waits and then publishes its outbox. Prints the
/// events published, the duplicates JetStream dropped, and the time taken.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The context whose events to publish: ordering, inventory, payments or shipping.
    #[arg(long, value_name = "NAME", value_parser = context)]
    context: BoundedContext,
    /// First event-store position to publish (positions are global in a context's store).
    #[arg(long, value_name = "POSITION", default_value_t = 1,
          value_parser = clap::value_parser!(i64).range(1..))]
    from: i64,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    nats: NatsArgs,
}

fn context(name: &str) -> Result<BoundedContext, String> {
    BoundedContext::parse(name).ok_or_else(|| {
        let known: Vec<&str> = BoundedContext::ALL.iter().map(|c| c.name()).collect();
        format!("unknown context (the contexts are {})", known.join(", "))
    })
}

/// What a run did.
#[derive(Debug, Default)]
struct Summary {
    published: u64,
    duplicates: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let context = args.context;
    let stream = context.stream();
    let store = args.store.open(context, 2).await?;

    let mut lock = RelayLock::connect(&store, &stream, &RelayConfig::default())
        .await
        .with_context(|| format!("cannot open a session on the {context} event store"))?;
    if !lock.try_acquire().await? {
        bail!(
            "the {context} relay is running (another session holds its lock): stop the \
             {context} service first, so that no new event of an aggregate reaches stream {} \
             before the earlier ones republished now",
            stream.name()
        );
    }

    let js = args.nats.connect().await?;
    bus::provision::streams(&js, std::slice::from_ref(&stream), 1).await?;

    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE position >= $1")
        .bind(args.from)
        .fetch_one(store.pool())
        .await
        .with_context(|| format!("cannot count the events of the {context} event store"))?;
    let bar = crate::progress::events(u64::try_from(total).unwrap_or(0));
    let started = Instant::now();
    let outcome = publish(&store, &mut lock, &js, context, args.from, &bar).await;
    bar.finish_and_clear();
    let summary = outcome?;
    let elapsed = started.elapsed();
    println!(
        "republished {context} from position {} to stream {}",
        args.from,
        stream.name()
    );
    println!("events published: {}", summary.published);
    println!("duplicates dropped by JetStream: {}", summary.duplicates);
    println!("time: {:.2} s", elapsed.as_secs_f64());
    Ok(())
}

/// Publishes the store from position `from` on, batch after batch; on a failure, says where
/// to start again.
async fn publish(
    store: &Store,
    lock: &mut RelayLock,
    js: &async_nats::jetstream::Context,
    context: BoundedContext,
    from: i64,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Summary> {
    let stream = context.stream();
    let mut summary = Summary::default();
    let mut after = from - 1;
    loop {
        let batch = store
            .events_after(after, BATCH_SIZE)
            .await
            .with_context(|| {
                format!("cannot read the {context} event store after position {after}")
            })?;
        let Some(last) = batch.last() else {
            return Ok(summary);
        };
        let published = bus::publish_events(js, &stream, &batch).await;
        summary.published += published.acked.len() as u64;
        summary.duplicates += published.duplicates;
        bar.inc(published.acked.len() as u64);
        eventstore::Store::outbox_remove(lock.connection(), &published.acked)
            .await
            .with_context(|| format!("cannot update the {context} outbox"))?;
        if let Some(failure) = published.failure {
            let acked: std::collections::HashSet<i64> = published.acked.into_iter().collect();
            let resume = batch
                .iter()
                .map(|e| e.position)
                .find(|p| !acked.contains(p))
                .unwrap_or(last.position + 1);
            return Err(failure.context(format!(
                "stopped after publishing {} events; run it again with --from {resume} to go on",
                summary.published
            )));
        }
        after = last.position;
    }
}
