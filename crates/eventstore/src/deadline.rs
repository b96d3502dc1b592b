//! Deadlines and the ticker that fires them.
//!
//! A deadline `(kind, key)` is scheduled or cancelled through the [`UnitOfWork`] that appends
//! the events starting or ending it. A [`Ticker`] per kind looks for due deadlines every
//! interval and hands each to its [`DeadlineHandler`] in one unit of work; a handled deadline is
//! deleted in that same commit. A firing that fails is rolled back alone and tried again with
//! a growing delay; after the last attempt the deadline is marked failed, stays in the table
//! with its error for an operator to see, and is no longer fired. A firing whose effects
//! PostgreSQL refuses (an event it cannot store) fails the common commit, not its handler: the
//! ticker then fires the deadlines one by one, as the consumer runtime does with a batch of
//! messages, so that this one fails like any other failed firing and the others fire.
//!
//! Each firing runs in a span (`deadline`, with its kind and key), the root of a trace: the
//! trace of the events that scheduled it is not kept with the deadline.
//!
//! Several instances may tick at once: a ticker claims the deadlines it fires (moving them a
//! lease ahead, skipping those another ticker holds), so a deadline fires once unless its
//! firing outlasts the lease.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::store::{Store, StoreError};
use crate::unit_of_work::UnitOfWork;

/// A scheduled deadline.
#[derive(Debug, Clone, PartialEq)]
pub struct Deadline {
    pub kind: String,
    pub key: String,
    pub due_at: DateTime<Utc>,
    pub payload: serde_json::Value,
    /// Failed firings so far.
    pub attempts: i32,
    pub last_error: Option<String>,
    /// When the ticker gave up on it.
    pub failed_at: Option<DateTime<Utc>>,
}

impl Deadline {
    fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            kind: row.try_get("kind")?,
            key: row.try_get("key")?,
            due_at: row.try_get("due_at")?,
            payload: row.try_get("payload")?,
            attempts: row.try_get("attempts")?,
            last_error: row.try_get("last_error")?,
            failed_at: row.try_get("failed_at")?,
        })
    }
}

