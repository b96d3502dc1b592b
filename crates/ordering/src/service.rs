//! The ordering service: everything ordering runs in one process, on a [`Host`].
//!
//! - the catalogue replica's table, migrated on ordering's database next to the event store;
//! - the [`Reactions`] on ordering's durable consumers (`ordering-from-inventory`,
//!   `-payments`, `-shipping`);
//! - the commands `place-order` and `cancel-order` ([`OrderingCommands`]).
//!
//! Reactions and commands share one `Repository<Order>` (the reactions' own, through
//! [`Reactions::orders`]): one cache of orders per process, so a command sees what the
//! reactions last wrote without reloading it, and the other way round.

use std::sync::Arc;

use anyhow::Context as _;
use events::BoundedContext;
use host::{Host, Settings};

use crate::catalogue::CatalogueReplica;
use crate::commands::OrderingCommands;
use crate::reactions::{self, Reactions};

/// Starts ordering on `settings` (whose context must be ordering): connects, migrates the
/// event store and the catalogue replica, starts the relay, the reactions and the command
/// endpoints. The caller runs the returned host (`host.run(stop)`).
pub async fn start(settings: &Settings) -> anyhow::Result<Host> {
    anyhow::ensure!(
        settings.context == BoundedContext::Ordering,
        "the ordering service cannot run the {} context",
        settings.context
    );
    let mut host = Host::start(settings).await?;
    let catalogue = CatalogueReplica::new(host.store().pool().clone());
    catalogue
        .migrate()
        .await
        .context("cannot migrate ordering's catalogue replica")?;
    let reactions = Arc::new(Reactions::new(host.store(), catalogue));
    host.react(reactions::consumers(), Arc::clone(&reactions));
    host.serve(Arc::new(OrderingCommands::new(reactions)))
        .await?;
    Ok(host)
}
