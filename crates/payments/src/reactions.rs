//! How payments reacts to ordering's and inventory's events.
//!
//! - `OrderPlaced`: request the payment (record the total owed and the token to pay with).
//! - `StockReserved`: capture the payment through the provider → `PaymentCaptured` or
//!   `PaymentDeclined`. A provider that gives no answer (timeout, unavailable, circuit open) is
//!   a transient failure: nothing is committed and the consumer retries with backoff; the
//!   provider's idempotency per order makes the retry safe. A `StockReserved` that arrives
//!   before its `OrderPlaced` (the two come from different streams, through different
//!   consumers) is early: the request is on its way, and the capture is retried soon.
//! - `OrderCancelled`: cancel the payment, a compensation: refund what was captured
//!   (`PaymentRefunded`). A payment not captured as far as payments knows is cancelled at the
//!   provider, which decides per order (ADR 0009): `PaymentVoided` if nothing was taken, or
//!   `PaymentCaptured` then `PaymentRefunded` if a capture racing in the other consumer got
//!   there first (its own commit then conflicts, and its rerun finds the payment refunded).
//! - `OrderRejected`: cancel the payment too, whatever the reason. Ordering ignores a capture
//!   that arrives after it rejected the order: the reservation may have expired while the capture
//!   was being retried (`RejectionReason::PaymentTimedOut`), and the capture then lands on an
//!   order that will never ship. Payments must give that money back, so it refunds a payment
//!   captured late; a payment not captured yet is cancelled at the provider, so that a capture
//!   retried later is declined there; a declined one has nothing to undo.
//!
//! Every reaction is idempotent: the `Payment` aggregate succeeds with no events, and without
//! calling the provider, when the command is already satisfied. A domain refusal (an amount
//! that is not positive, a blank token) is permanent: the message goes to the dead letters,
//! visible, for an operator. A refund that cannot reach the provider is transient: the
//! compensation is retried, then dead-lettered, never lost silently.

use std::sync::Arc;

use bus::{ConsumerSpec, Handler, HandlerError, Received};
use events::inventory::AllocationEvent;
use events::naming::StreamName;
use events::ordering::{OrderEvent, OrderPlaced};
use events::values::OrderId;
use events::{BoundedContext, Metadata};
use eventstore::{CommandError, Repository, Store, UnitOfWork};

use crate::{Payment, PaymentCommand, PaymentError, PaymentProvider};

/// The durable consumers payments reacts through, with their filters:
/// `payments-from-ordering` and `payments-from-inventory`.
pub fn consumers() -> Vec<ConsumerSpec> {
    let ordering = BoundedContext::Ordering.stream();
    let inventory = BoundedContext::Inventory.stream();
    vec![
        consumer(
            &ordering,
            "order",
            &["OrderPlaced", "OrderCancelled", "OrderRejected"],
        ),
        consumer(&inventory, "allocation", &["StockReserved"]),
    ]
}

fn consumer(stream: &StreamName, aggregate_type: &str, event_types: &[&str]) -> ConsumerSpec {
    event_types.iter().fold(
        ConsumerSpec::new(BoundedContext::Payments.name(), stream.clone()),
        |spec, event_type| spec.filter(stream.event_type_filter(aggregate_type, event_type)),
    )
}

/// Payments' reactions: the payments in payments' store, with the provider as their services.
#[derive(Debug)]
pub struct Reactions {
    payments: Repository<Payment>,
}

impl Reactions {
    /// `provider` is the `Payment` aggregate's services: in service, the adapter wrapped in
    /// [`Resilient`](crate::Resilient).
    pub fn new(store: &Store, provider: Arc<dyn PaymentProvider>) -> Self {
        Self {
            payments: Repository::new(store.clone(), provider),
        }
    }

    async fn execute(
        &self,
        uow: &mut UnitOfWork,
        order_id: OrderId,
        command: PaymentCommand,
        metadata: &Metadata,
    ) -> Result<(), HandlerError> {
        self.payments
            .execute(uow, &order_id.to_string(), command, metadata)
            .await
            .map(drop)
            .map_err(failure)
    }

    async fn request(
        &self,
        uow: &mut UnitOfWork,
        placed: OrderPlaced,
        metadata: &Metadata,
    ) -> Result<(), HandlerError> {
        let command = PaymentCommand::Request {
            order_id: placed.order_id,
            amount: placed.total,
            payment_token: placed.payment_token,
        };
        // The payment begins here: no read of the store for it (see `execute_new`).
        self.payments
            .execute_new(uow, &placed.order_id.to_string(), command, metadata)
            .await
            .map(drop)
            .map_err(failure)
    }

    async fn capture(
        &self,
        uow: &mut UnitOfWork,
        order_id: OrderId,
        metadata: &Metadata,
    ) -> Result<(), HandlerError> {
        let id = order_id.to_string();
        match self
            .payments
            .execute(uow, &id, PaymentCommand::Capture, metadata)
            .await
        {
            Ok(_) => Ok(()),
            // Inventory's stream overtook ordering's: the request will come, usually within
            // milliseconds, so try again soon. A request that never comes runs out of attempts
            // and is dead-lettered, visibly.
            Err(CommandError::Rejected(PaymentError::NotRequested)) => {
                Err(HandlerError::early(format!(
                    "stock reserved for order {order_id}, whose OrderPlaced payments has not handled yet"
                )))
            }
            Err(e) => Err(failure(e)),
        }
    }
}

/// A provider that gave no answer, a conflict or a database failure may work later; any other
/// refusal by the aggregate, or an id that cannot be one, never will.
fn failure(error: CommandError<PaymentError>) -> HandlerError {
    match error {
        CommandError::Rejected(e) if e.is_transient() => HandlerError::transient(e.to_string()),
        other => HandlerError::from(other),
    }
}

impl Handler for Reactions {
    async fn handle(&self, uow: &mut UnitOfWork, message: &Received) -> Result<(), HandlerError> {
        let metadata = message.caused_metadata();
        match message.aggregate_type.as_str() {
            "order" => match message.decode::<OrderEvent>()? {
                OrderEvent::OrderPlaced(placed) => self.request(uow, placed, &metadata).await,
                OrderEvent::OrderCancelled(c) => {
                    self.execute(uow, c.order_id, PaymentCommand::Cancel, &metadata)
                        .await
                }
                OrderEvent::OrderRejected(r) => {
                    self.execute(uow, r.order_id, PaymentCommand::Cancel, &metadata)
                        .await
                }
                _ => Ok(()),
            },
            "allocation" => match message.decode::<AllocationEvent>()? {
                AllocationEvent::StockReserved(r) => self.capture(uow, r.order_id, &metadata).await,
                _ => Ok(()),
            },
            // Not an event payments reacts to: the consumers' filters keep these away.
            _ => Ok(()),
        }
    }
}
