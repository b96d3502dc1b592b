//! How ordering reacts to the other contexts' events.
//!
//! | source | event | reaction | resulting events |
//! |---|---|---|---|
//! | inventory | `ProductDefined` | the catalogue replica: a new row | none |
//! | inventory | `ProductRepriced` | the catalogue replica: the new price | none |
//! | inventory | `StockRejected` | `Reject { OutOfStock }`, the short SKUs in the detail | `OrderRejected` |
//! | payments | `PaymentDeclined` | `Reject { PaymentDeclined }`, the provider's reason in the detail | `OrderRejected` |
//! | payments | `PaymentCaptured` | `Confirm` | `OrderConfirmed` |
//! | shipping | `ShipmentDispatched` | `MarkShipped` | `OrderShipped` |
//! | shipping | `ShipmentDelivered` | `MarkDelivered` | `OrderDelivered` |
//! | ordering | the payment deadline ([`PAYMENT_TIMEOUT`]) of an order still `Placed` | `Reject { PaymentTimedOut }` | `OrderRejected` |
//!
//! The payment deadline is ordering's own (ADR 0008): [`crate::place_order`] schedules it with
//! `OrderPlaced`, and whatever confirms, rejects or cancels the order removes it in the same
//! unit of work. The `Order` aggregate is where the capture and the timeout meet, so the
//! decision "paid in time or timed out" is taken once, there: a capture that arrives after
//! the timeout finds the order rejected (payments refunds it, reacting to the rejection), and
//! a deadline that fires after the capture finds the order confirmed and does nothing.
//! Inventory releases the stock of an order rejected `PaymentTimedOut` when it hears of the
//! rejection; ordering no longer listens to inventory's releases.
//!
//! Every reaction is idempotent: the aggregate succeeds with no events when a command is
//! already satisfied, and the replica only moves forward by version. The replica is written
//! by a plain statement outside the unit of work ([`CatalogueReplica::apply`]): a
//! redelivered message, or a batch run again after a conflict, writes nothing new.
//!
//! Failures: a command the aggregate refuses is permanent (the message is dead-lettered,
//! visible, for an operator), except a delivery reported before its dispatch
//! (`NotShipped`), which is transient: the dispatch may still be on its way, as a message
//! that failed and waits for its redelivery is overtaken by the ones behind it. Likewise a
//! reprice that arrives before its product's definition is retried. Conflicts and database
//! failures are transient.

use bus::{ConsumerSpec, Handler, HandlerError, Received};
use chrono::{DateTime, Utc};
use events::inventory::{AllocationEvent, ProductEvent, Shortage};
use events::naming::StreamName;
use events::ordering::{OrderEvent, RejectionReason};
use events::payments::PaymentEvent;
use events::shipping::ShipmentEvent;
use events::values::{Money, OrderId, Sku};
use events::{BoundedContext, Metadata};
use eventstore::{CommandError, Deadline, DeadlineHandler, Repository, Store, UnitOfWork};

use crate::catalogue::{Applied, CatalogueReplica, ReplicaError};
use crate::{Order, OrderCommand, OrderError, OrderStatus, PAYMENT_TIMEOUT};

/// The durable consumers ordering reacts through, with their filters:
/// `ordering-from-inventory`, `ordering-from-payments` and `ordering-from-shipping`.
pub fn consumers() -> Vec<ConsumerSpec> {
    let inventory = BoundedContext::Inventory.stream();
    let payments = BoundedContext::Payments.stream();
    let shipping = BoundedContext::Shipping.stream();
    vec![
        consumer(
            &inventory,
            &[
                ("product", "ProductDefined"),
                ("product", "ProductRepriced"),
                ("allocation", "StockRejected"),
            ],
        ),
        consumer(
            &payments,
            &[
                ("payment", "PaymentDeclined"),
                ("payment", "PaymentCaptured"),
            ],
        ),
        consumer(
            &shipping,
            &[
                ("shipment", "ShipmentDispatched"),
                ("shipment", "ShipmentDelivered"),
            ],
        ),
    ]
}

