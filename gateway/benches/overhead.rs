//! What the gateway adds to a command: the same load sent to a context over NATS directly and
//! through the gateway over HTTP, `cargo bench -p gateway --bench overhead`. Add `-- --quick`
//! for a run a tenth the size.
//!
//! Two upstreams, each on a private nats-server:
//! 1. `stub`: a NATS responder that accepts every `receive-stock` at once. The difference
//!    between the two paths is then the gateway alone: HTTP, the token's signature, the rate
//!    limit, the body's parsing, the idempotency record (a `create` and an `update` in the
//!    key-value bucket, two JetStream writes) and the NATS request.
//! 2. `inventory`: the real inventory service on a fresh database, so that the overhead is
//!    seen next to a command's own cost (an append and its commit).
//!
//! Each path runs 16 concurrent clients, each sending one command at a time, on distinct SKUs;
//! every HTTP request has its own Idempotency-Key. Against the stub, a third path sends
//! `PUT /products/{sku}` without a key (one `define-product`), to tell the idempotency
//! record's share from the rest. Reported: requests per second, p50 and p99 latency per path,
//! and the p50 and p99 the gateway adds.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use events::BoundedContext;
use events::command::{CommandReply, command_subject};
use futures::StreamExt;
use gateway::auth::Verifier;
use gateway::settings::{CorsOrigins, RateLimit, Settings};
use harness::{NatsServer, TestDatabase};

const SECRET: &[u8] = b"the-benchmark-secret-of-the-gateway-0123";
const CLIENTS: usize = 16;
const SKUS: usize = 64;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (stub_requests, inventory_requests) = if quick { (2_000, 800) } else { (20_000, 8_000) };
    println!("| upstream | path | requests | requests/s | p50 | p99 |");
    println!("|---|---|---|---|---|---|");
    let stub = stub(stub_requests).await?;
    let inventory = inventory(inventory_requests).await?;
    println!();
    println!("| upstream | added p50 | added p99 | throughput via HTTP / direct |");
    println!("|---|---|---|---|");
    for (name, (direct, http)) in [("stub", stub), ("inventory", inventory)] {
        println!(
            "| {name} | {} | {} | {:.2} |",
            micros(http.p50.saturating_sub(direct.p50)),
            micros(http.p99.saturating_sub(direct.p99)),
            http.rate / direct.rate
        );
    }
    Ok(())
}

