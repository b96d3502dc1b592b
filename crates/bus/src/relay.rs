//! The outbox relay: publishes a context's committed events to its JetStream stream.
//!
//! **One active relay per store.** A relay first takes a PostgreSQL advisory lock on a
//! connection of its own and does all its outbox work on that connection. The others wait
//! for the lock; if the active relay dies, its session ends, the lock is released, and one of
//! them takes over. (Leasing rows with `FOR UPDATE SKIP LOCKED` would let two relays publish
//! parts of one aggregate's history in parallel, out of order.)
//!
//! **Exactly once in the stream.** Each event is published with `Nats-Msg-Id` = its event id
//! and removed from the outbox only after JetStream acknowledged it. A relay that dies between
//! the two leaves the rows; the next one publishes them again and JetStream drops the
//! duplicates (within its duplicate window; consumers' inboxes cover the rest).
//!
//! **Per-aggregate order, pipelined.** A batch is split into waves: wave *k* holds the *k*-th
//! event of each aggregate in the batch. All publishes of a wave are in flight at once; the
//! next wave starts when every ack of this one is in. A failed publish stops the batch, so no
//! event is ever published before an earlier event of its aggregate is acknowledged.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use events::naming::StreamName;
use eventstore::{OUTBOX_CHANNEL, Store, StoredEvent};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::message::event_headers;

/// Tuning of a relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Outbox rows read and published per round.
    pub batch_size: i64,
    /// How often to look at the outbox when no notification arrives.
    pub poll_interval: Duration,
    /// Pause after a failure, and between attempts to take the lock.
    pub retry_delay: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 1_000,
            poll_interval: Duration::from_secs(1),
            retry_delay: Duration::from_millis(500),
        }
    }
}

/// What a publish round achieved.
#[derive(Debug, Default)]
pub struct Published {
    /// Positions of the events JetStream acknowledged.
    pub acked: Vec<i64>,
    /// Why the round stopped early, if it did.
    pub failure: Option<anyhow::Error>,
}

/// Drains one context's outbox into its stream.
#[derive(Debug, Clone)]
pub struct Relay {
    store: Store,
    js: jetstream::Context,
    stream: StreamName,
    config: RelayConfig,
}

impl Relay {
    pub fn new(store: Store, js: jetstream::Context, stream: StreamName) -> Self {
        Self {
            store,
            js,
            stream,
            config: RelayConfig::default(),
        }
    }

    pub fn with_config(mut self, config: RelayConfig) -> Self {
        self.config = config;
        self
    }

