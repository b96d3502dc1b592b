//! The service's own state, in the JetStream key-value bucket `notifications` (no database).
//!
//! Keys:
//! - `order.<order id>`: the [`OrderFacts`] learnt from the order's `OrderPlaced`.
//! - `notification.<kind>.<order id>`: a [`NotificationRecord`], created `sending` (atomically:
//!   one creator wins) before the sink is called and updated to `sent` after.
//! - `event.<event id>`: a [`Handled`] record, written when the event's handling is complete
//!   and before its message is acked: the inbox that makes a redelivery a no-op however late
//!   it comes. (A first delivery is not looked up: see the crate docs.)
//!
//! Every key is built from ids checked to be UUIDs, so it is always a valid key.

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::contract::{EventId, OrderId};
use crate::notification::{Notification, OrderFacts};

/// The bucket's name.
pub const BUCKET: &str = "notifications";

/// How an event's handling ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Handled {
    /// Its effects are recorded (or it asked for nothing new).
    Done,
    /// It was copied to the dead letters and terminated; events waiting for it go on.
    DeadLettered { reason: String },
}

/// Where the delivery of one notification stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// About to be handed to the sink, or handed to it without the outcome recorded.
    Sending,
    /// The sink took it.
    Sent,
}

/// The record of one notification, with the content that is (re)delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRecord {
    pub delivery: Delivery,
    pub notification: Notification,
}

/// The bucket, with typed access to its three kinds of keys.
#[derive(Debug, Clone)]
pub struct State {
    kv: kv::Store,
}

impl State {
    /// Creates the bucket, or updates it to this configuration: file storage, one value per
    /// key (history 1), nothing expires.
    pub async fn open(js: &jetstream::Context) -> anyhow::Result<Self> {
        let kv = js
            .create_or_update_key_value(kv::Config {
                bucket: BUCKET.to_owned(),
                description:
                    "The notifications service: orders' facts, notifications sent, events handled"
                        .to_owned(),
                history: 1,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create or update the key-value bucket {BUCKET}"))?;
        Ok(Self { kv })
    }

    /// The bucket's store, for inspection.
    pub fn store(&self) -> &kv::Store {
        &self.kv
    }

    pub async fn order(&self, order: &OrderId) -> anyhow::Result<Option<OrderFacts>> {
        Ok(self.read(&order_key(order)).await?.map(|(facts, _)| facts))
    }

    /// Records what an `OrderPlaced` said, unless the order is already known (the first
    /// `OrderPlaced` of an order is the one kept). Returns whether it was new.
    pub async fn learn_order(&self, order: &OrderId, facts: &OrderFacts) -> anyhow::Result<bool> {
        let key = order_key(order);
        match self
            .kv
            .create(&key, serde_json::to_vec(facts)?.into())
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot write {key}")),
        }
    }

    pub async fn handled(&self, event: &EventId) -> anyhow::Result<Option<Handled>> {
        Ok(self.read(&event_key(event)).await?.map(|(h, _)| h))
    }

    pub async fn record_handled(&self, event: &EventId, handled: &Handled) -> anyhow::Result<()> {
        let key = event_key(event);
        self.kv
            .put(&key, serde_json::to_vec(handled)?.into())
            .await
            .with_context(|| format!("cannot write {key}"))?;
        Ok(())
    }

    /// The record of the notification `key` (`<kind>.<order id>`) and its revision.
    pub async fn notification(
        &self,
        key: &str,
    ) -> anyhow::Result<Option<(NotificationRecord, u64)>> {
        self.read(&notification_key(key)).await
    }

    /// Records the intent to deliver `notification`, unless a record exists: then that record
    /// (and its content) stands. Returns the record in force, its revision, and whether this
    /// call created it.
    pub async fn begin(
        &self,
        notification: &Notification,
    ) -> anyhow::Result<(NotificationRecord, u64, bool)> {
        let key = notification_key(&notification.key);
        let record = NotificationRecord {
            delivery: Delivery::Sending,
            notification: notification.clone(),
        };
        match self
            .kv
            .create(&key, serde_json::to_vec(&record)?.into())
            .await
        {
            Ok(revision) => Ok((record, revision, true)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => self
                .read(&key)
                .await?
                .map(|(record, revision)| (record, revision, false))
                .with_context(|| format!("{key} exists and cannot be read")),
            Err(e) => Err(e).with_context(|| format!("cannot write {key}")),
        }
    }

    /// Marks the notification sent, if its record is still at `revision`; if another instance
    /// got there first the record already says so.
    pub async fn mark_sent(
        &self,
        notification: &Notification,
        revision: u64,
    ) -> anyhow::Result<()> {
        let key = notification_key(&notification.key);
        let record = NotificationRecord {
            delivery: Delivery::Sent,
            notification: notification.clone(),
        };
        match self
            .kv
            .update(&key, serde_json::to_vec(&record)?.into(), revision)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                match self.read::<NotificationRecord>(&key).await? {
                    Some((current, _)) if current.delivery == Delivery::Sent => Ok(()),
                    _ => Err(e).with_context(|| format!("{key} changed while it was being sent")),
                }
            }
            Err(e) => Err(e).with_context(|| format!("cannot write {key}")),
        }
    }

    async fn read<T: DeserializeOwned>(&self, key: &str) -> anyhow::Result<Option<(T, u64)>> {
        let entry = self
            .kv
            .entry(key)
            .await
            .with_context(|| format!("cannot read {key}"))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let value = serde_json::from_slice(&entry.value)
                    .with_context(|| format!("{key} holds a value this service did not write"))?;
                Ok(Some((value, entry.revision)))
            }
            _ => Ok(None),
        }
    }
}

fn order_key(order: &OrderId) -> String {
    format!("order.{order}")
}

fn event_key(event: &EventId) -> String {
    format!("event.{event}")
}

fn notification_key(key: &str) -> String {
    format!("notification.{key}")
}
