//! `inventory`: the inventory context's service process.
//!
//! Settings, from the environment: `INVENTORY_DATABASE_URL`, `INVENTORY_DATABASE_CONNECTIONS`,
//! `NATS_URL` (see `host::Settings`), `RUST_LOG` (default `info,sqlx=warn`) and
//! `CHORUS_LOG_FORMAT` (`json` for JSON lines; otherwise text). Logs go to stderr. (How long
//! an order waits for its payment is ordering's setting, `ORDERING_PAYMENT_TIMEOUT_SECONDS`.)

use events::BoundedContext;

fn main() -> std::process::ExitCode {
    host::main("inventory", || async {
        let settings = host::Settings::from_env(BoundedContext::Inventory)?;
        let host = inventory::service::start(&settings).await?;
        host.run(host::signal()).await
    })
}
