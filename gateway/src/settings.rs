//! The gateway's settings, read once from the environment at start-up. Every setting has a
//! default for local use except the token key; a value that does not parse fails the start
//! with a message naming its variable (and never echoing a secret).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::http::HeaderValue;

use crate::auth::Verifier;

pub const ADDR_VAR: &str = "GATEWAY_ADDR";
pub const NATS_URL_VAR: &str = "NATS_URL";
pub const JWT_SECRET_VAR: &str = "GATEWAY_JWT_SECRET";
pub const JWT_PUBLIC_KEY_VAR: &str = "GATEWAY_JWT_PUBLIC_KEY";
pub const IDEMPOTENCY_TTL_VAR: &str = "GATEWAY_IDEMPOTENCY_TTL_SECONDS";
pub const RATE_LIMIT_VAR: &str = "GATEWAY_RATE_LIMIT_PER_SECOND";
pub const RATE_BURST_VAR: &str = "GATEWAY_RATE_LIMIT_BURST";
pub const MAX_BODY_VAR: &str = "GATEWAY_MAX_BODY_BYTES";
pub const REQUEST_TIMEOUT_VAR: &str = "GATEWAY_REQUEST_TIMEOUT_MS";
pub const CORS_ORIGINS_VAR: &str = "GATEWAY_CORS_ORIGINS";

/// The shortest HS256 secret accepted: 32 bytes, the size of the hash (RFC 7518, 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// The gateway's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `GATEWAY_ADDR`, default `127.0.0.1:8080` (port 0: any free port).
    pub addr: SocketAddr,
    /// `NATS_URL`, default `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// From `GATEWAY_JWT_SECRET` (HS256) or `GATEWAY_JWT_PUBLIC_KEY` (PEM: RSA, EC or Ed25519):
    /// exactly one must be set.
    pub verifier: Verifier,
    /// `GATEWAY_IDEMPOTENCY_TTL_SECONDS`, default 86,400 (24 h): how long a key's response is
    /// kept for replay.
    pub idempotency_ttl: Duration,
    /// `GATEWAY_RATE_LIMIT_PER_SECOND` (default 50) and `GATEWAY_RATE_LIMIT_BURST` (default
    /// 100), per principal and instance.
    pub rate_limit: RateLimit,
    /// `GATEWAY_MAX_BODY_BYTES`, default 65,536.
    pub max_body_bytes: usize,
    /// `GATEWAY_REQUEST_TIMEOUT_MS`, default 5,000: how long a context or the query service
    /// has to answer.
    pub request_timeout: Duration,
    /// `GATEWAY_CORS_ORIGINS`: unset for none, `*` for any, or a comma-separated list of
    /// origins (`https://shop.example`).
    pub cors_origins: CorsOrigins,
}

/// A rate of requests per principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

/// The origins a browser may call the gateway from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    None,
    Any,
    List(Vec<HeaderValue>),
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Settings from `var` (the environment, or a test's map); empty values count as unset.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        let number = |name: &str, default: u64| -> anyhow::Result<u64> {
            match var(name) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("{name}={v:?} is not a positive whole number")),
            }
        };
        let small = |name: &str, default: u64| -> anyhow::Result<NonZeroU32> {
            let n = number(name, default)?;
            u32::try_from(n)
                .ok()
                .and_then(NonZeroU32::new)
                .with_context(|| format!("{name}={n} is too large"))
        };
        let addr = match var(ADDR_VAR) {
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
            Some(v) => v.parse().with_context(|| {
                format!("{ADDR_VAR}={v:?} is not an address to listen on, like 127.0.0.1:8080")
            })?,
        };
        let verifier = match (var(JWT_SECRET_VAR), var(JWT_PUBLIC_KEY_VAR)) {
            (Some(_), Some(_)) => {
                bail!("{JWT_SECRET_VAR} and {JWT_PUBLIC_KEY_VAR} are both set: set exactly one")
            }
            (None, None) => bail!(
                "set {JWT_SECRET_VAR} (HS256, at least {MIN_SECRET_BYTES} bytes) or \
                 {JWT_PUBLIC_KEY_VAR} (a PEM public key) to verify bearer tokens"
            ),
            (Some(secret), None) => {
                if secret.len() < MIN_SECRET_BYTES {
                    bail!(
                        "{JWT_SECRET_VAR} is {} bytes long: an HS256 secret needs at least \
                         {MIN_SECRET_BYTES}",
                        secret.len()
                    );
                }
                Verifier::hs256(secret.as_bytes())
            }
            (None, Some(pem)) => Verifier::public_key_pem(&pem.replace("\\n", "\n"))
                .with_context(|| format!("{JWT_PUBLIC_KEY_VAR} is not a usable public key"))?,
        };
        let max_body = number(MAX_BODY_VAR, 64 * 1024)?;
        Ok(Self {
            addr,
            nats_url: var(NATS_URL_VAR).unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned()),
            verifier,
            idempotency_ttl: Duration::from_secs(number(IDEMPOTENCY_TTL_VAR, 24 * 60 * 60)?),
            rate_limit: RateLimit {
                per_second: small(RATE_LIMIT_VAR, 50)?,
                burst: small(RATE_BURST_VAR, 100)?,
            },
            max_body_bytes: usize::try_from(max_body)
                .with_context(|| format!("{MAX_BODY_VAR}={max_body} is too large"))?,
            request_timeout: Duration::from_millis(number(REQUEST_TIMEOUT_VAR, 5_000)?),
            cors_origins: cors_origins(var(CORS_ORIGINS_VAR).as_deref())?,
        })
    }
}

