//! `inventory`: the inventory context's service process.
//!
//! Settings, from the environment: `INVENTORY_DATABASE_URL`, `INVENTORY_DATABASE_CONNECTIONS`,
//! `NATS_URL` (see `host::Settings`), `RUST_LOG` (default `info,sqlx=warn`) and
//! `CHORUS_LOG_FORMAT` (`json` for JSON lines; otherwise text). Logs go to stderr. (How long
//! an order waits for its payment is ordering's setting, `ORDERING_PAYMENT_TIMEOUT_SECONDS`.)

use std::process::ExitCode;

use events::BoundedContext;
use host::Settings;
use inventory::service;

fn main() -> ExitCode {
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("inventory: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "inventory failed");
            eprintln!("inventory: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env(BoundedContext::Inventory)?;
    let host = service::start(&settings).await?;
    host.run(host::signal()).await
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("CHORUS_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}