impl Store {
    /// Up to `limit` deadlines of `kind` due at `now` and not failed, oldest first.
    pub async fn due_deadlines(
        &self,
        kind: &str,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Deadline>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM deadlines WHERE kind = $1 AND due_at <= $2 AND failed_at IS NULL \
             ORDER BY due_at LIMIT $3",
        )
        .bind(kind)
        .bind(now)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(Deadline::from_row)
            .collect::<Result<_, _>>()?)
    }

    /// Claims up to `limit` deadlines of `kind` due at `now`: each is moved to `now + lease`,
    /// so no other ticker takes it meanwhile; if this one dies, it is due again after the
    /// lease. Returns them as they were (with their due time), oldest first.
    async fn claim_deadlines(
        &self,
        kind: &str,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<Deadline>, StoreError> {
        let rows = sqlx::query(
            "WITH due AS ( \
                 SELECT kind, key, due_at FROM deadlines \
                 WHERE kind = $1 AND due_at <= $2 AND failed_at IS NULL \
                 ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED \
             ) \
             UPDATE deadlines d SET due_at = $2 + make_interval(secs => $4) \
             FROM due WHERE d.kind = due.kind AND d.key = due.key \
             RETURNING d.kind, d.key, due.due_at, d.payload, d.attempts, d.last_error, d.failed_at",
        )
        .bind(kind)
        .bind(now)
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(self.pool())
        .await?;
        let mut claimed: Vec<Deadline> = rows
            .iter()
            .map(Deadline::from_row)
            .collect::<Result<_, _>>()?;
        claimed.sort_by_key(|d| d.due_at);
        Ok(claimed)
    }

    /// The deadline `(kind, key)`, if it is scheduled (or failed).
    pub async fn deadline(&self, kind: &str, key: &str) -> Result<Option<Deadline>, StoreError> {
        let row = sqlx::query("SELECT * FROM deadlines WHERE kind = $1 AND key = $2")
            .bind(kind)
            .bind(key)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.as_ref().map(Deadline::from_row).transpose()?)
    }

    /// Deadlines the ticker gave up on, oldest first.
    pub async fn failed_deadlines(&self) -> Result<Vec<Deadline>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM deadlines WHERE failed_at IS NOT NULL ORDER BY failed_at")
                .fetch_all(self.pool())
                .await?;
        Ok(rows
            .iter()
            .map(Deadline::from_row)
            .collect::<Result<_, _>>()?)
    }

    /// Records a failed firing: fire again at `retry_at`, or never (`None`: failed for good).
    /// Does nothing if the deadline was removed meanwhile.
    async fn record_failed_firing(
        &self,
        deadline: &Deadline,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE deadlines SET attempts = attempts + 1, last_error = $3, \
                 due_at = COALESCE($4, due_at), failed_at = CASE WHEN $4 IS NULL THEN now() END \
             WHERE kind = $1 AND key = $2",
        )
        .bind(&deadline.kind)
        .bind(&deadline.key)
        .bind(error)
        .bind(retry_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

/// What happens when a deadline of one kind is due.
pub trait DeadlineHandler: Send + Sync + 'static {
    /// Runs the commands the deadline calls for in `uow`. An error (its message is kept on the
    /// deadline) undoes this firing only; it is tried again later.
    fn fire(
        &self,
        uow: &mut UnitOfWork,
        deadline: &Deadline,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// A handler shared with other tasks (the same reactions serve consumers and a ticker).
impl<H: DeadlineHandler> DeadlineHandler for std::sync::Arc<H> {
    fn fire(
        &self,
        uow: &mut UnitOfWork,
        deadline: &Deadline,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), String>> + Send {
        (**self).fire(uow, deadline, now)
    }
}

/// What one tick of a [`Ticker`] did, as [`Ticker::run_observed`] reports it.
#[derive(Debug, Default)]
pub struct Tick {
    /// Deadlines fired: their effects committed and the deadlines removed.
    pub fired: usize,
    /// Firings that failed (the handler refused, or PostgreSQL refused their effects): each
    /// recorded on its deadline, to be tried again or left failed.
    pub failed: usize,
    /// Why the tick itself failed, if it did (the database is unreachable, a concurrent
    /// writer): the deadlines it claimed are due again when their lease runs out.
    pub error: Option<StoreError>,
}

/// Fires the due deadlines of one kind.
#[derive(Debug)]
pub struct Ticker<H> {
    store: Store,
    kind: String,
    handler: H,
    /// How often to look for due deadlines.
    pub interval: Duration,
    /// How long a claimed deadline is kept from other tickers while it fires.
    pub lease: Duration,
    /// Firings before a deadline is marked failed.
    pub max_attempts: i32,
    /// Delay before the first retry; it doubles per attempt up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl<H: DeadlineHandler> Ticker<H> {
    /// Ticks every second; tries a failing deadline 10 times, from 1 s apart up to 5 min apart.
    pub fn new(store: Store, kind: &str, handler: H) -> Self {
        Self {
            store,
            kind: kind.to_owned(),
            handler,
            interval: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            max_attempts: 10,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
        }
    }

    /// Ticks until `shutdown`; a tick that fails is logged and the next one tries again.
    pub async fn run(self, shutdown: CancellationToken) {
        self.run_observed(shutdown, |_| {}).await;
    }

    /// Like [`Self::run`], and tells `observe` what every tick did (deadlines fired, firings
    /// failed, or why the tick failed), so that a health check can report a ticker that keeps
    /// failing and metrics can count firings.
    pub async fn run_observed(
        self,
        shutdown: CancellationToken,
        mut observe: impl FnMut(&Tick) + Send,
    ) {
        loop {
            let outcome = self.tick_counted(Utc::now()).await;
            if let Some(e) = &outcome.error {
                tracing::warn!(kind = %self.kind, error = %e, "deadline tick failed");
            }
            observe(&outcome);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// Fires the deadlines due at `now` (at most 100) and returns how many were handled.
    ///
    /// Their effects are committed together. If PostgreSQL refuses that commit for its data
    /// (an event it cannot store), the deadlines are fired again one by one, so that only the
    /// one at fault fails (a failed firing, retried and eventually left failed like any other)
    /// and the others fire. Any other commit failure (the database is unreachable, a
    /// concurrent writer) fails the tick: the deadlines it claimed are due again when their
    /// lease runs out.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let tick = self.tick_counted(now).await;
        match tick.error {
            Some(e) => Err(e),
            None => Ok(tick.fired),
        }
    }

    /// [`Self::tick`], counting the failed firings too.
    async fn tick_counted(&self, now: DateTime<Utc>) -> Tick {
        let failure = |error| Tick {
            error: Some(error),
            ..Tick::default()
        };
        let due = match self
            .store
            .claim_deadlines(&self.kind, now, self.lease, 100)
            .await
        {
            Ok(due) => due,
            Err(e) => return failure(e),
        };
        if due.is_empty() {
            return Tick::default();
        }
        let (fired, failed, mut error) = match self.fire(&due, now).await {
            Ok(failed) => (due.len() - failed.len(), failed, None),
            Err(e) if e.is_data_error() => self.fire_each(&due, now, &e).await,
            Err(e) => return failure(e),
        };
        let mut recorded = 0;
        for (deadline, reason) in failed {
            if let Err(e) = self.record_failure(deadline, &reason, now).await {
                error = Some(e);
                break;
            }
            recorded += 1;
        }
        Tick {
            fired,
            failed: recorded,
            error,
        }
    }

    /// Fires `deadlines` in one unit of work and commits it. Returns the firings that failed
    /// (rolled back alone, the others committed) with their errors.
    async fn fire<'a>(
        &self,
        deadlines: &'a [Deadline],
        now: DateTime<Utc>,
    ) -> Result<Vec<(&'a Deadline, String)>, StoreError> {
        let mut uow = UnitOfWork::new(&self.store);
        let mut failed = Vec::new();
        for deadline in deadlines {
            let mark = uow.mark();
            // Removed first, so that a handler may schedule the same deadline again.
            uow.cancel_deadline(&deadline.kind, &deadline.key);
            // The trace context of the events that set the deadline is not stored with it: a
            // firing is the root of a trace of its own, named by its kind and key.
            let span = tracing::info_span!(
                "deadline",
                otel.name = %format!("deadline {}", deadline.kind),
                kind = %deadline.kind,
                key = %deadline.key,
                attempts = deadline.attempts,
                error = tracing::field::Empty,
            );
            let fired = self
                .handler
                .fire(&mut uow, deadline, now)
                .instrument(span.clone())
                .await;
            if let Err(error) = fired {
                span.record("error", error.as_str());
                uow.rollback_to(mark);
                failed.push((deadline, error));
            }
        }
        uow.commit().await?;
        Ok(failed)
    }

    /// Fires each of `due` in a commit of its own after their common commit failed on
    /// `error`, a data error. Returns how many were handled, the failed firings (among them
    /// the ones whose effects cannot be stored), and the first failure of another kind.
    async fn fire_each<'a>(
        &self,
        due: &'a [Deadline],
        now: DateTime<Utc>,
        error: &StoreError,
    ) -> (usize, Vec<(&'a Deadline, String)>, Option<StoreError>) {
        let unstorable = |e: &StoreError| format!("its effects cannot be stored: {e}");
        if let [deadline] = due {
            return (0, vec![(deadline, unstorable(error))], None);
        }
        tracing::warn!(kind = %self.kind, deadlines = due.len(), %error,
            "deadlines not committed together; firing them one by one");
        let mut handled = 0;
        let mut failed = Vec::new();
        let mut other = None;
        for deadline in due {
            match self.fire(std::slice::from_ref(deadline), now).await {
                Ok(mut alone) => match alone.pop() {
                    Some(failure) => failed.push(failure),
                    None => handled += 1,
                },
                Err(e) if e.is_data_error() => failed.push((deadline, unstorable(&e))),
                Err(e) => {
                    tracing::warn!(kind = %deadline.kind, key = %deadline.key, error = %e,
                        "deadline not committed; due again when its lease runs out");
                    other.get_or_insert(e);
                }
            }
        }
        (handled, failed, other)
    }

    /// Records a failed firing of `deadline`: due again after a delay that doubles per
    /// attempt, or, after the last attempt, failed for good.
    async fn record_failure(
        &self,
        deadline: &Deadline,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let attempts = deadline.attempts + 1;
        let retry_at = (attempts < self.max_attempts).then(|| {
            let exponent = u32::try_from(attempts - 1).unwrap_or(0).min(20);
            let delay = self
                .first_delay
                .saturating_mul(1 << exponent)
                .min(self.max_delay);
            now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX)
        });
        match retry_at {
            Some(at) => {
                tracing::warn!(kind = %deadline.kind, key = %deadline.key, attempts, %error, retry_at = %at, "deadline failed; will retry")
            }
            None => {
                tracing::error!(kind = %deadline.kind, key = %deadline.key, attempts, %error, "deadline failed for good; left for an operator")
            }
        }
        self.store
            .record_failed_firing(deadline, error, retry_at)
            .await
    }
}
