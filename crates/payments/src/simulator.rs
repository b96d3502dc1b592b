//! The built-in payment provider: a deterministic simulator keyed by test tokens, so that every
//! payment path can be driven from the API.

use std::collections::{HashMap, VecDeque};
use std::future::ready;
use std::sync::{Mutex, PoisonError};

use events::payments::DeclineCode;
use events::values::{Money, OrderId};

use crate::provider::{
    CancelOutcome, CaptureOutcome, PaymentProvider, ProviderError, ProviderFuture,
};

/// Captures succeed, with the reference `sim-cap-<order id>`.
pub const TOKEN_SUCCESS: &str = "tok_success";
/// Captures are declined ("card declined").
pub const TOKEN_DECLINE: &str = "tok_decline";
/// Captures time out, every time.
pub const TOKEN_TIMEOUT: &str = "tok_timeout";
/// The first [`FLAKY_FAILURES`] captures of an order fail as unavailable, later ones succeed.
pub const TOKEN_FLAKY: &str = "tok_flaky";
/// How many captures of an order fail before a flaky token succeeds.
pub const FLAKY_FAILURES: u32 = 2;

/// How many orders a [`Simulator`] remembers by default.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// The simulator. Any token not listed above is declined ("unknown test token"); refunds always
/// succeed, with the reference `sim-ref-<order id>`. It answers at once: timing, retries and
/// circuit breaking belong to the wrapper around the port ([`Resilient`](crate::Resilient)),
/// not to an adapter.
///
/// Like a real provider, it keeps what it did for each order, and decides captures and cancels
/// of one order one at a time (under one lock): a cancel after a capture refunds it
/// ([`CancelOutcome::Refunded`]); a cancel before any capture voids the order
/// ([`CancelOutcome::Voided`]) and every later capture for it is declined ("voided").
///
/// Unlike a real provider, it runs in the payments process, so what it keeps is bounded: the
/// last `capacity` orders it was called for (default [`DEFAULT_CAPACITY`], a few MiB), the
/// oldest forgotten first. That is far more than are ever undecided at once (payments captures
/// an order seconds after its stock is reserved, and records the outcome), and what comes
/// later needs no memory: references are made from the order id, and payments refunds a
/// capture it recorded without asking what the provider remembers. A forgotten order is one
/// the simulator was never called for.
#[derive(Debug)]
pub struct Simulator {
    orders: Mutex<Orders>,
}

/// The orders remembered, and in which order they came.
#[derive(Debug)]
struct Orders {
    by_id: HashMap<OrderId, OrderState>,
    arrival: VecDeque<OrderId>,
    capacity: usize,
}

/// What the simulator did for one order, and how often it was called for it.
#[derive(Debug, Default, Clone)]
struct OrderState {
    capture_calls: u32,
    refund_calls: u32,
    cancel_calls: u32,
    /// The money was taken (the reference is `sim-cap-<order id>`).
    captured: bool,
    /// The capture was paid back (the reference is `sim-ref-<order id>`).
    refunded: bool,
    /// Cancelled before any capture: no capture will ever be made.
    voided: bool,
}

fn capture_reference(order_id: OrderId) -> String {
    format!("sim-cap-{order_id}")
}

fn refund_reference(order_id: OrderId) -> String {
    format!("sim-ref-{order_id}")
}