/// The consumer of `stream`, filtered to the `(aggregate type, event type)` pairs.
fn consumer(stream: &StreamName, events: &[(&str, &str)]) -> ConsumerSpec {
    events.iter().fold(
        ConsumerSpec::new(BoundedContext::Ordering.name(), stream.clone()),
        |spec, (aggregate_type, event_type)| {
            spec.filter(stream.event_type_filter(aggregate_type, event_type))
        },
    )
}

/// Ordering's reactions: orders in ordering's store, and the catalogue replica.
#[derive(Debug)]
pub struct Reactions {
    orders: Repository<Order>,
    catalogue: CatalogueReplica,
    /// How long an order waits for its payment (the [`PAYMENT_TIMEOUT`] deadline).
    payment_timeout: chrono::Duration,
}

impl Reactions {
    pub fn new(
        store: &Store,
        catalogue: CatalogueReplica,
        payment_timeout: chrono::Duration,
    ) -> Self {
        Self {
            orders: Repository::new(store.clone(), ()),
            catalogue,
            payment_timeout,
        }
    }

    /// How long an order waits for its payment.
    pub fn payment_timeout(&self) -> chrono::Duration {
        self.payment_timeout
    }

    /// The repository the reactions run commands through; a service can run its own commands
    /// (placing, cancelling) through it too, and share its cache.
    pub fn orders(&self) -> &Repository<Order> {
        &self.orders
    }

    pub fn catalogue(&self) -> &CatalogueReplica {
        &self.catalogue
    }

    async fn replicate(
        &self,
        sku: &Sku,
        name: Option<&str>,
        price: Money,
        version: u64,
    ) -> Result<(), HandlerError> {
        match self.catalogue.apply(sku, name, price, version).await {
            Ok(Applied::Written) => {
                tracing::debug!(%sku, %price, version, "catalogue replica updated");
                Ok(())
            }
            Ok(Applied::AlreadyCurrent) => {
                tracing::debug!(%sku, version, "catalogue replica already current");
                Ok(())
            }
            Ok(Applied::Undefined) => Err(HandlerError::transient(format!(
                "SKU {sku} repriced (version {version}) before the replica received its \
                 definition; retrying until the definition arrives"
            ))),
            Err(e @ ReplicaError::InvalidVersion(_)) => Err(HandlerError::permanent(e)),
            Err(e) => Err(HandlerError::transient(e)),
        }
    }

    async fn execute(
        &self,
        uow: &mut UnitOfWork,
        order_id: OrderId,
        command: OrderCommand,
        metadata: &Metadata,
    ) -> Result<(), HandlerError> {
        execute_order(&self.orders, uow, order_id, command, metadata)
            .await
            .map(drop)
            .map_err(failure)
    }

    async fn reject(
        &self,
        uow: &mut UnitOfWork,
        order_id: OrderId,
        reason: RejectionReason,
        detail: String,
        metadata: &Metadata,
    ) -> Result<(), HandlerError> {
        let command = OrderCommand::Reject { reason, detail };
        self.execute(uow, order_id, command, metadata).await
    }
}

/// What the shopper reads about a stock rejection: each short SKU, asked for and available.
pub fn out_of_stock_detail(shortages: &[Shortage]) -> String {
    if shortages.is_empty() {
        return "out of stock".to_owned();
    }
    let short: Vec<String> = shortages
        .iter()
        .map(|s| {
            format!(
                "{}: {} requested, {} available",
                s.sku,
                s.requested.get(),
                s.available
            )
        })
        .collect();
    format!("out of stock: {}", short.join("; "))
}

/// The detail of an order rejected because it was not paid within `timeout`.
pub fn payment_timed_out_detail(timeout: chrono::Duration) -> String {
    format!("not paid within {} s", timeout.num_seconds())
}

