//! The inventory service: its reactions, the reservation deadline's ticker and its commands,
//! on a [`Host`].

use std::sync::Arc;

use anyhow::Context as _;
use events::BoundedContext;
use host::{Host, Settings};

use crate::commands::Commands;
use crate::reactions::{self, Reactions};

/// The setting of how long a reservation waits for its payment, in seconds.
pub const RESERVATION_TTL_VAR: &str = "INVENTORY_RESERVATION_TTL_SECONDS";

/// The reservation TTL when [`RESERVATION_TTL_VAR`] is not set: 15 minutes.
pub const DEFAULT_RESERVATION_TTL_SECONDS: i64 = 900;

/// Starts the inventory service on a new [`Host`]: the reactions to the other contexts'
/// events, the ticker that expires unpaid reservations after `reservation_ttl`, and the
/// command endpoints. The caller runs it with [`Host::run`].
pub async fn start(settings: &Settings, reservation_ttl: chrono::Duration) -> anyhow::Result<Host> {
    anyhow::ensure!(
        settings.context == BoundedContext::Inventory,
        "the inventory service cannot run as the {} context",
        settings.context
    );
    anyhow::ensure!(
        reservation_ttl > chrono::Duration::zero(),
        "the reservation TTL must be positive, not {reservation_ttl}"
    );
    let mut host = Host::start(settings).await?;
    let reactions = Arc::new(Reactions::new(host.store(), reservation_ttl));
    host.react(reactions::consumers(), Arc::clone(&reactions));
    host.tick(reactions::RESERVATION_EXPIRY, Arc::clone(&reactions));
    let commands = Commands::new(host.store());
    host.serve(Arc::new(commands)).await?;
    Ok(host)
}

/// The reservation TTL from [`RESERVATION_TTL_VAR`] (unset or empty: the default).
pub fn reservation_ttl_from_env() -> anyhow::Result<chrono::Duration> {
    parse_reservation_ttl(std::env::var(RESERVATION_TTL_VAR).ok().as_deref())
}

/// Parses a value of [`RESERVATION_TTL_VAR`]: a positive number of seconds.
pub fn parse_reservation_ttl(value: Option<&str>) -> anyhow::Result<chrono::Duration> {
    let seconds = match value.filter(|v| !v.is_empty()) {
        None => DEFAULT_RESERVATION_TTL_SECONDS,
        Some(v) => v.parse::<i64>().ok().filter(|n| *n > 0).with_context(|| {
            format!("{RESERVATION_TTL_VAR}={v:?} is not a positive number of seconds")
        })?,
    };
    chrono::Duration::try_seconds(seconds)
        .with_context(|| format!("{RESERVATION_TTL_VAR}={seconds} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reservation_ttl_defaults_to_15_minutes() {
        for unset in [None, Some("")] {
            assert_eq!(
                parse_reservation_ttl(unset).ok(),
                Some(chrono::Duration::minutes(15))
            );
        }
        assert_eq!(
            parse_reservation_ttl(Some("60")).ok(),
            Some(chrono::Duration::seconds(60))
        );
    }

    #[test]
    fn a_bad_reservation_ttl_names_the_variable() {
        for bad in ["0", "-5", "1.5", "15m", " 60", "99999999999999999999"] {
            let error = match parse_reservation_ttl(Some(bad)) {
                Ok(ttl) => panic!("{bad:?} was taken as {ttl}"),
                Err(e) => format!("{e:#}"),
            };
            assert!(error.contains(RESERVATION_TTL_VAR), "{bad:?}: {error}");
        }
    }
}
