//! `chorus bench`: what the whole system does under load, measured from the outside.
//!
//! `chorus bench saga` drives orders into a running system (the gateway's `POST /orders`, or
//! ordering's `place-order` command over NATS) and times each one until its `OrderConfirmed`
//! is seen on NATS; `chorus bench plot` draws the latency of several such runs against the
//! throughput they achieved. The parts: [`target`] (where the system is and the tokens it
//! takes, by default from `chorus dev`'s `dev.env`), [`setup`] (the run's own products and
//! stock), [`load`] (the timetable or the workers, and the matching of orders to their
//! terminal events), [`report`] (histograms, memory samples, the text and JSON results) and
//! [`plot`].

mod load;
mod plot;
mod report;
mod setup;
mod target;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use crate::exit::UsageError;

pub use self::plot::PlotArgs;
use self::report::NamedPid;
use self::target::TargetArgs;

/// Load tests of a running system.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    Saga(SagaArgs),
    Plot(PlotArgs),
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Saga(args) => saga(args).await,
        Command::Plot(args) => plot::run(args),
    }
}

/// Drive orders through the whole saga of a running system and measure them.
///
/// Before the run, the bench defines its own products (SKUs BENCH-<run>-<n>, new each run)
/// and receives enough stock for every order, through the gateway's operator routes; it then
/// places one order per SKU over NATS, again until ordering's replica of the catalogue can
/// price it. Every order is for one unit of one of those SKUs (in turn), paid with the
/// payment simulator's token tok_success, for one of --customers shoppers (in turn).
///
/// An order's end-to-end latency runs from its send time until its OrderConfirmed is seen on
/// NATS (the bench subscribes to ordering's OrderConfirmed and OrderRejected events before
/// it sends anything, and matches them by order id). The latency of the POST (or of the NATS
/// request) itself runs from the same send time to its answer. Both go into HDR histograms
/// (microsecond resolution, 3 significant digits). In an open loop (--rate) the send time is
/// the order's slot in a fixed timetable, not the moment it actually went out: a system that
/// falls behind shows it in the latency (no coordinated omission).
///
/// An order that ends otherwise is an error, counted by kind: rejected_<reason> (an
/// OrderRejected: out_of_stock, payment_declined, payment_timed_out), http_<status>_<code>
/// (the gateway's problem code), http_transport, nats_<code> (ordering refused the command),
/// nats_no_responders, nats_timeout, not_terminal (no terminal event within --settle). The
/// run ends when every order sent has reached a terminal state, or --settle after the last
/// send.
///
/// Prints the orders sent, confirmed and confirmed per second over the measured window (from
/// the end of the warm-up to the last confirmation), the latency percentiles, the errors by
/// kind and the memory of the sampled processes; --json FILE writes the same with the
/// settings. Exit status: 0 when the run completed (even with errors: they are results), 2
/// for a bad argument, 1 when the system cannot be reached or refuses the set-up.
///
/// Where the system is: flags, else the environment, else CHORUS_DATA_DIR/dev.env (default
/// .chorus/dev.env, written by `chorus dev`). With GATEWAY_JWT_SECRET the bench mints its own
/// operator token and a shopper token per customer (the gateway rate-limits each principal,
/// 50 requests/s by default); with SHOPPER_TOKEN instead, every order is that one shopper's.
#[derive(Debug, clap::Args)]
pub struct SagaArgs {
    /// How orders go in: gateway (POST /orders with a fresh Idempotency-Key each) or nats
    /// (ordering's place-order command, NATS request/reply, with the order id chosen by the
    /// bench).
    #[arg(long, value_enum, default_value_t = load::Via::Gateway)]
    via: load::Via,
    /// Open loop: send this many orders per second on a fixed timetable, whatever the system
    /// answers (at most 512 requests in flight; an order waiting for a slot is late, and its
    /// latency shows it).
    #[arg(
        long,
        value_name = "PER_SECOND",
        value_parser = clap::value_parser!(u32).range(1..=100_000),
        required_unless_present = "concurrency",
        conflicts_with = "concurrency"
    )]
    rate: Option<u32>,
    /// Closed loop: this many workers, each sending its next order once the previous one has
    /// reached its terminal state.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: Option<u32>,
    /// How long to send measured orders (after the warm-up): 60s, 5m, 500ms.
    #[arg(
        long,
        value_parser = duration,
        required_unless_present = "count",
        conflicts_with = "count"
    )]
    duration: Option<Duration>,
    /// How many measured orders to send (after the warm-up).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Orders sent first, at the same rate or concurrency, and left out of every figure.
    #[arg(long, default_value = "5s", value_parser = duration)]
    warmup: Duration,
    /// How long to wait, after the last send, for the orders not yet confirmed or rejected
    /// (those still open then are errors `not_terminal`); also the timeout of one request.
    #[arg(long, default_value = "30s", value_parser = duration)]
    settle: Duration,
    /// How many products the orders spread over (each SKU is one stock aggregate).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    skus: u32,
    /// Units of stock per SKU for the run, warm-up included. Default: enough for every order
    /// (1,000,000 per SKU when the number of orders is not known ahead). Fewer makes the last
    /// orders rejected out of stock.
    #[arg(long, value_name = "UNITS", value_parser = clap::value_parser!(u32).range(1..=1_000_000_000))]
    stock: Option<u32>,
    /// How many shoppers the orders spread over, each with a token of their own (with
    /// GATEWAY_JWT_SECRET; a single SHOPPER_TOKEN is one shopper).
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    customers: u32,
    /// Sample a process's resident memory (VmRSS) once a second during the run: PID or
    /// NAME=PID, repeatable. Default: the CHORUS_PID of dev.env (all of `chorus dev`'s
    /// services run in that one process), when it runs.
    #[arg(long = "rss-pid", value_name = "[NAME=]PID", value_parser = report::named_pid)]
    rss_pids: Vec<NamedPid>,
    /// Also write the settings and every figure to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    #[command(flatten)]
    target: TargetArgs,
}

