//! `shipping`: the shipping context's service process.
//!
//! Settings, from the environment: `SHIPPING_DATABASE_URL`, `SHIPPING_DATABASE_CONNECTIONS`,
//! `NATS_URL` (see [`host::Settings`]), `RUST_LOG` (default `info,sqlx=warn`) and
//! `CHORUS_LOG_FORMAT` (`text`, the default, or `json`). Runs until Ctrl-C or SIGTERM.

use std::process::ExitCode;

use anyhow::Context as _;
use events::BoundedContext;

fn main() -> ExitCode {
    if let Err(e) = init_tracing() {
        eprintln!("shipping: {e:#}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("shipping: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "shipping failed");
            eprintln!("shipping: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let settings = host::Settings::from_env(BoundedContext::Shipping)?;
    let host = shipping::service::start(&settings).await?;
    host.run(host::signal()).await
}

/// Logs to stderr, filtered by `RUST_LOG`; as JSON lines when `CHORUS_LOG_FORMAT=json`.
fn init_tracing() -> anyhow::Result<()> {
    let json = match std::env::var("CHORUS_LOG_FORMAT").ok().as_deref() {
        None | Some("" | "text") => false,
        Some("json") => true,
        Some(other) => {
            return Err(anyhow::anyhow!("{other:?} is not text or json"))
                .context("CHORUS_LOG_FORMAT");
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    Ok(())
}
