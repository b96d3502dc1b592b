//! Group commit: units of work committed at the same time share one statement.
//!
//! Each commit joins a queue. Up to [`LANES`] leader tasks take what is queued (at most
//! [`MAX_UNITS`] units at a time) and write it as one statement: one round trip and one fsync
//! for many units. Under light load a unit is alone in its statement and nothing waits; under
//! load the statements fill up. If a merged statement fails (a conflict in any unit), each unit
//! is written on its own, so that only the unit at fault fails. Units that change the same
//! deadline never share a statement (two changes of one row in one statement would collide, and
//! a statement's parts do not see each other's rows): the later one waits for the next.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::store::{Store, StoreError};
use crate::unit_of_work::NewEvent;

/// Statements in flight at once, per store.
const LANES: usize = 4;
/// Units merged into one statement, at most.
const MAX_UNITS: usize = 64;

/// A change to a deadline, in the order the unit of work made it.
#[derive(Debug)]
pub(crate) enum DeadlineChange {
    Schedule {
        kind: String,
        key: String,
        due_at: DateTime<Utc>,
        payload: String,
    },
    Cancel {
        kind: String,
        key: String,
    },
}

/// What one unit of work writes.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) rows: Vec<NewEvent>,
    pub(crate) inbox: Vec<(String, Uuid)>,
    /// The last change of each deadline the unit touched.
    schedules: Vec<(String, String, DateTime<Utc>, String)>,
    cancels: Vec<(String, String)>,
}

impl Pending {
    pub(crate) fn new(
        rows: Vec<NewEvent>,
        inbox: Vec<(String, Uuid)>,
        deadlines: Vec<DeadlineChange>,
    ) -> Self {
        // (kind, key) -> Some((due_at, payload)) to schedule, None to cancel.
        type Last = HashMap<(String, String), Option<(DateTime<Utc>, String)>>;
        let mut last = Last::new();
        for change in deadlines {
            match change {
                DeadlineChange::Schedule {
                    kind,
                    key,
                    due_at,
                    payload,
                } => last.insert((kind, key), Some((due_at, payload))),
                DeadlineChange::Cancel { kind, key } => last.insert((kind, key), None),
            };
        }
        let mut schedules = Vec::new();
        let mut cancels = Vec::new();
        for ((kind, key), change) in last {
            match change {
                Some((due_at, payload)) => schedules.push((kind, key, due_at, payload)),
                None => cancels.push((kind, key)),
            }
        }
        Self {
            rows,
            inbox,
            schedules,
            cancels,
        }
    }

    /// The deadlines the unit changes, as (kind, key).
    fn deadlines(&self) -> impl Iterator<Item = (&str, &str)> {
        let schedules = self.schedules.iter().map(|s| (s.0.as_str(), s.1.as_str()));
        let cancels = self.cancels.iter().map(|c| (c.0.as_str(), c.1.as_str()));
        schedules.chain(cancels)
    }
}

/// Splits `units` in two, keeping their order: the first part changes no deadline twice, the
/// second holds each unit that changes a deadline a unit before it in the first part changes.
/// (At most [`MAX_UNITS`] units, most changing one deadline or none: comparing is cheap.)
fn disjoint(units: Units) -> (Units, Units) {
    let mut now = Units::with_capacity(units.len());
    let mut later = Units::new();
    for unit in units {
        let clashes = unit.0.deadlines().any(|deadline| {
            now.iter()
                .any(|(taken, _)| taken.deadlines().any(|other| other == deadline))
        });
        if clashes {
            later.push(unit);
        } else {
            now.push(unit);
        }
    }
    (now, later)
}

type Reply = oneshot::Sender<Result<i64, StoreError>>;
/// Units of work waiting to be written, each with where its outcome goes.
type Units = Vec<(Pending, Reply)>;

#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    state: Mutex<Queue>,
    /// Told of every statement that wrote events (see [`Store::committed`]).
    committed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: Units,
    leaders: usize,
}

impl GroupCommit {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Pushes and drains are single calls: a poisoned queue is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store {
    /// Resolves once a unit of work committed through this store (or a clone of it) wrote
    /// events. A commit made while nobody waits is remembered until the next wait: the relay
    /// of the same process learns of every commit at once, without the database's NOTIFY.
    pub async fn committed(&self) {
        self.group().committed.notified().await;
    }

    /// Writes `pending` (possibly together with other units); returns the highest position
    /// it wrote, or 0 when it wrote no event.
    pub(crate) async fn commit(&self, pending: Pending) -> Result<i64, StoreError> {
        let (reply, result) = oneshot::channel();
        let lead = {
            let mut queue = self.group().lock();
            queue.waiting.push((pending, reply));
            let lead = queue.leaders < LANES;
            if lead {
                queue.leaders += 1;
            }
            lead
        };
        if lead {
            // A task of its own, so that a caller giving up cannot strand the queue.
            tokio::spawn(self.clone().lead());
        }
        result.await.map_err(|_| StoreError::Abandoned)?
    }

    async fn lead(self) {
        loop {
            let units = {
                let mut queue = self.group().lock();
                if queue.waiting.is_empty() {
                    queue.leaders -= 1;
                    return;
                }
                let take = queue.waiting.len().min(MAX_UNITS);
                queue.waiting.drain(..take).collect::<Vec<_>>()
            };
            self.write_units(units).await;
        }
    }

    async fn write_units(&self, mut units: Units) {
        while !units.is_empty() {
            let (now, later) = disjoint(units);
            self.write_merged(now).await;
            units = later;
        }
    }