async fn saga(args: SagaArgs) -> anyhow::Result<()> {
    if args.settle.is_zero() {
        return Err(UsageError("--settle must be more than 0s".to_owned()).into());
    }
    let plan = load::Plan {
        via: args.via,
        shape: match (args.rate, args.concurrency) {
            (Some(rate), _) => load::Shape::Open { rate },
            (None, Some(workers)) => load::Shape::Closed { workers },
            (None, None) => unreachable!("clap requires --rate or --concurrency"),
        },
        end: match (args.duration, args.count) {
            (Some(duration), _) => load::End::After(duration),
            (None, Some(count)) => load::End::Count(count),
            (None, None) => unreachable!("clap requires --duration or --count"),
        },
        warmup: args.warmup,
        settle: args.settle,
        skus: args.skus,
    };
    let target = args.target.resolve(args.customers)?;
    let mut pids = args.rss_pids;
    if pids.is_empty() {
        pids.extend(target.dev_pid.clone());
    }
    for pid in &pids {
        report::check_pid(pid)?;
    }
    let stock = args.stock.unwrap_or_else(|| plan.stock_per_sku());

    let system = target.connect(args.settle).await?;
    let run = setup::prepare(&system, &plan, stock).await?;
    eprintln!(
        "chorus bench: {} SKUs with {stock} units each ({}); warm-up {:?}, then measuring",
        plan.skus, run.skus[0], plan.warmup
    );
    let sampler = report::Sampler::start(pids);
    let outcome = load::drive(&system, &run, &plan).await?;
    let memory = sampler.stop().await;
    let result = report::SagaResult::new(&plan, stock, &system, outcome, memory);
    print!("{}", result.text());
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&result).context("cannot encode the result")?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// `250ms`, `5s`, `2m`, `1h`, or a number of seconds; `0s` is allowed.
fn duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => value.split_at(at),
        None => (value, "s"),
    };
    let millis_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{value:?} is not a duration like 500ms, 60s or 5m")),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(millis_per))
        .filter(|ms| *ms <= 24 * 3_600_000)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{value:?} is not a duration from 0s to 24h"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        assert_eq!(duration("7"), Ok(Duration::from_secs(7)));
        for bad in ["", "s", "1d", "-5s", "1.5s", "25h"] {
            assert!(duration(bad).is_err(), "{bad:?}");
        }
    }
}
