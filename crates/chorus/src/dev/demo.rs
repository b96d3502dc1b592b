//! The demo catalogue: a few products with prices and stock, so that the first order can be
//! placed the moment the launcher says it is ready.
//!
//! It goes in through inventory's command endpoints, as an operator's would, and is loaded
//! once: a product already defined keeps its definition (and any reprice since), and stock is
//! received only for a SKU that has never received any (asked of inventory's event store,
//! the truth, not of a read model that may lag), so a restart does not double the stock, and
//! stock sold since is not topped up behind the developer's back.
//!
//! Ready means usable: the launcher waits until ordering's replica of the catalogue can price
//! every demo SKU, and the catalogue read model shows it with its stock.

use std::time::Duration;

use anyhow::{Context as _, bail};
use events::command::{CommandReply, command_subject};
use events::query::{ProductRequest, ProductView, QueryReply, WaitFor, query_subject};
use events::values::{Currency, Money, Sku};
use eventstore::{Repository, Store};
use inventory::StockItem;
use ordering::catalogue::CatalogueReplica;
use serde_json::json;

/// How long the catalogue has to reach ordering's replica and the read model.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// One product of the demo.
#[derive(Debug, Clone, Copy)]
pub struct DemoProduct {
    pub sku: &'static str,
    pub name: &'static str,
    /// In euro cents.
    pub price_minor: i64,
    /// Units received the first time.
    pub stock: u32,
}

/// The demo catalogue, in euros (an order is in one currency).
pub const PRODUCTS: [DemoProduct; 4] = [
    DemoProduct {
        sku: "MUG-001",
        name: "Chorus mug",
        price_minor: 1_200,
        stock: 100,
    },
    DemoProduct {
        sku: "TEE-001",
        name: "Chorus T-shirt",
        price_minor: 2_500,
        stock: 50,
    },
    DemoProduct {
        sku: "CAP-001",
        name: "Chorus cap",
        price_minor: 1_850,
        stock: 30,
    },
    DemoProduct {
        sku: "STICKERS-001",
        name: "Sticker pack",
        price_minor: 400,
        stock: 500,
    },
];

pub const CURRENCY: &str = "EUR";

/// The shipping address of the demo's orders (the first order the banner shows, and the load
/// generator's).
pub fn shipping_address() -> serde_json::Value {
    json!({
        "name": "Ada Lovelace",
        "line1": "12 Chorus Lane",
        "city": "London",
        "postal_code": "N1 9GU",
        "country": "GB"
    })
}

/// What the catalogue is loaded through: the launcher's NATS connection, and the two event
/// stores that say whether it is loaded already and whether ordering can price it.
#[derive(Debug)]
pub struct Catalogue<'a> {
    pub client: &'a async_nats::Client,
    pub inventory: &'a Store,
    pub ordering: &'a Store,
}

