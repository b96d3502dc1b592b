//! How shipping reacts to the other contexts' events.
//!
//! | source event (ordering) | command on the order's `Shipment` | resulting events |
//! |---|---|---|
//! | `OrderConfirmed { order_id, shipping_address }` | `Schedule { order_id, address }` | `ShipmentScheduled`, or none if the shipment already exists |
//! | `OrderCancelled { order_id }` | `Cancel` | `ShipmentCancelled` if scheduled; none if never scheduled or already cancelled |
//!
//! The shipment's id is the order id. Both reactions go through one durable consumer,
//! `shipping-from-ordering`, filtered to those two event types.
//!
//! Every reaction is idempotent: the aggregate succeeds with no events when the command is
//! already satisfied, so a redelivered message has no second effect even without the inbox.
//!
//! Failures: a refusal by the aggregate is permanent (the message goes to the dead letters at
//! once); a concurrency conflict or a database failure is transient (retried with backoff).
//! The one refusal these reactions can meet is an `OrderCancelled` for a shipment that was
//! already dispatched (or delivered): `ShipmentError::AlreadyDispatched`. The parcel has left,
//! so the cancellation cannot be honoured and retrying will never change that: it is
//! dead-lettered, with the order id in its error, so that the conflict between the
//! cancellation and the dispatch is visible to an operator instead of silently lost.

use bus::{ConsumerSpec, Handler, HandlerError, Received};
use events::naming::StreamName;
use events::ordering::{OrderConfirmed, OrderEvent};
use events::values::OrderId;
use events::{BoundedContext, Metadata};
use eventstore::{CommandError, Repository, Store, UnitOfWork};

use crate::{Shipment, ShipmentCommand, ShipmentError};

/// The durable consumers shipping reacts through, with their filters.
pub fn consumers() -> Vec<ConsumerSpec> {
    let ordering = BoundedContext::Ordering.stream();
    vec![consumer(
        &ordering,
        "order",
        &["OrderConfirmed", "OrderCancelled"],
    )]
}

fn consumer(stream: &StreamName, aggregate_type: &str, event_types: &[&str]) -> ConsumerSpec {
    event_types.iter().fold(
        ConsumerSpec::new(BoundedContext::Shipping.name(), stream.clone()),
        |spec, event_type| spec.filter(stream.event_type_filter(aggregate_type, event_type)),
    )
}

/// Shipping's reactions: shipments in shipping's store.
#[derive(Debug)]
pub struct Reactions {
    shipments: Repository<Shipment>,
}

impl Reactions {
    pub fn new(store: &Store) -> Self {
        Self {
            shipments: Repository::new(store.clone(), ()),
        }
    }

    async fn schedule(
        &self,
        uow: &mut UnitOfWork,
        confirmed: OrderConfirmed,
        metadata: &Metadata,
    ) -> Result<(), HandlerError> {
        let order_id = confirmed.order_id;
        let command = ShipmentCommand::Schedule {
            order_id,
            address: confirmed.shipping_address,
        };
        self.shipments
            .execute_new(uow, &order_id.to_string(), command, metadata)
            .await
            .map_err(HandlerError::from)?;
        Ok(())
    }

    async fn cancel(
        &self,
        uow: &mut UnitOfWork,
        order_id: OrderId,
        metadata: &Metadata,
    ) -> Result<(), HandlerError> {
        let result = self
            .shipments
            .execute(
                uow,
                &order_id.to_string(),
                ShipmentCommand::Cancel,
                metadata,
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            // The parcel left before the cancellation arrived: permanent, and said plainly in
            // the dead letter.
            Err(CommandError::Rejected(ShipmentError::AlreadyDispatched)) => {
                Err(HandlerError::permanent(format!(
                    "order {order_id} was cancelled, but its shipment had already been \
                     dispatched: the cancellation cannot stop the parcel"
                )))
            }
            Err(e) => Err(HandlerError::from(e)),
        }
    }
}

impl Handler for Reactions {
    async fn handle(&self, uow: &mut UnitOfWork, message: &Received) -> Result<(), HandlerError> {
        let metadata = message.caused_metadata();
        match message.aggregate_type.as_str() {
            "order" => match message.decode::<OrderEvent>()? {
                OrderEvent::OrderConfirmed(confirmed) => {
                    self.schedule(uow, confirmed, &metadata).await
                }
                OrderEvent::OrderCancelled(c) => self.cancel(uow, c.order_id, &metadata).await,
                _ => Ok(()),
            },
            // Not an event shipping reacts to: the consumer's filters keep these away.
            _ => Ok(()),
        }
    }
}
