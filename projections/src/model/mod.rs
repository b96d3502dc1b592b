//! The read models: how each projection folds a batch of new events into its tables.
//!
//! A model is handed only events it has not applied yet (the runtime filters them against
//! `applied`), each aggregate's in sequence order, inside the batch's transaction with the
//! projection's schema first on the `search_path`. It folds the batch in memory first and then
//! writes it with a few statements over arrays, never one statement per event: that is where a
//! rebuild's rate comes from.

mod catalogue;
mod orders;
mod sales;

use sqlx::PgConnection;

use crate::projection::Projection;
use crate::source::SourceEvent;

/// Applies `events` to `projection`'s tables on `conn` (inside the batch's transaction).
pub(crate) async fn apply(
    projection: Projection,
    conn: &mut PgConnection,
    events: &[&SourceEvent],
) -> sqlx::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    match projection {
        Projection::Orders => orders::apply(conn, events).await,
        Projection::Catalogue => catalogue::apply(conn, events).await,
        Projection::Sales => sales::apply(conn, events).await,
    }
}
