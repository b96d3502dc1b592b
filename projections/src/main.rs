//! `chorus-projections`: the read models' service process (the three projection writers and
//! the query service).
//!
//! Settings (environment): `PROJECTIONS_DATABASE_URL`, `PROJECTIONS_DATABASE_CONNECTIONS`,
//! `PROJECTIONS_BATCH_SIZE`, `NATS_URL` (see [`projections::service::Settings`]); `RUST_LOG`
//! (default `info,sqlx=warn`); `CHORUS_LOG_FORMAT`: `text` (the default) or `json`. Runs until
//! Ctrl-C or SIGTERM.

fn main() -> std::process::ExitCode {
    host::main("chorus-projections", || async {
        let settings = projections::service::Settings::from_env()?;
        let service = projections::service::start(&settings).await?;
        service.run(host::signal()).await
    })
}
