//! How a command ends: one line on stderr and an exit status an operator's script can test.
//!
//! Every subcommand returns `anyhow::Result<()>` and leaves the rest to [`run`]: 0 on success,
//! 1 for a failure (`chorus: <what failed>: <why>`, with its causes on the same line), and 2
//! for a mistake in the command line. Clap exits with 2 by itself for what it can check; a
//! mistake found only later (a value it cannot parse ahead) is returned as a [`UsageError`],
//! so that it exits with 2 as well.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

/// How long the end waits for the runtime's workers to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// A mistake in the command line found after parsing: exits with 2, like clap's own.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Sets up logs and traces as the services do (`host::telemetry`: stderr, `RUST_LOG` or
/// `default_filter`, `CHORUS_LOG_FORMAT`, and OTLP export when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// is set, so that `chorus dev` traces the services it runs like their binaries), runs
/// `command` on a multi-threaded runtime, exports the last spans, and turns its outcome into
/// the exit status.
pub fn run(default_filter: &str, command: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let telemetry =
        match host::telemetry::init_with_filter("chorus", &format!("{default_filter},sqlx=warn")) {
            Ok(telemetry) => telemetry,
            Err(e) => {
                eprintln!("chorus: {e:#}");
                return ExitCode::FAILURE;
            }
        };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chorus: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(command);
    // Tasks left behind (a connection's reader) are dropped, and their workers stopped, before
    // the last line is written, so that nothing they log comes after it; they must not hold
    // the exit back, so the wait is bounded.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    telemetry.shutdown();
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
