use chrono::{DateTime, Utc};
use events::inventory::{AllocatedLine, ReleaseReason, Shortage};
use events::values::OrderId;

/// What can happen to an order's allocation.
///
/// `RecordReserved` and `RecordRejected` record a decision the service made on the stock items
/// in the same unit of work; the others follow the order's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocationCommand {
    /// Every line was reserved; `expires_at` is informational (see the reactions). One line
    /// per SKU.
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
    /// Give the reservation back (the order was cancelled, or rejected: its payment declined
    /// or timed out).
    Release { reason: ReleaseReason },
    /// The order was dispatched: the reserved units are gone for good.
    Commit,
}