    /// Writes `units` in one statement or, if that fails, each on its own.
    async fn write_merged(&self, units: Units) {
        if units.len() > 1 {
            let all: Vec<&Pending> = units.iter().map(|(pending, _)| pending).collect();
            match self.write(&all).await {
                Ok(positions) => {
                    let mut end = 0;
                    for (pending, reply) in units {
                        end += pending.rows.len();
                        let last = match pending.rows.len() {
                            0 => 0,
                            _ => positions.get(end - 1).copied().unwrap_or(0),
                        };
                        let _ = reply.send(Ok(last));
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, units = units.len(), "merged commit failed; committing the units one by one");
                }
            }
        }
        for (pending, reply) in units {
            let _ = reply.send(self.write_alone(&pending).await);
        }
    }

    /// Writes one unit; returns the highest position it wrote (0 if none).
    async fn write_alone(&self, pending: &Pending) -> Result<i64, StoreError> {
        self.write(&[pending])
            .await
            .map(|positions| positions.last().copied().unwrap_or(0))
    }

    /// Writes the units in one statement: atomic without an explicit transaction, one round
    /// trip. Returns the position of every event, in the order of the units' rows.
    async fn write(&self, units: &[&Pending]) -> Result<Vec<i64>, StoreError> {
        let rows = || units.iter().flat_map(|u| u.rows.iter());
        let inbox = || units.iter().flat_map(|u| u.inbox.iter());
        let ids: Vec<Uuid> = rows().map(|r| r.event_id).collect();
        let types: Vec<&str> = rows().map(|r| r.aggregate_type).collect();
        let aggregate_ids: Vec<&str> = rows().map(|r| r.aggregate_id.as_str()).collect();
        let sequences: Vec<i64> = rows().map(|r| r.sequence).collect();
        let event_types: Vec<&str> = rows().map(|r| r.event_type).collect();
        let versions: Vec<i32> = rows().map(|r| r.schema_version).collect();
        let payloads: Vec<&str> = rows().map(|r| r.payload.as_str()).collect();
        let metadata: Vec<&str> = rows().map(|r| r.metadata.as_str()).collect();
        let consumers: Vec<&str> = inbox().map(|(consumer, _)| consumer.as_str()).collect();
        let handled: Vec<Uuid> = inbox().map(|(_, id)| *id).collect();
        let schedules = || units.iter().flat_map(|u| u.schedules.iter());
        let scheduled_kinds: Vec<&str> = schedules().map(|s| s.0.as_str()).collect();
        let scheduled_keys: Vec<&str> = schedules().map(|s| s.1.as_str()).collect();
        let due: Vec<DateTime<Utc>> = schedules().map(|s| s.2).collect();
        let deadline_payloads: Vec<&str> = schedules().map(|s| s.3.as_str()).collect();
        let cancels = || units.iter().flat_map(|u| u.cancels.iter());
        let cancelled_kinds: Vec<&str> = cancels().map(|c| c.0.as_str()).collect();
        let cancelled_keys: Vec<&str> = cancels().map(|c| c.1.as_str()).collect();

        // Rows are inserted in array order, so positions follow the units' order and each
        // aggregate's positions follow its sequence.
        let positions: Option<Vec<i64>> = sqlx::query_scalar(
            "WITH appended AS ( \
                 INSERT INTO events (event_id, aggregate_type, aggregate_id, sequence, event_type, \
                                     schema_version, payload, metadata) \
                 SELECT id, agg_type, agg_id, seq, ev_type, ver, payload::jsonb, meta::jsonb \
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], \
                             $6::int[], $7::text[], $8::text[]) \
                      WITH ORDINALITY AS t(id, agg_type, agg_id, seq, ev_type, ver, payload, meta, n) \
                 ORDER BY n \
                 RETURNING position \
             ), outboxed AS ( \
                 INSERT INTO outbox (position) SELECT position FROM appended \
             ), handled AS ( \
                 INSERT INTO inbox (consumer, event_id) SELECT * FROM UNNEST($9::text[], $10::uuid[]) \
             ), scheduled AS ( \
                 INSERT INTO deadlines (kind, key, due_at, payload) \
                 SELECT kind, key, due_at, payload::jsonb \
                 FROM UNNEST($11::text[], $12::text[], $13::timestamptz[], $14::text[]) \
                      AS d(kind, key, due_at, payload) \
                 ON CONFLICT (kind, key) DO UPDATE \
                 SET due_at = EXCLUDED.due_at, payload = EXCLUDED.payload, \
                     attempts = 0, last_error = NULL, failed_at = NULL \
             ), cancelled AS ( \
                 DELETE FROM deadlines d USING UNNEST($15::text[], $16::text[]) AS c(kind, key) \
                 WHERE d.kind = c.kind AND d.key = c.key \
             ) \
             SELECT array_agg(position ORDER BY position) FROM appended",
        )
        .bind(&ids)
        .bind(&types)
        .bind(&aggregate_ids)
        .bind(&sequences)
        .bind(&event_types)
        .bind(&versions)
        .bind(&payloads)
        .bind(&metadata)
        .bind(&consumers)
        .bind(&handled)
        .bind(&scheduled_kinds)
        .bind(&scheduled_keys)
        .bind(&due)
        .bind(&deadline_payloads)
        .bind(&cancelled_kinds)
        .bind(&cancelled_keys)
        .fetch_one(self.pool())
        .await
        .map_err(StoreError::from_write)?;
        if !ids.is_empty() {
            self.group().committed.notify_one();
        }
        Ok(positions.unwrap_or_default())
    }
}
