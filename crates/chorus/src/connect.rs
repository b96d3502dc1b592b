//! Reaching NATS and a context's event store from an operator command, failing fast.
//!
//! A command run against the wrong address must say so within seconds, not retry forever the
//! way a service does: NATS gets one connection attempt with a short timeout (no retry on the
//! initial connect), PostgreSQL a bounded wait for its first connection. The error names the
//! address (never a password), the setting it came from, and what to check.
//!
//! The settings are those of the services (`NATS_URL`, `<CONTEXT>_DATABASE_URL`, read by
//! `host::Settings`), so that an operator's environment serves both. Only the default NATS URL
//! differs: the services' `nats://127.0.0.1:4222` is where an old distribution server often
//! runs, and the CLI is used most with `chorus dev`, which serves on port 4300.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use events::BoundedContext;
use eventstore::Store;
use sqlx::postgres::PgConnectOptions;

use crate::exit::UsageError;

/// The NATS URL when neither `--nats-url` nor `NATS_URL` is given: `chorus dev`'s server.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4300";

/// How long to wait for a server to answer before saying it is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where NATS is, for the commands that talk to it.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL (nats-server 2.12 or newer). The default is the server `chorus dev`
    /// starts; the services read the same NATS_URL.
    #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS_URL, value_name = "URL")]
    pub nats_url: String,
}

impl NatsArgs {
    /// The URL to use: an empty one means the default, as it does for the services.
    pub fn url(&self) -> &str {
        match self.nats_url.trim() {
            "" => DEFAULT_NATS_URL,
            url => url,
        }
    }

    /// Connects once (no retry on the initial connect, a short timeout) and refuses a server
    /// older than 2.12, as `bus::connect` does for the services, with the same TLS variables
    /// (`NATS_TLS_CA`, `NATS_TLS_CERT`, `NATS_TLS_KEY`).
    pub async fn connect(&self) -> anyhow::Result<async_nats::jetstream::Context> {
        let url = self.url();
        let check = "is nats-server running there? Set --nats-url or NATS_URL \
                     (`chorus dev` serves nats://127.0.0.1:4300)";
        let shown = bus::redact(url);
        let client = bus::Tls::from_env()?
            .apply(bus::connect_options(url))
            .name("chorus-cli")
            .connection_timeout(CONNECT_TIMEOUT)
            .connect(url)
            .await
            .map_err(|e| anyhow!("cannot connect to NATS at {shown}: {e}; {check}"))?;
        // The server's INFO is read during the handshake; a flush waits for it.
        tokio::time::timeout(CONNECT_TIMEOUT, client.flush())
            .await
            .map_err(|_| anyhow!("NATS at {shown} did not answer within {CONNECT_TIMEOUT:?}"))?
            .with_context(|| format!("NATS at {shown} did not answer"))?;
        bus::check_server_version(&client.server_info().version)
            .with_context(|| format!("NATS at {shown}"))?;
        Ok(async_nats::jetstream::new(client))
    }
}

/// Where a context's event store is, for the commands that read one.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// PostgreSQL URL of the context's event store. Default: <CONTEXT>_DATABASE_URL (e.g.
    /// ORDERING_DATABASE_URL), else postgres://postgres@127.0.0.1:5432/chorus_<context>, the
    /// database `chorus dev` creates.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
}

impl StoreArgs {
    /// Opens the event store of `context` with at most `connections` connections, checking
    /// that the database holds one. It migrates nothing.
    pub async fn open(&self, context: BoundedContext, connections: u32) -> anyhow::Result<Store> {
        let variable = format!("{}_DATABASE_URL", context.name().to_uppercase());
        let (url, source) = match &self.database_url {
            Some(url) => (url.clone(), "--database-url".to_owned()),
            None => (
                host::Settings::from_env(context)?.database_url,
                variable.clone(),
            ),
        };
        let options: PgConnectOptions = match url.parse() {
            Ok(options) => options,
            // The URL is not echoed: it may hold a password.
            Err(e) if self.database_url.is_some() => {
                return Err(UsageError(format!(
                    "--database-url is not a PostgreSQL URL (postgres://user@host:port/database): {e}"
                ))
                .into());
            }
            Err(e) => bail!("{variable} is not a PostgreSQL URL: {e}"),
        };
        let address = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("")
        );
        let pool = eventstore::pool_options()
            .max_connections(connections)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot reach the {context} event store at {address} (from {source}): {e}; \
                     is PostgreSQL running there, and is {variable} or --database-url right?"
                )
            })?;
        let has_events: bool = sqlx::query_scalar("SELECT to_regclass('events') IS NOT NULL")
            .fetch_one(&pool)
            .await
            .with_context(|| format!("cannot read the {context} event store at {address}"))?;
        if !has_events {
            bail!(
                "the database at {address} (from {source}) holds no event store (no events \
                 table): is {variable} or --database-url the {context} context's database?"
            );
        }
        Ok(Store::from_pool(pool))
    }
}
