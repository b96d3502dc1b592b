use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use events::inventory::{
    AllocatedLine, AllocationEvent, StockCommitted, StockRejected, StockReleased, StockReserved,
};
use events::values::OrderId;
use serde::{Deserialize, Serialize};

use super::{AllocationCommand, AllocationError};

/// Where an allocation stands: `Undecided` → `Reserved` → `Released` or `Committed`, or
/// `Undecided` → `Rejected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocationStatus {
    /// Nothing recorded for the order yet.
    Undecided,
    Reserved,
    Rejected,
    Released,
    Committed,
}

/// What inventory did for one order (aggregate id: the order id).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Allocation {
    state: State,
}

/// The states hold exactly what each needs, so a reserved allocation always knows its order,
/// lines and published horizon.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
enum State {
    #[default]
    Undecided,
    Reserved(Reservation),
    Rejected {
        order_id: OrderId,
    },
    Released(Reservation),
    Committed(Reservation),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reservation {
    order_id: OrderId,
    lines: Vec<AllocatedLine>,
    expires_at: DateTime<Utc>,
}

impl Allocation {
    pub fn status(&self) -> AllocationStatus {
        match self.state {
            State::Undecided => AllocationStatus::Undecided,
            State::Reserved(_) => AllocationStatus::Reserved,
            State::Rejected { .. } => AllocationStatus::Rejected,
            State::Released(_) => AllocationStatus::Released,
            State::Committed(_) => AllocationStatus::Committed,
        }
    }

    pub fn order_id(&self) -> Option<OrderId> {
        match &self.state {
            State::Undecided => None,
            State::Rejected { order_id } => Some(*order_id),
            State::Reserved(r) | State::Released(r) | State::Committed(r) => Some(r.order_id),
        }
    }

    fn reservation(&self) -> Option<&Reservation> {
        match &self.state {
            State::Reserved(r) | State::Released(r) | State::Committed(r) => Some(r),
            State::Undecided | State::Rejected { .. } => None,
        }
    }

    /// The lines that were reserved (kept after a release or commit: they name the stock
    /// items the order touched); empty if nothing ever was.
    pub fn lines(&self) -> &[AllocatedLine] {
        self.reservation().map_or(&[], |r| r.lines.as_slice())
    }

    /// The informational "held at least until" time published with the reservation
    /// (`StockReserved.expires_at`), if stock was ever reserved. Inventory does not act on it:
    /// ordering owns the payment deadline and rejects the order when it passes.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.reservation().map(|r| r.expires_at)
    }
}

fn check_lines(lines: &[AllocatedLine]) -> Result<(), AllocationError> {
    if lines.is_empty() {
        return Err(AllocationError::EmptyAllocation);
    }
    // Stock items keep one reservation per order: two lines of one SKU would record more
    // than was reserved, and a release would give back less than the lines say.
    let mut seen = BTreeSet::new();
    for line in lines {
        if !seen.insert(&line.sku) {
            return Err(AllocationError::DuplicateSku {
                sku: line.sku.clone(),
            });
        }
    }
    Ok(())
}

