//! The consumer runtime: a durable pull consumer feeding a [`Handler`] in batches.
//!
//! For each batch of messages that are ready, the runtime
//! 1. looks up which event ids the consumer's inbox already holds (one query) and skips them,
//!    unless every message is a first delivery: then the commit's inbox rows are the check (a
//!    message handled before makes the commit fail, and the batch is run again with the
//!    look-up);
//! 2. hands every other message to the handler inside one [`UnitOfWork`], marking before each
//!    message and rolling back to the mark when the handler fails, so one bad message costs
//!    the others nothing;
//! 3. commits the unit once (the events of every handled message and their inbox rows);
//! 4. then acks the handled messages, naks the transient failures with a backoff delay, and
//!    copies the permanent ones (and those out of attempts) to the dead-letter stream with
//!    their error before terminating them.
//!
//! **Per-aggregate order on retries.** While a message waits for its retry, later messages of
//! the same aggregate are not handled either: they are naked with the same delay, so that an
//! aggregate's events are handled in order even when one of them fails for a while (a
//! cancellation must not overtake the confirmation that failed before it). The instance
//! remembers the waiting message until it is handled or dead-lettered, or for its retry delay
//! plus the ack wait, in case another instance took it over.
//!
//! A concurrency conflict at commit reruns the batch on fresh state. A database failure naks
//! the whole batch for later: the messages are not at fault, so they are not dead-lettered.
//! The loop itself never stops on a message.
//!
//! **Traces.** Each message is handled in a span of its own (`consume`, with the reactor as its
//! `service`), a child of the span that recorded the event (the message's `traceparent`); the
//! handler sees the message with the span's trace context, so the events it appends continue
//! the trace (see [`crate::follow_trace`]).
//!
//! A [`ConsumerObserver`] is told what became of each message ([`MessageOutcome`]) and how
//! long each batch took, once it is settled: the service's metrics count from there.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use events::headers;
use events::naming::{StreamName, dead_letter_subject, durable_name};
use eventstore::{Store, UnitOfWork};
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::message::Received;
use crate::provision;

/// Why a handler could not handle a message.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Might work later (a provider timed out, a dependency is down): retried with backoff
    /// until the attempts run out, then dead-lettered.
    #[error("{0:#}")]
    Transient(anyhow::Error),
    /// Arrived ahead of a message it needs that is on its way through another stream (a
    /// capture before its payment's request): retried soon, from [`EARLY_RETRY`] doubling per
    /// attempt up to the spec's backoff, with [`EARLY_EXTRA_ATTEMPTS`] more attempts than
    /// other transient failures, so that it waits about as long in all before it is
    /// dead-lettered, but is not held back a whole second by the common, short race.
    #[error("{0:#}")]
    Early(anyhow::Error),
    /// Will never work (undecodable payload, a command the domain refuses for good):
    /// dead-lettered at once.
    #[error("{0:#}")]
    Permanent(anyhow::Error),
}

impl HandlerError {
    pub fn transient(
        error: impl std::fmt::Display + std::fmt::Debug + Send + Sync + 'static,
    ) -> Self {
        Self::Transient(anyhow::Error::msg(error))
    }

    pub fn permanent(
        error: impl std::fmt::Display + std::fmt::Debug + Send + Sync + 'static,
    ) -> Self {
        Self::Permanent(anyhow::Error::msg(error))
    }

    pub fn early(error: impl std::fmt::Display + std::fmt::Debug + Send + Sync + 'static) -> Self {
        Self::Early(anyhow::Error::msg(error))
    }
}

/// The first retry of a message that arrived early ([`HandlerError::Early`]).
pub const EARLY_RETRY: Duration = Duration::from_millis(5);

/// How many more deliveries a message that keeps arriving early gets than the spec's
/// `max_attempts`: with the defaults, 12 deliveries over about 10 s (5 ms to 5.1 s apart),
/// against 5 over 15 s for other transient failures.
pub const EARLY_EXTRA_ATTEMPTS: u32 = 7;

