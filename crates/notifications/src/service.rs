//! The durable consumer and what it does with each message.
//!
//! Messages are handled [`Options::concurrency`] orders at a time: each message goes to the lane
//! of its order (by the order id in its subject), and a lane handles its messages one at a
//! time, in the order the consumer delivered them, so an order's events are handled in their
//! order while other orders' go on beside them. Each message ends in exactly one decision:
//!
//! | outcome | decision |
//! |---|---|
//! | handled, or handled before (its event id is in the bucket) | ack (confirmed by the server) |
//! | waits for an earlier event of its order not handled yet | nak, redelivered after a backoff |
//! | the bucket, the stream or the sink failed | nak, redelivered after a backoff, without limit |
//! | a schema version this service does not know | nak, redelivered every [`Options::unknown_version_delay`] |
//! | cannot ever be handled (bad envelope, bad payload, no `OrderPlaced` after [`Options::max_wait_attempts`]) | copied to `deadletter.notifications-from-ordering`, then terminated |
//!
//! An unknown version is left for retry rather than terminated: the contract keeps every
//! published version, so a newer build of this service will read it, and the customer's
//! message is late rather than lost. Transient failures are retried without limit for the same
//! reason: a sink that is down for an hour must not turn an hour of notifications into dead
//! letters.

use std::future::Future;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{self, ErrorCode, Message};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::contract::{
    self, CONSUMER, Envelope, EnvelopeError, EventId, EventType, OrderConfirmed, OrderId,
    OrderPlaced, OrderShipped, Payload, STREAM, headers,
};
use crate::notification::{self, Kind, Notification, OrderFacts};
use crate::observe::{Observer, Outcome};
use crate::sink::{Attempt, Sink};
use crate::state::{Delivery, Handled, State};

/// The oldest nats-server this service runs on: the contract's servers are "2.12 or newer",
/// and the consumer's several filter subjects are silently ignored by servers before 2.10.
pub const MIN_SERVER_VERSION: (u32, u32, u32) = (2, 12, 0);

/// How the consumer is provisioned and paced.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long the server waits for an ack before redelivering. Default 30 s.
    pub ack_wait: Duration,
    /// At most this many messages delivered and not yet acked. Default 1,000.
    pub max_ack_pending: i64,
    /// Messages pulled per request. Default 100.
    pub batch: usize,
    /// Orders whose messages are handled at once (lanes), at least 1. Default 32.
    pub concurrency: usize,
    /// Delay of the first redelivery after a nak; it doubles up to `max_retry_delay`.
    /// Default 1 s.
    pub retry_delay: Duration,
    /// Default 1 min.
    pub max_retry_delay: Duration,
    /// Delay before a message of an unknown schema version is offered again. Default 5 min.
    pub unknown_version_delay: Duration,
    /// Deliveries a confirmation or shipping message waits for an `OrderPlaced` that is not on
    /// the stream before it is dead-lettered. Default 10 (about four minutes with the default
    /// delays).
    pub max_wait_attempts: i64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1_000,
            batch: 100,
            concurrency: 32,
            retry_delay: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(60),
            unknown_version_delay: Duration::from_secs(300),
            max_wait_attempts: 10,
        }
    }
}

impl Options {
    /// The delay before the redelivery that follows delivery number `delivered` (from 1).
    pub fn retry_after(&self, delivered: i64) -> Duration {
        let doublings = u32::try_from(delivered.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        self.retry_delay
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(self.max_retry_delay)
    }
}

/// Connects as `notifications` and refuses a server older than [`MIN_SERVER_VERSION`]. A
/// `user:password@` in the URL is sent as the NATS user (async-nats parses it from the URL but
/// does not send it by itself); replies come on the inbox prefix `_INBOX_notifications`, the
/// only one its user may read on a secured server (`nats/auth.conf`).
pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name("notifications")
        .custom_inbox_prefix("_INBOX_notifications");
    let mut shown = url.to_owned();
    if let Ok(addr) = url.parse::<async_nats::ServerAddr>()
        && let (Some(user), Some(password)) = (addr.username(), addr.password())
    {
        shown = url.replace(&format!(":{password}@"), ":***@");
        options = options.user_and_password(user.to_owned(), password.to_owned());
    }
    let client = options
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {shown}"))?;
    check_server_version(&client.server_info().version)?;
    Ok(client)
}

