//! `payments`: the payments context's service process, with the built-in [`Simulator`] as the
//! payment provider behind [`Resilient`] (the default [`ResiliencePolicy`]).
//!
//! Settings, from the environment: `PAYMENTS_DATABASE_URL`, `PAYMENTS_DATABASE_CONNECTIONS`,
//! `NATS_URL` (see [`host::Settings`]), `PAYMENTS_HTTP_ADDR` (e.g. `127.0.0.1:8083`: serve
//! `GET /healthz`, `GET /readyz` and the Prometheus `GET /metrics` there; unset, the health is
//! served over NATS only, `chorus.payments.health`, and the metrics not at all; the former name
//! `PAYMENTS_HEALTH_ADDR` is refused), `RUST_LOG` (default `info,sqlx=warn`) and
//! `CHORUS_LOG_FORMAT` (`text`, the default, or `json`). Runs until Ctrl-C or SIGTERM.

use std::sync::Arc;

use events::BoundedContext;
use payments::{PaymentProvider, ResiliencePolicy, Resilient, Simulator};

/// Handling messages and requests allocates for every header, field and payload: mimalloc
/// spends a fraction of the system allocator's time on it (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    host::main("payments", || async {
        let settings = host::Settings::from_env(BoundedContext::Payments)?;
        let http_addr = host::http_addr_from_env(BoundedContext::Payments)?;
        let provider: Arc<dyn PaymentProvider> = Arc::new(Resilient::new(
            Simulator::default(),
            ResiliencePolicy::default(),
        ));
        let mut host = payments::service::start(&settings, provider).await?;
        if let Some(addr) = http_addr {
            host.listen_http(addr).await?;
        }
        host.run(host::signal()).await
    })
}
