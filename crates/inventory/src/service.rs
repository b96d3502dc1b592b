//! The inventory service: its reactions and its commands, on a [`Host`]. Inventory keeps no
//! deadline: ordering owns the payment deadline (ADR 0008).

use std::sync::Arc;

use events::BoundedContext;
use host::{Host, Settings};

use crate::commands::Commands;
use crate::reactions::{self, Reactions};

/// Starts the inventory service on a new [`Host`]: the reactions to the other contexts'
/// events and the command endpoints. The caller runs it with [`Host::run`].
pub async fn start(settings: &Settings) -> anyhow::Result<Host> {
    anyhow::ensure!(
        settings.context == BoundedContext::Inventory,
        "the inventory service cannot run as the {} context",
        settings.context
    );
    let mut host = Host::start(settings).await?;
    let reactions = Arc::new(Reactions::new(host.store()));
    host.react(reactions::consumers(), reactions);
    let commands = Commands::new(host.store());
    host.serve(Arc::new(commands)).await?;
    Ok(host)
}
