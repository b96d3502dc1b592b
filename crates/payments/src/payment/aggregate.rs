use std::sync::Arc;

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use events::payments::{
    DeclineCode, PaymentCaptured, PaymentDeclined, PaymentEvent, PaymentRefunded, PaymentRequested,
    PaymentVoided,
};
use events::values::{Money, OrderId};
use serde::{Deserialize, Serialize};

use super::{PaymentCommand, PaymentError};
use crate::provider::{CancelOutcome, CaptureOutcome, PaymentProvider};

/// The longest payment token accepted, in characters (the same bound as ordering's).
pub const MAX_PAYMENT_TOKEN_CHARS: usize = 200;

/// Where a payment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Payments has not heard of the order yet.
    #[default]
    NotRequested,
    /// The amount is known; nothing captured yet.
    Requested,
    Captured,
    Declined,
    /// Captured, then paid back.
    Refunded,
    /// Ended before capture: nothing will be taken.
    Voided,
}

/// The payment of one order. Its aggregate id is the order id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Payment {
    /// What is owed: set by `PaymentRequested`, for the life of the payment.
    request: Option<Request>,
    stage: Stage,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Request {
    order_id: OrderId,
    amount: Money,
    /// Opaque: only the provider knows what it names.
    payment_token: String,
}

/// What happened after the request. Each stage holds what the next decision needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Stage {
    #[default]
    Open,
    /// A refund names the capture by its provider reference.
    Captured {
        amount: Money,
        reference: String,
    },
    /// Why, as the provider said (a version 1 event reads as `unclassified`).
    Declined {
        code: DeclineCode,
        detail: String,
    },
    Refunded {
        captured: Money,
        refunded: Money,
    },
    Voided,
}

impl Payment {
    pub fn status(&self) -> PaymentStatus {
        match (&self.request, &self.stage) {
            (None, _) => PaymentStatus::NotRequested,
            (Some(_), Stage::Open) => PaymentStatus::Requested,
            (Some(_), Stage::Captured { .. }) => PaymentStatus::Captured,
            (Some(_), Stage::Declined { .. }) => PaymentStatus::Declined,
            (Some(_), Stage::Refunded { .. }) => PaymentStatus::Refunded,
            (Some(_), Stage::Voided) => PaymentStatus::Voided,
        }
    }

    /// What the order costs, once requested.
    pub fn amount(&self) -> Option<Money> {
        self.request.as_ref().map(|r| r.amount)
    }

    /// What was taken from the customer (still set after a refund).
    pub fn captured(&self) -> Option<Money> {
        match self.stage {
            Stage::Captured { amount, .. } => Some(amount),
            Stage::Refunded { captured, .. } => Some(captured),
            Stage::Open | Stage::Declined { .. } | Stage::Voided => None,
        }
    }

    /// Why the payment was declined, if it was.
    pub fn decline(&self) -> Option<(DeclineCode, &str)> {
        match &self.stage {
            Stage::Declined { code, detail } => Some((*code, detail)),
            _ => None,
        }
    }

    /// What was paid back.
    pub fn refunded(&self) -> Option<Money> {
        match self.stage {
            Stage::Refunded { refunded, .. } => Some(refunded),
            _ => None,
        }
    }
}

impl Aggregate for Payment {
    const TYPE: &'static str = "payment";
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = PaymentError;
    type Services = Arc<dyn PaymentProvider>;