impl Catalogue<'_> {
    /// Loads what is missing of the demo catalogue and waits until it can be ordered from;
    /// returns each product as the read model shows it.
    pub async fn load(&self) -> anyhow::Result<Vec<ProductView>> {
        let currency: Currency = CURRENCY.parse().context("the demo currency")?;
        let stock = Repository::<StockItem>::new(self.inventory.clone(), ());
        let mut waits = Vec::new();
        for product in PRODUCTS {
            let sku: Sku = product.sku.parse().context("a demo SKU")?;
            let price = Money::new(product.price_minor, currency);
            let defined = self
                .command(
                    "define-product",
                    json!({ "sku": sku, "name": product.name, "price": price }),
                )
                .await?;
            let mut wait = match defined {
                CommandReply::Accepted { position, .. } => {
                    tracing::info!(sku = product.sku, "demo product defined");
                    Some(wait_for("product", product.sku, position))
                }
                CommandReply::Rejected { code, .. } if code == "already_defined" => None,
                CommandReply::Rejected { code, message, .. } => {
                    bail!(
                        "inventory refused to define {}: {message} ({code})",
                        product.sku
                    )
                }
            };
            let (item, _) = stock
                .load(product.sku)
                .await
                .with_context(|| format!("cannot read the stock of {}", product.sku))?;
            if item.received() == 0 {
                let received = self
                    .command(
                        "receive-stock",
                        json!({ "sku": sku, "quantity": product.stock }),
                    )
                    .await?;
                match received {
                    CommandReply::Accepted { position, .. } => {
                        tracing::info!(
                            sku = product.sku,
                            units = product.stock,
                            "demo stock received"
                        );
                        wait = Some(wait_for("stock", product.sku, position));
                    }
                    CommandReply::Rejected { code, message, .. } => {
                        bail!(
                            "inventory refused stock for {}: {message} ({code})",
                            product.sku
                        )
                    }
                }
            }
            waits.push((sku, wait));
        }

        tokio::time::timeout(READY_TIMEOUT, self.priceable(&waits))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "ordering's replica of the catalogue did not learn the demo products within \
                     {READY_TIMEOUT:?}: is the ordering-from-inventory consumer running?"
                )
            })??;
        let mut shown = Vec::new();
        for (sku, wait) in waits {
            let view = tokio::time::timeout(READY_TIMEOUT, self.read_model(&sku, wait))
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "the catalogue read model did not show {sku} within {READY_TIMEOUT:?}: \
                         are the projections running?"
                    )
                })??;
            shown.push(view);
        }
        Ok(shown)
    }

    /// Runs one of inventory's commands.
    async fn command(&self, name: &str, body: serde_json::Value) -> anyhow::Result<CommandReply> {
        let subject = command_subject("inventory", name);
        let reply = self
            .client
            .request(subject.clone(), serde_json::to_vec(&body)?.into())
            .await
            .with_context(|| format!("no answer from {subject}"))?;
        serde_json::from_slice(&reply.payload)
            .with_context(|| format!("the answer of {subject} is not a command reply"))
    }

    /// Waits until ordering's replica can price every SKU.
    async fn priceable(&self, waits: &[(Sku, Option<WaitFor>)]) -> anyhow::Result<()> {
        let replica = CatalogueReplica::new(self.ordering.pool().clone());
        for (sku, _) in waits {
            while replica
                .entry(sku)
                .await
                .context("cannot read ordering's catalogue replica")?
                .is_none()
            {
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }

    /// Waits until the catalogue read model shows `sku` (having applied `wait`, if any).
    async fn read_model(&self, sku: &Sku, wait: Option<WaitFor>) -> anyhow::Result<ProductView> {
        let subject = query_subject("product");
        let request = serde_json::to_vec(&ProductRequest {
            sku: sku.to_string(),
            wait,
        })?;
        loop {
            let reply = self
                .client
                .request(subject.clone(), request.clone().into())
                .await
                .with_context(|| format!("no answer from {subject}"))?;
            match serde_json::from_slice::<QueryReply<ProductView>>(&reply.payload)
                .with_context(|| format!("the answer of {subject} is not a query reply"))?
            {
                QueryReply::Found(view) => return Ok(view),
                QueryReply::NotFound | QueryReply::NotYet { .. } => tokio::time::sleep(POLL).await,
                QueryReply::Rejected { code, message, .. } => {
                    bail!("{subject} refused {sku}: {message} ({code})")
                }
            }
        }
    }
}

fn wait_for(aggregate_type: &str, sku: &str, position: i64) -> WaitFor {
    WaitFor {
        aggregate_type: aggregate_type.to_owned(),
        aggregate_id: sku.to_owned(),
        position,
        timeout_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_products_are_valid() {
        let currency: Currency = CURRENCY.parse().unwrap();
        for product in PRODUCTS {
            assert!(product.sku.parse::<Sku>().is_ok(), "{}", product.sku);
            assert!(product.price_minor > 0 && product.stock > 0, "{product:?}");
            assert!(!product.name.trim().is_empty());
            let _ = Money::new(product.price_minor, currency);
        }
    }
}
