//! Rebuild rate of the projections against a real PostgreSQL and a private nats-server:
//! `cargo bench -p projections --bench rebuild`. Add `-- --quick` for a run a tenth the size,
//! `-- --only <orders|catalogue|sales|all>` to time one rebuild (`all`: the three at once).
//!
//! Fills the four context streams with 1,000,000 events of realistic sagas (placed, reserved,
//! paid, shipped and delivered orders, with a share declined), published directly with the
//! relay's headers, then times a rebuild of each projection from the beginning (the orders
//! projection reads all 1,000,000), and of the three at once. The rate is stream messages read
//! per second (events applied, or passed over when the projection does not apply them).

use std::collections::VecDeque;
use std::time::Instant;

use async_nats::jetstream::{self, context::PublishAckFuture};
use chrono::{DateTime, Duration, TimeZone, Utc};
use events::inventory::{
    AllocatedLine, AllocationEvent, ProductDefined, ProductEvent, ReleaseReason, StockCommitted,
    StockEvent, StockItemCommitted, StockItemReleased, StockItemReserved, StockReceived,
    StockReleased, StockReserved,
};
use events::ordering::{
    Address, OrderConfirmed, OrderDelivered, OrderEvent, OrderLine, OrderPlaced, OrderRejected,
    OrderShipped, RejectionReason,
};
use events::payments::{
    DeclineCode, PaymentCaptured, PaymentDeclined, PaymentEvent, PaymentRequested,
};
use events::shipping::{ShipmentDelivered, ShipmentDispatched, ShipmentEvent, ShipmentScheduled};
use events::values::{Currency, CustomerId, Money, OrderId, Quantity, Sku};
use events::{BoundedContext, Event, Metadata};
use eventstore::StoredEvent;
use harness::{NatsServer, TestDatabase};
use projections::Projection;
use projections::rebuild::{self, NoProgress, StartAt};
use tokio_util::sync::CancellationToken;

