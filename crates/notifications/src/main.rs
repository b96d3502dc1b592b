//! `chorus-notifications`: the notifications service process.
//!
//! Settings (environment): `NATS_URL` (default `nats://127.0.0.1:4222`); `NOTIFICATIONS_SINK`,
//! `file:<path>` (JSON lines, the default `file:notifications.jsonl`) or `log`; `RUST_LOG`
//! (default `info`); `CHORUS_LOG_FORMAT`, `text` (the default) or `json`;
//! `NOTIFICATIONS_HTTP_ADDR` (e.g. `127.0.0.1:8086`; unset: no listener) for `/healthz`,
//! `/readyz` and `/metrics`. Its health is also answered on `chorus.notifications.health`.
//! Runs until Ctrl-C or SIGTERM, finishing the messages in hand.

use std::process::ExitCode;

use anyhow::Context as _;
use notifications::{Config, Options, Service, observe};

/// Handling messages and requests allocates for every header, field and payload: mimalloc
/// spends a fraction of the system allocator's time on it (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let outcome = init_logging().and_then(|()| {
        let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        runtime.block_on(run())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "chorus-notifications failed");
            eprintln!("chorus-notifications: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let sink = config.sink.open()?;
    let client = notifications::connect(&config.nats_url)
        .await
        .context("NATS_URL")?;
    let service = Service::start(client.clone(), sink, Options::default()).await?;
    let observer = service.observer();
    // Dropping `stop` ends the health endpoint and the HTTP listener.
    let (stop, stopped) = tokio::sync::watch::channel(());
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            stopped.changed().await.ok();
        }
    };
    let health = observe::serve_health(&client, observer.clone(), until_stopped()).await?;
    let health = tokio::spawn(health);
    let http = match config.http_addr {
        None => None,
        Some(addr) => {
            let (_, serving) = observe::listen_http(addr, observer, until_stopped()).await?;
            Some(tokio::spawn(serving))
        }
    };
    let outcome = service.run(signal()).await;
    drop(stop);
    health.await.ok();
    if let Some(Ok(Err(e))) = match http {
        Some(http) => Some(http.await),
        None => None,
    } {
        tracing::warn!(error = format!("{e:#}"), "the HTTP listener failed");
    }
    outcome
}

fn init_logging() -> anyhow::Result<()> {
    let json = match std::env::var("CHORUS_LOG_FORMAT").ok().as_deref() {
        None | Some("" | "text") => false,
        Some("json") => true,
        Some(other) => anyhow::bail!("CHORUS_LOG_FORMAT={other:?} is not text or json"),
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
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

/// Resolves on Ctrl-C or SIGTERM.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                ctrl_c.await.ok();
            }
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.ok();
}