/// Runs `command` on the order inside `uow`; if it confirmed, rejected or cancelled the order,
/// removes the order's payment deadline in the same unit (the timeout is moot from then on).
/// Every command on an order that may end its wait for the payment goes through here.
pub async fn execute_order(
    orders: &Repository<Order>,
    uow: &mut UnitOfWork,
    order_id: OrderId,
    command: OrderCommand,
    metadata: &Metadata,
) -> Result<Vec<OrderEvent>, CommandError<OrderError>> {
    let id = order_id.to_string();
    let events = orders.execute(uow, &id, command, metadata).await?;
    let settled = events.iter().any(|event| {
        matches!(
            event,
            OrderEvent::OrderConfirmed(_)
                | OrderEvent::OrderRejected(_)
                | OrderEvent::OrderCancelled(_)
        )
    });
    if settled {
        uow.cancel_deadline(PAYMENT_TIMEOUT, &id);
    }
    Ok(events)
}

/// A refusal by the aggregate is permanent, except a delivery before its dispatch (see the
/// module doc); a conflict or a database failure is transient.
fn failure(error: CommandError<OrderError>) -> HandlerError {
    match error {
        CommandError::Rejected(e @ OrderError::NotShipped) => HandlerError::transient(e),
        other => HandlerError::from(other),
    }
}

impl Handler for Reactions {
    async fn handle(&self, uow: &mut UnitOfWork, message: &Received) -> Result<(), HandlerError> {
        let metadata = message.caused_metadata();
        match message.aggregate_type.as_str() {
            // The version of a product event is its sequence in the product's stream.
            "product" => match message.decode::<ProductEvent>()? {
                ProductEvent::ProductDefined(d) => {
                    let name = Some(d.name.as_str());
                    self.replicate(&d.sku, name, d.price, message.sequence)
                        .await
                }
                ProductEvent::ProductRepriced(r) => {
                    self.replicate(&r.sku, None, r.price, message.sequence)
                        .await
                }
            },
            "allocation" => match message.decode::<AllocationEvent>()? {
                AllocationEvent::StockRejected(r) => {
                    let detail = out_of_stock_detail(&r.shortages);
                    let reason = RejectionReason::OutOfStock;
                    self.reject(uow, r.order_id, reason, detail, &metadata)
                        .await
                }
                // Reserved, released and committed stock change nothing here (the consumer's
                // filter keeps them away).
                _ => Ok(()),
            },
            "payment" => match message.decode::<PaymentEvent>()? {
                PaymentEvent::PaymentDeclined(d) => {
                    let reason = RejectionReason::PaymentDeclined;
                    let detail = format!("{} ({})", d.detail, d.code);
                    self.reject(uow, d.order_id, reason, detail, &metadata)
                        .await
                }
                PaymentEvent::PaymentCaptured(c) => {
                    self.execute(uow, c.order_id, OrderCommand::Confirm, &metadata)
                        .await
                }
                _ => Ok(()),
            },
            "shipment" => match message.decode::<ShipmentEvent>()? {
                ShipmentEvent::ShipmentDispatched(d) => {
                    self.execute(uow, d.order_id, OrderCommand::MarkShipped, &metadata)
                        .await
                }
                ShipmentEvent::ShipmentDelivered(d) => {
                    self.execute(uow, d.order_id, OrderCommand::MarkDelivered, &metadata)
                        .await
                }
                _ => Ok(()),
            },
            // Not an event ordering reacts to: the consumers' filters keep these away.
            _ => Ok(()),
        }
    }
}

/// The payment deadline: an order still `Placed` when it fires was not paid in time and is
/// rejected `PaymentTimedOut`. An order confirmed, rejected or cancelled meanwhile is left as
/// it is (its deadline is normally removed with that change; a firing that raced it finds the
/// order settled, or conflicts and is retried on the fresh state).
impl DeadlineHandler for Reactions {
    async fn fire(
        &self,
        uow: &mut UnitOfWork,
        deadline: &Deadline,
        _now: DateTime<Utc>,
    ) -> Result<(), String> {
        let order_id: OrderId = deadline.key.parse().map_err(|e| format!("{e}"))?;
        let (order, _) = self
            .orders
            .current(uow, &deadline.key)
            .await
            .map_err(|e| e.to_string())?;
        if order.status() != Some(OrderStatus::Placed) {
            return Ok(());
        }
        let command = OrderCommand::Reject {
            reason: RejectionReason::PaymentTimedOut,
            detail: payment_timed_out_detail(self.payment_timeout),
        };
        execute_order(&self.orders, uow, order_id, command, &Metadata::default())
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
