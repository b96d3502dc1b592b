//! Before a run: products of its own, stocked, that ordering can price.
//!
//! The SKUs are new each run (`BENCH-<run>-<n>`), so that runs against one system do not share
//! stock or read each other's figures. They are defined and stocked through the gateway's
//! operator routes, as an operator would. Ordering learns prices from inventory's events a
//! moment later and keeps them in a replica of its own that nothing outside reads; the only
//! question it answers is whether an order can be placed. So the bench places one order per
//! SKU over NATS, again while ordering answers `unknown_sku` (which writes nothing), and one
//! unit more per SKU is received for those orders.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use events::command::{CommandReply, command_subject};
use events::values::{Currency, Money, OrderId, Quantity, Sku};
use gateway::api::types::{PutProduct, StockReceipt};
use ordering::commands::PLACE_ORDER;
use serde_json::Value;

use super::load::{Plan, order_body};
use super::target::{System, error_chain};

/// How long ordering has to learn the run's prices.
const PRICEABLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Between two attempts at an order ordering could not price yet.
const RETRY: Duration = Duration::from_millis(20);
/// Each product's price: 10.00 EUR.
const PRICE_MINOR: i64 = 1_000;

/// The run's products.
#[derive(Debug)]
pub struct Prepared {
    pub skus: Vec<Sku>,
}

/// Defines `plan.skus` products, receives `stock` units of each (plus the one the readiness
/// order takes), and waits until ordering can price every one.
pub async fn prepare(system: &System, plan: &Plan, stock: u32) -> anyhow::Result<Prepared> {
    let id = uuid::Uuid::now_v7().simple().to_string().to_uppercase();
    // The last hex digits of a v7 id are random.
    let run = &id[id.len() - 10..];
    let currency: Currency = "EUR".parse().context("the bench's currency")?;
    let quantity = Quantity::try_from(stock.saturating_add(1)).context("the stock to receive")?;
    let mut skus = Vec::new();
    for n in 1..=plan.skus {
        let sku: Sku = format!("BENCH-{run}-{n}").parse().context("a bench SKU")?;
        let product = PutProduct {
            name: format!("Bench product {n}"),
            price: Money::new(PRICE_MINOR, currency),
        };
        operator_request(
            system,
            reqwest::Method::PUT,
            &format!("/products/{sku}"),
            &product,
        )
        .await
        .with_context(|| format!("cannot define the product {sku}"))?;
        operator_request(
            system,
            reqwest::Method::POST,
            &format!("/inventory/{sku}/receipts"),
            &StockReceipt { quantity },
        )
        .await
        .with_context(|| format!("cannot receive stock of {sku}"))?;
        skus.push(sku);
    }
    let deadline = Instant::now() + PRICEABLE_TIMEOUT;
    for (n, sku) in skus.iter().enumerate() {
        place_when_priceable(system, sku, n, deadline).await?;
    }
    Ok(Prepared { skus })
}

/// One operator request through the gateway; an answer other than 2xx is an error that says
/// what the gateway said.
async fn operator_request(
    system: &System,
    method: reqwest::Method,
    path: &str,
    body: &impl serde::Serialize,
) -> anyhow::Result<()> {
    let answer = system
        .http
        .request(method, format!("{}{path}", system.gateway_url))
        .bearer_auth(&system.operator)
        .header("Idempotency-Key", uuid::Uuid::now_v7().to_string())
        .json(body)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "the gateway at {} did not answer: {}",
                system.gateway_url,
                error_chain(&e)
            )
        })?;
    let status = answer.status();
    if status.is_success() {
        return Ok(());
    }
    let problem: Value = answer.json().await.unwrap_or(Value::Null);
    let code = problem["code"].as_str().unwrap_or("no problem code");
    let detail = problem["detail"].as_str().unwrap_or("");
    let hint = match status.as_u16() {
        401 | 403 => {
            ": is the token secret (or the operator token) the one this gateway verifies with?"
        }
        _ => "",
    };
    bail!("the gateway answered {status} ({code}: {detail}){hint}")
}

/// Places one order for `sku` over NATS, again while ordering cannot price it yet (or does not
/// answer in time: a busy system may still be catching up), until `deadline`.
async fn place_when_priceable(
    system: &System,
    sku: &Sku,
    n: usize,
    deadline: Instant,
) -> anyhow::Result<()> {
    let subject = command_subject("ordering", PLACE_ORDER);
    let customer = system.customers[n % system.customers.len()];
    let body = serde_json::to_vec(&order_body(sku, Some((OrderId::new(), customer))))?;
    loop {
        let request = system.nats.request(subject.clone(), body.clone().into());
        let left = deadline.saturating_duration_since(Instant::now());
        let reply = match tokio::time::timeout(left, request).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e))
                if e.kind() == async_nats::RequestErrorKind::TimedOut
                    && Instant::now() < deadline =>
            {
                continue;
            }
            Ok(Err(e)) => {
                return Err(e)
                    .with_context(|| format!("no answer from {subject}: does ordering run?"));
            }
            Err(_) => {
                bail!("ordering did not place an order for {sku} within {PRICEABLE_TIMEOUT:?}")
            }
        };
        match serde_json::from_slice(&reply.payload)
            .with_context(|| format!("the answer of {subject} is not a command reply"))?
        {
            CommandReply::Accepted { .. } => return Ok(()),
            // An attempt that timed out here was placed after all: the same order id.
            CommandReply::Rejected { code, .. } if code == "already_placed" => return Ok(()),
            CommandReply::Rejected { code, .. }
                if code == "unknown_sku" && Instant::now() < deadline =>
            {
                tokio::time::sleep(RETRY).await;
            }
            CommandReply::Rejected { code, message, .. } => {
                bail!("ordering refused an order for {sku}: {message} ({code})")
            }
        }
    }
}