    async fn handle(
        &mut self,
        command: Self::Command,
        provider: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            PaymentCommand::Request {
                order_id,
                amount,
                payment_token,
            } => {
                // A redelivered `OrderPlaced`: the amount is already known.
                if self.request.is_some() {
                    return Ok(());
                }
                if amount.amount_minor <= 0 {
                    return Err(PaymentError::InvalidAmount(amount));
                }
                check_payment_token(&payment_token)?;
                let event = PaymentRequested {
                    order_id,
                    amount,
                    payment_token,
                };
                sink.write(event.into(), self).await;
            }
            PaymentCommand::Capture => {
                let Request {
                    order_id,
                    amount,
                    payment_token,
                } = self.request.clone().ok_or(PaymentError::NotRequested)?;
                // Captured, declined, refunded or voided: the provider was answered (or the
                // order ended); calling it again could only do harm.
                if !matches!(self.stage, Stage::Open) {
                    return Ok(());
                }
                // A provider error fails the command with no events: the consumer retries.
                let event = match provider.capture(order_id, amount, &payment_token).await? {
                    CaptureOutcome::Captured { reference } => PaymentCaptured {
                        order_id,
                        amount,
                        provider_reference: reference,
                    }
                    .into(),
                    CaptureOutcome::Declined { code, detail } => PaymentDeclined {
                        order_id,
                        code,
                        detail,
                    }
                    .into(),
                };
                sink.write(event, self).await;
            }
            PaymentCommand::Cancel => {
                // A cancellation may reach payments before the request: nothing to undo.
                let Some((order_id, requested)) =
                    self.request.as_ref().map(|r| (r.order_id, r.amount))
                else {
                    return Ok(());
                };
                match &self.stage {
                    // Not captured as far as this payment knows, but a capture may be in flight
                    // in another consumer: only the provider knows. It decides per order, so
                    // its answer is the truth (ADR 0009). A provider error fails the command
                    // with no events: the consumer retries.
                    Stage::Open => match provider.cancel(order_id, requested).await? {
                        CancelOutcome::Voided => {
                            sink.write(PaymentVoided { order_id }.into(), self).await;
                        }
                        CancelOutcome::Refunded {
                            capture_reference,
                            refund_reference,
                        } => {
                            let captured = PaymentCaptured {
                                order_id,
                                amount: requested,
                                provider_reference: capture_reference,
                            };
                            sink.write(captured.into(), self).await;
                            let refunded = PaymentRefunded {
                                order_id,
                                amount: requested,
                                provider_reference: refund_reference,
                            };
                            sink.write(refunded.into(), self).await;
                        }
                    },
                    Stage::Captured { amount, reference } => {
                        let amount = *amount;
                        let refund_reference = provider.refund(order_id, amount, reference).await?;
                        let event = PaymentRefunded {
                            order_id,
                            amount,
                            provider_reference: refund_reference,
                        };
                        sink.write(event.into(), self).await;
                    }
                    // Nothing was taken, or it was already given back.
                    Stage::Declined { .. } | Stage::Refunded { .. } | Stage::Voided => {}
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            PaymentEvent::PaymentRequested(e) => {
                self.request = Some(Request {
                    order_id: e.order_id,
                    amount: e.amount,
                    payment_token: e.payment_token,
                });
            }
            PaymentEvent::PaymentCaptured(e) => {
                self.stage = Stage::Captured {
                    amount: e.amount,
                    reference: e.provider_reference,
                };
            }
            PaymentEvent::PaymentDeclined(e) => {
                self.stage = Stage::Declined {
                    code: e.code,
                    detail: e.detail,
                };
            }
            PaymentEvent::PaymentRefunded(e) => {
                // Refunds are whole: the captured amount is the refunded one if, against
                // every rule, no capture came first.
                let captured = self.captured().unwrap_or(e.amount);
                self.stage = Stage::Refunded {
                    captured,
                    refunded: e.amount,
                };
            }
            PaymentEvent::PaymentVoided(_) => self.stage = Stage::Voided,
        }
    }
}

/// Opaque to payments, but it must name something and stay a reasonable size.
fn check_payment_token(token: &str) -> Result<(), PaymentError> {
    if token.trim().is_empty() || token.chars().count() > MAX_PAYMENT_TOKEN_CHARS {
        return Err(PaymentError::InvalidPaymentToken);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::future::ready;

    use cqrs_es::test::{AggregateTestExecutor, TestFramework};
    use uuid::Uuid;

    use super::*;
    use crate::provider::{ProviderError, ProviderFuture};
    use crate::simulator::{Simulator, TOKEN_DECLINE, TOKEN_FLAKY, TOKEN_SUCCESS, TOKEN_TIMEOUT};

    fn order_id() -> OrderId {
        OrderId(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002))
    }

    fn eur(amount_minor: i64) -> Money {
        Money::new(amount_minor, "EUR".parse().unwrap())
    }

    fn requested() -> PaymentEvent {
        requested_with(TOKEN_SUCCESS)
    }

    fn requested_with(token: &str) -> PaymentEvent {
        PaymentRequested {
            order_id: order_id(),
            amount: eur(4200),
            payment_token: token.to_owned(),
        }
        .into()
    }

    fn captured() -> PaymentEvent {
        PaymentCaptured {
            order_id: order_id(),
            amount: eur(4200),
            provider_reference: format!("sim-cap-{}", order_id()),
        }
        .into()
    }

    fn declined(code: DeclineCode, detail: &str) -> PaymentEvent {
        PaymentDeclined {
            order_id: order_id(),
            code,
            detail: detail.to_owned(),
        }
        .into()
    }

    fn refunded() -> PaymentEvent {
        PaymentRefunded {
            order_id: order_id(),
            amount: eur(4200),
            provider_reference: format!("sim-ref-{}", order_id()),
        }
        .into()
    }

    fn voided() -> PaymentEvent {
        PaymentVoided {
            order_id: order_id(),
        }
        .into()
    }

    /// The histories a payment can have, by name (for table-driven cases).
    fn history(name: &str) -> Vec<PaymentEvent> {
        match name {
            "none" => vec![],
            "requested" => vec![requested()],
            "captured" => vec![requested(), captured()],
            "declined" => vec![requested(), declined(DeclineCode::Refused, "card declined")],
            "refunded" => vec![requested(), captured(), refunded()],
            "voided" => vec![requested(), voided()],
            other => panic!("unknown history {other}"),
        }
    }

    /// A payment with the given history, calling `provider`.
    fn given(provider: &Arc<Simulator>, name: &str) -> AggregateTestExecutor<Payment> {
        given_events(provider, history(name))
    }

    /// A payment requested with `token` and nothing more, calling `provider`.
    fn given_requested_with(
        provider: &Arc<Simulator>,
        token: &str,
    ) -> AggregateTestExecutor<Payment> {
        given_events(provider, vec![requested_with(token)])
    }

    fn given_events(
        provider: &Arc<Simulator>,
        events: Vec<PaymentEvent>,
    ) -> AggregateTestExecutor<Payment> {
        let provider: Arc<dyn PaymentProvider> = provider.clone();
        TestFramework::<Payment>::with(provider).given(events)
    }

    fn request(amount: Money) -> PaymentCommand {
        request_with(amount, TOKEN_SUCCESS)
    }

    fn request_with(amount: Money, token: &str) -> PaymentCommand {
        PaymentCommand::Request {
            order_id: order_id(),
            amount,
            payment_token: token.to_owned(),
        }
    }

    /// A provider that cannot be reached, for the refund's failure path.
    #[derive(Debug)]
    struct Down;

    impl PaymentProvider for Down {
        fn capture<'a>(
            &'a self,
            _: OrderId,
            _: Money,
            _: &'a str,
        ) -> ProviderFuture<'a, CaptureOutcome> {
            Box::pin(ready(Err(ProviderError::Unavailable("down".to_owned()))))
        }

