//! `chorus token`: a bearer token for the HTTP gateway, for local use.
//!
//! It signs an HS256 JWT with `GATEWAY_JWT_SECRET`, the secret the gateway verifies with when
//! it has no public key, using the gateway's own minting (`gateway::mint`), and prints it on
//! stdout alone, so that a shell can keep it: `TOKEN=$(chorus token --role operator --subject
//! ops)`. In production an identity provider issues the tokens and the gateway holds only its
//! public key; this command is for `chorus dev` and tests.

use std::time::Duration;

use anyhow::{Context as _, bail};
use events::values::CustomerId;
use gateway::Role;
use gateway::settings::{JWT_SECRET_VAR, MIN_SECRET_BYTES};

use crate::exit::UsageError;

/// Mint a bearer token for the HTTP gateway and print it.
///
/// Signs an HS256 JWT with GATEWAY_JWT_SECRET (at least 32 bytes, the gateway's secret) with
/// the claims sub, role, iat and exp. A shopper's subject is their customer id (a UUID): the
/// orders they place are theirs. Prints only the token.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// shopper or operator.
    #[arg(long, value_parser = role)]
    role: Role,
    /// Who the token is for: a shopper's customer id (a UUID), or an operator's name.
    #[arg(long, value_name = "SUBJECT")]
    subject: String,
    /// How long the token is valid: a number of seconds, or with a unit: 90s, 30m, 12h, 7d.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = ttl)]
    ttl: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.role == Role::Shopper && args.subject.parse::<CustomerId>().is_err() {
        return Err(UsageError(format!(
            "--subject {:?}: a shopper's subject is their customer id, a UUID",
            args.subject
        ))
        .into());
    }
    if args.subject.trim().is_empty() {
        return Err(UsageError("--subject must not be empty".to_owned()).into());
    }
    let secret = std::env::var(JWT_SECRET_VAR)
        .ok()
        .filter(|s| !s.is_empty())
        .with_context(|| {
            format!("set {JWT_SECRET_VAR}, the secret the gateway verifies tokens with")
        })?;
    if secret.len() < MIN_SECRET_BYTES {
        bail!(
            "{JWT_SECRET_VAR} is {} bytes long: an HS256 secret needs at least {MIN_SECRET_BYTES}",
            secret.len()
        );
    }
    let token = gateway::mint(secret.as_bytes(), args.role, &args.subject, args.ttl)?;
    println!("{token}");
    Ok(())
}

fn role(value: &str) -> Result<Role, String> {
    value.parse()
}

/// `90`, `90s`, `30m`, `12h`, `7d`: at least one second, at most a year.
fn ttl(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => value.split_at(at),
        None => (value, "s"),
    };
    let seconds_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{value:?} is not a duration like 90s, 30m, 12h or 7d"
            ));
        }
    };
    let seconds = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(seconds_per))
        .filter(|s| (1..=365 * 86_400).contains(s))
        .ok_or_else(|| format!("{value:?} is not a duration from 1s to 365d"))?;
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(ttl("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(ttl("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(ttl("7d"), Ok(Duration::from_secs(604_800)));
        for bad in ["", "0", "1w", "h", "-5m", "400d"] {
            assert!(ttl(bad).is_err(), "{bad:?}");
        }
    }
}
