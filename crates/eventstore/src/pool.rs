//! The options of every pool that runs a service's statements.

use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::PgPoolOptions;

/// A connection that sat in its pool for longer than this is checked, with a round trip to
/// PostgreSQL, before it is handed out.
pub const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Pool options that check a connection taken from the pool only when it sat idle for longer
/// than [`CHECK_IDLE_AFTER`] (ADR 0014). sqlx's default checks every one: a round trip, and a
/// wake-up of the backend, before every statement a busy service runs. A connection that broke
/// while in use fails its statement as it would have with the check, and the pool drops it.
pub fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|connection, metadata| {
            Box::pin(async move {
                if metadata.idle_for > CHECK_IDLE_AFTER {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
}