impl Aggregate for Allocation {
    const TYPE: &'static str = "allocation";
    type Command = AllocationCommand;
    type Event = AllocationEvent;
    type Error = AllocationError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event: AllocationEvent = match command {
            AllocationCommand::RecordReserved {
                order_id,
                lines,
                expires_at,
            } => {
                check_lines(&lines)?;
                match &self.state {
                    State::Undecided => {}
                    State::Reserved(r) if r.order_id == order_id => return Ok(()),
                    _ => return Err(AllocationError::AlreadyDecided),
                }
                StockReserved {
                    order_id,
                    lines,
                    expires_at,
                }
                .into()
            }
            AllocationCommand::RecordRejected {
                order_id,
                shortages,
            } => {
                if shortages.is_empty() {
                    return Err(AllocationError::EmptyShortages);
                }
                match &self.state {
                    State::Undecided => {}
                    State::Rejected { order_id: rejected } if *rejected == order_id => {
                        return Ok(());
                    }
                    _ => return Err(AllocationError::AlreadyDecided),
                }
                StockRejected {
                    order_id,
                    shortages,
                }
                .into()
            }
            AllocationCommand::Release { reason } => match &self.state {
                State::Reserved(r) => StockReleased {
                    order_id: r.order_id,
                    reason,
                }
                .into(),
                State::Committed(_) => return Err(AllocationError::AlreadyCommitted),
                // Nothing is held: releasing again, or after a rejection, is harmless.
                State::Released(_) | State::Rejected { .. } | State::Undecided => return Ok(()),
            },
            AllocationCommand::Commit => match &self.state {
                State::Reserved(r) => StockCommitted {
                    order_id: r.order_id,
                }
                .into(),
                State::Committed(_) => return Ok(()),
                State::Released(_) => return Err(AllocationError::AlreadyReleased),
                State::Rejected { .. } | State::Undecided => {
                    return Err(AllocationError::NotReserved);
                }
            },
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let state = std::mem::take(&mut self.state);
        self.state = match (event, state) {
            (AllocationEvent::StockReserved(e), _) => State::Reserved(Reservation {
                order_id: e.order_id,
                lines: e.lines,
                expires_at: e.expires_at,
            }),
            (AllocationEvent::StockRejected(e), _) => State::Rejected {
                order_id: e.order_id,
            },
            (AllocationEvent::StockReleased(_), State::Reserved(r)) => State::Released(r),
            (AllocationEvent::StockCommitted(_), State::Reserved(r)) => State::Committed(r),
            // `handle` writes no other transition; keep the state rather than panic.
            (_, state) => state,
        };
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;
    use events::inventory::{ReleaseReason, Shortage};
    use events::values::{Quantity, Sku};
    use uuid::Uuid;

    use super::*;

    type Given = TestFramework<Allocation>;

    fn order() -> OrderId {
        OrderId(Uuid::from_u128(1))
    }

    fn other_order() -> OrderId {
        OrderId(Uuid::from_u128(2))
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    /// The deadline of the reservation in `reserved()`.
    fn deadline() -> DateTime<Utc> {
        at(900)
    }

    fn line(sku: &str, n: u32) -> AllocatedLine {
        AllocatedLine {
            sku: sku.parse().unwrap(),
            quantity: Quantity::try_from(n).unwrap(),
        }
    }

    fn lines() -> Vec<AllocatedLine> {
        vec![line("MUG-1", 2), line("TEE-M", 1)]
    }

    fn shortages() -> Vec<Shortage> {
        vec![Shortage {
            sku: "MUG-1".parse().unwrap(),
            requested: Quantity::try_from(3).unwrap(),
            available: 1,
        }]
    }

    fn record_reserved(order_id: OrderId, lines: Vec<AllocatedLine>) -> AllocationCommand {
        AllocationCommand::RecordReserved {
            order_id,
            lines,
            expires_at: deadline(),
        }
    }

    fn record_rejected(order_id: OrderId, shortages: Vec<Shortage>) -> AllocationCommand {
        AllocationCommand::RecordRejected {
            order_id,
            shortages,
        }
    }

    fn release(reason: ReleaseReason) -> AllocationCommand {
        AllocationCommand::Release { reason }
    }

    fn reserved() -> AllocationEvent {
        StockReserved {
            order_id: order(),
            lines: lines(),
            expires_at: deadline(),
        }
        .into()
    }

    fn rejected() -> AllocationEvent {
        StockRejected {
            order_id: order(),
            shortages: shortages(),
        }
        .into()
    }

    fn released(reason: ReleaseReason) -> AllocationEvent {
        StockReleased {
            order_id: order(),
            reason,
        }
        .into()
    }

    fn committed() -> AllocationEvent {
        StockCommitted { order_id: order() }.into()
    }

    /// The histories of each status, by name for failure messages.
    fn undecided() -> Vec<AllocationEvent> {
        vec![]
    }
    fn is_reserved() -> Vec<AllocationEvent> {
        vec![reserved()]
    }
    fn is_rejected() -> Vec<AllocationEvent> {
        vec![rejected()]
    }
    fn is_released() -> Vec<AllocationEvent> {
        vec![reserved(), released(ReleaseReason::OrderCancelled)]
    }
    fn is_committed() -> Vec<AllocationEvent> {
        vec![reserved(), committed()]
    }

    /// Accepted commands: (history, command, the events it must write; none if already done).
    #[test]
    fn commands_that_are_accepted() {
        let cases = [
            (
                undecided(),
                record_reserved(order(), lines()),
                vec![reserved()],
            ),
            (is_reserved(), record_reserved(order(), lines()), vec![]),
            (
                undecided(),
                record_rejected(order(), shortages()),
                vec![rejected()],
            ),
            (is_rejected(), record_rejected(order(), shortages()), vec![]),
            (
                is_reserved(),
                release(ReleaseReason::OrderCancelled),
                vec![released(ReleaseReason::OrderCancelled)],
            ),
            (
                is_reserved(),
                release(ReleaseReason::PaymentDeclined),
                vec![released(ReleaseReason::PaymentDeclined)],
            ),
            (
                is_released(),
                release(ReleaseReason::PaymentDeclined),
                vec![],
            ),
            (
                is_rejected(),
                release(ReleaseReason::OrderCancelled),
                vec![],
            ),
            (undecided(), release(ReleaseReason::OrderCancelled), vec![]),
            (
                is_reserved(),
                release(ReleaseReason::Expired),
                vec![released(ReleaseReason::Expired)],
            ),
            (is_reserved(), AllocationCommand::Commit, vec![committed()]),
            (is_committed(), AllocationCommand::Commit, vec![]),
        ];
        for (given, command, expected) in cases {
            Given::with(())
                .given(given)
                .when(command)
                .then_expect_events(expected);
        }
    }

    #[test]
    fn commands_that_are_refused() {
        let cases = [
            // A decision is taken once.
            (
                is_reserved(),
                record_reserved(other_order(), lines()),
                AllocationError::AlreadyDecided,
            ),
            (
                is_rejected(),
                record_reserved(order(), lines()),
                AllocationError::AlreadyDecided,
            ),
            (
                is_released(),
                record_reserved(order(), lines()),
                AllocationError::AlreadyDecided,
            ),
            (
                is_committed(),
                record_reserved(order(), lines()),
                AllocationError::AlreadyDecided,
            ),
            (
                is_reserved(),
                record_rejected(order(), shortages()),
                AllocationError::AlreadyDecided,
            ),
            (
                is_rejected(),
                record_rejected(other_order(), shortages()),
                AllocationError::AlreadyDecided,
            ),
            (
                is_released(),
                record_rejected(order(), shortages()),
                AllocationError::AlreadyDecided,
            ),
            (
                is_committed(),
                record_rejected(order(), shortages()),
                AllocationError::AlreadyDecided,
            ),
            // Malformed decisions.
            (
                undecided(),
                record_reserved(order(), vec![]),
                AllocationError::EmptyAllocation,
            ),
            (
                undecided(),
                record_reserved(
                    order(),
                    vec![line("MUG-1", 1), line("TEE-M", 1), line("MUG-1", 2)],
                ),
                AllocationError::DuplicateSku {
                    sku: "MUG-1".parse::<Sku>().unwrap(),
                },
            ),
            (
                undecided(),
                record_rejected(order(), vec![]),
                AllocationError::EmptyShortages,
            ),
            // What happens to a reservation happens once.
            (
                is_committed(),
                release(ReleaseReason::OrderCancelled),
                AllocationError::AlreadyCommitted,
            ),
            (
                is_released(),
                AllocationCommand::Commit,
                AllocationError::AlreadyReleased,
            ),
            (
                undecided(),
                AllocationCommand::Commit,
                AllocationError::NotReserved,
            ),
            (
                is_rejected(),
                AllocationCommand::Commit,
                AllocationError::NotReserved,
            ),
        ];
        for (given, command, error) in cases {
            Given::with(())
                .given(given)
                .when(command)
                .then_expect_error(error);
        }
    }

    #[test]
    fn the_state_shows_the_status_lines_and_deadline() {
        let cases = [
            (undecided(), AllocationStatus::Undecided, None, vec![], None),
            (
                is_reserved(),
                AllocationStatus::Reserved,
                Some(order()),
                lines(),
                Some(deadline()),
            ),
            (
                is_rejected(),
                AllocationStatus::Rejected,
                Some(order()),
                vec![],
                None,
            ),
            (
                is_released(),
                AllocationStatus::Released,
                Some(order()),
                lines(),
                Some(deadline()),
            ),
            (
                is_committed(),
                AllocationStatus::Committed,
                Some(order()),
                lines(),
                Some(deadline()),
            ),
        ];
        for (history, status, order_id, lines, expires_at) in cases {
            let mut allocation = Allocation::default();
            for event in history {
                allocation.apply(event);
            }
            assert_eq!(allocation.status(), status);
            assert_eq!(allocation.order_id(), order_id, "order of {status:?}");
            assert_eq!(allocation.lines(), lines.as_slice(), "lines of {status:?}");
            assert_eq!(
                allocation.expires_at(),
                expires_at,
                "deadline of {status:?}"
            );
        }
    }

    #[test]
    fn error_codes_are_stable() {
        let cases = [
            (AllocationError::AlreadyDecided, "already_decided"),
            (AllocationError::EmptyAllocation, "empty_allocation"),
            (
                AllocationError::DuplicateSku {
                    sku: "MUG-1".parse().unwrap(),
                },
                "duplicate_sku",
            ),
            (AllocationError::EmptyShortages, "empty_shortages"),
            (AllocationError::AlreadyCommitted, "already_committed"),
            (AllocationError::AlreadyReleased, "already_released"),
            (AllocationError::NotReserved, "not_reserved"),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "code of {error:?}");
        }
    }
}
