//! The tables of one context's event store and the queries on them.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use events::{DecodeError, Envelope, Event, Metadata};
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::commit::GroupCommit;

/// The channel the store notifies when rows arrive in an outbox that held none older.
pub const OUTBOX_CHANNEL: &str = "chorus_outbox";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to one of the aggregates first; evict, reload and retry.
    #[error("concurrency conflict: another writer appended to the same aggregate first")]
    Conflict,
    /// A message was recorded in the inbox by a concurrent handler; retry to skip it.
    #[error("concurrency conflict: the message was handled concurrently by another instance")]
    InboxConflict,
    #[error("stored event {position} cannot be read: {source}")]
    Decode {
        position: i64,
        #[source]
        source: DecodeError,
    },
    #[error("event store database: {0}")]
    Database(#[from] sqlx::Error),
    /// The runtime shut down before the commit was decided.
    #[error("the commit was abandoned: the runtime is shutting down")]
    Abandoned,
}

impl StoreError {
    /// True when running the same work again may succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict | StoreError::InboxConflict)
    }

    /// True when PostgreSQL refused the data itself (an invalid value, a constraint other than
    /// the concurrency checks, a value too large): writing the same thing again fails again.
    pub fn is_data_error(&self) -> bool {
        let StoreError::Database(sqlx::Error::Database(db)) = self else {
            return false;
        };
        db.code().is_some_and(|code| {
            ["22", "23", "54"]
                .iter()
                .any(|class| code.starts_with(class))
        })
    }

    pub(crate) fn from_write(error: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &error
            && db.code().as_deref() == Some("23505")
        {
            match db.constraint() {
                Some("events_aggregate_sequence") => return StoreError::Conflict,
                Some("inbox_pkey") => return StoreError::InboxConflict,
                _ => {}
            }
        }
        StoreError::Database(error)
    }
}

/// An event as stored, with its payload still JSON: what the relay publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub position: i64,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub schema_version: i32,
    /// The payload as JSON text.
    pub payload: String,
    pub metadata: Metadata,
    pub recorded_at: DateTime<Utc>,
}

impl StoredEvent {
    /// Decodes the payload (upcasting an older schema version).
    pub fn decode<E: Event>(self) -> Result<Envelope<E>, StoreError> {
        let version = u32::try_from(self.schema_version).unwrap_or(0);
        let decoded = serde_json::from_str(&self.payload)
            .map_err(|source| DecodeError::Invalid {
                event_type: self.event_type.clone(),
                version,
                source,
            })
            .and_then(|payload| E::from_payload(&self.event_type, version, payload));
        let payload = decoded.map_err(|source| StoreError::Decode {
            position: self.position,
            source,
        })?;
        Ok(Envelope {
            event_id: self.event_id,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            sequence: u64::try_from(self.sequence).unwrap_or(0),
            position: self.position,
            occurred_at: self.recorded_at,
            metadata: self.metadata,
            payload,
        })
    }

    fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        let metadata: String = row.try_get("metadata")?;
        Ok(Self {
            position: row.try_get("position")?,
            event_id: row.try_get("event_id")?,
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            sequence: row.try_get("sequence")?,
            event_type: row.try_get("event_type")?,
            schema_version: row.try_get("schema_version")?,
            payload: row.try_get("payload")?,
            // Metadata is written by this crate only; unknown or missing fields read as empty.
            metadata: serde_json::from_str(&metadata).unwrap_or_default(),
            recorded_at: row.try_get("recorded_at")?,
        })
    }
}

/// `SELECT <every column of events e> FROM <rest>`, as a literal.
macro_rules! select_events {
    ($rest:literal) => {
        concat!(
            "SELECT e.position, e.event_id, e.aggregate_type, e.aggregate_id, e.sequence, \
             e.event_type, e.schema_version, e.payload::text AS payload, \
             e.metadata::text AS metadata, e.recorded_at FROM ",
            $rest
        )
    };
}

/// One context's event store. Cheap to clone (it is a connection pool).
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    group: Arc<GroupCommit>,
    on_append: Option<OnAppend>,
}

/// What [`Store::on_append`] calls.
#[derive(Clone)]
struct OnAppend(Arc<dyn Fn(&'static str) + Send + Sync>);

impl std::fmt::Debug for OnAppend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnAppend")
    }
}