/// The usual kind of a command's failure in a reaction: a refusal by the aggregate, an invalid
/// id or an oversized event will never succeed; a conflict or a store failure may.
impl<E: std::error::Error + Send + Sync + 'static> From<eventstore::CommandError<E>>
    for HandlerError
{
    fn from(error: eventstore::CommandError<E>) -> Self {
        use eventstore::CommandError;
        match error {
            CommandError::Rejected(e) => Self::permanent(e.to_string()),
            e @ (CommandError::InvalidId(_) | CommandError::EventTooLarge { .. }) => {
                Self::permanent(e.to_string())
            }
            e @ (CommandError::Conflict { .. } | CommandError::Store(_)) => {
                Self::transient(e.to_string())
            }
        }
    }
}

/// Reacts to messages: turns a message into commands executed in the unit of work.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        uow: &mut UnitOfWork,
        message: &Received,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A handler shared by several consumers (a context reacting to several streams).
impl<H: Handler> Handler for std::sync::Arc<H> {
    fn handle(
        &self,
        uow: &mut UnitOfWork,
        message: &Received,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        (**self).handle(uow, message)
    }
}

/// Delay before redelivering a message that failed transiently: doubles per attempt.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay after the `delivered`-th delivery failed.
    pub fn delay(&self, delivered: u32) -> Duration {
        let exponent = delivered.saturating_sub(1).min(20);
        self.initial.saturating_mul(1 << exponent).min(self.max)
    }
}

/// A durable consumer: which stream, which subjects, how hard to try.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Who reacts (a context or team name): the `service` of the consumer's spans.
    pub reactor: String,
    /// Durable name, also the inbox's consumer name, e.g. `inventory-from-ordering`.
    pub name: String,
    pub stream: StreamName,
    /// Subjects to receive; empty means the whole stream.
    pub filter_subjects: Vec<String>,
    /// Deliveries before a transiently failing message is dead-lettered.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// How long JetStream waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Messages delivered and not yet acked, at most.
    pub max_ack_pending: i64,
    /// Messages handled per unit of work (per commit), at most.
    pub batch_size: usize,
}

impl ConsumerSpec {
    /// The consumer of `reactor` (a context or team name) on `stream`, with defaults:
    /// 5 attempts, backoff from 1 s to 1 min, 30 s ack wait, batches of up to 256.
    pub fn new(reactor: &str, stream: StreamName) -> Self {
        Self {
            reactor: reactor.to_owned(),
            name: durable_name(reactor, &stream),
            stream,
            filter_subjects: Vec::new(),
            max_attempts: 5,
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 10_000,
            batch_size: 256,
        }
    }

    /// Adds a subject filter, e.g. from [`StreamName::event_type_filter`].
    pub fn filter(mut self, subject: impl Into<String>) -> Self {
        self.filter_subjects.push(subject.into());
        self
    }

    /// The JetStream consumer configuration. Redelivery is unlimited on the server: the runtime
    /// counts attempts and dead-letters, so that no message is dropped silently.
    pub fn config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(self.name.clone()),
            description: Some(format!("Chorus consumer {}", self.name)),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: -1,
            max_ack_pending: self.max_ack_pending,
            filter_subjects: self.filter_subjects.clone(),
            ..Default::default()
        }
    }
}

/// What became of a message, as a [`ConsumerObserver`] is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageOutcome {
    /// Handled: its effects committed, then it was acked.
    Handled,
    /// Handled before (its event id is in the inbox): acked without running the handler.
    Skipped,
    /// Naked, to be delivered again later: a transient failure, an earlier message of its
    /// aggregate waiting for its retry, a batch that did not commit, or a dead-letter copy
    /// that failed.
    Retried,
    /// Copied to the dead-letter stream with its error, then terminated.
    DeadLettered,
}

