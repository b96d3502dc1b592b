//! `chorus replay` and `chorus projections status`: the operator's side of the read models.
//!
//! The work is `projections::rebuild`'s: a rebuild reads the source streams with ordered
//! consumers into a new schema while the live one keeps serving, catches up, and swaps the
//! two in one transaction; each schema carries its own checkpoints, so the live writer simply
//! continues from the swapped-in ones. This module parses the command line, connects, shows
//! progress (events/s and ETA on a terminal), turns Ctrl-C into a clean interruption (the live
//! model stays as it was, and running the command again starts over), and prints the outcome.

use std::time::Duration;

use anyhow::{anyhow, bail};
use chrono::{DateTime, Utc};
use indicatif::ProgressBar;
use projections::Projection;
use projections::rebuild::{self, Difference, Interrupted, Phase, Progress, StartAt};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;

use crate::connect::NatsArgs;
use crate::exit::UsageError;

/// The projections database when neither `--database-url` nor `PROJECTIONS_DATABASE_URL` is
/// given: the one `chorus dev` creates.
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/chorus_projections";

/// How long to wait for PostgreSQL before saying it is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Differences printed in full per projection; the rest are counted.
const SHOWN_DIFFERENCES: usize = 20;

/// Where the projections' database is.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL of the projections database (the one the projections service uses).
    #[arg(
        long,
        env = "PROJECTIONS_DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        value_name = "URL"
    )]
    pub database_url: String,
}

impl DatabaseArgs {
    async fn connect(&self) -> anyhow::Result<PgPool> {
        let options: PgConnectOptions = self.database_url.parse().map_err(|e| {
            // The URL is not echoed: it may hold a password.
            UsageError(format!(
                "--database-url / PROJECTIONS_DATABASE_URL is not a PostgreSQL URL \
                 (postgres://user@host:port/database): {e}"
            ))
        })?;
        let address = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("")
        );
        // A rebuild applies its last events on one connection while the swap holds another.
        eventstore::pool_options()
            .max_connections(4)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot reach the projections database at {address}: {e}; is PostgreSQL \
                     running there, and is PROJECTIONS_DATABASE_URL or --database-url right?"
                )
            })
    }
}

/// Rebuild read models from JetStream without downtime, or verify them.
///
/// Reads the projection's source streams from the start (or from --from) with ordered
/// consumers into new tables while the live tables keep serving, catches up with what arrived
/// meanwhile, then swaps the new tables in, atomically, with their checkpoints: the running
/// projections service continues from there, so nothing is missing and nothing is counted
/// twice. Shows events/s and the time left on a terminal. Ctrl-C stops it cleanly: the live read
/// model is unchanged, and running the command again starts over.
///
/// With --verify, builds into scratch tables up to the live model's checkpoints and reports
/// every row on which the two differ, swapping nothing; exits with status 1 when there are
/// differences.
///
/// Projections: orders (order summaries and their saga timeline), catalogue (products with
/// stock levels), sales (per day and currency).
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The projections to rebuild: orders, catalogue, sales.
    #[arg(
        value_name = "PROJECTION",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub projections: Vec<String>,
    /// Rebuild every projection, one after the other.
    #[arg(long)]
    pub all: bool,
    /// Start the new tables at this point of the source streams: a stream sequence (e.g. 5000,
    /// applied to each source stream) or a time (RFC 3339, e.g. 2026-11-01T00:00:00Z). Events
    /// before it are not part of the rebuilt model.
    #[arg(long, value_name = "SEQUENCE|TIME", value_parser = parse_start)]
    pub from: Option<StartAt>,
    /// Compare a fresh build with the live read model instead of replacing it.
    #[arg(long, conflicts_with = "from")]
    pub verify: bool,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// The read models' own commands.
