//! The built-in payment provider: a deterministic simulator keyed by test tokens, so that every
//! payment path can be driven from the API.

use std::collections::HashMap;
use std::future::ready;
use std::sync::{Mutex, PoisonError};

use events::values::{Money, OrderId};

use crate::provider::{CaptureOutcome, PaymentProvider, ProviderError, ProviderFuture};

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

/// The simulator. Any token not listed above is declined ("unknown test token"); refunds always
/// succeed, with the reference `sim-ref-<order id>`. It answers at once: timing, retries and
/// circuit breaking belong to the wrapper around the port ([`Resilient`](crate::Resilient)),
/// not to an adapter.
#[derive(Debug, Default)]
pub struct Simulator {
    calls: Mutex<HashMap<OrderId, Calls>>,
}

/// How often the simulator was called for one order.
#[derive(Debug, Default, Clone, Copy)]
struct Calls {
    capture: u32,
    refund: u32,
}

impl Simulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many capture calls the order received (for tests: a capture must not be repeated).
    pub fn capture_calls(&self, order_id: OrderId) -> u32 {
        self.calls_for(order_id).capture
    }

    /// How many refund calls the order received.
    pub fn refund_calls(&self, order_id: OrderId) -> u32 {
        self.calls_for(order_id).refund
    }

    fn calls_for(&self, order_id: OrderId) -> Calls {
        self.record(order_id, |_| {})
    }

    /// Updates the order's call counts and returns them. A panic elsewhere while holding the
    /// lock cannot leave the counts half-written, so a poisoned lock is still usable.
    fn record(&self, order_id: OrderId, update: impl FnOnce(&mut Calls)) -> Calls {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = calls.entry(order_id).or_default();
        update(entry);
        *entry
    }

    fn decide_capture(
        &self,
        order_id: OrderId,
        token: &str,
    ) -> Result<CaptureOutcome, ProviderError> {
        let attempt = self.record(order_id, |c| c.capture += 1).capture;
        // The same reference for every capture of an order: the port's idempotency promise.
        let captured = || CaptureOutcome::Captured {
            reference: format!("sim-cap-{order_id}"),
        };
        let declined = |reason: &str| CaptureOutcome::Declined {
            reason: reason.to_owned(),
        };
        match token {
            TOKEN_SUCCESS => Ok(captured()),
            TOKEN_DECLINE => Ok(declined("card declined")),
            TOKEN_TIMEOUT => Err(ProviderError::Timeout),
            TOKEN_FLAKY if attempt <= FLAKY_FAILURES => Err(ProviderError::Unavailable(format!(
                "simulated transient failure {attempt} of {FLAKY_FAILURES}"
            ))),
            TOKEN_FLAKY => Ok(captured()),
            _ => Ok(declined("unknown test token")),
        }
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
        self.record(order_id, |c| c.refund += 1);
        Box::pin(ready(Ok(format!("sim-ref-{order_id}"))))
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
        let id = order(1);
        let captured = Ok(CaptureOutcome::Captured {
            reference: format!("sim-cap-{id}"),
        });
        let declined = |reason: &str| {
            Ok(CaptureOutcome::Declined {
                reason: reason.to_owned(),
            })
        };
        assert_eq!(sim.capture(id, eur(100), TOKEN_SUCCESS).await, captured);
        assert_eq!(
            sim.capture(id, eur(100), TOKEN_DECLINE).await,
            declined("card declined")
        );
        assert_eq!(
            sim.capture(id, eur(100), "tok_nonsense").await,
            declined("unknown test token")
        );
        for _ in 0..3 {
            assert_eq!(
                sim.capture(id, eur(100), TOKEN_TIMEOUT).await,
                Err(ProviderError::Timeout),
                "a timeout token never recovers"
            );
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
}
