//! The ordering service: everything ordering runs in one process, on a [`Host`].
//!
//! - the catalogue replica's table, migrated on ordering's database next to the event store;
//! - the [`Reactions`] on ordering's durable consumers (`ordering-from-inventory`,
//!   `-payments`, `-shipping`);
//! - the commands `place-order` and `cancel-order` ([`OrderingCommands`]);
//! - the ticker of the payment deadline ([`PAYMENT_TIMEOUT`]): an order still `Placed` when
//!   its deadline passes is rejected `PaymentTimedOut` (ADR 0008).
//!
//! Reactions and commands share one `Repository<Order>` (the reactions' own, through
//! [`Reactions::orders`]): one cache of orders per process, so a command sees what the
//! reactions last wrote without reloading it, and the other way round.

use std::sync::Arc;

use anyhow::Context as _;
use events::BoundedContext;
use host::{Host, Settings};

use crate::PAYMENT_TIMEOUT;
use crate::catalogue::CatalogueReplica;
use crate::commands::OrderingCommands;
use crate::reactions::{self, Reactions};

/// The setting of how long an order waits for its payment, in seconds.
pub const PAYMENT_TIMEOUT_VAR: &str = "ORDERING_PAYMENT_TIMEOUT_SECONDS";

/// The payment timeout when [`PAYMENT_TIMEOUT_VAR`] is not set: 15 minutes.
pub const DEFAULT_PAYMENT_TIMEOUT_SECONDS: i64 = 900;

/// Starts ordering on `settings` (whose context must be ordering): connects, migrates the
/// event store and the catalogue replica, starts the relay, the reactions, the ticker that
/// rejects orders not paid within `payment_timeout`, and the command endpoints. The caller
/// runs the returned host (`host.run(stop)`).
pub async fn start(settings: &Settings, payment_timeout: chrono::Duration) -> anyhow::Result<Host> {
    anyhow::ensure!(
        settings.context == BoundedContext::Ordering,
        "the ordering service cannot run the {} context",
        settings.context
    );
    anyhow::ensure!(
        payment_timeout > chrono::Duration::zero(),
        "the payment timeout must be positive, not {payment_timeout}"
    );
    let mut host = Host::start(settings).await?;
    let catalogue = CatalogueReplica::new(host.store().pool().clone());
    catalogue
        .migrate()
        .await
        .context("cannot migrate ordering's catalogue replica")?;
    let reactions = Arc::new(Reactions::new(host.store(), catalogue, payment_timeout));
    host.react(reactions::consumers(), Arc::clone(&reactions));
    host.tick(PAYMENT_TIMEOUT, Arc::clone(&reactions));
    host.serve(Arc::new(OrderingCommands::new(reactions)))
        .await?;
    Ok(host)
}

/// The payment timeout from [`PAYMENT_TIMEOUT_VAR`] (unset or empty: the default).
pub fn payment_timeout_from_env() -> anyhow::Result<chrono::Duration> {
    parse_payment_timeout(std::env::var(PAYMENT_TIMEOUT_VAR).ok().as_deref())
}

/// Parses a value of [`PAYMENT_TIMEOUT_VAR`]: a positive number of seconds.
pub fn parse_payment_timeout(value: Option<&str>) -> anyhow::Result<chrono::Duration> {
    let seconds = match value.filter(|v| !v.is_empty()) {
        None => DEFAULT_PAYMENT_TIMEOUT_SECONDS,
        Some(v) => v.parse::<i64>().ok().filter(|n| *n > 0).with_context(|| {
            format!("{PAYMENT_TIMEOUT_VAR}={v:?} is not a positive number of seconds")
        })?,
    };
    chrono::Duration::try_seconds(seconds)
        .with_context(|| format!("{PAYMENT_TIMEOUT_VAR}={seconds} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payment_timeout_defaults_to_15_minutes() {
        for unset in [None, Some("")] {
            assert_eq!(
                parse_payment_timeout(unset).ok(),
                Some(chrono::Duration::minutes(15))
            );
        }
        assert_eq!(
            parse_payment_timeout(Some("60")).ok(),
            Some(chrono::Duration::seconds(60))
        );
    }

    #[test]
    fn a_bad_payment_timeout_names_the_variable() {
        for bad in ["0", "-5", "1.5", "15m", " 60", "99999999999999999999"] {
            let error = match parse_payment_timeout(Some(bad)) {
                Ok(timeout) => panic!("{bad:?} was taken as {timeout}"),
                Err(e) => format!("{e:#}"),
            };
            assert!(error.contains(PAYMENT_TIMEOUT_VAR), "{bad:?}: {error}");
        }
    }
}
