//! The wrapper every provider adapter sits behind: each call has a timeout, transient failures
//! are retried with backoff, and a circuit breaker stops calling a provider that keeps failing.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use events::values::{Money, OrderId};
use tokio::time::{Instant, sleep, timeout};
use tracing::{info, warn};

use crate::provider::{
    CancelOutcome, CaptureOutcome, PaymentProvider, ProviderError, ProviderFuture,
};

/// The reason given when the breaker refuses a call without trying the provider.
const CIRCUIT_OPEN: &str = "circuit open";

/// How hard [`Resilient`] tries, and when it stops trying for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResiliencePolicy {
    /// The longest one attempt may take; an attempt cut short counts as a timeout.
    pub timeout: Duration,
    /// Attempts per call, the first included (0 is taken as 1).
    pub attempts: u32,
    /// The pause after the first failed attempt; it doubles after each further one.
    pub backoff_initial: Duration,
    /// The longest pause between attempts.
    pub backoff_max: Duration,
    /// How many consecutive failed calls open the breaker (0 is taken as 1).
    pub breaker_threshold: u32,
    /// How long an open breaker refuses calls before it lets one trial call through.
    pub breaker_cooldown: Duration,
}

impl Default for ResiliencePolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            attempts: 3,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

/// A [`PaymentProvider`] that calls `inner` with a timeout per attempt, retries timeouts and
/// unavailability with exponential backoff, and opens a circuit breaker after too many failed
/// calls in a row. Captures, refunds and cancels share the breaker: they reach the same provider.
///
/// Retrying is safe because the port promises idempotency per order. A declined capture is an
/// answer, not a failure: it is returned at once and counts as a success for the breaker.
#[derive(Debug)]
pub struct Resilient<P> {
    inner: P,
    policy: ResiliencePolicy,
    breaker: Mutex<BreakerState>,
}

/// The circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    /// Calls go through; `failures` counts the failed calls since the last success.
    Closed { failures: u32 },
    /// Calls are refused until `until`.
    Open { until: Instant },
    /// One trial call is in flight; every other call is refused until it ends.
    HalfOpen,
}

impl<P> Resilient<P> {
    pub fn new(inner: P, policy: ResiliencePolicy) -> Self {
        Self {
            inner,
            policy,
            breaker: Mutex::new(BreakerState::Closed { failures: 0 }),
        }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The policy the wrapper applies.
    pub fn policy(&self) -> &ResiliencePolicy {
        &self.policy
    }

    /// One call: admitted by the breaker, then attempted until it succeeds or the attempts run
    /// out, and its outcome recorded by the breaker.
    async fn call<'a, T>(
        &'a self,
        operation: &'static str,
        order_id: OrderId,
        attempt: impl Fn() -> ProviderFuture<'a, T>,
    ) -> Result<T, ProviderError> {
        let admission = self.admit(operation, order_id)?;
        let result = self.attempt_all(operation, order_id, attempt).await;
        self.record(admission, operation, order_id, result.is_ok());
        result
    }

