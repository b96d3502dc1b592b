//! Planner statistics for tables that grow from empty, and the plans made from them.
//!
//! Every table of a store or of a projection starts empty, and PostgreSQL plans a prepared
//! statement from what it knows of its tables when the plan is made. A connection keeps the
//! generic plan of each statement it prepared (sqlx prepares every query) until something
//! invalidates it, and new statistics are what does. A plan made while a table held a few rows
//! scans the table, or the whole of an index's leading column, and is still run when the
//! table holds millions: the inbox look-up, planned on an empty inbox, read every row of its
//! consumer on every batch.
//!
//! Autovacuum analyzes tables as they grow, but it may be off, or behind under load. So the
//! process that maintains a database (a store's active relay, a projection's live writer) asks
//! PostgreSQL which tables have changed by as many rows as they held when last analyzed, and at
//! least [`ANALYZE_AFTER`], and analyzes those: a table is analyzed each time it doubles, a
//! handful of times in its life. Where autovacuum keeps up, it has analyzed them long before,
//! and nothing is done here. An [`Analyzer`] does it in a task of its own, so that the loop that
//! asks never waits for an `ANALYZE` (milliseconds, more on a large table).

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// `options` with each prepared statement planned once, generically, and run with that plan
/// until new statistics invalidate it (ADR 0013). PostgreSQL's default plans a statement anew
/// on every run when the generic plan looks dearer than the custom ones, as it does for every
/// look-up by `= ANY($array)`: planning then costs more than running.
pub fn generic_plans(options: PgConnectOptions) -> PgConnectOptions {
    options.options([("plan_cache_mode", "force_generic_plan")])
}

/// Rows changed in a table, at least, before it is analyzed again.
pub const ANALYZE_AFTER: i64 = 1_000;

/// The statistics target of the columns that have none of their own, while [`analyze_grown`]
/// analyzes: ANALYZE samples 300 rows per unit.
const SAMPLE_TARGET: u32 = 10;

/// Analyzes the tables (of `schema`, or of every schema) that have grown, or changed, by at
/// least as many rows as they held when last analyzed (and by at least [`ANALYZE_AFTER`]);
/// returns their names. The counts come from PostgreSQL's statistics, which sessions report
/// within seconds of their commits.
pub async fn analyze_grown(
    conn: &mut PgConnection,
    schema: Option<&str>,
) -> Result<Vec<String>, sqlx::Error> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', s.schemaname, s.relname) \
         FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid \
         WHERE ($1::text IS NULL OR s.schemaname = $1) \
           AND s.n_mod_since_analyze >= greatest($2, c.reltuples::bigint) \
         ORDER BY 1",
    )
    .bind(schema)
    .bind(ANALYZE_AFTER)
    .fetch_all(&mut *conn)
    .await?;
    if !tables.is_empty() {
        // The names are quoted by PostgreSQL itself (`format('%I')`). A sample of 3,000 rows
        // (statistics target 10) tells the planner the tables' sizes and the spread of their
        // keys as well as the default 30,000, for a tenth of the work: a table of a busy store
        // is analyzed while it takes writes, on the same cores.
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "SET LOCAL default_statistics_target = {SAMPLE_TARGET}"
        )))
        .execute(&mut *tx)
        .await?;
        sqlx::raw_sql(AssertSqlSafe(format!("ANALYZE {}", tables.join(", "))))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::debug!(?tables, "analyzed tables that have grown");
    }
    Ok(tables)
}

/// Runs [`analyze_grown`] now and then, in a task of its own, one run at a time.
#[derive(Debug)]
pub struct Analyzer {
    pool: PgPool,
    schema: Option<String>,
    every: Duration,
    last: Instant,
    running: Option<JoinHandle<()>>,
}

impl Analyzer {
    /// Looks after the tables of `schema` (or of every schema) of `pool`'s database, every
    /// `every` at most; the first look comes `every` from now.
    pub fn new(pool: PgPool, schema: Option<String>, every: Duration) -> Self {
        Self {
            pool,
            schema,
            every,
            last: Instant::now(),
            running: None,
        }
    }

    /// Starts a look, unless the last one started less than `every` ago or is still running.
    /// A failure is logged: the next look tries again.
    pub fn tick(&mut self) {
        if self.last.elapsed() < self.every
            || self.running.as_ref().is_some_and(|r| !r.is_finished())
        {
            return;
        }
        self.last = Instant::now();
        let (pool, schema) = (self.pool.clone(), self.schema.clone());
        self.running = Some(tokio::spawn(async move {
            let analyzed = async {
                let mut conn = pool.acquire().await?;
                analyze_grown(&mut conn, schema.as_deref()).await
            };
            if let Err(e) = analyzed.await {
                tracing::warn!(error = %e, "cannot analyze the tables that have grown");
            }
        }));
    }
}

impl Drop for Analyzer {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.abort();
        }
    }
}
