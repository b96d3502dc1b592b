//! What operators ask of a shipment (through the gateway): dispatch it, then deliver it.
//!
//! Thin application functions: each runs one command on the order's `Shipment` (its id is the
//! order id) in its own unit of work and commits it. A refusal comes back as
//! [`CommandError::Rejected`] with the [`ShipmentError`] (whose `code()` the gateway can show),
//! and nothing is appended.

use events::Metadata;
use events::shipping::ShipmentEvent;
use events::values::OrderId;
use eventstore::{CommandError, Committed, Repository};

use crate::{Shipment, ShipmentCommand, ShipmentError};

/// The order's parcel left the warehouse, with its tracking number if it has one.
///
/// Refused unless the shipment is scheduled (`NotScheduled`, `AlreadyDispatched`,
/// `Cancelled`), or if the tracking number is malformed (`InvalidTrackingNumber`).
pub async fn dispatch(
    repo: &Repository<Shipment>,
    order_id: OrderId,
    tracking_number: Option<String>,
    metadata: &Metadata,
) -> Result<Committed<ShipmentEvent>, CommandError<ShipmentError>> {
    let command = ShipmentCommand::Dispatch { tracking_number };
    repo.handle(&order_id.to_string(), command, metadata).await
}

/// The order's parcel reached the customer.
///
/// Refused unless the shipment is dispatched (`NotScheduled`, `NotDispatched`,
/// `AlreadyDelivered`, `Cancelled`).
pub async fn deliver(
    repo: &Repository<Shipment>,
    order_id: OrderId,
    metadata: &Metadata,
) -> Result<Committed<ShipmentEvent>, CommandError<ShipmentError>> {
    repo.handle(&order_id.to_string(), ShipmentCommand::Deliver, metadata)
        .await
}
