//! `shipping`: the shipping context's service process.
//!
//! Settings, from the environment: `SHIPPING_DATABASE_URL`, `SHIPPING_DATABASE_CONNECTIONS`,
//! `NATS_URL` (see [`host::Settings`]), `SHIPPING_HTTP_ADDR` (e.g. `127.0.0.1:8084`: serve
//! `GET /healthz`, `GET /readyz` and the Prometheus `GET /metrics` there; unset, the health is
//! served over NATS only, `chorus.shipping.health`, and the metrics not at all; the former name
//! `SHIPPING_HEALTH_ADDR` is refused), `RUST_LOG` (default `info,sqlx=warn`) and
//! `CHORUS_LOG_FORMAT` (`text`, the default, or `json`). Runs until Ctrl-C or SIGTERM.

use events::BoundedContext;

/// Handling messages and requests allocates for every header, field and payload: mimalloc
/// spends a fraction of the system allocator's time on it (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    host::main("shipping", || async {
        let settings = host::Settings::from_env(BoundedContext::Shipping)?;
        let http_addr = host::http_addr_from_env(BoundedContext::Shipping)?;
        let mut host = shipping::service::start(&settings).await?;
        if let Some(addr) = http_addr {
            host.listen_http(addr).await?;
        }
        host.run(host::signal()).await
    })
}