        fn refund<'a>(&'a self, _: OrderId, _: Money, _: &'a str) -> ProviderFuture<'a, String> {
            Box::pin(ready(Err(ProviderError::Unavailable("down".to_owned()))))
        }

        fn cancel(&self, _: OrderId, _: Money) -> ProviderFuture<'_, CancelOutcome> {
            Box::pin(ready(Err(ProviderError::Unavailable("down".to_owned()))))
        }
    }

    #[test]
    fn request_records_what_will_be_owed_and_the_token_to_capture_with() {
        let longest = "t".repeat(MAX_PAYMENT_TOKEN_CHARS);
        for token in [TOKEN_SUCCESS, TOKEN_FLAKY, longest.as_str()] {
            let events = given(&Arc::default(), "none")
                .when(request_with(eur(4200), token))
                .inspect_result();
            assert_eq!(
                events,
                Ok(vec![requested_with(token)]),
                "request with {token}"
            );
        }
    }

    #[test]
    fn request_refuses_a_blank_or_oversized_token() {
        let too_long = "t".repeat(MAX_PAYMENT_TOKEN_CHARS + 1);
        for token in ["", "   ", too_long.as_str()] {
            given(&Arc::default(), "none")
                .when(request_with(eur(4200), token))
                .then_expect_error(PaymentError::InvalidPaymentToken);
        }
    }

    #[test]
    fn request_again_changes_nothing_whatever_the_stage() {
        for name in ["requested", "captured", "declined", "refunded", "voided"] {
            let events = given(&Arc::default(), name)
                .when(request(eur(4200)))
                .inspect_result();
            assert_eq!(events, Ok(vec![]), "request after {name}");
        }
    }

    #[test]
    fn request_refuses_an_amount_that_is_not_positive() {
        for amount in [eur(0), eur(-1)] {
            given(&Arc::default(), "none")
                .when(request(amount))
                .then_expect_error(PaymentError::InvalidAmount(amount));
        }
    }

    #[test]
    fn capture_records_the_providers_answer_for_each_token() {
        for (token, expected) in [
            (TOKEN_SUCCESS, captured()),
            (
                TOKEN_DECLINE,
                declined(DeclineCode::Refused, "card declined"),
            ),
            (
                "tok_made_up",
                declined(DeclineCode::InvalidToken, "unknown test token"),
            ),
        ] {
            let events = given_requested_with(&Arc::default(), token)
                .when(PaymentCommand::Capture)
                .inspect_result();
            assert_eq!(events, Ok(vec![expected]), "capture with {token}");
        }
    }

    #[test]
    fn capture_that_times_out_fails_with_no_events_every_time() {
        let sim = Arc::new(Simulator::new());
        for attempt in 1..=3 {
            let result = given_requested_with(&sim, TOKEN_TIMEOUT)
                .when(PaymentCommand::Capture)
                .inspect_result();
            assert_eq!(
                result,
                Err(PaymentError::Provider(ProviderError::Timeout)),
                "attempt {attempt}"
            );
        }
        assert_eq!(sim.capture_calls(order_id()), 3);
    }

    #[test]
    fn capture_with_a_flaky_provider_fails_twice_then_captures() {
        let sim = Arc::new(Simulator::new());
        for attempt in 1..=2 {
            let result = given_requested_with(&sim, TOKEN_FLAKY)
                .when(PaymentCommand::Capture)
                .inspect_result();
            assert!(
                matches!(
                    result,
                    Err(PaymentError::Provider(ProviderError::Unavailable(_)))
                ),
                "attempt {attempt} should fail as unavailable: {result:?}"
            );
        }
        given_requested_with(&sim, TOKEN_FLAKY)
            .when(PaymentCommand::Capture)
            .then_expect_events(vec![captured()]);
        assert_eq!(sim.capture_calls(order_id()), 3);
    }

    #[test]
    fn capture_before_the_request_is_refused_without_calling_the_provider() {
        let sim = Arc::new(Simulator::new());
        given(&sim, "none")
            .when(PaymentCommand::Capture)
            .then_expect_error(PaymentError::NotRequested);
        assert_eq!(sim.capture_calls(order_id()), 0);
    }

    #[test]
    fn capture_after_an_answer_or_an_end_never_calls_the_provider_again() {
        for name in ["captured", "declined", "refunded", "voided"] {
            let sim = Arc::new(Simulator::new());
            let events = given(&sim, name)
                .when(PaymentCommand::Capture)
                .inspect_result();
            assert_eq!(events, Ok(vec![]), "capture after {name}");
            assert_eq!(
                sim.capture_calls(order_id()),
                0,
                "provider called after {name}"
            );
        }
    }

    #[test]
    fn cancel_after_capture_refunds_the_captured_amount() {
        let sim = Arc::new(Simulator::new());
        given(&sim, "captured")
            .when(PaymentCommand::Cancel)
            .then_expect_events(vec![refunded()]);
        assert_eq!(sim.refund_calls(order_id()), 1);
    }

    #[test]
    fn cancel_before_capture_voids_the_payment_at_the_provider() {
        let sim = Arc::new(Simulator::new());
        given(&sim, "requested")
            .when(PaymentCommand::Cancel)
            .then_expect_events(vec![voided()]);
        assert_eq!(sim.refund_calls(order_id()), 0);
        assert_eq!(sim.cancel_calls(order_id()), 1);
    }

    #[test]
    fn cancel_racing_a_capture_the_provider_already_made_records_the_capture_and_its_refund() {
        let sim = Arc::new(Simulator::new());
        // A capture in another consumer reached the provider; its events are not committed.
        let capture = futures_ready(sim.capture(order_id(), eur(4200), TOKEN_SUCCESS));
        assert!(matches!(capture, Ok(CaptureOutcome::Captured { .. })));
        given(&sim, "requested")
            .when(PaymentCommand::Cancel)
            .then_expect_events(vec![captured(), refunded()]);
        assert!(!sim.holds_money(order_id()), "the money was paid back");

        // The capture's rerun finds the payment refunded and calls nothing.
        given_events(&sim, vec![requested(), captured(), refunded()])
            .when(PaymentCommand::Capture)
            .then_expect_events(vec![]);
        assert_eq!(sim.capture_calls(order_id()), 1);
    }

    #[test]
    fn capture_after_a_cancel_at_the_provider_is_declined_as_voided() {
        let sim = Arc::new(Simulator::new());
        given(&sim, "requested")
            .when(PaymentCommand::Cancel)
            .then_expect_events(vec![voided()]);
        // A capture that read the payment before the void was committed.
        given(&sim, "requested")
            .when(PaymentCommand::Capture)
            .then_expect_events(vec![declined(DeclineCode::Voided, "voided")]);
        assert!(!sim.holds_money(order_id()));
    }

    #[test]
    fn cancel_whose_void_cannot_reach_the_provider_fails_with_no_events() {
        let down: Arc<dyn PaymentProvider> = Arc::new(Down);
        let result = TestFramework::<Payment>::with(down)
            .given(history("requested"))
            .when(PaymentCommand::Cancel)
            .inspect_result();
        let expected = PaymentError::Provider(ProviderError::Unavailable("down".to_owned()));
        assert_eq!(result, Err(expected));
    }

    /// Polls a future that is ready at once (the simulator's answers are).
    fn futures_ready<T>(future: ProviderFuture<'_, T>) -> Result<T, ProviderError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn cancel_with_nothing_to_undo_changes_nothing() {
        for name in ["none", "declined", "refunded", "voided"] {
            let sim = Arc::new(Simulator::new());
            let events = given(&sim, name)
                .when(PaymentCommand::Cancel)
                .inspect_result();
            assert_eq!(events, Ok(vec![]), "cancel after {name}");
            assert_eq!(sim.refund_calls(order_id()), 0, "refund after {name}");
            assert_eq!(sim.cancel_calls(order_id()), 0, "cancel after {name}");
        }
    }

    #[test]
    fn cancel_whose_refund_cannot_reach_the_provider_fails_with_no_events() {
        let down: Arc<dyn PaymentProvider> = Arc::new(Down);
        let result = TestFramework::<Payment>::with(down)
            .given(history("captured"))
            .when(PaymentCommand::Cancel)
            .inspect_result();
        let expected = PaymentError::Provider(ProviderError::Unavailable("down".to_owned()));
        assert_eq!(result, Err(expected));
    }

    #[test]
    fn state_follows_the_events_and_survives_serialisation() {
        use PaymentStatus as S;
        let some = |n| Some(eur(n));
        for (name, status, amount, captured, refunded) in [
            ("none", S::NotRequested, None, None, None),
            ("requested", S::Requested, some(4200), None, None),
            ("captured", S::Captured, some(4200), some(4200), None),
            ("declined", S::Declined, some(4200), None, None),
            ("refunded", S::Refunded, some(4200), some(4200), some(4200)),
            ("voided", S::Voided, some(4200), None, None),
        ] {
            let mut payment = Payment::default();
            for event in history(name) {
                payment.apply(event);
            }
            let json = serde_json::to_string(&payment).unwrap();
            let payment: Payment = serde_json::from_str(&json).unwrap();
            assert_eq!(
                (
                    payment.status(),
                    payment.amount(),
                    payment.captured(),
                    payment.refunded()
                ),
                (status, amount, captured, refunded),
                "state after {name}"
            );
        }
    }

    #[test]
    fn errors_have_stable_codes_and_only_provider_errors_are_transient() {
        for (error, code, transient) in [
            (PaymentError::InvalidAmount(eur(0)), "invalid_amount", false),
            (
                PaymentError::InvalidPaymentToken,
                "invalid_payment_token",
                false,
            ),
            (PaymentError::NotRequested, "not_requested", false),
            (ProviderError::Timeout.into(), "provider_timeout", true),
            (
                ProviderError::Unavailable("down".to_owned()).into(),
                "provider_unavailable",
                true,
            ),
        ] {
            assert_eq!(error.code(), code, "{error}");
            assert_eq!(error.is_transient(), transient, "{error}");
        }
    }
}
