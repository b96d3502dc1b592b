//! `payments`: the payments context's service process, with the built-in [`Simulator`] as the
//! payment provider behind [`Resilient`] (the default [`ResiliencePolicy`]).
//!
//! Settings, from the environment: `PAYMENTS_DATABASE_URL`, `PAYMENTS_DATABASE_CONNECTIONS`,
//! `NATS_URL` (see [`host::Settings`]), `RUST_LOG` (default `info,sqlx=warn`) and
//! `CHORUS_LOG_FORMAT` (`text`, the default, or `json`). Runs until Ctrl-C or SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use events::BoundedContext;
use payments::{PaymentProvider, ResiliencePolicy, Resilient, Simulator};

fn main() -> ExitCode {
    if let Err(e) = init_tracing() {
        eprintln!("payments: {e:#}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("payments: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "payments failed");
            eprintln!("payments: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let settings = host::Settings::from_env(BoundedContext::Payments)?;
    let provider: Arc<dyn PaymentProvider> = Arc::new(Resilient::new(
        Simulator::default(),
        ResiliencePolicy::default(),
    ));
    let host = payments::service::start(&settings, provider).await?;
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
