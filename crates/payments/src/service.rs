//! Payments as a service process: its reactions to ordering and inventory on a [`Host`].
//! Payments answers no commands of its own: its NATS service `payments` has only the health
//! endpoint every host serves (`chorus.payments.health`).

use std::sync::Arc;

use host::{Host, Settings};

use crate::PaymentProvider;
use crate::reactions::{self, Reactions};

/// Starts payments on a [`Host`]: the store migrated, the streams provisioned, the relay, the
/// health endpoint, and the durable consumers `payments-from-ordering` and
/// `payments-from-inventory`, whose reactions reach the money through `provider` (in service,
/// an adapter wrapped in [`Resilient`](crate::Resilient)). The caller runs it with
/// [`Host::run`].
pub async fn start(
    settings: &Settings,
    provider: Arc<dyn PaymentProvider>,
) -> anyhow::Result<Host> {
    let mut host = Host::start(settings).await?;
    let reactions = Reactions::new(host.store(), provider);
    host.react(reactions::consumers(), Arc::new(reactions));
    Ok(host)
}
