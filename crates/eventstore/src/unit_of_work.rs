//! Work that commits together: appended events, their outbox rows and inbox rows.
//!
//! Nothing is written until [`UnitOfWork::commit`], which sends everything in one statement.
//! Until then the aggregates a command changed are *staged* here, so a second command on the
//! same aggregate sees the first one's events. [`UnitOfWork::mark`] and
//! [`UnitOfWork::rollback_to`] undo one message's work inside a batch without touching the
//! rest.

use std::any::Any;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::commit::{DeadlineChange, Pending};
use crate::store::{Store, StoreError};

/// An event row waiting to be written.
#[derive(Debug)]
pub(crate) struct NewEvent {
    pub(crate) event_id: Uuid,
    pub(crate) aggregate_type: &'static str,
    pub(crate) aggregate_id: String,
    pub(crate) sequence: i64,
    pub(crate) event_type: &'static str,
    pub(crate) schema_version: i32,
    pub(crate) payload: String,
    pub(crate) metadata: String,
}

/// An aggregate changed by this unit of work, not yet committed.
pub(crate) trait Staged: Send + Sync {
    fn as_any(&self) -> &dyn Any;
    /// Called once the commit is decided: publish the new state, or forget the stale one.
    fn settle(self: Box<Self>, committed: bool);
}

type Key = (&'static str, String);

/// A point to roll back to (see [`UnitOfWork::mark`]).
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    rows: usize,
    inbox: usize,
    deadlines: usize,
    undo: usize,
}

/// Command executions and inbox rows that commit in one statement, or not at all.
pub struct UnitOfWork {
    store: Store,
    rows: Vec<NewEvent>,
    inbox: Vec<(String, Uuid)>,
    deadlines: Vec<DeadlineChange>,
    staged: HashMap<Key, Box<dyn Staged>>,
    /// Previous staged value of each key, in the order they were replaced.
    undo: Vec<(Key, Option<Box<dyn Staged>>)>,
}

impl std::fmt::Debug for UnitOfWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitOfWork")
            .field("events", &self.rows.len())
            .field("inbox", &self.inbox.len())
            .field("deadlines", &self.deadlines.len())
            .field("aggregates", &self.staged.len())
            .finish()
    }
}

impl UnitOfWork {
    pub fn new(store: &Store) -> Self {
        Self {
            store: store.clone(),
            rows: Vec::new(),
            inbox: Vec::new(),
            deadlines: Vec::new(),
            staged: HashMap::new(),
            undo: Vec::new(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Number of events waiting to be committed.
    pub fn pending_events(&self) -> usize {
        self.rows.len()
    }

    /// Records that `consumer` handled the message `event_id`, in the same commit.
    pub fn record_handled(&mut self, consumer: &str, event_id: Uuid) {
        self.inbox.push((consumer.to_owned(), event_id));
    }

    /// Schedules the deadline `(kind, key)` for `due_at`, in the same commit; scheduling it
    /// again moves it.
    pub fn schedule_deadline(
        &mut self,
        kind: &str,
        key: &str,
        due_at: DateTime<Utc>,
        payload: serde_json::Value,
    ) {
        self.deadlines.push(DeadlineChange::Schedule {
            kind: kind.to_owned(),
            key: key.to_owned(),
            due_at,
            payload: payload.to_string(),
        });
    }

    /// Removes the deadline `(kind, key)`, if there is one, in the same commit.
    pub fn cancel_deadline(&mut self, kind: &str, key: &str) {
        self.deadlines.push(DeadlineChange::Cancel {
            kind: kind.to_owned(),
            key: key.to_owned(),
        });
    }

    /// Remembers the current point, to undo what follows with [`Self::rollback_to`].
    pub fn mark(&self) -> Mark {
        Mark {
            rows: self.rows.len(),
            inbox: self.inbox.len(),
            deadlines: self.deadlines.len(),
            undo: self.undo.len(),
        }
    }

    /// Forgets every event, inbox row, deadline change and aggregate change made since `mark`.
    pub fn rollback_to(&mut self, mark: Mark) {
        self.rows.truncate(mark.rows);
        self.inbox.truncate(mark.inbox);
        self.deadlines.truncate(mark.deadlines);
        while self.undo.len() > mark.undo {
            let Some((key, previous)) = self.undo.pop() else {
                break;
            };
            match previous {
                Some(previous) => {
                    self.staged.insert(key, previous);
                }
                None => {
                    self.staged.remove(&key);
                }
            }
        }
    }

    pub(crate) fn staged(&self, aggregate_type: &'static str, id: &str) -> Option<&dyn Any> {
        self.staged
            .get(&(aggregate_type, id.to_owned()))
            .map(|s| s.as_any())
    }

    pub(crate) fn stage(
        &mut self,
        aggregate_type: &'static str,
        id: &str,
        rows: Vec<NewEvent>,
        state: Box<dyn Staged>,
    ) {
        self.rows.extend(rows);
        let key = (aggregate_type, id.to_owned());
        let previous = self.staged.insert(key.clone(), state);
        self.undo.push((key, previous));
    }

    /// Writes everything in one statement. Returns the highest position written (0 when the
    /// unit appended no event). On a conflict the aggregates it touched are evicted from their
    /// caches, so running the work again loads fresh state.
    pub async fn commit(self) -> Result<i64, StoreError> {
        let UnitOfWork {
            store,
            rows,
            inbox,
            deadlines,
            staged,
            undo: _,
        } = self;
        if rows.is_empty() && inbox.is_empty() && deadlines.is_empty() {
            return Ok(0);
        }
        let event_types: Vec<&'static str> = if store.counts_appends() {
            rows.iter().map(|row| row.event_type).collect()
        } else {
            Vec::new()
        };
        let result = store.commit(Pending::new(rows, inbox, deadlines)).await;
        let committed = result.is_ok();
        if committed {
            store.appended(&event_types);
        }
        for state in staged.into_values() {
            state.settle(committed);
        }
        result
    }
}
