//! The local launcher: the whole of Chorus on one machine, from one command, stopped with
//! Ctrl-C (or SIGTERM).
//!
//! Start-up goes from the outside in: the servers (a private nats-server, see [`nats`];
//! PostgreSQL, found or started, see [`postgres`]), the databases, the four contexts, the
//! projections and the gateway, each as it runs in production but in this one process; then
//! the demo catalogue ([`demo`]) and what a developer needs to try it ([`banner`]). The stop
//! goes the other way: the gateway stops taking requests first, then the services finish the
//! work in hand, then the servers this launcher started are stopped and waited for.
//!
//! The servers are processes of their own (in their own process groups, so that the Ctrl-C of
//! a terminal reaches only the launcher); their guards stop them also when start-up fails
//! half-way, so that no run leaves a server behind.

mod banner;
pub(crate) mod demo;
mod nats;
mod postgres;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use events::BoundedContext;
use sqlx::{Connection, PgConnection};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use self::nats::PrivateNats;
use self::postgres::{Postgres, PostgresChoice, PrivateCluster};

/// The settings, and the defaults a developer gets without any.
pub const DATA_DIR_VAR: &str = "CHORUS_DATA_DIR";
pub const NATS_URL_VAR: &str = "CHORUS_NATS_URL";
pub const NATS_PORT_VAR: &str = "CHORUS_NATS_PORT";
pub const GATEWAY_ADDR_VAR: &str = "CHORUS_GATEWAY_ADDR";
pub const DATABASE_PREFIX_VAR: &str = "CHORUS_DATABASE_PREFIX";
pub const POSTGRES_VAR: &str = "CHORUS_POSTGRES";
pub const DATABASE_URL_VAR: &str = "DATABASE_URL";

const DEFAULT_NATS_PORT: u16 = 4300;
const DEFAULT_GATEWAY_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 8080);
const DEFAULT_DATABASE_PREFIX: &str = "chorus";
/// Where the notifications service's messages to customers go, under the data folder.
const NOTIFICATIONS_FILE: &str = "notifications.jsonl";
/// Connections per context's pool: four contexts and the projections stay well under
/// PostgreSQL's default of 100 connections.
const DATABASE_CONNECTIONS: u32 = 8;

/// The launcher's settings, read once from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Which PostgreSQL to use (`DATABASE_URL`, `CHORUS_POSTGRES`).
    pub postgres: PostgresChoice,
    /// The databases are `<prefix>_ordering`, ..., `<prefix>_projections`
    /// (`CHORUS_DATABASE_PREFIX`, default `chorus`).
    pub database_prefix: String,
    /// A running nats-server to use instead of a private one (`CHORUS_NATS_URL`).
    pub nats_url: Option<String>,
    /// The private nats-server's port (`CHORUS_NATS_PORT`, default 4300).
    pub nats_port: u16,
    /// Where the gateway listens (`CHORUS_GATEWAY_ADDR`, default 127.0.0.1:8080).
    pub gateway_addr: SocketAddr,
    /// The gateway's token secret (`GATEWAY_JWT_SECRET`); a new one each run when unset.
    pub jwt_secret: Option<String>,
    /// Where the private servers keep their data (`CHORUS_DATA_DIR`, default `.chorus`).
    pub data_dir: PathBuf,
    /// How long an order waits for its payment (`ORDERING_PAYMENT_TIMEOUT_SECONDS`).
    pub payment_timeout: chrono::Duration,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Settings from `var` (the environment, or a test's map); empty values count as unset.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let nats_port = match var(NATS_PORT_VAR) {
            None => DEFAULT_NATS_PORT,
            Some(port) => port
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .with_context(|| {
                    format!("{NATS_PORT_VAR}={port:?} is not a port number (1-65535)")
                })?,
        };
        let gateway_addr = match var(GATEWAY_ADDR_VAR) {
            None => SocketAddr::from(DEFAULT_GATEWAY_ADDR),
            Some(addr) => addr.trim().parse().with_context(|| {
                format!(
                    "{GATEWAY_ADDR_VAR}={addr:?} is not an address to listen on, like \
                     127.0.0.1:8080"
                )
            })?,
        };
        let database_prefix =
            var(DATABASE_PREFIX_VAR).unwrap_or_else(|| DEFAULT_DATABASE_PREFIX.to_owned());
        check_database_prefix(&database_prefix)?;
        let jwt_secret = var(gateway::settings::JWT_SECRET_VAR);
        if let Some(secret) = &jwt_secret
            && secret.len() < gateway::settings::MIN_SECRET_BYTES
        {
            bail!(
                "{} is {} bytes long: an HS256 secret needs at least {} (or leave it unset: \
                 chorus dev then makes one for the run)",
                gateway::settings::JWT_SECRET_VAR,
                secret.len(),
                gateway::settings::MIN_SECRET_BYTES
            );
        }
        Ok(Self {
            postgres: PostgresChoice::from_vars(var(DATABASE_URL_VAR), var(POSTGRES_VAR))?,
            database_prefix,
            nats_url: var(NATS_URL_VAR),
            nats_port,
            gateway_addr,
            jwt_secret,
            data_dir: var(DATA_DIR_VAR).map_or_else(|| PathBuf::from(".chorus"), PathBuf::from),
            payment_timeout: ordering::service::parse_payment_timeout(
                var(ordering::service::PAYMENT_TIMEOUT_VAR).as_deref(),
            )?,
        })
    }

    /// The database of a context or of the projections, e.g. `chorus_ordering`.
    fn database_name(&self, part: &str) -> String {
        format!("{}_{part}", self.database_prefix)
    }
}

