//! `shipping`: the shipping context's service process.
//!
//! Settings, from the environment: `SHIPPING_DATABASE_URL`, `SHIPPING_DATABASE_CONNECTIONS`,
//! `NATS_URL` (see [`host::Settings`]), `RUST_LOG` (default `info,sqlx=warn`) and
//! `CHORUS_LOG_FORMAT` (`text`, the default, or `json`). Runs until Ctrl-C or SIGTERM.

use events::BoundedContext;

fn main() -> std::process::ExitCode {
    host::main("shipping", || async {
        let settings = host::Settings::from_env(BoundedContext::Shipping)?;
        let host = shipping::service::start(&settings).await?;
        host.run(host::signal()).await
    })
}
