use std::collections::BTreeMap;

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use events::inventory::{
    StockEvent, StockItemCommitted, StockItemReleased, StockItemReserved, StockReceived,
};
use events::values::{OrderId, Quantity, Sku};
use serde::{Deserialize, Serialize};

use super::{StockCommand, StockError};

/// The stock of one SKU (aggregate id: the SKU).
///
/// Every unit ever received is in exactly one place: on hand (free to reserve), reserved for
/// one order, or committed (gone with a shipment). So `received = on_hand + reserved_total +
/// committed` always holds, and a reservation never takes more than is on hand.
///
/// The SKU is learnt from the first `StockReceived`, which only `Receive` writes (nothing can
/// be reserved before something is received). The events name the SKU, so the other commands
/// need not repeat it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StockItem {
    /// `None` until the first delivery.
    sku: Option<Sku>,
    on_hand: u32,
    /// One reservation per order (a reservation is never topped up, see `Reserve`).
    reserved: BTreeMap<OrderId, Quantity>,
    committed: u64,
    received: u64,
}

impl StockItem {
    pub fn sku(&self) -> Option<&Sku> {
        self.sku.as_ref()
    }

    /// Units free to reserve.
    pub fn on_hand(&self) -> u32 {
        self.on_hand
    }

    /// Units reserved for an order; 0 when it holds none.
    pub fn reserved_for(&self, order_id: OrderId) -> u32 {
        self.reserved.get(&order_id).map_or(0, |q| q.get())
    }

    /// Units reserved for all orders together.
    pub fn reserved_total(&self) -> u64 {
        self.reserved.values().map(|q| u64::from(q.get())).sum()
    }

    /// Units that left with shipments.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Units ever received.
    pub fn received(&self) -> u64 {
        self.received
    }
}

