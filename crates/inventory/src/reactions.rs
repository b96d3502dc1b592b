//! How inventory reacts to the other contexts' events.
//!
//! - `OrderPlaced`: reserve every line, all or nothing, in one unit of work. Either every
//!   stock item records its reservation and the allocation records `StockReserved`, or
//!   nothing is reserved and the allocation records `StockRejected` with the shortages.
//! - `OrderCancelled`, `PaymentDeclined`: release the reservation (a compensation).
//! - `OrderRejected`: release the reservation. `PaymentTimedOut` releases it as `Expired`;
//!   `PaymentDeclined` as `PaymentDeclined` (usually already released on the decline itself:
//!   then a no-op); `OutOfStock` finds nothing reserved (a no-op).
//! - `ShipmentDispatched`: the reservation becomes committed stock.
//!
//! Inventory keeps no deadline. Ordering owns the payment deadline (ADR 0008): the `Order`
//! aggregate is where "paid" and "timed out" meet, so it alone decides, and inventory
//! releases the stock of an order that timed out when it hears of the rejection. The
//! `expires_at` that `StockReserved` publishes is therefore informational only: a "held at
//! least until" value, the `OrderPlaced` message's time (or now, if the message carries
//! none) plus [`RESERVATION_HORIZON_MINUTES`]. Nothing acts on it.
//!
//! Every reaction is idempotent (the aggregates succeed with no events the second time), and a
//! domain refusal is permanent: the message goes to the dead letters, visible, for an operator.

use std::collections::BTreeMap;

use bus::{ConsumerSpec, Handler, HandlerError, Received};
use chrono::{DateTime, SubsecRound, Utc};
use events::inventory::{AllocatedLine, ReleaseReason, Shortage};
use events::naming::StreamName;
use events::ordering::{OrderEvent, OrderPlaced, RejectionReason};
use events::payments::PaymentEvent;
use events::shipping::ShipmentEvent;
use events::values::{OrderId, Quantity, Sku};
use events::{BoundedContext, Metadata};
use eventstore::{CommandError, Repository, Store, UnitOfWork};

use crate::{Allocation, AllocationCommand, StockCommand, StockError, StockItem};

/// How far after the order was placed `StockReserved.expires_at` is set: an informational
/// "held at least until" value (see the module doc), not a deadline inventory acts on.
pub const RESERVATION_HORIZON_MINUTES: i64 = 15;

/// The durable consumers inventory reacts through, with their filters.
pub fn consumers() -> Vec<ConsumerSpec> {
    let ordering = BoundedContext::Ordering.stream();
    let payments = BoundedContext::Payments.stream();
    let shipping = BoundedContext::Shipping.stream();
    vec![
        consumer(
            &ordering,
            "order",
            &["OrderPlaced", "OrderCancelled", "OrderRejected"],
        ),
        consumer(&payments, "payment", &["PaymentDeclined"]),
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
}

impl Reactions {
    pub fn new(store: &Store) -> Self {
        Self {
            stock: Repository::new(store.clone(), ()),
            allocations: Repository::new(store.clone(), ()),
        }
    }

    async fn reserve(
        &self,
        uow: &mut UnitOfWork,
        placed: OrderPlaced,
        placed_at: DateTime<Utc>,
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
                Err(e) => return Err(HandlerError::from(e)),
            }
        }
        let id = order_id.to_string();
        if shortages.is_empty() {
            // Informational only (see the module doc); microseconds, as the store keeps time.
            let horizon = chrono::Duration::minutes(RESERVATION_HORIZON_MINUTES);
            let expires_at = (placed_at + horizon).trunc_subsecs(6);
            let record = AllocationCommand::RecordReserved {
                order_id,
                lines,
                expires_at,
            };
            self.allocations
                .execute_new(uow, &id, record, metadata)
                .await
                .map_err(HandlerError::from)?;
        } else {
            uow.rollback_to(mark);
            let record = AllocationCommand::RecordRejected {
                order_id,
                shortages,
            };
            self.allocations
                .execute_new(uow, &id, record, metadata)
                .await
                .map_err(HandlerError::from)?;
        }
        Ok(())
    }

    /// Runs `command` on the order's allocation; if it released or committed the reservation,
    /// does the same to each stock item.
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
            .map_err(HandlerError::from)?;
        if events.is_empty() {
            return Ok(());
        }
        for line in allocation.lines() {
            self.stock
                .execute(uow, line.sku.as_str(), per_item.clone(), metadata)
                .await
                .map_err(HandlerError::from)?;
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

impl Handler for Reactions {
    async fn handle(&self, uow: &mut UnitOfWork, message: &Received) -> Result<(), HandlerError> {
        let metadata = message.caused_metadata();
        match message.aggregate_type.as_str() {
            "order" => match message.decode::<OrderEvent>()? {
                OrderEvent::OrderPlaced(placed) => {
                    let placed_at = message.occurred_at.unwrap_or_else(Utc::now);
                    self.reserve(uow, placed, placed_at, &metadata).await
                }
                OrderEvent::OrderCancelled(c) => {
                    let reason = ReleaseReason::OrderCancelled;
                    self.release(uow, c.order_id, reason, &metadata).await
                }
                OrderEvent::OrderRejected(r) => {
                    let reason = match r.reason {
                        RejectionReason::PaymentTimedOut => ReleaseReason::Expired,
                        RejectionReason::PaymentDeclined => ReleaseReason::PaymentDeclined,
                        // Rejected because inventory reserved nothing: nothing to give back.
                        RejectionReason::OutOfStock => return Ok(()),
                    };
                    self.release(uow, r.order_id, reason, &metadata).await
                }
                _ => Ok(()),
            },
            "payment" => match message.decode::<PaymentEvent>()? {
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
