//! Where the system under test is, and the tokens it takes: flags, else the environment, else
//! the `dev.env` that `chorus dev` writes into its data folder.
//!
//! With the gateway's token secret the bench mints what it needs (an operator token for the
//! set-up, a shopper token per customer, since the gateway rate-limits each principal); without
//! it, it uses the operator and shopper tokens it is given. Nothing is contacted here until
//! [`Target::connect`], which fails fast and says what to check.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use events::values::CustomerId;
use gateway::Role;
use gateway::settings::{JWT_SECRET_VAR, MIN_SECRET_BYTES};

use super::report::NamedPid;
use crate::connect::{DEFAULT_NATS_URL, NatsArgs};
use crate::dev::DATA_DIR_VAR;
use crate::exit::UsageError;

/// The names `chorus dev` writes into `dev.env` (see `dev::banner`).
pub const GATEWAY_URL_VAR: &str = "CHORUS_URL";
pub const NATS_URL_VAR: &str = "NATS_URL";
pub const OPERATOR_TOKEN_VAR: &str = "OPERATOR_TOKEN";
pub const SHOPPER_TOKEN_VAR: &str = "SHOPPER_TOKEN";
pub const PID_VAR: &str = "CHORUS_PID";

/// How long the minted tokens are valid: longer than any run.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How long the gateway has to answer its health check before it counts as unreachable.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP requests in flight at most; the connection pool keeps as many idle.
pub const MAX_IN_FLIGHT: usize = 512;

/// Where the system is. Each defaults to the same name in CHORUS_DATA_DIR/dev.env.
#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    /// The gateway's URL, e.g. http://127.0.0.1:8080 [default: CHORUS_URL of dev.env].
    #[arg(long, env = GATEWAY_URL_VAR, value_name = "URL")]
    gateway_url: Option<String>,
    /// NATS server URL, where the bench watches the orders' events (and sends them, with --via
    /// nats) [default: NATS_URL of dev.env, else nats://127.0.0.1:4300].
    #[arg(long, env = NATS_URL_VAR, value_name = "URL")]
    nats_url: Option<String>,
    /// The secret the gateway verifies tokens with: the bench mints its operator token and a
    /// shopper token per customer [default: GATEWAY_JWT_SECRET of dev.env].
    #[arg(long, env = JWT_SECRET_VAR, value_name = "SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Without a secret: an operator's bearer token, for the set-up [default: OPERATOR_TOKEN
    /// of dev.env].
    #[arg(long, env = OPERATOR_TOKEN_VAR, value_name = "TOKEN", hide_env_values = true)]
    operator_token: Option<String>,
    /// Without a secret: the shopper's bearer token every order is placed with
    /// [default: SHOPPER_TOKEN of dev.env].
    #[arg(long, env = SHOPPER_TOKEN_VAR, value_name = "TOKEN", hide_env_values = true)]
    shopper_token: Option<String>,
}

/// The settings resolved, not yet connected.
#[derive(Debug)]
pub struct Target {
    gateway_url: String,
    nats_url: String,
    operator: String,
    shopper_tokens: Vec<String>,
    customers: Vec<CustomerId>,
    /// `chorus dev`'s process, from dev.env, if it runs.
    pub dev_pid: Option<NamedPid>,
}