    async fn attempt_all<'a, T>(
        &'a self,
        operation: &'static str,
        order_id: OrderId,
        attempt: impl Fn() -> ProviderFuture<'a, T>,
    ) -> Result<T, ProviderError> {
        let attempts = self.policy.attempts.max(1);
        let mut backoff = self.policy.backoff_initial.min(self.policy.backoff_max);
        let mut made = 1;
        loop {
            let error = match timeout(self.policy.timeout, attempt()).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(error)) => error,
                Err(_elapsed) => ProviderError::Timeout,
            };
            if made >= attempts {
                return Err(error);
            }
            warn!(
                operation, %order_id, attempt = made, attempts, %error, ?backoff,
                "payment provider call failed; retrying"
            );
            sleep(backoff).await;
            backoff = backoff.saturating_mul(2).min(self.policy.backoff_max);
            made += 1;
        }
    }

    /// Lets the call through, or refuses it while the breaker is open. The first call after
    /// the cooldown is let through as the trial.
    fn admit(
        &self,
        operation: &'static str,
        order_id: OrderId,
    ) -> Result<Admission<'_>, ProviderError> {
        let mut state = lock(&self.breaker);
        let trial = match *state {
            BreakerState::Closed { .. } => false,
            BreakerState::Open { until } if Instant::now() >= until => {
                info!(
                    operation, %order_id,
                    "payment provider circuit half-open: letting one trial call through"
                );
                *state = BreakerState::HalfOpen;
                true
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen => {
                return Err(ProviderError::Unavailable(CIRCUIT_OPEN.to_owned()));
            }
        };
        Ok(Admission {
            breaker: &self.breaker,
            trial,
            recorded: false,
        })
    }

    fn record(
        &self,
        mut admission: Admission<'_>,
        operation: &'static str,
        order_id: OrderId,
        succeeded: bool,
    ) {
        admission.recorded = true;
        let mut state = lock(&self.breaker);
        if succeeded {
            if !matches!(*state, BreakerState::Closed { .. }) {
                info!(operation, %order_id, "payment provider circuit closed");
            }
            *state = BreakerState::Closed { failures: 0 };
            return;
        }
        let cooldown = self.policy.breaker_cooldown;
        match *state {
            BreakerState::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if failures >= self.policy.breaker_threshold.max(1) {
                    warn!(
                        operation, %order_id, failures, ?cooldown,
                        "payment provider circuit opened after consecutive failed calls"
                    );
                    *state = BreakerState::Open {
                        until: Instant::now() + cooldown,
                    };
                } else {
                    *state = BreakerState::Closed { failures };
                }
            }
            BreakerState::HalfOpen => {
                warn!(
                    operation, %order_id, ?cooldown,
                    "payment provider circuit re-opened: the trial call failed"
                );
                *state = BreakerState::Open {
                    until: Instant::now() + cooldown,
                };
            }
            // Other calls opened it meanwhile: this failure adds nothing.
            BreakerState::Open { .. } => {}
        }
    }
}

impl<P: PaymentProvider> PaymentProvider for Resilient<P> {
    fn capture<'a>(
        &'a self,
        order_id: OrderId,
        amount: Money,
        token: &'a str,
    ) -> ProviderFuture<'a, CaptureOutcome> {
        Box::pin(self.call("capture", order_id, move || {
            self.inner.capture(order_id, amount, token)
        }))
    }

    fn refund<'a>(
        &'a self,
        order_id: OrderId,
        amount: Money,
        reference: &'a str,
    ) -> ProviderFuture<'a, String> {
        Box::pin(self.call("refund", order_id, move || {
            self.inner.refund(order_id, amount, reference)
        }))
    }

    fn cancel(&self, order_id: OrderId, amount: Money) -> ProviderFuture<'_, CancelOutcome> {
        Box::pin(self.call("cancel", order_id, move || {
            self.inner.cancel(order_id, amount)
        }))
    }
}

/// A call the breaker let through, until its outcome is recorded.
struct Admission<'a> {
    breaker: &'a Mutex<BreakerState>,
    trial: bool,
    recorded: bool,
}

impl Drop for Admission<'_> {
    /// A trial call abandoned by its caller (its future dropped) has no outcome. Without this,
    /// the breaker would stay half-open, refusing every call, for good: instead the next call
    /// becomes the trial.
    fn drop(&mut self) {
        if self.trial && !self.recorded {
            let mut state = lock(self.breaker);
            if *state == BreakerState::HalfOpen {
                *state = BreakerState::Open {
                    until: Instant::now(),
                };
            }
        }
    }
}

