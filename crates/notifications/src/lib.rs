//! The notifications service: tells a customer that their order is confirmed and, later, that
//! it has shipped, exactly one message of each kind per order.
//!
//! It is a consumer another team would write from the published contract alone
//! (`events/asyncapi.yaml`, `events/schemas/`): it depends on no Chorus crate, reads the
//! envelope and the three payloads it needs with its own types ([`contract`]), keeps its state
//! in its own JetStream key-value bucket ([`state`]) and hands messages to a [`sink::Sink`]
//! port. It must not decide anything about orders: it only reports what ordering decided.
//!
//! # Guarantees
//!
//! Its durable consumer `notifications-from-ordering` reads `OrderPlaced`, `OrderConfirmed`
//! and `OrderShipped` from stream `ORDERING` ([`service`]). Deliveries are at least once, so:
//!
//! - **An event is handled once**: its `Chorus-Event-Id` is recorded in the bucket after its
//!   effects and before its ack; a redelivery finds it there and is acked without effect. A
//!   message's first delivery is not looked up, which saves a key-value read per message: the
//!   same event published again under another `Nats-Msg-Id` is handled again, and its effects
//!   are idempotent by themselves (an order's facts and a notification's record are created
//!   once; a notification recorded `sent` is not sent again). An event dead-lettered before
//!   is so tried again when it is published again.
//! - **A notification is sent once**: its key is `<kind>.<order id>`. Before the sink is
//!   called the intent is created in the bucket (`sending`, an atomic create: one writer
//!   wins and fixes the content), after it the record becomes `sent`. Crash windows:
//!   - before the intent, or between the intent and the sink: nothing reached the customer;
//!     the redelivery sends it;
//!   - after the sink took it and before `sent` is recorded: the redelivery finds the intent
//!     and delivers the same notification again as a resumed delivery
//!     ([`sink::Attempt::Resumed`]), which the sink drops by key (the file sink looks for the
//!     key in its file). This is the one window where exactly-once rests on the sink: a sink
//!     that forgets keys (the log sink after a restart, or beyond the keys it remembers) may
//!     repeat a message here, and only here;
//!   - after `sent` or after the event record, before the ack: the redelivery sees the record
//!     and sends nothing, whatever sink it has.
//! - **Order within an order**: a confirmation whose `OrderPlaced` is not handled yet, and a
//!   shipping message whose order's `OrderConfirmed` (earlier by `Chorus-Sequence`) is on the
//!   stream but not handled yet, are nak'd with a backoff until it is. Such reordering happens
//!   only on redeliveries (retries, restarts); the stream itself keeps an order's events in order.
//! - **No silent loss**: a message that can never be handled is copied to
//!   `deadletter.notifications-from-ordering` with its reason before it is terminated; a
//!   schema version this build does not know is logged and left for retry, never acked.
//!
//! Messages are handled [`service::Options::concurrency`] orders at a time, an order's own
//! messages one at a time in delivery order ([`service`]): a message costs a few key-value
//! round trips and a notification a sink call, so one message at a time fell behind the
//! events of 200 orders a second.
//!
//! Its health (`chorus.notifications.health`, and `GET /readyz` with `NOTIFICATIONS_HTTP_ADDR`)
//! and its Prometheus metrics (`GET /metrics`) are in [`observe`].

pub mod config;
pub mod contract;
pub mod notification;
pub mod observe;
pub mod service;
pub mod sink;
pub mod state;

pub use config::{Config, SinkConfig};
pub use notification::{Kind, Notification};
pub use observe::Observer;
pub use service::{Options, Service, connect};
pub use sink::{Attempt, FileSink, LogSink, Sink};
