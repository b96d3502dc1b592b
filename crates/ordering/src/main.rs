//! `ordering`: the ordering context's service process.
//!
//! Settings (environment): `ORDERING_DATABASE_URL`, `ORDERING_DATABASE_CONNECTIONS`,
//! `NATS_URL` (see [`host::Settings`]); `ORDERING_PAYMENT_TIMEOUT_SECONDS` (how long an order
//! waits for its payment before it is rejected, a positive integer, default 900);
//! `ORDERING_HTTP_ADDR` (e.g. `127.0.0.1:8081`: serve `GET /healthz`, `GET /readyz` and the
//! Prometheus `GET /metrics` there; unset, the health is served over NATS only,
//! `chorus.ordering.health`, and the metrics not at all; the former name
//! `ORDERING_HEALTH_ADDR` is refused); `RUST_LOG` (default `info,sqlx=warn`);
//! `CHORUS_LOG_FORMAT`: `text` (the default) or `json`. Runs until Ctrl-C or SIGTERM.

use events::BoundedContext;

/// Handling messages and requests allocates for every header, field and payload: mimalloc
/// spends a fraction of the system allocator's time on it (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    host::main("ordering", || async {
        let settings = host::Settings::from_env(BoundedContext::Ordering)?;
        let payment_timeout = ordering::service::payment_timeout_from_env()?;
        let http_addr = host::http_addr_from_env(BoundedContext::Ordering)?;
        let mut host = ordering::service::start(&settings, payment_timeout).await?;
        if let Some(addr) = http_addr {
            host.listen_http(addr).await?;
        }
        host.run(host::signal()).await
    })
}