/// Every change to the state is one assignment, so a panic elsewhere while holding the lock
/// cannot leave it half-written: a poisoned lock is still usable.
fn lock(breaker: &Mutex<BreakerState>) -> MutexGuard<'_, BreakerState> {
    breaker.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::future::{pending, ready};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::time::advance;
    use uuid::Uuid;

    use events::payments::DeclineCode;

    use super::*;
    use crate::simulator::{Simulator, TOKEN_DECLINE, TOKEN_FLAKY, TOKEN_TIMEOUT};

    /// How the test double answers.
    #[derive(Debug, Clone, Copy)]
    enum Mode {
        /// Captures, refunds and cancels succeed.
        Up,
        /// Every call fails as unavailable.
        Down,
        /// The first `n` calls fail as unavailable; later ones succeed.
        FailFirst(u32),
        /// No call ever answers.
        Hang,
        /// Captures are declined; refunds succeed.
        Decline,
    }

    /// A provider scripted by its [`Mode`], counting the calls that reach it.
    #[derive(Debug)]
    struct Double {
        mode: Mutex<Mode>,
        calls: AtomicU32,
    }

    impl Double {
        fn new(mode: Mode) -> Self {
            Self {
                mode: Mutex::new(mode),
                calls: AtomicU32::new(0),
            }
        }

        fn set(&self, mode: Mode) {
            *self.mode.lock().unwrap() = mode;
        }

        fn calls(&self) -> u32 {
            self.calls.load(Ordering::SeqCst)
        }

        fn answer<'a, T: Send + 'a>(
            &self,
            success: T,
            decline: Option<T>,
        ) -> ProviderFuture<'a, T> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let result = match *self.mode.lock().unwrap() {
                Mode::Up => Ok(success),
                Mode::FailFirst(n) if call > n => Ok(success),
                Mode::Down | Mode::FailFirst(_) => Err(down()),
                Mode::Decline => Ok(decline.unwrap_or(success)),
                Mode::Hang => return Box::pin(pending()),
            };
            Box::pin(ready(result))
        }
    }

    impl PaymentProvider for Double {
        fn capture<'a>(
            &'a self,
            _: OrderId,
            _: Money,
            _: &'a str,
        ) -> ProviderFuture<'a, CaptureOutcome> {
            let declined = CaptureOutcome::Declined {
                code: DeclineCode::Refused,
                detail: "card declined".to_owned(),
            };
            self.answer(captured(), Some(declined))
        }

        fn refund<'a>(&'a self, _: OrderId, _: Money, _: &'a str) -> ProviderFuture<'a, String> {
            self.answer("ref".to_owned(), None)
        }

        fn cancel(&self, _: OrderId, _: Money) -> ProviderFuture<'_, CancelOutcome> {
            self.answer(CancelOutcome::Voided, None)
        }
    }

    fn down() -> ProviderError {
        ProviderError::Unavailable("down".to_owned())
    }

    fn circuit_open<T>() -> Result<T, ProviderError> {
        Err(ProviderError::Unavailable("circuit open".to_owned()))
    }

    fn captured() -> CaptureOutcome {
        CaptureOutcome::Captured {
            reference: "cap".to_owned(),
        }
    }

    fn order_id() -> OrderId {
        OrderId(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0003))
    }

    fn eur(amount_minor: i64) -> Money {
        Money::new(amount_minor, "EUR".parse().unwrap())
    }

    fn resilient(mode: Mode) -> Resilient<Double> {
        Resilient::new(Double::new(mode), ResiliencePolicy::default())
    }

    async fn capture<P: PaymentProvider>(provider: &P) -> Result<CaptureOutcome, ProviderError> {
        provider.capture(order_id(), eur(4200), "tok").await
    }

    async fn refund<P: PaymentProvider>(provider: &P) -> Result<String, ProviderError> {
        provider.refund(order_id(), eur(4200), "cap").await
    }

    async fn cancel<P: PaymentProvider>(provider: &P) -> Result<CancelOutcome, ProviderError> {
        provider.cancel(order_id(), eur(4200)).await
    }

    /// Fails `threshold` calls in a row (default policy), which opens the breaker.
    async fn open_the_breaker(provider: &Resilient<Double>) {
        provider.inner().set(Mode::Down);
        for call in 1..=ResiliencePolicy::default().breaker_threshold {
            assert_eq!(capture(provider).await, Err(down()), "failed call {call}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_failing_twice_then_succeeding_succeeds_after_three_attempts() {
        let provider = resilient(Mode::FailFirst(2));
        let start = Instant::now();
        assert_eq!(capture(&provider).await, Ok(captured()));
        assert_eq!(provider.inner().calls(), 3);
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(100 + 200),
            "the backoff doubles between attempts"
        );

        let provider = resilient(Mode::FailFirst(2));
        assert_eq!(refund(&provider).await, Ok("ref".to_owned()));
        assert_eq!(provider.inner().calls(), 3, "refunds are retried too");

        let provider = resilient(Mode::FailFirst(2));
        assert_eq!(cancel(&provider).await, Ok(CancelOutcome::Voided));
        assert_eq!(provider.inner().calls(), 3, "cancels are retried too");
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_that_hangs_fails_with_a_timeout_after_every_attempt() {
        let provider = resilient(Mode::Hang);
        let start = Instant::now();
        assert_eq!(capture(&provider).await, Err(ProviderError::Timeout));
        assert_eq!(provider.inner().calls(), 3);
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(3 * 2000 + 100 + 200),
            "three timeouts and two backoffs"
        );

        let provider = resilient(Mode::Hang);
        assert_eq!(refund(&provider).await, Err(ProviderError::Timeout));
        assert_eq!(provider.inner().calls(), 3, "refunds time out too");

        let provider = resilient(Mode::Hang);
        assert_eq!(cancel(&provider).await, Err(ProviderError::Timeout));
        assert_eq!(provider.inner().calls(), 3, "cancels time out too");
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_doubles_up_to_its_cap() {
        let policy = ResiliencePolicy {
            attempts: 5,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(3),
            ..ResiliencePolicy::default()
        };
        let provider = Resilient::new(Double::new(Mode::Down), policy);
        let start = Instant::now();
        assert_eq!(capture(&provider).await, Err(down()));
        assert_eq!(provider.inner().calls(), 5);
        assert_eq!(start.elapsed(), Duration::from_secs(1 + 2 + 3 + 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_decline_is_returned_at_once_and_never_retried() {
        let provider = resilient(Mode::Decline);
        let start = Instant::now();
        let declined = CaptureOutcome::Declined {
            code: DeclineCode::Refused,
            detail: "card declined".to_owned(),
        };
        assert_eq!(capture(&provider).await, Ok(declined));
        assert_eq!(provider.inner().calls(), 1);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_after_threshold_failed_calls_and_then_fails_fast() {
        let provider = resilient(Mode::Down);
        open_the_breaker(&provider).await;
        assert_eq!(
            provider.inner().calls(),
            5 * 3,
            "each failed call used its attempts"
        );

        provider.inner().set(Mode::Up);
        let start = Instant::now();
        assert_eq!(capture(&provider).await, circuit_open());
        assert_eq!(
            refund(&provider).await,
            circuit_open(),
            "refunds share the breaker"
        );
        assert_eq!(
            cancel(&provider).await,
            circuit_open(),
            "cancels share the breaker"
        );
        assert_eq!(
            provider.inner().calls(),
            15,
            "an open breaker never calls the provider"
        );
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_cooldown_one_trial_call_goes_through_and_its_outcome_decides() {
        let cooldown = ResiliencePolicy::default().breaker_cooldown;
        let provider = resilient(Mode::Down);
        open_the_breaker(&provider).await;

        advance(cooldown - Duration::from_millis(1)).await;
        assert_eq!(
            capture(&provider).await,
            circuit_open(),
            "before the cooldown"
        );
        assert_eq!(provider.inner().calls(), 15);

        // A failed trial re-opens the breaker for another cooldown.
        advance(Duration::from_millis(1)).await;
        assert_eq!(capture(&provider).await, Err(down()), "the failed trial");
        assert_eq!(
            provider.inner().calls(),
            18,
            "the trial makes all its attempts"
        );
        provider.inner().set(Mode::Up);
        assert_eq!(capture(&provider).await, circuit_open(), "re-opened");
        assert_eq!(provider.inner().calls(), 18);

        // A successful trial closes it.
        advance(cooldown).await;
        assert_eq!(
            capture(&provider).await,
            Ok(captured()),
            "the successful trial"
        );
        assert_eq!(refund(&provider).await, Ok("ref".to_owned()), "closed");
        assert_eq!(capture(&provider).await, Ok(captured()), "closed");
        assert_eq!(provider.inner().calls(), 21);
    }

    #[tokio::test(start_paused = true)]
    async fn any_success_resets_the_count_of_failed_calls() {
        let provider = resilient(Mode::Down);
        let below_threshold = ResiliencePolicy::default().breaker_threshold - 1;
        for _ in 0..below_threshold {
            assert_eq!(capture(&provider).await, Err(down()));
        }
        provider.inner().set(Mode::Decline);
        assert!(capture(&provider).await.is_ok(), "a decline is an answer");
        provider.inner().set(Mode::Down);
        for call in 1..=below_threshold + 1 {
            assert_eq!(capture(&provider).await, Err(down()), "failed call {call}");
        }
        assert_eq!(capture(&provider).await, circuit_open(), "now it is open");
    }

    #[tokio::test(start_paused = true)]
    async fn while_the_trial_call_is_in_flight_other_calls_are_refused() {
        let provider = resilient(Mode::Down);
        open_the_breaker(&provider).await;
        advance(ResiliencePolicy::default().breaker_cooldown).await;
        provider.inner().set(Mode::Hang);

        let (first, second) = tokio::join!(capture(&provider), capture(&provider));
        let results = [first, second];
        assert!(
            results.contains(&Err(ProviderError::Timeout)) && results.contains(&circuit_open()),
            "one trial that times out, one refusal: {results:?}"
        );
        assert_eq!(
            provider.inner().calls(),
            15 + 3,
            "only the trial reached the provider"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_trial_call_lets_the_next_call_be_the_trial() {
        let provider = resilient(Mode::Down);
        open_the_breaker(&provider).await;
        advance(ResiliencePolicy::default().breaker_cooldown).await;
        provider.inner().set(Mode::Hang);

        let abandoned = timeout(Duration::from_millis(500), capture(&provider)).await;
        assert!(abandoned.is_err(), "the caller gave up: {abandoned:?}");
        provider.inner().set(Mode::Up);
        assert_eq!(capture(&provider).await, Ok(captured()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_simulator_behind_it_absorbs_flakiness_but_not_a_dead_provider() {
        for (token, expected, calls) in [
            (
                TOKEN_FLAKY,
                Ok(CaptureOutcome::Captured {
                    reference: format!("sim-cap-{}", order_id()),
                }),
                3,
            ),
            (TOKEN_TIMEOUT, Err(ProviderError::Timeout), 3),
            (
                TOKEN_DECLINE,
                Ok(CaptureOutcome::Declined {
                    code: DeclineCode::Refused,
                    detail: "card declined".to_owned(),
                }),
                1,
            ),
        ] {
            let provider = Resilient::new(Simulator::new(), ResiliencePolicy::default());
            let result = provider.capture(order_id(), eur(4200), token).await;
            assert_eq!(result, expected, "capture with {token}");
            assert_eq!(
                provider.inner().capture_calls(order_id()),
                calls,
                "simulator calls with {token}"
            );
        }
        // What the payment aggregate's services are.
        let _: Arc<dyn PaymentProvider> = Arc::new(Resilient::new(
            Simulator::new(),
            ResiliencePolicy::default(),
        ));
    }
}