impl Aggregate for StockItem {
    const TYPE: &'static str = "stock";
    type Command = StockCommand;
    type Event = StockEvent;
    type Error = StockError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            StockCommand::Receive { sku, quantity } => {
                if let Some(expected) = &self.sku
                    && *expected != sku
                {
                    return Err(StockError::WrongSku {
                        expected: expected.clone(),
                        given: sku,
                    });
                }
                let fits = self.on_hand.checked_add(quantity.get()).is_some()
                    && self
                        .received
                        .checked_add(u64::from(quantity.get()))
                        .is_some();
                if !fits {
                    return Err(StockError::TooMuchStock {
                        on_hand: self.on_hand,
                        quantity,
                    });
                }
                sink.write(StockReceived { sku, quantity }.into(), self)
                    .await;
            }
            StockCommand::Reserve { order_id, quantity } => {
                if self.reserved.contains_key(&order_id) {
                    return Ok(());
                }
                // Units on hand imply a delivery, hence a known SKU.
                let sku = match &self.sku {
                    Some(sku) if quantity.get() <= self.on_hand => sku.clone(),
                    _ => {
                        return Err(StockError::InsufficientStock {
                            requested: quantity,
                            available: self.on_hand,
                        });
                    }
                };
                let event = StockItemReserved {
                    sku,
                    order_id,
                    quantity,
                };
                sink.write(event.into(), self).await;
            }
            StockCommand::Release { order_id } => {
                let (Some(sku), Some(&quantity)) = (&self.sku, self.reserved.get(&order_id)) else {
                    return Ok(());
                };
                let event = StockItemReleased {
                    sku: sku.clone(),
                    order_id,
                    quantity,
                };
                sink.write(event.into(), self).await;
            }
            StockCommand::Commit { order_id } => {
                let (Some(sku), Some(&quantity)) = (&self.sku, self.reserved.get(&order_id)) else {
                    return Ok(());
                };
                let event = StockItemCommitted {
                    sku: sku.clone(),
                    order_id,
                    quantity,
                };
                sink.write(event.into(), self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        // Saturating arithmetic: `handle` checked the bounds, and `apply` must never panic.
        match event {
            StockEvent::StockReceived(e) => {
                self.sku.get_or_insert(e.sku);
                self.on_hand = self.on_hand.saturating_add(e.quantity.get());
                self.received = self.received.saturating_add(u64::from(e.quantity.get()));
            }
            StockEvent::StockItemReserved(e) => {
                self.on_hand = self.on_hand.saturating_sub(e.quantity.get());
                self.reserved.insert(e.order_id, e.quantity);
            }
            StockEvent::StockItemReleased(e) => {
                self.reserved.remove(&e.order_id);
                self.on_hand = self.on_hand.saturating_add(e.quantity.get());
            }
            StockEvent::StockItemCommitted(e) => {
                self.reserved.remove(&e.order_id);
                self.committed = self.committed.saturating_add(u64::from(e.quantity.get()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;
    use uuid::Uuid;

    use super::*;

    type Given = TestFramework<StockItem>;

    fn sku() -> Sku {
        "MUG-1".parse().unwrap()
    }

    fn order(n: u128) -> OrderId {
        OrderId(Uuid::from_u128(n))
    }

    fn qty(n: u32) -> Quantity {
        Quantity::try_from(n).unwrap()
    }

    fn receive(n: u32) -> StockCommand {
        StockCommand::Receive {
            sku: sku(),
            quantity: qty(n),
        }
    }

    fn reserve(order_n: u128, n: u32) -> StockCommand {
        StockCommand::Reserve {
            order_id: order(order_n),
            quantity: qty(n),
        }
    }

    fn release(order_n: u128) -> StockCommand {
        StockCommand::Release {
            order_id: order(order_n),
        }
    }

    fn commit(order_n: u128) -> StockCommand {
        StockCommand::Commit {
            order_id: order(order_n),
        }
    }

    fn received(n: u32) -> StockEvent {
        StockReceived {
            sku: sku(),
            quantity: qty(n),
        }
        .into()
    }

    fn reserved(order_n: u128, n: u32) -> StockEvent {
        StockItemReserved {
            sku: sku(),
            order_id: order(order_n),
            quantity: qty(n),
        }
        .into()
    }

    fn released(order_n: u128, n: u32) -> StockEvent {
        StockItemReleased {
            sku: sku(),
            order_id: order(order_n),
            quantity: qty(n),
        }
        .into()
    }

    fn committed(order_n: u128, n: u32) -> StockEvent {
        StockItemCommitted {
            sku: sku(),
            order_id: order(order_n),
            quantity: qty(n),
        }
        .into()
    }

    fn insufficient(requested: u32, available: u32) -> StockError {
        StockError::InsufficientStock {
            requested: qty(requested),
            available,
        }
    }

    /// Accepted commands: (history, command, the events it must write).
    #[test]
    fn commands_that_change_the_stock() {
        let cases = [
            (vec![], receive(5), vec![received(5)]),
            (vec![received(5)], receive(3), vec![received(3)]),
            (vec![received(5)], reserve(1, 2), vec![reserved(1, 2)]),
            (vec![received(5)], reserve(1, 5), vec![reserved(1, 5)]),
            (
                vec![received(5), reserved(1, 2)],
                reserve(2, 3),
                vec![reserved(2, 3)],
            ),
            (
                vec![received(5), reserved(1, 2)],
                release(1),
                vec![released(1, 2)],
            ),
            (
                vec![received(5), reserved(1, 2)],
                commit(1),
                vec![committed(1, 2)],
            ),
            // Released units can be reserved again, by another order or the same one.
            (
                vec![received(2), reserved(1, 2), released(1, 2)],
                reserve(2, 2),
                vec![reserved(2, 2)],
            ),
            (
                vec![received(2), reserved(1, 2), released(1, 2)],
                reserve(1, 1),
                vec![reserved(1, 1)],
            ),
        ];
        for (given, command, expected) in cases {
            Given::with(())
                .given(given)
                .when(command)
                .then_expect_events(expected);
        }
    }

    /// Commands already satisfied, or with nothing to undo: success with no events.
    #[test]
    fn repeated_and_empty_commands_change_nothing() {
        let cases = [
            // The same reservation delivered twice, or with another quantity.
            (vec![received(5), reserved(1, 2)], reserve(1, 2)),
            (vec![received(5), reserved(1, 2)], reserve(1, 4)),
            // Nothing reserved for the order (never, or not any more).
            (vec![], release(1)),
            (vec![received(5)], release(1)),
            (vec![received(5), reserved(2, 1)], release(1)),
            (
                vec![received(5), reserved(1, 2), released(1, 2)],
                release(1),
            ),
            (
                vec![received(5), reserved(1, 2), committed(1, 2)],
                release(1),
            ),
            (vec![], commit(1)),
            (vec![received(5)], commit(1)),
            (
                vec![received(5), reserved(1, 2), committed(1, 2)],
                commit(1),
            ),
            (vec![received(5), reserved(1, 2), released(1, 2)], commit(1)),
        ];
        for (given, command) in cases {
            Given::with(())
                .given(given)
                .when(command)
                .then_expect_events(vec![]);
        }
    }

    #[test]
    fn commands_that_are_refused() {
        let other: Sku = "MUG-2".parse().unwrap();
        let cases = [
            (vec![], reserve(1, 1), insufficient(1, 0)),
            (vec![received(5)], reserve(1, 6), insufficient(6, 5)),
            (
                vec![received(5), reserved(1, 4)],
                reserve(2, 2),
                insufficient(2, 1),
            ),
            (
                vec![received(5), reserved(1, 5), committed(1, 5)],
                reserve(2, 1),
                insufficient(1, 0),
            ),
            (
                vec![received(5)],
                StockCommand::Receive {
                    sku: other.clone(),
                    quantity: qty(1),
                },
                StockError::WrongSku {
                    expected: sku(),
                    given: other,
                },
            ),
            (
                vec![received(u32::MAX)],
                receive(1),
                StockError::TooMuchStock {
                    on_hand: u32::MAX,
                    quantity: qty(1),
                },
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
    fn the_last_unit_goes_to_one_order_only() {
        let mut history = vec![received(1)];
        assert_eq!(step(&mut history, reserve(1, 1)), Ok(1));
        assert_eq!(step(&mut history, reserve(2, 1)), Err(insufficient(1, 0)));
        let item = state(&history);
        assert_eq!(item.reserved_for(order(1)), 1);
        assert_eq!(item.reserved_for(order(2)), 0);
        assert_eq!(item.on_hand(), 0);
    }

    /// Runs a command on the state `history` builds, as the runtime does, and appends what it
    /// wrote. Returns how many events it wrote.
    fn step(history: &mut Vec<StockEvent>, command: StockCommand) -> Result<usize, StockError> {
        let events = Given::with(())
            .given(history.clone())
            .when(command)
            .inspect_result()?;
        let written = events.len();
        history.extend(events);
        Ok(written)
    }

    fn state(history: &[StockEvent]) -> StockItem {
        let mut item = StockItem::default();
        for event in history {
            item.apply(event.clone());
        }
        item
    }

    fn assert_conserved(item: &StockItem, after: &str) {
        assert_eq!(
            item.received(),
            u64::from(item.on_hand()) + item.reserved_total() + item.committed(),
            "units were created or lost after {after}: {item:?}"
        );
    }

    /// Expected outcome of a step: `Ok(events written)` or `Err(error code)`.
    type Outcome = Result<usize, &'static str>;

    /// A command and its expected outcome.
    type Step = (StockCommand, Outcome);

    /// (on hand, reserved in total, committed, received)
    type Figures = (u32, u64, u64, u64);

    fn figures(item: &StockItem) -> Figures {
        (
            item.on_hand(),
            item.reserved_total(),
            item.committed(),
            item.received(),
        )
    }

    #[test]
    fn every_unit_received_is_on_hand_reserved_or_committed() {
        // (name, steps, figures at the end)
        let sequences: [(&str, Vec<Step>, Figures); 5] = [
            (
                "reserve then release",
                vec![
                    (receive(10), Ok(1)),
                    (reserve(1, 4), Ok(1)),
                    (release(1), Ok(1)),
                    (release(1), Ok(0)),
                ],
                (10, 0, 0, 10),
            ),
            (
                "reserve then commit",
                vec![
                    (receive(10), Ok(1)),
                    (reserve(1, 4), Ok(1)),
                    (commit(1), Ok(1)),
                    (commit(1), Ok(0)),
                    (release(1), Ok(0)),
                ],
                (6, 0, 4, 10),
            ),
            (
                "several orders, one refused, then a delivery",
                vec![
                    (receive(5), Ok(1)),
                    (reserve(1, 3), Ok(1)),
                    (reserve(2, 3), Err("insufficient_stock")),
                    (reserve(3, 2), Ok(1)),
                    (commit(1), Ok(1)),
                    (receive(4), Ok(1)),
                    (reserve(2, 3), Ok(1)),
                    (release(3), Ok(1)),
                ],
                (3, 3, 3, 9),
            ),
            (
                "a repeated reservation does not take more",
                vec![
                    (receive(3), Ok(1)),
                    (reserve(1, 2), Ok(1)),
                    (reserve(1, 2), Ok(0)),
                    (reserve(1, 1), Ok(0)),
                ],
                (1, 2, 0, 3),
            ),
            (
                "everything committed, nothing left to reserve",
                vec![
                    (receive(2), Ok(1)),
                    (reserve(1, 1), Ok(1)),
                    (reserve(2, 1), Ok(1)),
                    (commit(1), Ok(1)),
                    (commit(2), Ok(1)),
                    (reserve(3, 1), Err("insufficient_stock")),
                ],
                (0, 0, 2, 2),
            ),
        ];
        for (name, steps, end) in sequences {
            let mut history = Vec::new();
            for (i, (command, expected)) in steps.into_iter().enumerate() {
                let after = format!("step {i} ({command:?}) of {name:?}");
                let outcome = step(&mut history, command).map_err(|e| e.code());
                assert_eq!(outcome, expected, "{after}");
                assert_conserved(&state(&history), &after);
            }
            assert_eq!(
                figures(&state(&history)),
                end,
                "figures at the end of {name:?}"
            );
        }
    }

    #[test]
    fn a_long_mixed_history_never_oversells() {
        // A fixed pseudo-random walk (a linear congruential generator), so failures replay.
        let mut seed: u64 = 0x5eed;
        let mut next = |bound: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % bound
        };
        let mut history = Vec::new();
        // (reservations refused, reservations made, releases and commits that moved units)
        let mut seen = (0, 0, 0);
        for i in 0..300 {
            let before = state(&history);
            let order_n = u128::from(next(4));
            let n = u32::try_from(next(6)).unwrap() + 1;
            let command = match next(4) {
                0 => receive(n),
                1 => reserve(order_n, n),
                2 => release(order_n),
                _ => commit(order_n),
            };
            let after = format!("step {i} ({command:?})");
            let outcome = step(&mut history, command.clone());
            if let StockCommand::Reserve { order_id, quantity } = command {
                let refused =
                    before.reserved_for(order_id) == 0 && quantity.get() > before.on_hand();
                assert_eq!(
                    outcome.is_err(),
                    refused,
                    "{after}: a reservation is refused exactly when it exceeds what is on hand"
                );
                match outcome {
                    Err(_) => seen.0 += 1,
                    Ok(1) => seen.1 += 1,
                    Ok(_) => {}
                }
            } else {
                assert!(outcome.is_ok(), "{after}: {outcome:?}");
                if !matches!(command, StockCommand::Receive { .. }) && outcome == Ok(1) {
                    seen.2 += 1;
                }
            }
            assert_conserved(&state(&history), &after);
        }
        // The walk is only worth something if it went down every path.
        assert!(
            seen.0 > 0 && seen.1 > 0 && seen.2 > 0,
            "paths taken: {seen:?}"
        );
    }

    #[test]
    fn the_state_survives_serialisation() {
        let item = state(&[received(5), reserved(1, 2), reserved(2, 1), committed(2, 1)]);
        let json = serde_json::to_string(&item).unwrap();
        let back: StockItem = serde_json::from_str(&json).unwrap();
        assert_eq!(back.sku(), Some(&sku()));
        assert_eq!(back.reserved_for(order(1)), 2);
        assert_eq!(
            (
                back.on_hand(),
                back.reserved_total(),
                back.committed(),
                back.received()
            ),
            (2, 2, 1, 5)
        );
    }

    #[test]
    fn error_codes_are_stable() {
        let cases = [
            (insufficient(1, 0), "insufficient_stock"),
            (
                StockError::TooMuchStock {
                    on_hand: 0,
                    quantity: qty(1),
                },
                "too_much_stock",
            ),
            (
                StockError::WrongSku {
                    expected: sku(),
                    given: sku(),
                },
                "wrong_sku",
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "code of {error:?}");
        }
        assert_eq!(
            insufficient(3, 1).to_string(),
            "cannot reserve 3 units: 1 available"
        );
    }
}
