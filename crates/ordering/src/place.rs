//! Placing an order: the application service between a shopper's request and the `Order`
//! aggregate. It prices the request from ordering's catalogue replica, then runs `Place`.

use std::collections::HashMap;

use events::Metadata;
use events::ordering::{Address, OrderEvent};
use events::values::{CustomerId, OrderId, Sku};
use eventstore::{CommandError, Committed, Repository};

use crate::catalogue::{CatalogueReplica, ReplicaError};
use crate::{MAX_LINES, Order, OrderCommand, OrderError, RequestedLine};

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
/// `Place` with them (retrying on a concurrency conflict). A SKU the replica does not know is
/// refused (`UnknownSku`) and nothing is appended.
///
/// The order is priced as the replica stands when it is read: a reprice that arrives between
/// the read and the commit applies to the next order.
pub async fn place_order(
    orders: &Repository<Order>,
    catalogue: &CatalogueReplica,
    request: PlaceOrder,
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
    Ok(orders
        .handle(&order_id.to_string(), command, metadata)
        .await?)
}
