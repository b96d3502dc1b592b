//! `chorus`: the operator CLI of Chorus.
//!
//! `chorus dev` runs the local system: a private nats-server (2.12 or newer), and the four
//! context services in this process, each on its own database of the local PostgreSQL. The
//! operator commands work on a running system: `chorus dlq` inspects, retries and purges the
//! dead letters, `chorus republish` publishes a context's event store to its stream again,
//! `chorus token` mints a bearer token for the HTTP gateway, `chorus replay` rebuilds (or
//! verifies) read models without downtime, `chorus projections status` shows their lag. The
//! CLI holds no domain logic; the services it starts, and the crates it calls, do.
//!
//! Each command group is one variant of [`Command`] and one module; what they share has one
//! place: [`connect`] (NATS and the event stores, with the settings they are read from),
//! [`exit`] (logging, the runtime, and how an error becomes a message and an exit code), and
//! [`progress`] (the progress bar of long commands).

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
    /// Run the local system until Ctrl-C.
    ///
    /// Starts a private nats-server (data under CHORUS_DATA_DIR, default `.chorus/`), creates
    /// a database per context on the PostgreSQL at DATABASE_URL (default
    /// postgres://postgres@127.0.0.1:5432/postgres), and runs the ordering, inventory, payments
    /// and shipping services: event stores, relays, consumers, ordering's payment-timeout
    /// ticker, and the command endpoints `chorus.<context>.<command>`. Set CHORUS_NATS_URL to
    /// use a running nats-server (2.12 or newer) instead of starting one; CHORUS_NATS_PORT
    /// picks the private server's port (default 4300); ORDERING_PAYMENT_TIMEOUT_SECONDS how
    /// long an order waits for its payment before it is rejected (default 900).
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
}

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
    }
}