/// Fails, saying what is needed, when `version` is older than [`MIN_SERVER_VERSION`].
pub fn check_server_version(version: &str) -> anyhow::Result<()> {
    let core = version.split(['-', '+']).next().unwrap_or(version);
    let parts: Vec<u32> = core
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow!("cannot read the nats-server version {version:?}"))?;
    let [major, minor, patch] = parts[..] else {
        bail!("cannot read the nats-server version {version:?}");
    };
    let (a, b, c) = MIN_SERVER_VERSION;
    if (major, minor, patch) < (a, b, c) {
        bail!(
            "nats-server {version} is too old: the notifications service needs {a}.{b}.{c} or newer"
        );
    }
    Ok(())
}

/// Why a message was not acked.
#[derive(Debug)]
enum Failure {
    /// An earlier event of the same order must be handled first.
    Wait(String),
    /// The bucket, the stream or the sink failed; the message is not at fault.
    Transient(anyhow::Error),
    /// A payload version this build does not read.
    UnknownVersion { event_type: EventType, version: u32 },
    /// The message can never be handled.
    Permanent {
        reason: String,
        event: Option<EventId>,
    },
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Transient(e)
    }
}

/// What became of the latest event of one type of an order, as seen from a later event.
#[derive(Debug)]
enum Predecessor {
    /// There is none before the later event.
    Absent,
    /// There is one and this service has not handled it yet.
    Pending,
    Handled,
    /// There is one and it could not be handled.
    Unhandleable(String),
}

