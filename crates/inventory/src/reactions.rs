//! How inventory reacts to the other contexts' events, and to its reservation deadline.
//!
//! - `OrderPlaced`: reserve every line, all or nothing, in one unit of work. Either every
//!   stock item records its reservation and the allocation records `StockReserved` with a
//!   deadline, or nothing is reserved and the allocation records `StockRejected` with the
//!   shortages.
//! - `PaymentCaptured`: the reservation is paid for; its expiry deadline is dropped (the
//!   reservation stays until dispatch or cancellation).
//! - `OrderCancelled`, `PaymentDeclined`: release the reservation (a compensation).
//! - `ShipmentDispatched`: the reservation becomes committed stock.
//! - The reservation deadline: an unpaid reservation expires and is released.
//!
//! Every reaction is idempotent (the aggregates succeed with no events the second time), and a
//! domain refusal is permanent: the message goes to the dead letters, visible, for an operator.

use std::collections::BTreeMap;

use bus::{ConsumerSpec, Handler, HandlerError, Received};
use chrono::{DateTime, SubsecRound, Utc};
use events::inventory::{AllocatedLine, ReleaseReason, Shortage};
use events::naming::StreamName;
use events::ordering::{OrderEvent, OrderPlaced};
use events::payments::PaymentEvent;
use events::shipping::ShipmentEvent;
use events::values::{OrderId, Quantity, Sku};
use events::{BoundedContext, Metadata};
use eventstore::{CommandError, Deadline, DeadlineHandler, Repository, Store, UnitOfWork};

use crate::{Allocation, AllocationCommand, AllocationStatus, StockCommand, StockError, StockItem};

/// The deadline kind of an unpaid reservation; its key is the order id.
pub const RESERVATION_EXPIRY: &str = "reservation-expiry";

/// The durable consumers inventory reacts through, with their filters.
pub fn consumers() -> Vec<ConsumerSpec> {
    let ordering = BoundedContext::Ordering.stream();
    let payments = BoundedContext::Payments.stream();
    let shipping = BoundedContext::Shipping.stream();
    vec![
        consumer(&ordering, "order", &["OrderPlaced", "OrderCancelled"]),
        consumer(
            &payments,
            "payment",
            &["PaymentCaptured", "PaymentDeclined"],
        ),
        consumer(&shipping, "shipment", &["ShipmentDispatched"]),
    ]
}

fn consumer(stream: &StreamName, aggregate_type: &str, event_types: &[&str]) -> ConsumerSpec {
    event_types.iter().fold(
        ConsumerSpec::new(BoundedContext::Inventory.name(), stream.clone()),
        |spec, event_type| spec.filter(stream.event_type_filter(aggregate_type, event_type)),
    )
}

/// Inventory's reactions: stock items and allocations in inventory's store.
#[derive(Debug)]
pub struct Reactions {
    stock: Repository<StockItem>,
    allocations: Repository<Allocation>,
    /// How long a reservation waits for its payment.
    reservation_ttl: chrono::Duration,
}

impl Reactions {
    pub fn new(store: &Store, reservation_ttl: chrono::Duration) -> Self {
        Self {
            stock: Repository::new(store.clone(), ()),
            allocations: Repository::new(store.clone(), ()),
            reservation_ttl,
        }
    }

    async fn reserve(
        &self,
        uow: &mut UnitOfWork,
        placed: OrderPlaced,
        now: DateTime<Utc>,
        metadata: &Metadata,
    ) -> Result<(), HandlerError> {
        let order_id = placed.order_id;
        // One reservation per stock item and order: lines of the same SKU are added up.
        let mut wanted: BTreeMap<Sku, u32> = BTreeMap::new();
        for line in placed.lines {
            let total = wanted.entry(line.sku).or_default();
            *total = total.saturating_add(line.quantity.get());
        }
        let mark = uow.mark();
        let mut lines = Vec::with_capacity(wanted.len());
        let mut shortages = Vec::new();
        for (sku, quantity) in wanted {
            let quantity = Quantity::try_from(quantity).map_err(HandlerError::permanent)?;
            let reserve = StockCommand::Reserve { order_id, quantity };
            match self
                .stock
                .execute(uow, sku.as_str(), reserve, metadata)
                .await
            {
                Ok(_) => lines.push(AllocatedLine { sku, quantity }),
                Err(CommandError::Rejected(StockError::InsufficientStock {
                    requested,
                    available,
                })) => shortages.push(Shortage {
                    sku,
                    requested,
                    available,
                }),
                Err(e) => return Err(failure(e)),
            }
        }
        let id = order_id.to_string();
        if shortages.is_empty() {
            // Microseconds, as PostgreSQL keeps the deadline: the two must compare equal.
            let expires_at = (now + self.reservation_ttl).trunc_subsecs(6);
            let record = AllocationCommand::RecordReserved {
                order_id,
                lines,
                expires_at,
            };
            self.allocations
                .execute(uow, &id, record, metadata)
                .await
                .map_err(failure)?;
            uow.schedule_deadline(RESERVATION_EXPIRY, &id, expires_at, serde_json::json!({}));
        } else {
            uow.rollback_to(mark);
            let record = AllocationCommand::RecordRejected {
                order_id,
                shortages,
            };
            self.allocations
                .execute(uow, &id, record, metadata)
                .await
                .map_err(failure)?;
        }
        Ok(())
    }