impl MessageOutcome {
    /// Its name in snake_case, e.g. `dead_lettered`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageOutcome::Handled => "handled",
            MessageOutcome::Skipped => "skipped",
            MessageOutcome::Retried => "retried",
            MessageOutcome::DeadLettered => "dead_lettered",
        }
    }
}

/// Told what a [`Consumer`] did, e.g. to count it and time it.
pub trait ConsumerObserver: Send + Sync + 'static {
    /// A message was settled (acked, naked or terminated) with `outcome`.
    fn settled(&self, outcome: MessageOutcome);

    /// A batch of `messages` was handled, committed and settled in `took`.
    fn batch(&self, messages: usize, took: Duration);
}

/// What to do with one message once the batch is decided.
#[derive(Debug, Clone)]
enum Decision {
    Ack,
    /// Ack a message handled before, without handling it.
    Skip,
    Retry(Duration),
    DeadLetter(String),
}

/// Runs a [`Handler`] on a durable consumer.
pub struct Consumer<H> {
    store: Store,
    js: jetstream::Context,
    spec: ConsumerSpec,
    handler: H,
    /// Aggregates with a message waiting for its retry: the message's stream sequence, its
    /// delay, and until when to hold the aggregate's later messages back.
    waiting: Mutex<HashMap<AggregateKey, Waiting>>,
    observer: Option<Arc<dyn ConsumerObserver>>,
}