/// As in the `chorus` and `chorus-projections` binaries.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SKUS: usize = 200;
const IN_FLIGHT: usize = 4_096;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = match args.iter().position(|a| a == "--only") {
        None => None,
        Some(at) => {
            let name = args.get(at + 1).map(String::as_str).unwrap_or_default();
            if name != "all" && Projection::parse(name).is_none() {
                anyhow::bail!("--only takes orders, catalogue, sales or all, not {name:?}");
            }
            Some(name.to_owned())
        }
    };
    let runs = |name: &str| only.as_deref().is_none_or(|only| only == name);
    let events = if quick { 100_000 } else { 1_000_000 };
    let nats = NatsServer::start().await?;
    let client = bus::connect(&nats.url(), "bench").await?;
    let js = jetstream::new(client);
    let streams: Vec<_> = BoundedContext::ALL.iter().map(|c| c.stream()).collect();
    bus::provision::streams(&js, &streams, 1).await?;

    let started = Instant::now();
    let mut filler = Filler::new(js.clone());
    filler.fill(events).await?;
    let elapsed = started.elapsed();
    println!("| benchmark | result |");
    println!("|---|---|");
    println!(
        "| fill: {} events published with the relay's headers ({} ordering, {} inventory, {} payments, {} shipping) | {:.0} events/s ({:.2?}) |",
        filler.total(),
        filler.count(BoundedContext::Ordering),
        filler.count(BoundedContext::Inventory),
        filler.count(BoundedContext::Payments),
        filler.count(BoundedContext::Shipping),
        filler.total() as f64 / elapsed.as_secs_f64(),
        elapsed
    );

    let db = TestDatabase::create().await?;
    let pool = db.pool(8).await?;
    let cancel = CancellationToken::new();
    for projection in Projection::ALL.into_iter().filter(|p| runs(p.name())) {
        let report = rebuild::rebuild(
            &pool,
            &js,
            projection,
            StartAt::Beginning,
            &NoProgress,
            &cancel,
        )
        .await?;
        let rate = report.messages as f64 / report.elapsed.as_secs_f64();
        println!(
            "| rebuild {projection} from the beginning ({} messages read, {} events applied) | {rate:.0} events/s ({:.2?}) |",
            report.messages, report.applied, report.elapsed
        );
    }

    if !runs("all") {
        return Ok(());
    }
    let started = Instant::now();
    let all = Projection::ALL.map(|projection| {
        let (pool, js, cancel) = (pool.clone(), js.clone(), cancel.clone());
        tokio::spawn(async move {
            rebuild::rebuild(
                &pool,
                &js,
                projection,
                StartAt::Beginning,
                &NoProgress,
                &cancel,
            )
            .await
        })
    });
    let mut messages = 0;
    for task in all {
        messages += task.await??.messages;
    }
    let elapsed = started.elapsed();
    println!(
        "| rebuild all three at once ({messages} messages read) | {:.0} events/s ({elapsed:.2?}) |",
        messages as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

/// Publishes sagas until `events` are in the streams, counting positions and sequences as
/// the event stores would.
struct Filler {
    js: jetstream::Context,
    pending: VecDeque<PublishAckFuture>,
    positions: [i64; 4],
    eur: Currency,
    address: Address,
    clock: DateTime<Utc>,
}

impl Filler {
    fn new(js: jetstream::Context) -> Self {
        Self {
            js,
            pending: VecDeque::with_capacity(IN_FLIGHT),
            positions: [0; 4],
            eur: "EUR".parse().expect("currency"),
            address: Address {
                name: "Ada Lovelace".to_owned(),
                line1: "12 St James's Square".to_owned(),
                line2: None,
                city: "London".to_owned(),
                postal_code: "SW1Y 4JH".to_owned(),
                country: "GB".to_owned(),
            },
            clock: Utc
                .with_ymd_and_hms(2026, 1, 1, 8, 0, 0)
                .single()
                .expect("time"),
        }
    }

    fn count(&self, context: BoundedContext) -> i64 {
        self.positions[index(context)]
    }

    fn total(&self) -> i64 {
        self.positions.iter().sum()
    }

    async fn fill(&mut self, events: i64) -> anyhow::Result<()> {
        let skus: Vec<Sku> = (0..SKUS)
            .map(|n| format!("SKU-{n:04}").parse().expect("SKU"))
            .collect();
        for (n, sku) in skus.iter().enumerate() {
            let price = Money::new(100 + n as i64 * 10, self.eur);
            let defined = ProductDefined {
                sku: sku.clone(),
                name: format!("Product {sku}"),
                price,
            };
            self.send::<ProductEvent>(BoundedContext::Inventory, sku.as_str(), 1, defined.into())
                .await?;
        }
        let mut stock_sequences = vec![0i64; SKUS];
        let mut order = 0usize;
        while self.total() < events {
            order += 1;
            self.clock += Duration::seconds(3);
            let lines: Vec<(usize, Quantity)> = (0..2)
                .map(|k| {
                    let sku = (order * 7 + k * 13) % SKUS;
                    (
                        sku,
                        Quantity::try_from(1 + (order % 3) as u32).expect("quantity"),
                    )
                })
                .collect();
            // Stock arrives now and then, enough for what is ordered.
            for &(sku, quantity) in &lines {
                if stock_sequences[sku] == 0 || order.is_multiple_of(50) {
                    stock_sequences[sku] += 1;
                    let received = StockReceived {
                        sku: skus[sku].clone(),
                        quantity: Quantity::try_from(quantity.get() * 100).expect("quantity"),
                    };
                    self.send::<StockEvent>(
                        BoundedContext::Inventory,
                        skus[sku].as_str(),
                        stock_sequences[sku],
                        received.into(),
                    )
                    .await?;
                }
            }
            let order_id = OrderId::new();
            let id = order_id.to_string();
            let order_lines: Vec<OrderLine> = lines
                .iter()
                .map(|&(sku, quantity)| OrderLine {
                    sku: skus[sku].clone(),
                    quantity,
                    unit_price: Money::new(100 + sku as i64 * 10, self.eur),
                })
                .collect();
            let total: i64 = order_lines
                .iter()
                .map(|l| l.unit_price.amount_minor * i64::from(l.quantity.get()))
                .sum();
            let total = Money::new(total, self.eur);
            let placed = OrderPlaced {
                order_id,
                customer_id: CustomerId::new(),
                lines: order_lines,
                total,
                shipping_address: self.address.clone(),
                payment_token: "tok_success".to_owned(),
            };
            self.send::<OrderEvent>(BoundedContext::Ordering, &id, 1, placed.into())
                .await?;
            let requested = PaymentRequested {
                order_id,
                amount: total,
                payment_token: "tok_success".to_owned(),
            };
            self.send::<PaymentEvent>(BoundedContext::Payments, &id, 1, requested.into())
                .await?;
            let reserved = StockReserved {
                order_id,
                lines: lines
                    .iter()
                    .map(|&(sku, quantity)| AllocatedLine {
                        sku: skus[sku].clone(),
                        quantity,
                    })
                    .collect(),
                expires_at: self.clock + Duration::minutes(15),
            };
            self.send::<AllocationEvent>(BoundedContext::Inventory, &id, 1, reserved.into())
                .await?;
            for &(sku, quantity) in &lines {
                stock_sequences[sku] += 1;
                let item = StockItemReserved {
                    sku: skus[sku].clone(),
                    order_id,
                    quantity,
                };
                self.send::<StockEvent>(
                    BoundedContext::Inventory,
                    skus[sku].as_str(),
                    stock_sequences[sku],
                    item.into(),
                )
                .await?;
            }

            if order.is_multiple_of(10) {
                // Declined: rejected, stock released, payment declined.
                let declined = PaymentDeclined {
                    order_id,
                    code: DeclineCode::Refused,
                    detail: "card declined".to_owned(),
                };
                self.send::<PaymentEvent>(BoundedContext::Payments, &id, 2, declined.into())
                    .await?;
                let rejected = OrderRejected {
                    order_id,
                    reason: RejectionReason::PaymentDeclined,
                    detail: "card declined".to_owned(),
                };
                self.send::<OrderEvent>(BoundedContext::Ordering, &id, 2, rejected.into())
                    .await?;
                let released = StockReleased {
                    order_id,
                    reason: ReleaseReason::PaymentDeclined,
                };
                self.send::<AllocationEvent>(BoundedContext::Inventory, &id, 2, released.into())
                    .await?;
                for &(sku, quantity) in &lines {
                    stock_sequences[sku] += 1;
                    let item = StockItemReleased {
                        sku: skus[sku].clone(),
                        order_id,
                        quantity,
                    };
                    self.send::<StockEvent>(
                        BoundedContext::Inventory,
                        skus[sku].as_str(),
                        stock_sequences[sku],
                        item.into(),
                    )
                    .await?;
                }
                continue;
            }

            let captured = PaymentCaptured {
                order_id,
                amount: total,
                provider_reference: format!("ref-{order}"),
            };
            self.send::<PaymentEvent>(BoundedContext::Payments, &id, 2, captured.into())
                .await?;
            let confirmed = OrderConfirmed {
                order_id,
                shipping_address: self.address.clone(),
            };
            self.send::<OrderEvent>(BoundedContext::Ordering, &id, 2, confirmed.into())
                .await?;
            let scheduled = ShipmentScheduled {
                order_id,
                address: self.address.clone(),
            };
            self.send::<ShipmentEvent>(BoundedContext::Shipping, &id, 1, scheduled.into())
                .await?;
            let dispatched = ShipmentDispatched {
                order_id,
                tracking_number: Some(format!("TRACK-{order}")),
            };
            self.send::<ShipmentEvent>(BoundedContext::Shipping, &id, 2, dispatched.into())
                .await?;
            self.send::<AllocationEvent>(
                BoundedContext::Inventory,
                &id,
                2,
                StockCommitted { order_id }.into(),
            )
            .await?;
            for &(sku, quantity) in &lines {
                stock_sequences[sku] += 1;
                let item = StockItemCommitted {
                    sku: skus[sku].clone(),
                    order_id,
                    quantity,
                };
                self.send::<StockEvent>(
                    BoundedContext::Inventory,
                    skus[sku].as_str(),
                    stock_sequences[sku],
                    item.into(),
                )
                .await?;
            }
            self.send::<OrderEvent>(
                BoundedContext::Ordering,
                &id,
                3,
                OrderShipped { order_id }.into(),
            )
            .await?;
            self.send::<ShipmentEvent>(
                BoundedContext::Shipping,
                &id,
                3,
                ShipmentDelivered { order_id }.into(),
            )
            .await?;
            self.send::<OrderEvent>(
                BoundedContext::Ordering,
                &id,
                4,
                OrderDelivered { order_id }.into(),
            )
            .await?;
        }
        while let Some(ack) = self.pending.pop_front() {
            ack.await?;
        }
        Ok(())
    }

    async fn send<E: Event>(
        &mut self,
        context: BoundedContext,
        aggregate_id: &str,
        sequence: i64,
        event: E,
    ) -> anyhow::Result<()> {
        self.clock += Duration::milliseconds(10);
        let position = &mut self.positions[index(context)];
        *position += 1;
        let stored = StoredEvent {
            position: *position,
            event_id: uuid::Uuid::now_v7(),
            aggregate_type: E::AGGREGATE_TYPE.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            sequence,
            event_type: event.event_type().to_owned(),
            schema_version: i32::try_from(event.schema_version())?,
            payload: event.to_payload().to_string(),
            metadata: Metadata::default(),
            recorded_at: self.clock,
        };
        let subject = context.stream().event_subject(
            &stored.aggregate_type,
            &stored.aggregate_id,
            &stored.event_type,
        )?;
        if self.pending.len() >= IN_FLIGHT
            && let Some(ack) = self.pending.pop_front()
        {
            ack.await?;
        }
        let ack = self
            .js
            .publish_with_headers(subject, bus::event_headers(&stored), stored.payload.into())
            .await?;
        self.pending.push_back(ack);
        Ok(())
    }
}

fn index(context: BoundedContext) -> usize {
    match context {
        BoundedContext::Ordering => 0,
        BoundedContext::Inventory => 1,
        BoundedContext::Payments => 2,
        BoundedContext::Shipping => 3,
    }
}
