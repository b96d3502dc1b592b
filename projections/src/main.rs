//! `chorus-projections`: the read models' service process (the three projection writers and
//! the query service).
//!
//! Settings (environment): `PROJECTIONS_DATABASE_URL`, `PROJECTIONS_DATABASE_CONNECTIONS`,
//! `PROJECTIONS_BATCH_SIZE`, `PROJECTIONS_LINGER_MS`, `NATS_URL` (see [`projections::service::Settings`]);
//! `PROJECTIONS_HTTP_ADDR` (e.g. `127.0.0.1:8085`; unset: no HTTP listener) for `/healthz`,
//! `/readyz` and `/metrics`; `OTEL_EXPORTER_OTLP_ENDPOINT` to export traces; `RUST_LOG`
//! (default `info,sqlx=warn`); `CHORUS_LOG_FORMAT`: `text` (the default) or `json`. Runs until
//! Ctrl-C or SIGTERM.

/// Reading and applying messages allocates for every header and field: mimalloc spends about a
/// third of the time the system allocator does on it (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    host::main("chorus-projections", || async {
        let settings = projections::service::Settings::from_env()?;
        let http_addr = host::http_addr_from_env(projections::service::NAME)?;
        let mut service = projections::service::start(&settings).await?;
        if let Some(addr) = http_addr {
            service.listen_http(addr).await?;
        }
        service.run(host::signal()).await
    })
}
