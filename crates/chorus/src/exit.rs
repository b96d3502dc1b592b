//! How a command ends: one line on stderr and an exit status an operator's script can test.
//!
//! Every subcommand returns `anyhow::Result<()>` and leaves the rest to [`run`]: 0 on success,
//! 1 for a failure (`chorus: <what failed>: <why>`, with its causes on the same line), and 2
//! for a mistake in the command line. Clap exits with 2 by itself for what it can check; a
//! mistake found only later (a value it cannot parse ahead) is returned as a [`UsageError`],
//! so that it exits with 2 as well.

use std::future::Future;
use std::process::ExitCode;

/// A mistake in the command line found after parsing: exits with 2, like clap's own.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Sets up logging (stderr, `RUST_LOG` or `default_filter`), runs `command` on a
/// multi-threaded runtime, and turns its outcome into the exit status.
pub fn run(default_filter: &str, command: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| format!("{default_filter},sqlx=warn").into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chorus: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(command);
    // Tasks left behind (a connection's reader) must not hold the exit back.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chorus: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