/// Opens the `ORDERING` stream, waiting for the ordering context to create it.
async fn ordering_stream(js: &jetstream::Context) -> anyhow::Result<Stream> {
    let mut delay = Duration::from_millis(250);
    let mut attempts = 1;
    loop {
        match js.get_stream(STREAM).await {
            Ok(stream) => return Ok(stream),
            Err(e)
                if matches!(e.kind(), GetStreamErrorKind::JetStream(e)
                    if e.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
            {
                tracing::warn!(
                    stream = STREAM,
                    attempts,
                    "waiting for stream {STREAM} (the ordering context creates it when it \
                     starts): {attempts} tries, the next in {delay:?}"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempts += 1;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot open stream {STREAM}")),
        }
    }
}

/// The notifications service: its consumer, its bucket and its sink.
#[derive(Debug)]
pub struct Service<S> {
    js: jetstream::Context,
    stream: Stream,
    consumer: PullConsumer,
    state: State,
    sink: S,
    options: Options,
    observer: Observer,
}

impl<S: Sink> Service<S> {
    /// Opens the bucket and provisions the durable consumer (created, or updated to this
    /// configuration: running it again changes nothing). The `ORDERING` stream belongs to the
    /// ordering context, which creates it when it starts: until it exists, this waits for it,
    /// asking again after 250 ms, then twice as long each time up to 5 s, with a warning each
    /// time. Any other failure to open it is an error at once.
    pub async fn start(
        client: async_nats::Client,
        sink: S,
        options: Options,
    ) -> anyhow::Result<Self> {
        let js = jetstream::new(client);
        let stream = ordering_stream(&js).await?;
        let state = State::open(&js).await?;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(CONSUMER.to_owned()),
                description: Some(
                    "The notifications service: order confirmed and order shipped messages"
                        .to_owned(),
                ),
                // From the start of the stream: an order confirmed now may have been placed
                // before this consumer existed, and its OrderPlaced holds whom to address.
                // The price: a first start on a stream with history notifies every confirmed
                // or shipped order still in it.
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: options.ack_wait,
                max_ack_pending: options.max_ack_pending,
                filter_subjects: contract::filter_subjects(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create or update consumer {CONSUMER} on {STREAM}"))?;
        let observer = Observer::new(js.clone())?;
        Ok(Self {
            js,
            stream,
            consumer,
            state,
            sink,
            options,
            observer,
        })
    }

    /// Its health and metrics (see [`crate::observe`]), to serve over NATS and HTTP.
    pub fn observer(&self) -> Observer {
        self.observer.clone()
    }

    /// The service's key-value state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Handles messages until `shutdown` resolves; the messages already handed to the lanes
    /// are finished and acked first. Fails if the consumer's message stream ends (the consumer
    /// was deleted).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let mut messages = self
            .consumer
            .stream()
            .max_messages_per_batch(self.options.batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .with_context(|| format!("cannot pull from consumer {CONSUMER}"))?;
        let service = Arc::new(self);
        let mut lanes = JoinSet::new();
        let queues: Vec<mpsc::Sender<Message>> = (0..service.options.concurrency.max(1))
            .map(|_| {
                let (queue, mut queued) = mpsc::channel::<Message>(LANE_QUEUE);
                let service = Arc::clone(&service);
                lanes.spawn(async move {
                    while let Some(message) = queued.recv().await {
                        service.process(&message).await;
                    }
                });
                queue
            })
            .collect();
        tokio::pin!(shutdown);
        tracing::info!(
            consumer = CONSUMER,
            lanes = queues.len(),
            "notifications service started"
        );
        service.observer.set_running(true);
        let ended = loop {
            let message = tokio::select! {
                biased;
                () = &mut shutdown => {
                    service.observer.set_stopping();
                    break Ok(());
                }
                message = messages.next() => match message {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => {
                        tracing::warn!(consumer = CONSUMER, error = %e, "pull failed");
                        continue;
                    }
                    None => break Err(anyhow!("the message stream of consumer {CONSUMER} ended")),
                },
            };
            let lane = lane_of(&message.subject, queues.len());
            if queues[lane].send(message).await.is_err() {
                break Err(anyhow!("lane {lane} of consumer {CONSUMER} stopped"));
            }
        };
        // The lanes finish what they were handed, then end with their queues.
        drop(queues);
        let mut failed = None;
        while let Some(joined) = lanes.join_next().await {
            if let Err(e) = joined {
                failed.get_or_insert(e);
            }
        }
        service.observer.set_running(false);
        if let Some(e) = failed {
            return Err(e).context("a lane of the notifications service failed");
        }
        ended?;
        service.js.client().flush().await.ok();
        tracing::info!(consumer = CONSUMER, "notifications service stopped");
        Ok(())
    }

    async fn process(&self, message: &Message) {
        let info = message.info().ok();
        let delivered = info.as_ref().map_or(1, |i| i.delivered);
        let stream_sequence = info.as_ref().map_or(0, |i| i.stream_sequence);
        let span =
            tracing::info_span!("message", subject = %message.subject, stream_sequence, delivered);
        let started = Instant::now();
        let outcome = self.settle(message, delivered).instrument(span).await;
        self.observer.settled(outcome, started);
    }

    /// Handles the message and acks, naks or dead-letters it.
    async fn settle(&self, message: &Message, delivered: i64) -> Outcome {
        match self.handle(message, delivered).await {
            Ok(()) => {
                if let Err(e) = message.double_ack().await {
                    // Redelivered after the ack wait; the event record makes that a no-op.
                    tracing::warn!(error = %e, "ack not confirmed");
                }
                Outcome::Handled
            }
            Err(Failure::Wait(reason)) => {
                let delay = self.options.retry_after(delivered);
                tracing::info!(reason, ?delay, "waiting for an earlier event of the order");
                send_ack(message, AckKind::Nak(Some(delay))).await;
                Outcome::Retried
            }
            Err(Failure::Transient(e)) => {
                let delay = self.options.retry_after(delivered);
                tracing::warn!(
                    error = format!("{e:#}"),
                    ?delay,
                    "not handled; retrying later"
                );
                send_ack(message, AckKind::Nak(Some(delay))).await;
                Outcome::Retried
            }
            Err(Failure::UnknownVersion {
                event_type,
                version,
            }) => {
                let delay = self.options.unknown_version_delay;
                tracing::error!(
                    %event_type,
                    version,
                    known = event_type.schema_version(),
                    ?delay,
                    "unknown schema version: left for a build that reads it"
                );
                send_ack(message, AckKind::Nak(Some(delay))).await;
                Outcome::Retried
            }
            Err(Failure::Permanent { reason, event }) => {
                self.dead_letter(message, &reason, event.as_ref(), delivered)
                    .await
            }
        }
    }

    async fn handle(&self, message: &Message, delivered: i64) -> Result<(), Failure> {
        let envelope = match Envelope::parse(&message.subject, message.headers.as_ref()) {
            Ok(envelope) => envelope,
            Err(EnvelopeError::NotRead(event_type)) => {
                tracing::debug!(event_type, "not an event this service reads");
                return Ok(());
            }
            Err(e) => {
                let event = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(headers::EVENT_ID))
                    .and_then(|v| EventId::parse(v.as_str()).ok());
                return Err(Failure::Permanent {
                    reason: format!("unreadable envelope: {e}"),
                    event,
                });
            }
        };
        if envelope.schema_version != envelope.event_type.schema_version() {
            return Err(Failure::UnknownVersion {
                event_type: envelope.event_type,
                version: envelope.schema_version,
            });
        }
        // A message's first delivery does not look for its event in the bucket: only a
        // message of an event published again can find it there, and what the event asks for
        // is done at most once anyway (the order's facts and each notification's record are
        // created once). A redelivery does look: it saves the work.
        if delivered > 1 && self.state.handled(&envelope.event_id).await?.is_some() {
            tracing::debug!(event_id = %envelope.event_id, "event handled before");
            return Ok(());
        }
        match envelope.event_type {
            EventType::OrderPlaced => {
                let placed: OrderPlaced = payload(&envelope, &message.payload)?;
                let facts = OrderFacts::from(&placed);
                if !self.state.learn_order(&envelope.order_id, &facts).await? {
                    if self.state.order(&envelope.order_id).await?.as_ref() == Some(&facts) {
                        tracing::debug!(order_id = %envelope.order_id, "order known before");
                    } else {
                        tracing::warn!(order_id = %envelope.order_id, event_id = %envelope.event_id,
                            "a second OrderPlaced for a known order; the first one's facts stay");
                    }
                }
            }
            EventType::OrderConfirmed => {
                payload::<OrderConfirmed>(&envelope, &message.payload)?;
                self.notify(Kind::OrderConfirmed, &envelope, delivered)
                    .await?;
            }
            EventType::OrderShipped => {
                payload::<OrderShipped>(&envelope, &message.payload)?;
                self.confirmation_settled(&envelope).await?;
                self.notify(Kind::OrderShipped, &envelope, delivered)
                    .await?;
            }
        }
        self.state
            .record_handled(&envelope.event_id, &Handled::Done)
            .await?;
        Ok(())
    }

    /// Sends the one notification of `kind` for the envelope's order, unless it was sent.
    ///
    /// The intent is recorded first (`sending`, created atomically), then the sink is called
    /// with the recorded content, then the record is marked `sent`. A delivery interrupted
    /// anywhere is resumed from the record on redelivery: before the sink took it, it is
    /// delivered now; after, the sink's idempotency by key keeps it from reaching the
    /// customer twice.
    async fn notify(&self, kind: Kind, envelope: &Envelope, delivered: i64) -> Result<(), Failure> {
        let order = &envelope.order_id;
        let Some(facts) = self.state.order(order).await? else {
            return Err(self.order_unknown(envelope, delivered).await);
        };
        let key = notification::key(kind, order);
        let composed = Notification::compose(kind, order, &facts, envelope.event_id.as_str());
        let (record, revision, created) = self.state.begin(&composed).await?;
        if record.delivery == Delivery::Sent {
            tracing::debug!(key, "notification sent before");
            return Ok(());
        }
        let attempt = if created {
            Attempt::First
        } else {
            tracing::info!(key, "resuming an interrupted delivery");
            Attempt::Resumed
        };
        let span = tracing::info_span!("notification", kind = %kind, key, order_id = %order);
        self.sink
            .deliver(&record.notification, attempt)
            .instrument(span)
            .await
            .with_context(|| format!("the sink did not take {key}"))?;
        self.observer.sent(kind);
        self.state.mark_sent(&record.notification, revision).await?;
        tracing::info!(key, "notification sent");
        Ok(())
    }

    /// Why an event for an order whose facts are not in the bucket cannot go on now.
    ///
    /// When the order's `OrderPlaced` is on the stream and not handled yet, the event waits
    /// for it as long as it takes: it will be handled. When it is not on the stream (the
    /// publisher keeps an order's events in order, so it was removed, or is being published
    /// again after the stream was lost), the event waits [`Options::max_wait_attempts`]
    /// deliveries for it to appear, then is dead-lettered: no one can be addressed.
    async fn order_unknown(&self, envelope: &Envelope, delivered: i64) -> Failure {
        let order = &envelope.order_id;
        match self
            .predecessor(order, EventType::OrderPlaced, envelope.sequence)
            .await
        {
            Ok(Predecessor::Pending) => Failure::Wait(format!(
                "the OrderPlaced of order {order} is not handled yet"
            )),
            Ok(Predecessor::Absent) if delivered < self.options.max_wait_attempts => {
                Failure::Wait(format!("order {order} has no OrderPlaced on {STREAM} yet"))
            }
            Ok(Predecessor::Absent) => Failure::Permanent {
                reason: format!(
                    "no OrderPlaced of order {order} precedes it on {STREAM}: no customer to address"
                ),
                event: Some(envelope.event_id.clone()),
            },
            Ok(Predecessor::Unhandleable(reason)) => Failure::Permanent {
                reason: format!("the OrderPlaced of order {order} could not be handled: {reason}"),
                event: Some(envelope.event_id.clone()),
            },
            Ok(Predecessor::Handled) => Failure::Permanent {
                reason: format!(
                    "the OrderPlaced of order {order} is handled but its facts are not in the bucket"
                ),
                event: Some(envelope.event_id.clone()),
            },
            Err(e) => Failure::Transient(e),
        }
    }

    /// A shipped message waits for the confirmation of its order when the stream holds one
    /// not handled yet, so that a customer never hears "shipped" before "confirmed" (the
    /// confirmation may be waiting for a retry while later messages go on).
    async fn confirmation_settled(&self, envelope: &Envelope) -> Result<(), Failure> {
        let order = &envelope.order_id;
        let key = notification::key(Kind::OrderConfirmed, order);
        if let Some((record, _)) = self.state.notification(&key).await?
            && record.delivery == Delivery::Sent
        {
            return Ok(());
        }
        match self
            .predecessor(order, EventType::OrderConfirmed, envelope.sequence)
            .await?
        {
            Predecessor::Pending => Err(Failure::Wait(format!(
                "the OrderConfirmed of order {order} is not handled yet"
            ))),
            Predecessor::Absent | Predecessor::Handled | Predecessor::Unhandleable(_) => Ok(()),
        }
    }

    /// Looks on the stream for the latest `event_type` event of `order` and tells whether it
    /// precedes the event of sequence `before` (by `Chorus-Sequence`, the order's own order)
    /// and whether it was handled.
    async fn predecessor(
        &self,
        order: &OrderId,
        event_type: EventType,
        before: u64,
    ) -> anyhow::Result<Predecessor> {
        let subject = contract::event_subject(order, event_type);
        let message = match self.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => message,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                return Ok(Predecessor::Absent);
            }
            Err(e) => return Err(e).with_context(|| format!("cannot look up {subject}")),
        };
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
        let Some(event) = header(headers::EVENT_ID).and_then(|id| EventId::parse(&id).ok()) else {
            return Ok(Predecessor::Unhandleable(format!(
                "the message at {STREAM} sequence {} has no readable event id",
                message.sequence
            )));
        };
        if let Some(sequence) = header(headers::SEQUENCE).and_then(|s| s.parse::<u64>().ok())
            && sequence >= before
        {
            return Ok(Predecessor::Absent);
        }
        Ok(match self.state.handled(&event).await? {
            None => Predecessor::Pending,
            Some(Handled::Done) => Predecessor::Handled,
            Some(Handled::DeadLettered { reason }) => Predecessor::Unhandleable(reason),
        })
    }

    /// Copies the message to the dead letters with why, records its event as given up on (so
    /// the order's later events stop waiting for it), then terminates it. If the copy cannot
    /// be made, the message comes back later: nothing is dropped unseen.
    async fn dead_letter(
        &self,
        message: &Message,
        reason: &str,
        event: Option<&EventId>,
        attempts: i64,
    ) -> Outcome {
        let info = message.info().ok();
        let stream = info.as_ref().map_or(STREAM, |i| i.stream).to_owned();
        let stream_sequence = info.as_ref().map_or(0, |i| i.stream_sequence);
        let reason: String = reason
            .chars()
            .filter(|c| !c.is_control())
            .take(2_000)
            .collect();
        let mut map = message.headers.clone().unwrap_or_default();
        map.insert(headers::DLQ_CONSUMER, CONSUMER);
        map.insert(headers::DLQ_ERROR, reason.as_str());
        map.insert(headers::DLQ_ATTEMPTS, attempts.to_string().as_str());
        map.insert(headers::DLQ_STREAM, stream.as_str());
        map.insert(
            headers::DLQ_STREAM_SEQUENCE,
            stream_sequence.to_string().as_str(),
        );
        map.insert(headers::DLQ_SUBJECT, message.subject.as_str());
        // One dead letter per stream message, even if this is tried again.
        let dedup = format!("{CONSUMER}:{stream}:{stream_sequence}");
        map.insert(headers::MSG_ID, dedup.as_str());
        let copied = async {
            self.js
                .publish_with_headers(
                    contract::dead_letter_subject(),
                    map,
                    message.payload.clone(),
                )
                .await?
                .await?;
            if let Some(event) = event {
                self.state
                    .record_handled(
                        event,
                        &Handled::DeadLettered {
                            reason: reason.clone(),
                        },
                    )
                    .await?;
            }
            anyhow::Ok(())
        }
        .await;
        match copied {
            Ok(()) => {
                tracing::error!(reason, "message dead-lettered");
                send_ack(message, AckKind::Term).await;
                Outcome::DeadLettered
            }
            Err(e) => {
                let delay = self.options.max_retry_delay;
                tracing::error!(
                    reason,
                    error = format!("{e:#}"),
                    ?delay,
                    "cannot dead-letter the message; offering it again later"
                );
                send_ack(message, AckKind::Nak(Some(delay))).await;
                Outcome::Retried
            }
        }
    }
}

/// Messages a lane holds beyond the one it is handling.
const LANE_QUEUE: usize = 4;

/// The lane of a message: by its order id, the third token of `ordering.order.<order id>.<type>`
/// (the whole subject when it has none; such a message is dead-lettered anyway).
fn lane_of(subject: &str, lanes: usize) -> usize {
    let order = subject.split('.').nth(2).unwrap_or(subject);
    let mut hasher = DefaultHasher::new();
    order.hash(&mut hasher);
    // The remainder is below `lanes`, a usize.
    usize::try_from(hasher.finish() % lanes as u64).unwrap_or(0)
}

/// Reads the payload of a message whose envelope says it is a `P`, and checks that it is about
/// the envelope's order.
fn payload<P: Payload>(envelope: &Envelope, bytes: &[u8]) -> Result<P, Failure> {
    let permanent = |reason: String| Failure::Permanent {
        reason,
        event: Some(envelope.event_id.clone()),
    };
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| permanent(format!("the payload is not JSON: {e}")))?;
    let order_id = value.get("order_id").and_then(|v| v.as_str());
    if order_id.is_some_and(|id| id != envelope.order_id.as_str()) {
        return Err(permanent(format!(
            "the payload's order_id {order_id:?} is not the envelope's {}",
            envelope.order_id
        )));
    }
    serde_json::from_value(value).map_err(|e| {
        permanent(format!(
            "the payload is not a {} v{}: {e}",
            P::EVENT_TYPE,
            P::SCHEMA_VERSION
        ))
    })
}

