//! `ordering`: the ordering context's service process.
//!
//! Settings (environment): `ORDERING_DATABASE_URL`, `ORDERING_DATABASE_CONNECTIONS`,
//! `NATS_URL` (see [`host::Settings`]); `ORDERING_PAYMENT_TIMEOUT_SECONDS` (how long an order
//! waits for its payment before it is rejected, a positive integer, default 900); `RUST_LOG`
//! (default `info,sqlx=warn`);
//! `CHORUS_LOG_FORMAT`: `text` (the default) or `json`. Runs until Ctrl-C or SIGTERM.

use std::process::ExitCode;

use anyhow::Context as _;
use events::BoundedContext;

fn main() -> ExitCode {
    let json = match log_format() {
        Ok(json) => json,
        Err(e) => {
            eprintln!("ordering: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    init_tracing(json);
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                tracing::error!(error = format!("{e:#}"), "ordering failed");
            } else {
                eprintln!("ordering: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let settings = host::Settings::from_env(BoundedContext::Ordering)?;
    let payment_timeout = ordering::service::payment_timeout_from_env()?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let host = ordering::service::start(&settings, payment_timeout).await?;
        host.run(host::signal()).await
    })
}

/// `CHORUS_LOG_FORMAT`: whether logs are JSON lines.
fn log_format() -> anyhow::Result<bool> {
    const VAR: &str = "CHORUS_LOG_FORMAT";
    match std::env::var(VAR) {
        Err(std::env::VarError::NotPresent) => Ok(false),
        Ok(value) => match value.as_str() {
            "" | "text" => Ok(false),
            "json" => Ok(true),
            other => anyhow::bail!("{VAR}={other:?} is neither \"text\" nor \"json\""),
        },
        Err(e) => Err(e).context(VAR),
    }
}

fn init_tracing(json: bool) {
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
}
