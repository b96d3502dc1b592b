//! Placing an order: the application service between a shopper's request and the `Order`
//! aggregate. It prices the request from ordering's catalogue replica, then runs `Place` and
//! schedules the order's payment deadline ([`PAYMENT_TIMEOUT`]) in the same unit of work.

use std::collections::HashMap;

use chrono::{SubsecRound, Utc};
use events::Metadata;
use events::ordering::{Address, OrderEvent};
use events::values::{CustomerId, OrderId, Sku};
use eventstore::{CommandError, Committed, Repository, UnitOfWork};

use crate::catalogue::{CatalogueReplica, ReplicaError};
use crate::{MAX_LINES, Order, OrderCommand, OrderError, RequestedLine};

/// The deadline kind of an order's payment: its key is the order id. Scheduled with
/// `OrderPlaced`; when it fires on an order still `Placed`, the order is rejected
/// `PaymentTimedOut` (see [`crate::reactions`]).
pub const PAYMENT_TIMEOUT: &str = "payment-timeout";

/// How many times a command that keeps conflicting is tried, as [`Repository::handle`] does.
pub(crate) const MAX_ATTEMPTS: u32 = 5;

/// A shopper's order as it arrives: lines without prices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceOrder {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub lines: Vec<RequestedLine>,
    pub shipping_address: Address,
    /// Opaque; passed on to payments.
    pub payment_token: String,
}

/// Why an order was not placed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// The aggregate refused the order, or the store failed.
    #[error(transparent)]
    Command(#[from] CommandError<OrderError>),
    /// The catalogue replica could not be read.
    #[error(transparent)]
    Catalogue(#[from] ReplicaError),
}

impl PlaceError {
    /// The aggregate's refusal, if that is what this is: the shopper's request is at fault.
    pub fn rejection(&self) -> Option<&OrderError> {
        match self {
            PlaceError::Command(CommandError::Rejected(e)) => Some(e),
            _ => None,
        }
    }
}

/// Places an order: reads the current prices of the requested SKUs from the replica, then runs
/// `Place` with them and schedules the payment deadline, `payment_timeout` from now, in the
/// same commit. The order is not read from the store first ([`Repository::execute_new`]): an
/// order placed before is found by the conflict at commit, and the retry reads it and is
/// refused `AlreadyPlaced`. A SKU the replica does not know is refused (`UnknownSku`) and
/// nothing is appended.
///
/// The order is priced as the replica stands when it is read: a reprice that arrives between
/// the read and the commit applies to the next order.
pub async fn place_order(
    orders: &Repository<Order>,
    catalogue: &CatalogueReplica,
    request: PlaceOrder,
    payment_timeout: chrono::Duration,
    metadata: &Metadata,
) -> Result<Committed<OrderEvent>, PlaceError> {
    let PlaceOrder {
        order_id,
        customer_id,
        lines,
        shipping_address,
        payment_token,
    } = request;
    // The aggregate refuses too many lines before it looks at a price: do not make the
    // database look up an unbounded list first.
    let prices = if lines.len() <= MAX_LINES {
        let skus: Vec<Sku> = lines.iter().map(|line| line.sku.clone()).collect();
        catalogue.prices(&skus).await?
    } else {
        HashMap::new()
    };
    let command = OrderCommand::Place {
        order_id,
        customer_id,
        lines,
        shipping_address,
        payment_token,
        prices,
    };
    let id = order_id.to_string();
    for _ in 0..MAX_ATTEMPTS {
        let mut uow = UnitOfWork::new(orders.store());
        let events = orders
            .execute_new(&mut uow, &id, command.clone(), metadata)
            .await?;
        if !events.is_empty() {
            // Microseconds, as PostgreSQL keeps the deadline: the two must compare equal.
            let due_at = (Utc::now() + payment_timeout).trunc_subsecs(6);
            uow.schedule_deadline(PAYMENT_TIMEOUT, &id, due_at, serde_json::json!({}));
        }
        let (_, version) = orders
            .current(&uow, &id)
            .await
            .map_err(CommandError::Store)?;
        match uow.commit().await {
            Ok(position) => {
                return Ok(Committed {
                    position,
                    version,
                    events,
                });
            }
            Err(e) if e.is_conflict() => {
                tracing::debug!(order = %id, "concurrency conflict placing the order, retrying");
            }
            Err(e) => return Err(CommandError::Store(e).into()),
        }
    }
    Err(CommandError::Conflict {
        attempts: MAX_ATTEMPTS,
    }
    .into())
}