impl Default for Simulator {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl Simulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// A simulator that remembers the last `capacity` orders (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            orders: Mutex::new(Orders {
                by_id: HashMap::new(),
                arrival: VecDeque::new(),
                capacity: capacity.max(1),
            }),
        }
    }

    /// How many capture calls the order received (for tests: a capture must not be repeated).
    pub fn capture_calls(&self, order_id: OrderId) -> u32 {
        self.read_order(order_id, |o| o.capture_calls)
    }

    /// How many refund calls the order received (cancels not included).
    pub fn refund_calls(&self, order_id: OrderId) -> u32 {
        self.read_order(order_id, |o| o.refund_calls)
    }

    /// How many cancel calls the order received.
    pub fn cancel_calls(&self, order_id: OrderId) -> u32 {
        self.read_order(order_id, |o| o.cancel_calls)
    }

    /// Whether money is taken for the order and not paid back, at the provider.
    pub fn holds_money(&self, order_id: OrderId) -> bool {
        self.read_order(order_id, |o| o.captured && !o.refunded)
    }

    /// How many orders it remembers.
    pub fn remembered(&self) -> usize {
        self.lock().by_id.len()
    }

    /// A panic elsewhere while holding the lock cannot leave a state half-written (each
    /// decision is made before it is written), so a poisoned lock is still usable.
    fn lock(&self) -> std::sync::MutexGuard<'_, Orders> {
        self.orders.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on what is known of the order, without remembering it.
    fn read_order<T>(&self, order_id: OrderId, f: impl FnOnce(&OrderState) -> T) -> T {
        match self.lock().by_id.get(&order_id) {
            Some(order) => f(order),
            None => f(&OrderState::default()),
        }
    }

    /// Runs `f` on the order's state, under the lock: one decision per order at a time. An
    /// order not remembered yet is, and the oldest is forgotten if that makes one too many.
    fn with_order<T>(&self, order_id: OrderId, f: impl FnOnce(&mut OrderState) -> T) -> T {
        let mut orders = self.lock();
        let Orders {
            by_id,
            arrival,
            capacity,
        } = &mut *orders;
        if !by_id.contains_key(&order_id) {
            if by_id.len() >= *capacity
                && let Some(oldest) = arrival.pop_front()
            {
                by_id.remove(&oldest);
            }
            arrival.push_back(order_id);
        }
        f(by_id.entry(order_id).or_default())
    }

    fn decide_capture(
        &self,
        order_id: OrderId,
        token: &str,
    ) -> Result<CaptureOutcome, ProviderError> {
        self.with_order(order_id, |order| {
            order.capture_calls += 1;
            let attempt = order.capture_calls;
            let declined = |code: DeclineCode, detail: &str| {
                Ok(CaptureOutcome::Declined {
                    code,
                    detail: detail.to_owned(),
                })
            };
            // The same reference for every capture of an order: the port's idempotency promise.
            if order.captured {
                return Ok(CaptureOutcome::Captured {
                    reference: capture_reference(order_id),
                });
            }
            if order.voided {
                return declined(DeclineCode::Voided, "voided");
            }
            let mut capture = || {
                order.captured = true;
                Ok(CaptureOutcome::Captured {
                    reference: capture_reference(order_id),
                })
            };
            match token {
                TOKEN_SUCCESS => capture(),
                TOKEN_DECLINE => declined(DeclineCode::Refused, "card declined"),
                TOKEN_TIMEOUT => Err(ProviderError::Timeout),
                TOKEN_FLAKY if attempt <= FLAKY_FAILURES => Err(ProviderError::Unavailable(
                    format!("simulated transient failure {attempt} of {FLAKY_FAILURES}"),
                )),
                TOKEN_FLAKY => capture(),
                _ => declined(DeclineCode::InvalidToken, "unknown test token"),
            }
        })
    }

    fn decide_refund(&self, order_id: OrderId) -> String {
        self.with_order(order_id, |order| {
            order.refund_calls += 1;
            order.refunded = true;
            refund_reference(order_id)
        })
    }

    fn decide_cancel(&self, order_id: OrderId) -> CancelOutcome {
        self.with_order(order_id, |order| {
            order.cancel_calls += 1;
            if order.captured {
                order.refunded = true;
                CancelOutcome::Refunded {
                    capture_reference: capture_reference(order_id),
                    refund_reference: refund_reference(order_id),
                }
            } else {
                order.voided = true;
                CancelOutcome::Voided
            }
        })
    }
}

