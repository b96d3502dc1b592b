//! `chorus`: the operator CLI of Chorus.
//!
//! `chorus dev` runs the local system: a private nats-server (2.12 or newer), PostgreSQL (the
//! local server or a private cluster), and the four contexts, the projections and the HTTP
//! gateway in this process, each service on its own database, with a demo catalogue. The
//! operator commands work on a running system: `chorus dlq` inspects, retries and purges the
//! dead letters, `chorus republish` publishes a context's event store to its stream again,
//! `chorus token` mints a bearer token for the HTTP gateway, `chorus replay` rebuilds (or
//! verifies) read models without downtime, `chorus projections status` shows their lag, and
//! `chorus bench saga` drives orders through a running system and measures them. The CLI
//! holds no domain logic; the services it starts, and the crates it calls, do.
//!
//! Each command group is one variant of [`Command`] and one module; what they share has one
//! place: [`connect`] (NATS and the event stores, with the settings they are read from),
//! [`exit`] (logging, the runtime, and how an error becomes a message and an exit code), and
//! [`progress`] (the progress bar of long commands).

mod bench;
mod connect;
mod dev;
mod dlq;
mod exit;
mod progress;
mod replay;
mod republish;
mod token;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chorus",
    version,
    about = "Chorus: choreographed event-sourced order fulfilment",
    after_help = "Exit status: 0 on success, 2 for a mistake in the command line, 1 for any \
                  other failure (the message on stderr names what failed and what to check)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system locally until Ctrl-C (or SIGTERM).
    ///
    /// Starts a private nats-server, finds PostgreSQL (or starts a private cluster), creates
    /// the databases, and runs in this process the ordering, inventory, payments and shipping
    /// services, the projections and the HTTP gateway, each configured as in production. Loads
    /// a small demo catalogue (once: a restart does not add its stock again), then prints the
    /// gateway's URL, its /docs and /openapi.json, the NATS URL, a shopper and an operator
    /// token, and a first curl that places an order; the tokens and URLs are also written to
    /// CHORUS_DATA_DIR/dev.env, for `. .chorus/dev.env` in another shell. Ctrl-C stops the
    /// gateway, then the services, then the servers it started (nats-server with SIGTERM,
    /// PostgreSQL with pg_ctl stop), and waits for each.
    ///
    /// CHORUS_DATA_DIR (default .chorus): the private servers' data, their logs, dev.env.
    ///
    /// CHORUS_NATS_URL: use a running nats-server (2.12 or newer) instead of a private one.
    /// CHORUS_NATS_PORT (default 4300): the private server's port.
    ///
    /// DATABASE_URL: the PostgreSQL to use, as a user that may create databases. Unset: the
    /// local server at postgres://postgres@127.0.0.1:5432/postgres if it answers, else a private
    /// cluster in CHORUS_DATA_DIR/postgres on a free port (needs initdb and pg_ctl; under root
    /// it runs as the postgres user). CHORUS_POSTGRES=private: the private cluster in any case.
    ///
    /// CHORUS_DATABASE_PREFIX (default chorus): the databases are <prefix>_ordering,
    /// <prefix>_inventory, <prefix>_payments, <prefix>_shipping and <prefix>_projections.
    ///
    /// CHORUS_GATEWAY_ADDR (default 127.0.0.1:8080): where the gateway listens.
    /// GATEWAY_JWT_SECRET: the secret tokens are signed with (default: a new one each run);
    /// the other GATEWAY_* and PROJECTIONS_* settings apply as they do to those services.
    ///
    /// ORDERING_PAYMENT_TIMEOUT_SECONDS (default 900): how long an order waits for its payment.
    Dev,
    /// Inspect, retry and purge dead letters (the DEAD_LETTERS stream).
    #[command(subcommand)]
    Dlq(dlq::Command),
    Republish(republish::Args),
    Replay(replay::ReplayArgs),
    /// The read models: each projection's position and lag.
    #[command(subcommand)]
    Projections(replay::ProjectionsCommand),
    Token(token::Args),
    /// Load tests of a running system: `saga` drives orders and measures them, `plot` draws
    /// their latency against throughput.
    #[command(subcommand)]
    Bench(bench::Command),
}

/// Handling messages and requests allocates for every header, field and payload: mimalloc
/// spends a fraction of the system allocator's time on it (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        // The launcher reports what it starts; the operator commands print their results and
        // log only what goes wrong.
        Command::Dev => exit::run("info", async { dev::run(dev::Config::from_env()?).await }),
        Command::Dlq(command) => exit::run("warn", dlq::run(command)),
        Command::Republish(args) => exit::run("warn", republish::run(args)),
        Command::Replay(args) => exit::run("warn", replay::replay(args)),
        Command::Projections(command) => exit::run("warn", replay::projections(command)),
        Command::Token(args) => exit::run("warn", token::run(args)),
        Command::Bench(command) => exit::run("warn", bench::run(command)),
    }
}