async fn send_ack(message: &Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        // The server redelivers after the ack wait.
        tracing::warn!(error = %e, ?kind, "ack not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_up_to_the_maximum() {
        let options = Options::default();
        let delays: Vec<u64> = [1, 2, 3, 6, 7, 100, 0, -3]
            .into_iter()
            .map(|n| options.retry_after(n).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 32, 60, 60, 1, 1]);
    }

    #[test]
    fn an_orders_messages_share_a_lane_and_orders_spread_over_all_lanes() {
        let order = "0190f5c2-7d3e-7c1a-9a57-000000000001";
        let lane = lane_of(&format!("ordering.order.{order}.OrderPlaced"), 32);
        for event_type in ["OrderConfirmed", "OrderShipped"] {
            assert_eq!(
                lane_of(&format!("ordering.order.{order}.{event_type}"), 32),
                lane
            );
        }
        let used: std::collections::BTreeSet<usize> = (0..1_000)
            .map(|n| lane_of(&format!("ordering.order.{n:036}.OrderPlaced"), 32))
            .collect();
        assert_eq!(used.len(), 32, "some lane is never used");
        assert_eq!(lane_of("not-a-subject", 1), 0);
    }

    #[test]
    fn refuses_servers_older_than_2_12() {
        for old in ["2.9.10", "2.11.9", "1.0.0"] {
            let err = check_server_version(old).unwrap_err().to_string();
            assert!(err.contains("too old"), "{old}: {err}");
        }
        for ok in ["2.12.0", "2.15.1", "3.0.0-beta.1"] {
            check_server_version(ok).unwrap();
        }
        assert!(check_server_version("garbage").is_err());
    }
}