impl Store {
    /// Connects with at most `max_connections` connections, which plan their statements
    /// generically ([`crate::generic_plans`]); does not migrate.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = crate::pool_options()
            .max_connections(max_connections)
            .connect_with(crate::generic_plans(options))
            .await?;
        Ok(Self::from_pool(pool))
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            group: Arc::default(),
            on_append: None,
        }
    }

    /// Calls `hook` with the event type of every event a unit of work commits through this
    /// store (or a clone of it made afterwards), once the commit succeeded.
    ///
    /// Whatever appends (a command, a reaction, a deadline) does so through a unit of work on
    /// the process's store, so this is the one place that sees every event appended, and only
    /// those: a unit that fails to commit is not counted, and the relay, which publishes
    /// events again after a failure, cannot tell appended from republished. A service's
    /// metrics count events here.
    pub fn on_append(mut self, hook: impl Fn(&'static str) + Send + Sync + 'static) -> Self {
        self.on_append = Some(OnAppend(Arc::new(hook)));
        self
    }

    /// Whether [`Self::on_append`] set a hook.
    pub(crate) fn counts_appends(&self) -> bool {
        self.on_append.is_some()
    }

    /// Tells the hook, if any, of committed events.
    pub(crate) fn appended(&self, event_types: &[&'static str]) {
        if let Some(OnAppend(hook)) = &self.on_append {
            for event_type in event_types {
                hook(event_type);
            }
        }
    }

    pub(crate) fn group(&self) -> &GroupCommit {
        &self.group
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates or updates the tables (idempotent; safe with several instances starting at once).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        sqlx::migrate!("./migrations").run(&self.pool).await
    }

    /// Events of one aggregate with a sequence above `after`, in order.
    pub async fn aggregate_events(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = select_events!(
            "events e WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 AND e.sequence > $3 \
             ORDER BY e.sequence"
        );
        let rows = sqlx::query(sql)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(after)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(StoredEvent::from_row)
            .collect::<Result<_, _>>()?)
    }

    /// Up to `limit` events with a position above `after`, in position order.
    pub async fn events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = select_events!("events e WHERE e.position > $1 ORDER BY e.position LIMIT $2");
        let rows = sqlx::query(sql)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(StoredEvent::from_row)
            .collect::<Result<_, _>>()?)
    }

    /// The oldest `limit` events still in the outbox, in position order. Run it on the
    /// connection that holds the relay lock.
    pub async fn outbox_batch(
        conn: &mut PgConnection,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        // The positions first, then an index lookup of exactly those events. A join lets the
        // planner pick a hash join over the whole events table (or a merge join from the
        // first event ever published) whenever the outbox's statistics are stale, as they
        // are between autovacuum runs on a table that is only ever inserted into and
        // emptied: a cost on every round that grows with the store.
        let sql = select_events!(
            "events e \
             WHERE e.position = ANY(ARRAY(SELECT position FROM outbox ORDER BY position LIMIT $1)) \
             ORDER BY e.position"
        );
        let rows = sqlx::query(sql).bind(limit).fetch_all(&mut *conn).await?;
        Ok(rows
            .iter()
            .map(StoredEvent::from_row)
            .collect::<Result<_, _>>()?)
    }

    /// Removes published events from the outbox.
    pub async fn outbox_remove(
        conn: &mut PgConnection,
        positions: &[i64],
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM outbox WHERE position = ANY($1)")
            .bind(positions)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Reclaims the dead rows of the two tables emptied as fast as they fill: the outbox (rows
    /// of published events), whose every read of the head would otherwise step over them, and
    /// the deadlines (a deadline met or cancelled), which every commit that cancels one scans
    /// while the table looks small to the planner. Needs no lock that writers wait for.
    pub async fn vacuum_queues(conn: &mut PgConnection) -> Result<(), StoreError> {
        sqlx::query("VACUUM outbox, deadlines")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// How many events wait in the outbox.
    pub async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Which of `event_ids` the consumer has already handled.
    pub async fn handled(
        &self,
        consumer: &str,
        event_ids: &[Uuid],
    ) -> Result<HashSet<Uuid>, StoreError> {
        let found: Vec<Uuid> = sqlx::query_scalar(
            "SELECT event_id FROM inbox WHERE consumer = $1 AND event_id = ANY($2)",
        )
        .bind(consumer)
        .bind(event_ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(found.into_iter().collect())
    }

    /// The highest position in the store (0 when empty).
    pub async fn head(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(max(position), 0)::bigint FROM events")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