impl PaymentProvider for Simulator {
    fn capture<'a>(
        &'a self,
        order_id: OrderId,
        _amount: Money,
        token: &'a str,
    ) -> ProviderFuture<'a, CaptureOutcome> {
        Box::pin(ready(self.decide_capture(order_id, token)))
    }

    fn refund<'a>(
        &'a self,
        order_id: OrderId,
        _amount: Money,
        _reference: &'a str,
    ) -> ProviderFuture<'a, String> {
        Box::pin(ready(Ok(self.decide_refund(order_id))))
    }

    fn cancel(&self, order_id: OrderId, _amount: Money) -> ProviderFuture<'_, CancelOutcome> {
        Box::pin(ready(Ok(self.decide_cancel(order_id))))
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn eur(amount_minor: i64) -> Money {
        Money::new(amount_minor, "EUR".parse().unwrap())
    }

    fn order(n: u128) -> OrderId {
        OrderId(Uuid::from_u128(n))
    }

    #[tokio::test]
    async fn each_test_token_drives_its_path() {
        let sim = Simulator::new();
        let captured = |id: OrderId| {
            Ok(CaptureOutcome::Captured {
                reference: format!("sim-cap-{id}"),
            })
        };
        let declined = |code: DeclineCode, detail: &str| {
            Ok(CaptureOutcome::Declined {
                code,
                detail: detail.to_owned(),
            })
        };
        assert_eq!(
            sim.capture(order(1), eur(100), TOKEN_SUCCESS).await,
            captured(order(1))
        );
        assert_eq!(
            sim.capture(order(2), eur(100), TOKEN_DECLINE).await,
            declined(DeclineCode::Refused, "card declined")
        );
        assert_eq!(
            sim.capture(order(3), eur(100), "tok_nonsense").await,
            declined(DeclineCode::InvalidToken, "unknown test token")
        );
        for _ in 0..3 {
            assert_eq!(
                sim.capture(order(4), eur(100), TOKEN_TIMEOUT).await,
                Err(ProviderError::Timeout),
                "a timeout token never recovers"
            );
        }
        assert!(sim.holds_money(order(1)));
        for id in [order(2), order(3), order(4)] {
            assert!(!sim.holds_money(id), "{id}");
        }
    }

    #[tokio::test]
    async fn a_flaky_token_fails_twice_per_order_then_captures() {
        let sim = Simulator::new();
        for id in [order(1), order(2)] {
            for attempt in 1..=2 {
                let result = sim.capture(id, eur(100), TOKEN_FLAKY).await;
                assert!(
                    matches!(result, Err(ProviderError::Unavailable(_))),
                    "attempt {attempt} for {id}: {result:?}"
                );
            }
            let expected = Ok(CaptureOutcome::Captured {
                reference: format!("sim-cap-{id}"),
            });
            assert_eq!(sim.capture(id, eur(100), TOKEN_FLAKY).await, expected);
            assert_eq!(sim.capture_calls(id), 3);
        }
    }

    #[tokio::test]
    async fn captures_and_refunds_are_idempotent_per_order() {
        let sim = Simulator::new();
        let id = order(7);
        let first = sim.capture(id, eur(100), TOKEN_SUCCESS).await;
        let second = sim.capture(id, eur(100), TOKEN_SUCCESS).await;
        assert_eq!(first, second, "the same order must get the same reference");
        let refund = sim.refund(id, eur(100), "sim-cap").await;
        assert_eq!(refund, Ok(format!("sim-ref-{id}")));
        assert_eq!(sim.refund(id, eur(100), "sim-cap").await, refund);
        assert_eq!((sim.capture_calls(id), sim.refund_calls(id)), (2, 2));
        assert_eq!(sim.capture_calls(order(8)), 0);
    }

    #[tokio::test]
    async fn cancel_before_any_capture_voids_and_every_later_capture_is_declined() {
        let sim = Simulator::new();
        let id = order(9);
        assert_eq!(sim.cancel(id, eur(100)).await, Ok(CancelOutcome::Voided));
        for _ in 0..2 {
            assert_eq!(
                sim.capture(id, eur(100), TOKEN_SUCCESS).await,
                Ok(CaptureOutcome::Declined {
                    code: DeclineCode::Voided,
                    detail: "voided".to_owned()
                })
            );
        }
        assert_eq!(
            sim.cancel(id, eur(100)).await,
            Ok(CancelOutcome::Voided),
            "a repeated cancel gives the same outcome"
        );
        assert!(!sim.holds_money(id));
        assert_eq!((sim.capture_calls(id), sim.cancel_calls(id)), (2, 2));
    }

    #[tokio::test]
    async fn cancel_after_a_capture_refunds_it_once() {
        let sim = Simulator::new();
        let id = order(10);
        let capture = sim.capture(id, eur(100), TOKEN_SUCCESS).await;
        assert!(sim.holds_money(id));
        let refunded = Ok(CancelOutcome::Refunded {
            capture_reference: format!("sim-cap-{id}"),
            refund_reference: format!("sim-ref-{id}"),
        });
        assert_eq!(sim.cancel(id, eur(100)).await, refunded);
        assert_eq!(sim.cancel(id, eur(100)).await, refunded, "idempotent");
        assert!(!sim.holds_money(id));
        assert_eq!(
            sim.capture(id, eur(100), TOKEN_SUCCESS).await,
            capture,
            "a capture retried after the cancel changes nothing"
        );
        assert!(!sim.holds_money(id));
        assert_eq!(
            sim.refund(id, eur(100), "sim-cap").await,
            Ok(format!("sim-ref-{id}")),
            "a refund after the cancel names the same refund"
        );
    }

    #[tokio::test]
    async fn cancel_after_failed_captures_voids() {
        let sim = Simulator::new();
        let id = order(11);
        assert!(sim.capture(id, eur(100), TOKEN_FLAKY).await.is_err());
        assert_eq!(sim.cancel(id, eur(100)).await, Ok(CancelOutcome::Voided));
        for _ in 0..3 {
            assert_eq!(
                sim.capture(id, eur(100), TOKEN_FLAKY).await,
                Ok(CaptureOutcome::Declined {
                    code: DeclineCode::Voided,
                    detail: "voided".to_owned()
                })
            );
        }
    }

    #[tokio::test]
    async fn it_remembers_the_last_orders_up_to_its_capacity() {
        let sim = Simulator::with_capacity(2);
        for n in 1..=3 {
            let captured = sim.capture(order(n), eur(100), TOKEN_SUCCESS).await;
            assert_eq!(
                captured,
                Ok(CaptureOutcome::Captured {
                    reference: format!("sim-cap-{}", order(n))
                })
            );
        }
        assert_eq!(sim.remembered(), 2);
        // The oldest is forgotten; the two latest are still known.
        assert_eq!(sim.capture_calls(order(1)), 0);
        assert!(!sim.holds_money(order(1)));
        assert!(sim.holds_money(order(2)) && sim.holds_money(order(3)));
        // Asking about an order does not make it remembered.
        assert_eq!(sim.remembered(), 2);
        // A void is remembered like a capture, and pushes out the oldest.
        assert_eq!(
            sim.cancel(order(4), eur(100)).await,
            Ok(CancelOutcome::Voided)
        );
        assert!(!sim.holds_money(order(2)) && sim.holds_money(order(3)));
        assert_eq!(
            sim.capture(order(4), eur(100), TOKEN_SUCCESS).await,
            Ok(CaptureOutcome::Declined {
                code: DeclineCode::Voided,
                detail: "voided".to_owned()
            })
        );
        assert_eq!(sim.remembered(), 2);
    }
}
