//! The local launcher: everything Chorus needs on one machine, stopped with Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use events::BoundedContext;
use harness::NatsServer;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

/// The launcher's settings, read once from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// A database URL whose user may create databases (`DATABASE_URL`).
    pub database_url: String,
    /// A running nats-server to use instead of a private one (`CHORUS_NATS_URL`).
    pub nats_url: Option<String>,
    /// The private nats-server's port (`CHORUS_NATS_PORT`).
    pub nats_port: u16,
    /// Where the private nats-server keeps its data (`CHORUS_DATA_DIR`).
    pub data_dir: PathBuf,
    /// How long an order waits for its payment (`ORDERING_PAYMENT_TIMEOUT_SECONDS`).
    pub payment_timeout: chrono::Duration,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let nats_port = match var("CHORUS_NATS_PORT") {
            None => 4300,
            Some(port) => port.parse().with_context(|| {
                format!("CHORUS_NATS_PORT={port:?} is not a port number (1-65535)")
            })?,
        };
        if nats_port == 0 {
            bail!("CHORUS_NATS_PORT=0 is not a port number (1-65535)");
        }
        Ok(Self {
            database_url: var("DATABASE_URL")
                .unwrap_or_else(|| harness::DEFAULT_DATABASE_URL.to_owned()),
            nats_url: var("CHORUS_NATS_URL"),
            nats_port,
            data_dir: var("CHORUS_DATA_DIR")
                .map_or_else(|| PathBuf::from(".chorus"), PathBuf::from),
            payment_timeout: ordering::service::parse_payment_timeout(
                var(ordering::service::PAYMENT_TIMEOUT_VAR).as_deref(),
            )?,
        })
    }
}

/// The database of a context, e.g. `chorus_ordering`.
fn database_name(context: BoundedContext) -> String {
    format!("chorus_{}", context.name())
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let _nats_server;
    let nats_url = match &config.nats_url {
        Some(url) => url.clone(),
        None => {
            let dir = config.data_dir.join("nats");
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {} (CHORUS_DATA_DIR)", dir.display()))?;
            let conf = config.data_dir.join("nats.conf");
            std::fs::write(&conf, include_str!("../../../nats/single.conf"))
                .with_context(|| format!("cannot write {}", conf.display()))?;
            let server = NatsServer::start_in(dir, config.nats_port, Some(&conf))
                .await
                .context("cannot start the private nats-server")?;
            let url = server.url();
            _nats_server = server;
            url
        }
    };
    let mut hosts = Vec::new();
    for context in BoundedContext::ALL {
        let settings = host::Settings {
            context,
            database_url: ensure_database(&config.database_url, &database_name(context)).await?,
            nats_url: nats_url.clone(),
            database_connections: 8,
        };
        let started = match context {
            BoundedContext::Ordering => {
                ordering::service::start(&settings, config.payment_timeout).await
            }
            BoundedContext::Inventory => inventory::service::start(&settings).await,
            BoundedContext::Payments => {
                let provider = payments::Resilient::new(
                    payments::Simulator::default(),
                    payments::ResiliencePolicy::default(),
                );
                payments::service::start(&settings, Arc::new(provider)).await
            }
            BoundedContext::Shipping => shipping::service::start(&settings).await,
        };
        hosts.push(started.with_context(|| format!("cannot start the {context} service"))?);
    }

    tracing::info!(
        %nats_url,
        "Chorus is running: ordering, inventory, payments and shipping, each with its event store, \
         relay, consumers and command endpoints (chorus.<context>.<command>); Ctrl-C stops it"
    );
    let stop = CancellationToken::new();
    let mut running = tokio::task::JoinSet::new();
    for host in hosts {
        let stop = stop.clone();
        running.spawn(host.run(async move { stop.cancelled().await }));
    }
    let early = tokio::select! {
        () = host::signal() => None,
        Some(done) = running.join_next() => Some(done),
    };
    tracing::info!("stopping");
    stop.cancel();
    let mut result = match early {
        None => Ok(()),
        Some(Ok(Ok(()))) => Err(anyhow::anyhow!("a service stopped on its own")),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(anyhow::anyhow!("a service panicked: {e}")),
    };
    while let Some(done) = running.join_next().await {
        let failure = match done {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(e) => anyhow::anyhow!("a service panicked: {e}"),
        };
        if result.is_ok() {
            result = Err(failure);
        }
    }
    tracing::info!("stopped");
    result
}

/// Creates the database `name` on the server of `admin_url` unless it exists; returns its URL.
async fn ensure_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    let options: sqlx::postgres::PgConnectOptions = admin_url
        .parse()
        .with_context(|| format!("DATABASE_URL={admin_url:?} is not a PostgreSQL URL"))?;
    let mut conn = PgConnection::connect_with(&options)
        .await
        .with_context(|| {
            format!(
                "PostgreSQL is not reachable at {admin_url}: start a local server \
             (Debian: apt-get install postgresql && pg_ctlcluster <version> main start) \
             or set DATABASE_URL"
            )
        })?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        // `name` is one of ours (chorus_<context>), so quoting it is enough.
        let create = format!("CREATE DATABASE \"{name}\"");
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(create))
            .execute(&mut conn)
            .await
        {
            let duplicate = e
                .as_database_error()
                .is_some_and(|d| d.code().as_deref() == Some("42P04"));
            if !duplicate {
                return Err(e).with_context(|| format!("cannot create database {name}"));
            }
        }
    }
    conn.close().await.ok();
    let mut url = admin_url
        .split('?')
        .next()
        .unwrap_or(admin_url)
        .rsplit_once('/')
        .map_or_else(|| admin_url.to_owned(), |(base, _)| base.to_owned());
    url.push('/');
    url.push_str(name);
    Ok(url)
}