#[derive(Debug, clap::Subcommand)]
pub enum ProjectionsCommand {
    /// Each projection's position (checkpoint) and lag per source stream.
    ///
    /// The lag is the number of stream messages a projection has not applied yet: the stream's
    /// last sequence minus the checkpoint. A projection that was never started stands at 0.
    Status {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

fn parse_start(text: &str) -> Result<StartAt, String> {
    if let Ok(sequence) = text.parse::<u64>() {
        return if sequence == 0 {
            Err("stream sequences start at 1".to_owned())
        } else {
            Ok(StartAt::Sequence(sequence))
        };
    }
    DateTime::parse_from_rfc3339(text)
        .map(|time| StartAt::Time(time.with_timezone(&Utc)))
        .map_err(|_| {
            "expected a stream sequence (e.g. 5000) or an RFC 3339 time \
             (e.g. 2026-11-01T00:00:00Z)"
                .to_owned()
        })
}

fn projections_named(args: &ReplayArgs) -> anyhow::Result<Vec<Projection>> {
    if args.all {
        return Ok(Projection::ALL.to_vec());
    }
    let mut chosen = Vec::new();
    for name in &args.projections {
        let Some(projection) = Projection::parse(name) else {
            let known: Vec<&str> = Projection::ALL.iter().map(|p| p.name()).collect();
            return Err(UsageError(format!(
                "unknown projection {name:?}; the projections are {}",
                known.join(", ")
            ))
            .into());
        };
        if !chosen.contains(&projection) {
            chosen.push(projection);
        }
    }
    Ok(chosen)
}

pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let projections = projections_named(&args)?;
    let js = args.nats.connect().await?;
    let db = args.database.connect().await?;
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let mut differences = 0;
    for projection in projections {
        let bar = Bar::new();
        let outcome = if args.verify {
            let found = rebuild::verify(&db, &js, projection, &bar, &cancel).await;
            bar.finish();
            found.map(|found| {
                differences += found.len();
                report_differences(projection, &found);
            })
        } else {
            let from = args.from.unwrap_or(StartAt::Beginning);
            let report = rebuild::rebuild(&db, &js, projection, from, &bar, &cancel).await;
            bar.finish();
            report.map(|report| {
                let seconds = report.elapsed.as_secs_f64();
                let rate = if seconds > 0.0 {
                    report.messages as f64 / seconds
                } else {
                    0.0
                };
                println!(
                    "{projection}: rebuilt and swapped in: {} messages read, {} events \
                     applied, {} unreadable, in {seconds:.1} s ({rate:.0} events/s); \
                     checkpoints {}",
                    report.messages,
                    report.applied,
                    report.poison,
                    checkpoints(&report.checkpoints),
                );
            })
        };
        if let Err(e) = outcome {
            if e.downcast_ref::<Interrupted>().is_some() {
                bail!("{e}; run the command again to start over");
            }
            return Err(e.context(format!("the {projection} projection")));
        }
    }
    if differences > 0 {
        bail!(
            "{} between the live read models and a fresh build",
            rows_differ(differences)
        );
    }
    Ok(())
}

pub async fn projections(command: ProjectionsCommand) -> anyhow::Result<()> {
    let ProjectionsCommand::Status { nats, database } = command;
    let js = nats.connect().await?;
    let db = database.connect().await?;
    let statuses = rebuild::status(&db, &js).await?;
    println!(
        "{:<10} {:<10} {:>12} {:>14} {:>10}",
        "PROJECTION", "STREAM", "CHECKPOINT", "LAST SEQUENCE", "LAG"
    );
    for status in statuses {
        for stream in status.streams {
            println!(
                "{:<10} {:<10} {:>12} {:>14} {:>10}",
                status.projection,
                stream.stream,
                stream.checkpoint,
                stream.last_sequence,
                stream.lag
            );
        }
    }
    Ok(())
}

fn rows_differ(count: usize) -> String {
    if count == 1 {
        "1 row differs".to_owned()
    } else {
        format!("{count} rows differ")
    }
}

fn checkpoints(checkpoints: &std::collections::BTreeMap<String, u64>) -> String {
    checkpoints
        .iter()
        .map(|(stream, sequence)| format!("{stream} {sequence}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn report_differences(projection: Projection, found: &[Difference]) {
    if found.is_empty() {
        println!("{projection}: the live read model matches a fresh build");
        return;
    }
    println!(
        "{projection}: {} from a fresh build",
        rows_differ(found.len())
    );
    for difference in found.iter().take(SHOWN_DIFFERENCES) {
        println!(
            "  {} {} {:?}: live {} / rebuilt {}",
            difference.table,
            difference.key,
            difference.kind,
            difference.live.as_deref().unwrap_or("(none)"),
            difference.rebuilt.as_deref().unwrap_or("(none)"),
        );
    }
    if found.len() > SHOWN_DIFFERENCES {
        println!("  ... and {} more", found.len() - SHOWN_DIFFERENCES);
    }
}

/// The rebuild's progress on the terminal: a bar of stream messages with the phase beside it.
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Self {
        Self(crate::progress::events(0))
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for Bar {
    fn phase(&self, projection: Projection, phase: Phase) {
        self.0.set_message(format!("{projection}: {phase}"));
    }

    fn add_total(&self, events: u64) {
        self.0.inc_length(events);
    }

    fn advance(&self, events: u64) {
        self.0.inc(events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_is_a_sequence_or_a_time() {
        assert_eq!(parse_start("5000"), Ok(StartAt::Sequence(5000)));
        assert!(matches!(
            parse_start("2026-11-01T00:00:00Z"),
            Ok(StartAt::Time(_))
        ));
        assert!(parse_start("0").is_err());
        assert!(parse_start("yesterday").is_err());
    }
}
