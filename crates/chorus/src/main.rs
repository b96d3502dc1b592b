//! `chorus`: the operator CLI of Chorus.
//!
//! `chorus dev` runs the local system: a private nats-server (2.12 or newer), and the four
//! context services in this process, each on its own database of the local PostgreSQL. It holds
//! no domain logic; the services it starts do.

mod dev;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chorus",
    version,
    about = "Chorus: choreographed event-sourced order fulfilment"
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
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chorus: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev => dev::run(dev::Config::from_env()?).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chorus: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