impl<H> std::fmt::Debug for Consumer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("spec", &self.spec)
            .field("observed", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

type AggregateKey = (String, String);

#[derive(Debug, Clone, Copy)]
struct Waiting {
    stream_sequence: u64,
    delay: Duration,
    until: Instant,
}

impl<H: Handler> Consumer<H> {
    pub fn new(store: Store, js: jetstream::Context, spec: ConsumerSpec, handler: H) -> Self {
        Self {
            store,
            js,
            spec,
            handler,
            waiting: Mutex::default(),
            observer: None,
        }
    }

    /// Tells `observer` what becomes of every message and how long every batch takes.
    pub fn with_observer(mut self, observer: Arc<dyn ConsumerObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    fn observe(&self, outcome: MessageOutcome) {
        if let Some(observer) = &self.observer {
            observer.settled(outcome);
        }
    }

    /// Provisions the consumer, then handles messages until `shutdown`. The batch in hand when
    /// shutdown comes is finished, committed and acked before this returns. Fails if the
    /// consumer cannot be provisioned or its message stream ends (the consumer was deleted).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let consumer = provision::consumer(&self.js, &self.spec).await?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.spec.batch_size)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .with_context(|| format!("cannot pull from consumer {}", self.spec.name))?;
        let mut batches = messages.ready_chunks(self.spec.batch_size);
        tracing::info!(consumer = %self.spec.name, "consumer started");
        loop {
            let batch = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                batch = batches.next() => match batch {
                    Some(batch) => batch,
                    None => anyhow::bail!("the message stream of consumer {} ended", self.spec.name),
                },
            };
            let started = Instant::now();
            let mut messages = Vec::with_capacity(batch.len());
            for message in batch {
                match message {
                    Ok(message) => messages.push(message),
                    Err(e) => tracing::warn!(consumer = %self.spec.name, error = %e, "pull failed"),
                }
            }
            let count = messages.len();
            self.handle_batch(messages).await;
            if let Some(observer) = &self.observer
                && count > 0
            {
                observer.batch(count, started.elapsed());
            }
        }
        self.js.client().flush().await.ok();
        tracing::info!(consumer = %self.spec.name, "consumer stopped");
        Ok(())
    }

    async fn handle_batch(&self, messages: Vec<jetstream::Message>) {
        let mut received = Vec::with_capacity(messages.len());
        for message in messages {
            match Received::parse(&message) {
                Ok(parsed) => received.push((message, parsed)),
                Err(reason) => {
                    let attempts = message.info().map_or(0, |i| i.delivered);
                    self.dead_letter(&message, &reason, attempts).await;
                }
            }
        }
        if received.is_empty() {
            return;
        }

        match self.commit(&received).await {
            Ok(decisions) => self.settle(&received, decisions).await,
            // One message's effects cannot be stored (a value PostgreSQL refuses): find it by
            // committing each message alone, so that the others are not held back with it.
            Err(e) if e.is_data_error() && received.len() > 1 => {
                for one in received.chunks(1) {
                    match self.commit(one).await {
                        Ok(decisions) => self.settle(one, decisions).await,
                        Err(e) => self.not_committed(one, &e).await,
                    }
                }
            }
            Err(e) => self.not_committed(&received, &e).await,
        }
    }

    /// Decides the batch and commits it, rerunning it on a concurrency conflict.
    ///
    /// A batch of first deliveries is decided without asking the inbox first: such a message
    /// was handled before only when its event was published again (after a relay's crash,
    /// past JetStream's duplicate window, or by `chorus republish`). The inbox row that the
    /// commit writes for it then collides with the first one, the commit fails with nothing
    /// written, and the rerun asks the inbox. So the look-up is paid by the rare duplicate
    /// instead of by every batch.
    async fn commit(
        &self,
        received: &[(jetstream::Message, Received)],
    ) -> Result<Vec<Decision>, eventstore::StoreError> {
        const MAX_CONFLICT_RETRIES: u32 = 5;
        let mut look_up = received.iter().any(|(_, r)| r.delivered > 1);
        let mut round = 0;
        loop {
            round += 1;
            match self.decide(received, look_up).await {
                Err(e) if e.is_conflict() && round < MAX_CONFLICT_RETRIES => {
                    tracing::debug!(consumer = %self.spec.name, "conflict at commit; rerunning the batch");
                    look_up = true;
                }
                outcome => return outcome,
            }
        }
    }

    /// A message whose effects PostgreSQL refuses is dead-lettered; otherwise (the database is
    /// unreachable, conflicts persist) the messages are not at fault and come back later.
    async fn not_committed(
        &self,
        received: &[(jetstream::Message, Received)],
        error: &eventstore::StoreError,
    ) {
        if let [(message, parsed)] = received
            && error.is_data_error()
        {
            let reason = format!("its effects cannot be stored: {error}");
            self.dead_letter(message, &reason, i64::from(parsed.delivered))
                .await;
            return;
        }
        tracing::warn!(consumer = %self.spec.name, error = %error, "batch not committed; redelivering it later");
        let delay = self.spec.backoff.initial;
        for (message, _) in received {
            ack(message, AckKind::Nak(Some(delay))).await;
            self.observe(MessageOutcome::Retried);
        }
    }

    async fn settle(&self, received: &[(jetstream::Message, Received)], decisions: Vec<Decision>) {
        for ((message, parsed), decision) in received.iter().zip(decisions) {
            match decision {
                Decision::Ack => {
                    ack(message, AckKind::Ack).await;
                    self.observe(MessageOutcome::Handled);
                }
                Decision::Skip => {
                    ack(message, AckKind::Ack).await;
                    self.observe(MessageOutcome::Skipped);
                }
                Decision::Retry(delay) => {
                    ack(message, AckKind::Nak(Some(delay))).await;
                    self.observe(MessageOutcome::Retried);
                }
                Decision::DeadLetter(reason) => {
                    self.dead_letter(message, &reason, i64::from(parsed.delivered))
                        .await;
                }
            }
        }
    }

    /// Runs the handler on every new message of the batch and commits the unit of work. With
    /// `look_up`, the messages the inbox holds are skipped; without, every message is handled
    /// and a message handled before fails the commit ([`StoreError::InboxConflict`]).
    ///
    /// [`StoreError::InboxConflict`]: eventstore::StoreError::InboxConflict
    async fn decide(
        &self,
        received: &[(jetstream::Message, Received)],
        look_up: bool,
    ) -> Result<Vec<Decision>, eventstore::StoreError> {
        let ids: Vec<_> = received.iter().map(|(_, r)| r.event_id).collect();
        let handled = if look_up {
            self.store.handled(&self.spec.name, &ids).await?
        } else {
            HashSet::new()
        };
        // The position of each event's first copy in the batch: a second copy (a redelivery
        // that arrived with the first) shares its decision, so it is never acked while the
        // first waits for a retry.
        let mut first: HashMap<uuid::Uuid, usize> = HashMap::with_capacity(received.len());
        let mut waiting = self.waiting_now();
        let mut uow = UnitOfWork::new(&self.store);
        let mut decisions = Vec::with_capacity(received.len());
        for (_, message) in received {
            if handled.contains(&message.event_id) {
                tracing::debug!(consumer = %self.spec.name, event_id = %message.event_id, "handled before; skipped");
                decisions.push(Decision::Skip);
                continue;
            }
            if let Some(&index) = first.get(&message.event_id) {
                // Acked with the first, but handled once: the copy is skipped.
                let same = match &decisions[index] {
                    Decision::Ack => Decision::Skip,
                    other => other.clone(),
                };
                decisions.push(same);
                continue;
            }
            first.insert(message.event_id, decisions.len());
            let key = (message.aggregate_type.clone(), message.aggregate_id.clone());
            if let Some(ahead) = waiting.get(&key)
                && ahead.stream_sequence != message.stream_sequence
            {
                tracing::debug!(consumer = %self.spec.name, event_id = %message.event_id,
                    waiting_for = ahead.stream_sequence, "an earlier message of the aggregate waits; held back");
                decisions.push(Decision::Retry(ahead.delay));
                continue;
            }
            let mark = uow.mark();
            let span = tracing::info_span!(
                "consume",
                otel.name = %format_args!("consume {}", message.event_type),
                otel.kind = "consumer",
                otel.status_code = tracing::field::Empty,
                service = %self.spec.reactor,
                consumer = %self.spec.name,
                event_type = %message.event_type,
                event_id = %message.event_id,
                aggregate_id = %message.aggregate_id,
                delivered = message.delivered,
            );
            // The handler sees the message as a child of this span sees it; a copy is made
            // only when there is a trace to continue.
            let followed =
                crate::message::traced(&span, &message.metadata).map(|metadata| Received {
                    metadata,
                    ..message.clone()
                });
            let handled = self
                .handler
                .handle(&mut uow, followed.as_ref().unwrap_or(message))
                .instrument(span.clone())
                .await;
            let decision = match handled {
                Ok(()) => {
                    uow.record_handled(&self.spec.name, message.event_id);
                    Decision::Ack
                }
                Err(error) => {
                    span.record("otel.status_code", "ERROR");
                    uow.rollback_to(mark);
                    span.in_scope(|| self.on_failure(message, error))
                }
            };
            match decision {
                Decision::Retry(delay) => {
                    let until = Instant::now() + delay + self.spec.ack_wait;
                    let stream_sequence = message.stream_sequence;
                    waiting.insert(
                        key,
                        Waiting {
                            stream_sequence,
                            delay,
                            until,
                        },
                    );
                }
                _ => {
                    waiting.remove(&key);
                }
            }
            decisions.push(decision);
        }
        if !look_up {
            // A message handled before writes no inbox row when its handler fails (the
            // aggregate may refuse it the second time): ask the inbox about those, so that
            // such a copy is skipped rather than retried or dead-lettered.
            let failed: Vec<_> = received
                .iter()
                .zip(&decisions)
                .filter(|(_, decision)| !matches!(decision, Decision::Ack | Decision::Skip))
                .map(|((_, message), _)| message.event_id)
                .collect();
            if !failed.is_empty()
                && !self
                    .store
                    .handled(&self.spec.name, &failed)
                    .await?
                    .is_empty()
            {
                return Err(eventstore::StoreError::InboxConflict);
            }
        }
        uow.commit().await?;
        *self.lock_waiting() = waiting;
        Ok(decisions)
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, HashMap<AggregateKey, Waiting>> {
        // Replaced whole, never left half-updated: a poisoned map is still consistent.
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The aggregates still waiting, without those whose hold has run out.
    fn waiting_now(&self) -> HashMap<AggregateKey, Waiting> {
        let now = Instant::now();
        let mut waiting = self.lock_waiting().clone();
        waiting.retain(|_, w| w.until > now);
        waiting
    }

    fn on_failure(&self, message: &Received, error: HandlerError) -> Decision {
        let (e, attempts, backoff) = match error {
            HandlerError::Permanent(e) => return Decision::DeadLetter(format!("{e:#}")),
            HandlerError::Transient(e) => (e, self.spec.max_attempts, self.spec.backoff),
            HandlerError::Early(e) => (
                e,
                self.spec.max_attempts + EARLY_EXTRA_ATTEMPTS,
                Backoff {
                    initial: EARLY_RETRY,
                    max: self.spec.backoff.max,
                },
            ),
        };
        if message.delivered >= attempts {
            return Decision::DeadLetter(format!(
                "gave up after {} attempts: {e:#}",
                message.delivered
            ));
        }
        let delay = backoff.delay(message.delivered);
        tracing::info!(consumer = %self.spec.name, event_id = %message.event_id,
            attempt = message.delivered, ?delay, error = format!("{e:#}"), "handler failed; will retry");
        Decision::Retry(delay)
    }

    /// Copies `message` to the dead-letter stream with the reason, then terminates it. If the
    /// copy fails, the message is redelivered later instead: it is never dropped silently.
    async fn dead_letter(&self, message: &jetstream::Message, reason: &str, attempts: i64) {
        let info = message.info().ok();
        let stream = info.as_ref().map_or("", |i| i.stream).to_owned();
        let stream_sequence = info.as_ref().map_or(0, |i| i.stream_sequence);
        let mut map = message.headers.clone().unwrap_or_default();
        let reason: String = reason
            .chars()
            .filter(|c| !c.is_control())
            .take(2_000)
            .collect();
        map.insert(headers::DLQ_CONSUMER, self.spec.name.as_str());
        map.insert(headers::DLQ_ERROR, reason.as_str());
        map.insert(headers::DLQ_ATTEMPTS, attempts.to_string().as_str());
        map.insert(headers::DLQ_STREAM, stream.as_str());
        map.insert(
            headers::DLQ_STREAM_SEQUENCE,
            stream_sequence.to_string().as_str(),
        );
        map.insert(headers::DLQ_SUBJECT, message.subject.as_str());
        let dedup = format!("{}:{stream}:{stream_sequence}", self.spec.name);
        map.insert(headers::MSG_ID, dedup.as_str());

        let subject = dead_letter_subject(&self.spec.name);
        let copied = async {
            self.js
                .publish_with_headers(subject, map, message.payload.clone())
                .await?
                .await?;
            anyhow::Ok(())
        }
        .await;
        match copied {
            Ok(()) => {
                tracing::error!(consumer = %self.spec.name, stream, stream_sequence, attempts, reason, "message dead-lettered");
                ack(message, AckKind::Term).await;
                self.observe(MessageOutcome::DeadLettered);
            }
            Err(e) => {
                tracing::error!(consumer = %self.spec.name, stream, stream_sequence, error = %e, "cannot dead-letter; redelivering later");
                ack(message, AckKind::Nak(Some(self.spec.backoff.max))).await;
                self.observe(MessageOutcome::Retried);
            }
        }
    }
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        // The message will be redelivered after the ack wait; the inbox makes that harmless.
        tracing::warn!(error = %e, "ack failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let delays: Vec<_> = (1..=6).map(|n| backoff.delay(n).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    }
}
