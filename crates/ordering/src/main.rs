//! `ordering`: the ordering context's service process.
//!
//! Settings (environment): `ORDERING_DATABASE_URL`, `ORDERING_DATABASE_CONNECTIONS`,
//! `NATS_URL` (see [`host::Settings`]); `ORDERING_PAYMENT_TIMEOUT_SECONDS` (how long an order
//! waits for its payment before it is rejected, a positive integer, default 900); `RUST_LOG`
//! (default `info,sqlx=warn`);
//! `CHORUS_LOG_FORMAT`: `text` (the default) or `json`. Runs until Ctrl-C or SIGTERM.

use events::BoundedContext;

fn main() -> std::process::ExitCode {
    host::main("ordering", || async {
        let settings = host::Settings::from_env(BoundedContext::Ordering)?;
        let payment_timeout = ordering::service::payment_timeout_from_env()?;
        let host = ordering::service::start(&settings, payment_timeout).await?;
        host.run(host::signal()).await
    })
}