    /// Runs until `shutdown`: waits for the lock, then publishes whatever the outbox holds,
    /// woken by LISTEN/NOTIFY or by the poll interval. Failures are logged and retried.
    pub async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.lead(&shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(stream = %self.stream.name(), error = format!("{e:#}"), "relay failed; starting over");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(self.config.retry_delay) => {}
                    }
                }
            }
        }
    }

    /// Holds the lock and relays until shutdown (`Ok`) or a database failure (`Err`).
    async fn lead(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect_with(&self.store.pool().connect_options())
            .await
            .context("relay cannot connect to the event store")?;
        let key = lock_key(&self.stream);
        loop {
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut conn)
                .await?;
            if locked {
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.config.retry_delay) => {}
            }
        }
        tracing::info!(stream = %self.stream.name(), "relay is active");

        // A pool of its own: a listener holds its connection for as long as it listens, which
        // would otherwise take one from the store's pool (and its group commit).
        let options = self.store.pool().connect_options();
        let listening = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.as_ref().clone())
            .await?;
        let mut listener = PgListener::connect_with(&listening).await?;
        listener.listen(OUTBOX_CHANNEL).await?;
        loop {
            self.drain(&mut conn, shutdown).await?;
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                notified = listener.recv() => { notified?; }
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    /// Publishes outbox batches until a read finds the outbox empty, or shutdown is asked for.
    async fn drain(
        &self,
        conn: &mut PgConnection,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        while !shutdown.is_cancelled() {
            let batch = Store::outbox_batch(conn, self.config.batch_size).await?;
            if batch.is_empty() {
                return Ok(());
            }
            let published = self.publish(&batch).await;
            Store::outbox_remove(conn, &published.acked).await?;
            if let Some(failure) = published.failure {
                tracing::warn!(stream = %self.stream.name(), error = format!("{failure:#}"), "publish failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(self.config.retry_delay) => {}
                }
            }
        }
        Ok(())
    }

    /// Publishes `batch` (in outbox order) wave by wave and reports what was acknowledged.
    /// It does not touch the outbox.
    pub async fn publish(&self, batch: &[StoredEvent]) -> Published {
        let mut published = Published::default();
        for wave in waves(batch) {
            let mut pending = Vec::with_capacity(wave.len());
            for event in wave {
                match self.send(event).await {
                    Ok(ack) => pending.push((event.position, ack)),
                    Err(e) => {
                        published.failure = Some(e);
                        break;
                    }
                }
            }
            for (position, ack) in pending {
                match ack.await {
                    Ok(_) => published.acked.push(position),
                    Err(e) => {
                        published.failure.get_or_insert_with(|| {
                            anyhow!(e).context(format!("no ack for event at position {position}"))
                        });
                    }
                }
            }
            if published.failure.is_some() {
                break;
            }
        }
        published
    }

    async fn send(
        &self,
        event: &StoredEvent,
    ) -> anyhow::Result<jetstream::context::PublishAckFuture> {
        let subject = self.stream.event_subject(
            &event.aggregate_type,
            &event.aggregate_id,
            &event.event_type,
        )?;
        let payload = Bytes::from(event.payload.clone().into_bytes());
        let message = PublishMessage::build()
            .payload(payload)
            .headers(event_headers(event));
        self.js
            .send_publish(subject, message)
            .await
            .with_context(|| format!("cannot publish event at position {}", event.position))
    }
}

/// Splits a batch into waves: wave k holds the k-th event of each aggregate, in batch order.
fn waves(batch: &[StoredEvent]) -> Vec<Vec<&StoredEvent>> {
    let mut waves: Vec<Vec<&StoredEvent>> = Vec::new();
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    for event in batch {
        let count = seen
            .entry((&event.aggregate_type, &event.aggregate_id))
            .or_insert(0);
        if waves.len() <= *count {
            waves.push(Vec::new());
        }
        waves[*count].push(event);
        *count += 1;
    }
    waves
}

/// The advisory-lock key of a stream's relay: a stable 64-bit FNV-1a hash of its name.
fn lock_key(stream: &StreamName) -> i64 {
    let hash = format!("chorus-relay:{}", stream.name())
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    i64::from_ne_bytes(hash.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: i64, aggregate: &str) -> StoredEvent {
        StoredEvent {
            position,
            event_id: uuid::Uuid::now_v7(),
            aggregate_type: "t".into(),
            aggregate_id: aggregate.into(),
            sequence: 1,
            event_type: "E".into(),
            schema_version: 1,
            payload: "{}".into(),
            metadata: Default::default(),
            recorded_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_wave_never_holds_two_events_of_one_aggregate() {
        let batch = [
            event(1, "a"),
            event(2, "b"),
            event(3, "a"),
            event(4, "a"),
            event(5, "c"),
        ];
        let positions: Vec<Vec<i64>> = waves(&batch)
            .iter()
            .map(|w| w.iter().map(|e| e.position).collect())
            .collect();
        assert_eq!(positions, vec![vec![1, 2, 5], vec![3], vec![4]]);
    }

    #[test]
    fn each_stream_has_its_own_lock() {
        let a = lock_key(&StreamName::for_context("ordering"));
        let b = lock_key(&StreamName::for_context("inventory"));
        assert_ne!(a, b);
        assert_eq!(a, lock_key(&StreamName::for_context("ordering")));
    }
}