/// What one path measured.
#[derive(Debug, Clone, Copy)]
struct Figures {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

fn micros(d: Duration) -> String {
    format!("{} µs", d.as_micros())
}

/// Runs `requests` calls of `call` (given the request's number) on `CLIENTS` clients.
async fn measure<F, Fut>(
    name: &str,
    path: &str,
    requests: usize,
    call: F,
) -> anyhow::Result<Figures>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let call = Arc::clone(&call);
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = client;
            while n < requests {
                let sent = Instant::now();
                call(n).await?;
                latencies.push(sent.elapsed());
                n += CLIENTS;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(requests);
    for client in clients {
        latencies.extend(client.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let figures = Figures {
        rate: requests as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    };
    println!(
        "| {name} | {path} | {requests} | {:.0} | {} | {} |",
        figures.rate,
        micros(figures.p50),
        micros(figures.p99)
    );
    Ok(figures)
}

/// A gateway on `nats`, serving in the background; its base URL.
async fn gateway(nats: &NatsServer) -> anyhow::Result<String> {
    let settings = Settings {
        addr: "127.0.0.1:0".parse()?,
        nats_url: nats.url(),
        verifier: Verifier::hs256(SECRET),
        idempotency_ttl: Duration::from_secs(600),
        rate_limit: RateLimit {
            per_second: 1_000_000.try_into()?,
            burst: 1_000_000.try_into()?,
        },
        max_body_bytes: 64 * 1024,
        request_timeout: Duration::from_secs(10),
        cors_origins: CorsOrigins::None,
    };
    let gateway = gateway::Gateway::start(settings).await?;
    let base = format!("http://{}", gateway.addr());
    tokio::spawn(gateway.run(std::future::pending()));
    Ok(base)
}

/// Both paths against `subject`'s context on `nats`.
async fn both(
    name: &str,
    nats: &NatsServer,
    requests: usize,
) -> anyhow::Result<(Figures, Figures)> {
    let client = bus::connect(&nats.url(), "bench").await?;
    let subject = command_subject(BoundedContext::Inventory.name(), "receive-stock");
    let direct = measure(name, "NATS direct", requests, move |n| {
        let (client, subject) = (client.clone(), subject.clone());
        async move {
            let body = serde_json::json!({ "sku": format!("SKU-{}", n % SKUS), "quantity": 1 });
            let reply = client
                .request(subject, serde_json::to_vec(&body)?.into())
                .await?;
            match serde_json::from_slice(&reply.payload)? {
                CommandReply::Accepted { .. } => Ok(()),
                other => anyhow::bail!("refused: {other:?}"),
            }
        }
    })
    .await?;

    let base = gateway(nats).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()?;
    let token = gateway::mint(
        SECRET,
        gateway::Role::Operator,
        "bench",
        Duration::from_secs(3_600),
    )?;
    let via_http = measure(name, "HTTP via the gateway", requests, move |n| {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            let response = http
                .post(format!("{base}/inventory/SKU-{}/receipts", n % SKUS))
                .bearer_auth(&token)
                .header("Idempotency-Key", uuid::Uuid::now_v7().to_string())
                .json(&serde_json::json!({ "quantity": 1 }))
                .send()
                .await?;
            anyhow::ensure!(response.status() == 200, "answered {}", response.status());
            Ok(())
        }
    })
    .await?;
    Ok((direct, via_http))
}

async fn stub(requests: usize) -> anyhow::Result<(Figures, Figures)> {
    let nats = NatsServer::start().await?;
    let client = bus::connect(&nats.url(), "stub").await?;
    let subject = command_subject(BoundedContext::Inventory.name(), "receive-stock");
    let define = command_subject(BoundedContext::Inventory.name(), "define-product");
    let receipts = client.queue_subscribe(subject, "chorus".to_owned()).await?;
    let definitions = client.queue_subscribe(define, "chorus".to_owned()).await?;
    let mut commands = futures::stream::select(receipts, definitions);
    client.flush().await?;
    tokio::spawn(async move {
        let mut position = 0;
        while let Some(request) = commands.next().await {
            position += 1;
            let reply = CommandReply::Accepted {
                aggregate_id: "SKU".to_owned(),
                position,
                version: 1,
            };
            if let Some(to) = request.reply {
                let body = serde_json::to_vec(&reply).unwrap_or_default();
                client.publish(to, body.into()).await.ok();
            }
        }
    });
    let figures = both("stub", &nats, requests).await?;

    let base = gateway(&nats).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()?;
    let token = gateway::mint(
        SECRET,
        gateway::Role::Operator,
        "bench",
        Duration::from_secs(3_600),
    )?;
    measure(
        "stub",
        "HTTP via the gateway, no Idempotency-Key",
        requests,
        move |n| {
            let (http, base, token) = (http.clone(), base.clone(), token.clone());
            async move {
                let response = http
                    .put(format!("{base}/products/SKU-{}", n % SKUS))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({
                        "name": "Benchmark",
                        "price": { "amount_minor": 100, "currency": "EUR" },
                    }))
                    .send()
                    .await?;
                anyhow::ensure!(response.status() == 201, "answered {}", response.status());
                Ok(())
            }
        },
    )
    .await?;
    Ok(figures)
}

async fn inventory(requests: usize) -> anyhow::Result<(Figures, Figures)> {
    let nats = NatsServer::start().await?;
    let db = TestDatabase::create().await?;
    let settings = host::Settings {
        context: BoundedContext::Inventory,
        database_url: db.url(),
        nats_url: nats.url(),
        database_connections: 16,
    };
    let service = inventory::service::start(&settings)
        .await
        .context("the inventory service does not start")?;
    let stop = service.shutdown_token();
    let running = tokio::spawn(service.run(std::future::pending()));
    let figures = both("inventory", &nats, requests).await;
    stop.cancel();
    running.await??;
    drop(db);
    figures
}
