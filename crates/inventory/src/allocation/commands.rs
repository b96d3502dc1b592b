use chrono::{DateTime, Utc};
use events::inventory::{AllocatedLine, ReleaseReason, Shortage};
use events::values::OrderId;

/// What can happen to an order's allocation.
///
/// `RecordReserved` and `RecordRejected` record a decision the service made on the stock items
/// in the same unit of work; the others follow the order's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocationCommand {
    /// Every line was reserved, until `expires_at`. One line per SKU.
    RecordReserved {
        order_id: OrderId,
        lines: Vec<AllocatedLine>,
        expires_at: DateTime<Utc>,
    },
    /// At least one line could not be reserved, so nothing was.
    RecordRejected {
        order_id: OrderId,
        shortages: Vec<Shortage>,
    },
    /// Give the reservation back (the order was cancelled or its payment declined).
    Release { reason: ReleaseReason },
    /// The deadline ticker fired: release the reservation if it is due.
    Expire { now: DateTime<Utc> },
    /// The order was dispatched: the reserved units are gone for good.
    Commit,
}
