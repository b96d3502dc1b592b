//! The local launcher: everything Chorus needs on one machine, stopped with Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use events::BoundedContext;
use eventstore::Store;
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
    let client = bus::connect(&nats_url, "chorus-dev").await?;
    let js = async_nats::jetstream::new(client.clone());
    let streams: Vec<_> = BoundedContext::ALL.iter().map(|c| c.stream()).collect();
    bus::provision::streams(&js, &streams, 1).await?;

    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    for context in BoundedContext::ALL {
        let url = ensure_database(&config.database_url, &database_name(context)).await?;
        let store = Store::connect(&url, 4)
            .await
            .with_context(|| format!("cannot open the {context} event store"))?;
        store
            .migrate()
            .await
            .with_context(|| format!("cannot migrate the {context} event store"))?;
        let relay = bus::Relay::new(store, js.clone(), context.stream());
        tasks.push(tokio::spawn(relay.run(shutdown.clone())));
    }

    tracing::info!(%nats_url, "Chorus is running: NATS streams provisioned, an event store and a relay per context (ordering, inventory, payments, shipping); Ctrl-C stops it");
    wait_for_signal().await;
    tracing::info!("stopping");
    shutdown.cancel();
    for task in tasks {
        if tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .is_err()
        {
            tracing::warn!("a relay did not stop within 10 s");
        }
    }
    if tokio::time::timeout(Duration::from_secs(5), client.flush())
        .await
        .is_err()
    {
        tracing::warn!("NATS did not take the last messages within 5 s");
    }
    tracing::info!("stopped");
    Ok(())
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

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                ctrl_c.await.ok();
            }
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.ok();
}