/// A prefix makes database names that need no quoting and fit PostgreSQL's 63 bytes.
fn check_database_prefix(prefix: &str) -> anyhow::Result<()> {
    let mut chars = prefix.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok || prefix.len() > 40 {
        bail!(
            "{DATABASE_PREFIX_VAR}={prefix:?} is not a database name prefix: a lowercase letter, \
             then lowercase letters, digits or '_', at most 40 in all"
        );
    }
    Ok(())
}

/// The processes this run started, stopped last whatever happens. Their guards stop them on
/// drop too (blocking), for the paths that never reach [`Servers::stop`].
#[derive(Debug, Default)]
struct Servers {
    nats: Option<PrivateNats>,
    postgres: Option<PrivateCluster>,
}

impl Servers {
    async fn stop(&mut self) {
        if let Some(nats) = self.nats.take() {
            nats.stop().await;
        }
        if let Some(postgres) = self.postgres.take() {
            postgres.stop().await;
        }
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    // Listening from the first moment: a Ctrl-C during start-up stops what has started.
    let mut signal = pin!(host::signal());
    let mut servers = Servers::default();
    let interrupted = CancellationToken::new();
    let outcome = async {
        let started = {
            let mut starting = pin!(start(&config, &mut servers, &interrupted));
            tokio::select! {
                started = &mut starting => started,
                () = &mut signal => {
                    // A step under way (initdb, say) is not abandoned half-done: start-up
                    // stops after it.
                    tracing::info!("stopping: start-up ends after the step in hand");
                    interrupted.cancel();
                    starting.await
                }
            }
        };
        match started {
            // The signal came as the last step ended: everything started stops unrun.
            Ok(_) if interrupted.is_cancelled() => Ok(()),
            Ok(started) => started.run(&config, &servers, signal).await,
            Err(e) if e.is::<Interrupted>() => Ok(()),
            Err(e) => Err(e),
        }
    }
    .await;
    servers.stop().await;
    if outcome.is_ok() {
        tracing::info!("stopped");
    }
    outcome
}

/// Start-up stopped between two steps because the signal came: not a failure.
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("start-up interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Ends start-up here if the signal has come.
fn go_on(interrupted: &CancellationToken) -> anyhow::Result<()> {
    if interrupted.is_cancelled() {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// Everything started and not yet running.
struct Started {
    nats_url: String,
    postgres: Postgres,
    hosts: Vec<(BoundedContext, host::Host)>,
    /// The event stores the demo catalogue is checked against.
    inventory_store: eventstore::Store,
    ordering_store: eventstore::Store,
    projections: projections::service::Service,
    notifications: notifications::Service<notifications::FileSink>,
    gateway: gateway::Gateway,
    secret: String,
    client: async_nats::Client,
}

/// Starts everything, step by step; between two steps, stops if `interrupted`.
async fn start(
    config: &Config,
    servers: &mut Servers,
    interrupted: &CancellationToken,
) -> anyhow::Result<Started> {
    let nats_url = match &config.nats_url {
        Some(url) => url.clone(),
        None => {
            let nats = PrivateNats::start(&config.data_dir, config.nats_port).await?;
            let url = nats.url();
            servers.nats = Some(nats);
            url
        }
    };
    go_on(interrupted)?;
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        bus::connect(&nats_url, "chorus-dev"),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "NATS at {} did not answer within 10 s",
            bus::redact(&nats_url)
        )
    })
    .and_then(|connected| connected)
    .with_context(|| match &config.nats_url {
        Some(_) => format!("check {NATS_URL_VAR}, or unset it to start a private nats-server"),
        None => "the private nats-server".to_owned(),
    })?;

    let (postgres, cluster) = Postgres::find_or_start(&config.postgres, &config.data_dir).await?;
    servers.postgres = cluster;
    go_on(interrupted)?;

    let mut hosts = Vec::new();
    let (mut inventory_store, mut ordering_store) = (None, None);
    for context in BoundedContext::ALL {
        let database = config.database_name(context.name());
        let settings = host::Settings {
            context,
            database_url: ensure_database(&postgres, &database).await?,
            nats_url: nats_url.clone(),
            database_connections: DATABASE_CONNECTIONS,
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
        let host = started.with_context(|| format!("cannot start the {context} service"))?;
        match context {
            BoundedContext::Inventory => inventory_store = Some(host.store().clone()),
            BoundedContext::Ordering => ordering_store = Some(host.store().clone()),
            _ => {}
        }
        hosts.push((context, host));
        go_on(interrupted)?;
    }
    let (Some(inventory_store), Some(ordering_store)) = (inventory_store, ordering_store) else {
        bail!("the inventory and ordering services must run for the demo catalogue");
    };

    let database_url = ensure_database(&postgres, &config.database_name("projections")).await?;
    let projection_settings = projections::service::Settings::from_vars(|name| match name {
        projections::service::DATABASE_URL_VAR => Some(database_url.clone()),
        "NATS_URL" => Some(nats_url.clone()),
        other => std::env::var(other).ok(),
    })?;
    let projections = projections::service::start(&projection_settings)
        .await
        .context("cannot start the projections")?;
    go_on(interrupted)?;

    // The consumer another team would run, built from the event contract alone: its messages
    // to customers go to a file under the data folder.
    let sink = notifications::FileSink::open(config.data_dir.join(NOTIFICATIONS_FILE))?;
    let notifications = notifications::Service::start(
        notifications::connect(&nats_url).await?,
        sink,
        notifications::Options::default(),
    )
    .await
    .context("cannot start the notifications")?;
    go_on(interrupted)?;

    let secret = match &config.jwt_secret {
        Some(secret) => secret.clone(),
        None => banner::new_secret()?,
    };
    let gateway_settings = gateway::Settings::from_vars(|name| match name {
        gateway::settings::ADDR_VAR => Some(config.gateway_addr.to_string()),
        gateway::settings::NATS_URL_VAR => Some(nats_url.clone()),
        gateway::settings::JWT_SECRET_VAR => Some(secret.clone()),
        // The launcher mints the tokens it prints: it verifies with its own secret.
        gateway::settings::JWT_PUBLIC_KEY_VAR => None,
        other => std::env::var(other).ok(),
    })?;
    let gateway = gateway::Gateway::start(gateway_settings)
        .await
        .with_context(|| {
            format!(
                "cannot start the gateway on {} (set {GATEWAY_ADDR_VAR} to another address)",
                config.gateway_addr
            )
        })?;

    Ok(Started {
        nats_url,
        postgres,
        hosts,
        inventory_store,
        ordering_store,
        projections,
        notifications,
        gateway,
        secret,
        client,
    })
}

/// A service run by the launcher, by name, with how it ended.
type Outcome = (String, anyhow::Result<()>);

impl Started {
    /// Runs everything, loads the demo catalogue, prints the banner, and waits for the signal
    /// (or for a service to fail); then stops the gateway first and the services after it.
    async fn run(
        self,
        config: &Config,
        servers: &Servers,
        mut signal: Pin<&mut impl Future<Output = ()>>,
    ) -> anyhow::Result<()> {
        let gateway_addr = self.gateway.addr();
        let services_stop = CancellationToken::new();
        let gateway_stop = CancellationToken::new();
        let mut services: JoinSet<Outcome> = JoinSet::new();
        for (context, host) in self.hosts {
            let stop = services_stop.clone();
            services.spawn(async move {
                let outcome = host.run(stop.cancelled_owned()).await;
                (format!("the {context} service"), outcome)
            });
        }
        let stop = services_stop.clone();
        services.spawn(async move {
            let outcome = self.projections.run(stop.cancelled_owned()).await;
            ("the projections".to_owned(), outcome)
        });
        let stop = services_stop.clone();
        services.spawn(async move {
            let outcome = self.notifications.run(stop.cancelled_owned()).await;
            ("the notifications".to_owned(), outcome)
        });
        let stop = gateway_stop.clone();
        let mut running = Running {
            gateway: Some(tokio::spawn(self.gateway.run(stop.cancelled_owned()))),
            services,
        };

        let catalogue = demo::Catalogue {
            client: &self.client,
            inventory: &self.inventory_store,
            ordering: &self.ordering_store,
        };
        let failure = tokio::select! {
            loaded = catalogue.load() => match loaded {
                Ok(loaded) => {
                    let shown = banner::Banner {
                        gateway: gateway_addr,
                        nats_url: &self.nats_url,
                        nats_pid: servers.nats.as_ref().map(PrivateNats::pid),
                        postgres: &self.postgres,
                        postgres_dir: servers.postgres.as_ref().map(PrivateCluster::dir),
                        database_prefix: &config.database_prefix,
                        data_dir: &config.data_dir,
                        secret: &self.secret,
                        catalogue: &loaded,
                    };
                    match shown.print() {
                        Ok(()) => tokio::select! {
                            () = signal.as_mut() => None,
                            ended = running.ended() => Some(ended),
                        },
                        Err(e) => Some(e),
                    }
                }
                Err(e) => Some(e.context("cannot load the demo catalogue")),
            },
            () = signal.as_mut() => None,
            ended = running.ended() => Some(ended),
        };
        tracing::info!("stopping: the gateway first, then the services");
        let mut result = failure.map_or(Ok(()), Err);
        gateway_stop.cancel();
        if let Some(gateway) = running.gateway.take() {
            record(&mut result, gateway.await.map(|r| (GATEWAY.to_owned(), r)));
        }
        services_stop.cancel();
        while let Some(ended) = running.services.join_next().await {
            record(&mut result, ended);
        }
        // Closed before the nats-server stops, so that it does not try to reconnect.
        self.client.drain().await.ok();
        result
    }
}

const GATEWAY: &str = "the gateway";

/// What runs: the gateway (stopped first) and the services.
struct Running {
    /// `None` once it has ended.
    gateway: Option<JoinHandle<anyhow::Result<()>>>,
    services: JoinSet<Outcome>,
}

impl Running {
    /// The first of them to end before it is told to: a failure, whatever its outcome.
    /// Cancel-safe: a select may drop it and call it again.
    async fn ended(&mut self) -> anyhow::Error {
        let gateway = async {
            let Some(handle) = self.gateway.as_mut() else {
                return std::future::pending().await;
            };
            let ended = handle.await;
            self.gateway = None;
            ended.map(|r| (GATEWAY.to_owned(), r))
        };
        let service = async {
            match self.services.join_next().await {
                Some(ended) => ended,
                None => std::future::pending().await,
            }
        };
        let ended = tokio::select! {
            ended = gateway => ended,
            ended = service => ended,
        };
        match ended {
            Ok((name, Ok(()))) => anyhow::anyhow!("{name} stopped on its own"),
            Ok((name, Err(e))) => e.context(format!("{name} failed")),
            Err(e) => anyhow::anyhow!("a service panicked: {e}"),
        }
    }
}

/// Keeps the first failure; a service that stops cleanly when told to is no failure.
fn record(result: &mut anyhow::Result<()>, ended: Result<Outcome, tokio::task::JoinError>) {
    let failure = match ended {
        Ok((_, Ok(()))) => return,
        Ok((name, Err(e))) => e.context(format!("{name} failed")),
        Err(e) => anyhow::anyhow!("a service panicked: {e}"),
    };
    tracing::warn!(error = format!("{failure:#}"), "while stopping");
    if result.is_ok() {
        *result = Err(failure);
    }
}

/// Creates the database `name` on `postgres` unless it exists; returns its URL.
async fn ensure_database(postgres: &Postgres, name: &str) -> anyhow::Result<String> {
    let mut conn = PgConnection::connect_with(&postgres.admin_options()?)
        .await
        .with_context(|| format!("PostgreSQL is not reachable at {}", postgres.shown()))?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        // `name` is a checked prefix and one of our suffixes: quoting it is enough.
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
        tracing::info!(database = name, "created the database");
    }
    conn.close().await.ok();
    Ok(postgres.database_url(name))
}

/// `path` made absolute (against the working directory), for messages and child processes.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_are_for_a_developer_machine() {
        let c = config(&[]).expect("defaults");
        assert_eq!(c.postgres, PostgresChoice::LocalOrPrivate);
        assert_eq!(c.database_prefix, "chorus");
        assert_eq!(c.database_name("ordering"), "chorus_ordering");
        assert_eq!(c.nats_url, None);
        assert_eq!(c.nats_port, 4300);
        assert_eq!(c.gateway_addr, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(c.jwt_secret, None);
        assert_eq!(c.data_dir, PathBuf::from(".chorus"));
        assert_eq!(c.payment_timeout, chrono::Duration::seconds(900));
    }