fn cors_origins(value: Option<&str>) -> anyhow::Result<CorsOrigins> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(CorsOrigins::None);
    };
    if value == "*" {
        return Ok(CorsOrigins::Any);
    }
    let mut origins = Vec::new();
    for origin in value.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let scheme_ok = origin.starts_with("http://") || origin.starts_with("https://");
        let rest = origin.split_once("://").map_or("", |(_, rest)| rest);
        if !scheme_ok || rest.is_empty() || rest.contains('/') {
            bail!(
                "{CORS_ORIGINS_VAR}: {origin:?} is not an origin like https://shop.example \
                 (scheme, host and port only)"
            );
        }
        let header = HeaderValue::from_str(origin)
            .with_context(|| format!("{CORS_ORIGINS_VAR}: {origin:?} is not a header value"))?;
        origins.push(header);
    }
    Ok(CorsOrigins::List(origins))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const SECRET: &str = "a-local-secret-of-at-least-32-bytes!";

    fn settings(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_are_for_local_use() {
        let s = settings(&[(JWT_SECRET_VAR, SECRET)]).expect("defaults");
        assert_eq!(s.addr, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(s.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(s.idempotency_ttl, Duration::from_secs(86_400));
        assert_eq!(s.max_body_bytes, 65_536);
        assert_eq!(s.request_timeout, Duration::from_secs(5));
        assert_eq!(s.rate_limit.per_second.get(), 50);
        assert_eq!(s.rate_limit.burst.get(), 100);
        assert_eq!(s.cors_origins, CorsOrigins::None);
    }

    #[test]
    fn a_bad_setting_names_its_variable_and_not_its_secret() {
        for (name, bad) in [
            (ADDR_VAR, "localhost"),
            (IDEMPOTENCY_TTL_VAR, "0"),
            (RATE_LIMIT_VAR, "fast"),
            (RATE_BURST_VAR, "-1"),
            (MAX_BODY_VAR, "64k"),
            (REQUEST_TIMEOUT_VAR, "5s"),
            (CORS_ORIGINS_VAR, "shop.example"),
            (CORS_ORIGINS_VAR, "https://shop.example/path"),
        ] {
            let error = format!(
                "{:#}",
                settings(&[(JWT_SECRET_VAR, SECRET), (name, bad)]).unwrap_err()
            );
            assert!(error.contains(name), "{name}={bad}: {error}");
        }
        let short = format!(
            "{:#}",
            settings(&[(JWT_SECRET_VAR, "hunter2")]).unwrap_err()
        );
        assert!(
            short.contains(JWT_SECRET_VAR) && !short.contains("hunter2"),
            "{short}"
        );
        let neither = format!("{:#}", settings(&[]).unwrap_err());
        assert!(neither.contains(JWT_SECRET_VAR) && neither.contains(JWT_PUBLIC_KEY_VAR));
        let both = format!(
            "{:#}",
            settings(&[(JWT_SECRET_VAR, SECRET), (JWT_PUBLIC_KEY_VAR, "x")]).unwrap_err()
        );
        assert!(both.contains("exactly one"), "{both}");
        let pem = format!(
            "{:#}",
            settings(&[(JWT_PUBLIC_KEY_VAR, "not a key")]).unwrap_err()
        );
        assert!(pem.contains(JWT_PUBLIC_KEY_VAR), "{pem}");
    }

    #[test]
    fn cors_origins_are_none_any_or_a_list() {
        let list = settings(&[
            (JWT_SECRET_VAR, SECRET),
            (
                CORS_ORIGINS_VAR,
                "https://shop.example, http://localhost:3000",
            ),
        ])
        .expect("origins");
        assert_eq!(
            list.cors_origins,
            CorsOrigins::List(vec![
                HeaderValue::from_static("https://shop.example"),
                HeaderValue::from_static("http://localhost:3000"),
            ])
        );
        let any = settings(&[(JWT_SECRET_VAR, SECRET), (CORS_ORIGINS_VAR, "*")]).expect("any");
        assert_eq!(any.cors_origins, CorsOrigins::Any);
    }
}
