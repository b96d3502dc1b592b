//! Shipping as a service process: its reactions to ordering and its operators' commands, on a
//! [`Host`].

use std::sync::Arc;

use host::{Host, Settings};

use crate::commands::Commands;
use crate::reactions::{self, Reactions};

/// Starts shipping on a [`Host`]: the store migrated, the streams provisioned, the relay, the
/// durable consumer `shipping-from-ordering`, and the command endpoints
/// `chorus.shipping.dispatch-shipment` and `chorus.shipping.deliver-shipment`. The caller
/// runs it with [`Host::run`].
pub async fn start(settings: &Settings) -> anyhow::Result<Host> {
    let mut host = Host::start(settings).await?;
    let reactions = Reactions::new(host.store());
    host.react(reactions::consumers(), Arc::new(reactions));
    let commands = Commands::new(host.store());
    host.serve(Arc::new(commands)).await?;
    Ok(host)
}