    #[test]
    fn settings_are_read() {
        let c = config(&[
            (DATABASE_URL_VAR, "postgres://postgres@db:5432/postgres"),
            (DATABASE_PREFIX_VAR, "dev_2"),
            (NATS_PORT_VAR, "4301"),
            (GATEWAY_ADDR_VAR, "0.0.0.0:9090"),
            (DATA_DIR_VAR, "/tmp/chorus"),
        ])
        .expect("settings");
        assert_eq!(
            c.postgres,
            PostgresChoice::Url("postgres://postgres@db:5432/postgres".to_owned())
        );
        assert_eq!(c.database_name("projections"), "dev_2_projections");
        assert_eq!(c.nats_port, 4301);
        assert_eq!(c.gateway_addr, SocketAddr::from(([0, 0, 0, 0], 9090)));
        assert_eq!(c.data_dir, PathBuf::from("/tmp/chorus"));
        let private = config(&[(POSTGRES_VAR, "private")]).expect("private");
        assert_eq!(private.postgres, PostgresChoice::Private);
    }

    #[test]
    fn a_bad_setting_names_its_variable_and_not_its_secret() {
        for (name, bad) in [
            (NATS_PORT_VAR, "0"),
            (NATS_PORT_VAR, "70000"),
            (GATEWAY_ADDR_VAR, "localhost"),
            (DATABASE_PREFIX_VAR, "Chorus"),
            (DATABASE_PREFIX_VAR, "1chorus"),
            (DATABASE_PREFIX_VAR, "cho-rus"),
            (
                DATABASE_PREFIX_VAR,
                "a_prefix_much_too_long_for_a_database_name",
            ),
            (POSTGRES_VAR, "docker"),
            (ordering::service::PAYMENT_TIMEOUT_VAR, "soon"),
        ] {
            let error = format!("{:#}", config(&[(name, bad)]).unwrap_err());
            assert!(error.contains(name), "{name}={bad}: {error}");
        }
        let short = format!(
            "{:#}",
            config(&[(gateway::settings::JWT_SECRET_VAR, "hunter2")]).unwrap_err()
        );
        assert!(
            short.contains(gateway::settings::JWT_SECRET_VAR) && !short.contains("hunter2"),
            "{short}"
        );
        let both = format!(
            "{:#}",
            config(&[
                (POSTGRES_VAR, "private"),
                (DATABASE_URL_VAR, "postgres://postgres@db/postgres")
            ])
            .unwrap_err()
        );
        assert!(
            both.contains(POSTGRES_VAR) && both.contains(DATABASE_URL_VAR),
            "{both}"
        );
    }
}