    /// Runs `command` on the order's allocation; if it released or committed the reservation,
    /// does the same to each stock item, and drops the deadline.
    async fn settle(
        &self,
        uow: &mut UnitOfWork,
        order_id: OrderId,
        command: AllocationCommand,
        metadata: &Metadata,
    ) -> Result<(), HandlerError> {
        let id = order_id.to_string();
        let (allocation, _) = self
            .allocations
            .current(uow, &id)
            .await
            .map_err(HandlerError::transient)?;
        let per_item = match command {
            AllocationCommand::Commit => StockCommand::Commit { order_id },
            _ => StockCommand::Release { order_id },
        };
        let events = self
            .allocations
            .execute(uow, &id, command, metadata)
            .await
            .map_err(failure)?;
        if events.is_empty() {
            return Ok(());
        }
        for line in allocation.lines() {
            self.stock
                .execute(uow, line.sku.as_str(), per_item.clone(), metadata)
                .await
                .map_err(failure)?;
        }
        uow.cancel_deadline(RESERVATION_EXPIRY, &id);
        Ok(())
    }

    /// A paid reservation no longer expires. One that expired before the payment arrived stays
    /// released: ordering rejects the order and payments refunds it.
    async fn paid(&self, uow: &mut UnitOfWork, order_id: OrderId) -> Result<(), HandlerError> {
        let id = order_id.to_string();
        let (allocation, _) = self
            .allocations
            .current(uow, &id)
            .await
            .map_err(HandlerError::transient)?;
        if allocation.status() == AllocationStatus::Reserved {
            uow.cancel_deadline(RESERVATION_EXPIRY, &id);
        }
        Ok(())
    }

    async fn release(
        &self,
        uow: &mut UnitOfWork,
        order_id: OrderId,
        reason: ReleaseReason,
        metadata: &Metadata,
    ) -> Result<(), HandlerError> {
        let command = AllocationCommand::Release { reason };
        self.settle(uow, order_id, command, metadata).await
    }
}

/// A refusal by an aggregate is permanent; a conflict or a database failure is not.
fn failure<E: std::error::Error + Send + Sync + 'static>(error: CommandError<E>) -> HandlerError {
    match error {
        CommandError::Rejected(e) => HandlerError::permanent(e.to_string()),
        CommandError::InvalidId(e) => HandlerError::permanent(e.to_string()),
        e @ CommandError::EventTooLarge { .. } => HandlerError::permanent(e.to_string()),
        other => HandlerError::transient(other.to_string()),
    }
}

impl Handler for Reactions {
    async fn handle(&self, uow: &mut UnitOfWork, message: &Received) -> Result<(), HandlerError> {
        let metadata = message.caused_metadata();
        match message.aggregate_type.as_str() {
            "order" => match message.decode::<OrderEvent>()? {
                OrderEvent::OrderPlaced(placed) => {
                    self.reserve(uow, placed, Utc::now(), &metadata).await
                }
                OrderEvent::OrderCancelled(c) => {
                    let reason = ReleaseReason::OrderCancelled;
                    self.release(uow, c.order_id, reason, &metadata).await
                }
                _ => Ok(()),
            },
            "payment" => match message.decode::<PaymentEvent>()? {
                PaymentEvent::PaymentCaptured(c) => self.paid(uow, c.order_id).await,
                PaymentEvent::PaymentDeclined(d) => {
                    let reason = ReleaseReason::PaymentDeclined;
                    self.release(uow, d.order_id, reason, &metadata).await
                }
                _ => Ok(()),
            },
            "shipment" => match message.decode::<ShipmentEvent>()? {
                ShipmentEvent::ShipmentDispatched(d) => {
                    let command = AllocationCommand::Commit;
                    self.settle(uow, d.order_id, command, &metadata).await
                }
                _ => Ok(()),
            },
            // Not an event inventory reacts to: the consumers' filters keep these away.
            _ => Ok(()),
        }
    }
}

impl DeadlineHandler for Reactions {
    async fn fire(
        &self,
        uow: &mut UnitOfWork,
        deadline: &Deadline,
        now: DateTime<Utc>,
    ) -> Result<(), String> {
        let order_id: OrderId = deadline.key.parse().map_err(|e| format!("{e}"))?;
        let command = AllocationCommand::Expire { now };
        self.settle(uow, order_id, command, &Metadata::default())
            .await
            .map_err(|e| e.to_string())
    }
}
