//! Group commit: units of work committed at the same time share one statement.
//!
//! Each commit joins a queue. Up to [`LANES`] leader tasks take what is queued (at most
//! [`MAX_UNITS`] units at a time) and write it as one statement: one round trip and one fsync
//! for many units. Under light load a unit is alone in its statement and nothing waits; under
//! load the statements fill up. If a merged statement fails (a conflict in any unit), each unit
//! is written on its own, so that only the unit at fault fails.

use std::sync::Mutex;

use tokio::sync::oneshot;
use uuid::Uuid;

use crate::store::{Store, StoreError};
use crate::unit_of_work::NewEvent;

/// Statements in flight at once, per store.
const LANES: usize = 4;
/// Units merged into one statement, at most.
const MAX_UNITS: usize = 64;

/// What one unit of work writes.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) rows: Vec<NewEvent>,
    pub(crate) inbox: Vec<(String, Uuid)>,
}

type Reply = oneshot::Sender<Result<i64, StoreError>>;

#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    state: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<(Pending, Reply)>,
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

    async fn write_units(&self, units: Vec<(Pending, Reply)>) {
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
            let result = self
                .write(&[&pending])
                .await
                .map(|positions| positions.last().copied().unwrap_or(0));
            let _ = reply.send(result);
        }
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
        .fetch_one(self.pool())
        .await
        .map_err(StoreError::from_write)?;
        Ok(positions.unwrap_or_default())
    }
}
