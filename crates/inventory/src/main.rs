//! `inventory`: the inventory context's service process.
//!
//! Settings, from the environment: `INVENTORY_DATABASE_URL`, `INVENTORY_DATABASE_CONNECTIONS`,
//! `NATS_URL` (see `host::Settings`), `INVENTORY_HTTP_ADDR` (e.g. `127.0.0.1:8082`: serve
//! `GET /healthz`, `GET /readyz` and the Prometheus `GET /metrics` there; unset, the health is
//! served over NATS only, `chorus.inventory.health`, and the metrics not at all; the former
//! name `INVENTORY_HEALTH_ADDR` is refused), `RUST_LOG` (default `info,sqlx=warn`) and
//! `CHORUS_LOG_FORMAT` (`json` for JSON lines; otherwise text). Logs go to stderr. (How long
//! an order waits for its payment is ordering's setting, `ORDERING_PAYMENT_TIMEOUT_SECONDS`.)

use events::BoundedContext;

/// Handling messages and requests allocates for every header, field and payload: mimalloc
/// spends a fraction of the system allocator's time on it (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    host::main("inventory", || async {
        let settings = host::Settings::from_env(BoundedContext::Inventory)?;
        let http_addr = host::http_addr_from_env(BoundedContext::Inventory)?;
        let mut host = inventory::service::start(&settings).await?;
        if let Some(addr) = http_addr {
            host.listen_http(addr).await?;
        }
        host.run(host::signal()).await
    })
}