impl TargetArgs {
    /// The settings, from the flags, the environment and dev.env; `customers` shoppers.
    pub fn resolve(self, customers: u32) -> anyhow::Result<Target> {
        let dev_env_path = std::env::var(DATA_DIR_VAR)
            .ok()
            .filter(|d| !d.trim().is_empty())
            .map_or_else(|| PathBuf::from(".chorus"), PathBuf::from)
            .join("dev.env");
        let dev_env = std::fs::read_to_string(&dev_env_path)
            .map(|text| parse_env_file(&text))
            .unwrap_or_default();
        let pick = |given: Option<String>, name: &str| {
            given
                .filter(|v| !v.trim().is_empty())
                .or_else(|| dev_env.get(name).cloned())
        };
        let gateway_url = pick(self.gateway_url, GATEWAY_URL_VAR).ok_or_else(|| {
            UsageError(format!(
                "no gateway URL: give --gateway-url (or {GATEWAY_URL_VAR}), or run `chorus dev`, \
                 which writes it to {}",
                dev_env_path.display()
            ))
        })?;
        let gateway_url = gateway_url.trim().trim_end_matches('/').to_owned();
        if !gateway_url.starts_with("http://") && !gateway_url.starts_with("https://") {
            return Err(UsageError(format!(
                "--gateway-url {gateway_url:?} is not an http:// or https:// URL"
            ))
            .into());
        }
        let nats_url =
            pick(self.nats_url, NATS_URL_VAR).unwrap_or_else(|| DEFAULT_NATS_URL.to_owned());
        let customers: Vec<CustomerId> = (0..customers).map(|_| CustomerId::new()).collect();

        let (operator, shopper_tokens) = match pick(self.jwt_secret, JWT_SECRET_VAR) {
            Some(secret) => {
                if secret.len() < MIN_SECRET_BYTES {
                    return Err(UsageError(format!(
                        "the token secret is {} bytes long: the gateway's is at least \
                         {MIN_SECRET_BYTES}",
                        secret.len()
                    ))
                    .into());
                }
                let secret = secret.as_bytes();
                let operator = gateway::mint(secret, Role::Operator, "bench", TOKEN_TTL)?;
                let shoppers = customers
                    .iter()
                    .map(|c| gateway::mint(secret, Role::Shopper, &c.to_string(), TOKEN_TTL))
                    .collect::<anyhow::Result<_>>()?;
                (operator, shoppers)
            }
            None => {
                let missing = |what: &str, name: &str| {
                    UsageError(format!(
                        "no {what}: give --jwt-secret (or {JWT_SECRET_VAR}), or \
                         --{} (or {name}), or run `chorus dev`, which writes them to {}",
                        name.to_lowercase().replace('_', "-"),
                        dev_env_path.display()
                    ))
                };
                let operator = pick(self.operator_token, OPERATOR_TOKEN_VAR)
                    .ok_or_else(|| missing("operator token", OPERATOR_TOKEN_VAR))?;
                let shopper = pick(self.shopper_token, SHOPPER_TOKEN_VAR)
                    .ok_or_else(|| missing("shopper token", SHOPPER_TOKEN_VAR))?;
                (operator, vec![shopper])
            }
        };

        let dev_pid = dev_env
            .get(PID_VAR)
            .and_then(|pid| pid.parse::<u32>().ok())
            .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
            .map(|pid| NamedPid {
                name: "chorus-dev".to_owned(),
                pid,
            });
        Ok(Target {
            gateway_url,
            nats_url,
            operator,
            shopper_tokens,
            customers,
            dev_pid,
        })
    }
}

/// The system, reached.
#[derive(Debug)]
pub struct System {
    pub http: reqwest::Client,
    pub gateway_url: String,
    pub nats: async_nats::Client,
    pub nats_url: String,
    pub operator: String,
    pub shopper_tokens: Vec<String>,
    pub customers: Vec<CustomerId>,
}

impl Target {
    /// Connects to NATS and checks that the gateway answers; `request_timeout` bounds each
    /// HTTP request of the run.
    pub async fn connect(self, request_timeout: Duration) -> anyhow::Result<System> {
        let nats = NatsArgs {
            nats_url: self.nats_url.clone(),
        }
        .connect()
        .await?
        .client();
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .pool_max_idle_per_host(MAX_IN_FLIGHT)
            .tcp_nodelay(true)
            .build()
            .context("cannot build the HTTP client")?;
        let health = format!("{}/healthz", self.gateway_url);
        let answer = http
            .get(&health)
            .timeout(HEALTH_TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot reach the gateway at {}: {}; is it running? Set --gateway-url or \
                     {GATEWAY_URL_VAR}",
                    self.gateway_url,
                    error_chain(&e)
                )
            })?;
        if !answer.status().is_success() {
            anyhow::bail!(
                "the gateway at {} answers GET /healthz with {}: is it a Chorus gateway?",
                self.gateway_url,
                answer.status()
            );
        }
        Ok(System {
            http,
            gateway_url: self.gateway_url,
            nats,
            nats_url: bus::redact(&self.nats_url),
            operator: self.operator,
            shopper_tokens: self.shopper_tokens,
            customers: self.customers,
        })
    }
}

/// An error with its causes, on one line (reqwest's own message rarely says why).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `export NAME='value'` lines, as `chorus dev` writes them (quoted for a POSIX shell).
fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export ")?.split_once('='))
        .map(|(name, value)| {
            let value = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .map_or_else(|| value.to_owned(), |v| v.replace("'\\''", "'"));
            (name.trim().to_owned(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_env_file_is_read_as_a_shell_reads_it() {
        let vars = parse_env_file(
            "# Written by chorus dev\nexport CHORUS_URL='http://127.0.0.1:8080'\n\
             export SECRET='it'\\''s'\nexport CHORUS_PID='42'\nnot an export\n",
        );
        assert_eq!(vars["CHORUS_URL"], "http://127.0.0.1:8080");
        assert_eq!(vars["SECRET"], "it's");
        assert_eq!(vars["CHORUS_PID"], "42");
        assert_eq!(vars.len(), 3);
    }
}
