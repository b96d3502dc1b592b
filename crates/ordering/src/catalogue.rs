//! Ordering's replica of the catalogue: the name and unit price of every product, kept from
//! inventory's `ProductDefined` and `ProductRepriced` events in a table of ordering's own
//! database. Orders are priced from here, never from the client.
//!
//! The replica lives in PostgreSQL, not in memory: the instances of ordering share their
//! durable consumer (each message reaches one instance only), so an in-memory copy would
//! differ from one instance to the next, and would be empty after a restart.
//!
//! Each row carries the version it was written from: the product event's sequence in its
//! aggregate (`Received::sequence`). A write only ever moves a row to a higher version, so
//! writing the same event twice, or an older event after a newer one, changes nothing. That
//! is why [`CatalogueReplica::apply`] is a plain statement outside the consumer's unit of
//! work: a redelivered message, or a batch run again after a conflict, writes nothing new.

use std::collections::HashMap;

use events::values::{Currency, Money, Sku};
use sqlx::PgPool;

/// The table that tracks ordering's own migrations. The event store's migrator uses sqlx's
/// default table (`_sqlx_migrations`) in the same database; sharing it would make each
/// migrator refuse the other's migrations as unknown.
pub const MIGRATIONS_TABLE: &str = "_ordering_migrations";

/// Why the replica could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("catalogue replica database: {0}")]
    Database(#[from] sqlx::Error),
    /// Aggregate sequences start at 1 and fit in a `bigint`.
    #[error("{0} is not a valid product version")]
    InvalidVersion(u64),
    /// A row that does not parse back (only this module writes the table, so: never).
    #[error("the catalogue replica's row for SKU {sku:?} is invalid: {reason}")]
    InvalidRow { sku: String, reason: String },
}

/// What [`CatalogueReplica::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The row was created, or moved to the new version.
    Written,
    /// The replica already holds this version or a newer one: nothing changed (a redelivery,
    /// or an event overtaken by a later one).
    AlreadyCurrent,
    /// A reprice of a SKU the replica holds no definition for: nothing was written, because a
    /// row needs the product's name. Within one product's stream the definition comes first,
    /// so this only happens when the definition's message is being retried; the caller should
    /// retry the reprice later (the reactions do, as a transient failure).
    Undefined,
}

/// One product as the replica holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueEntry {
    pub sku: Sku,
    pub name: String,
    pub price: Money,
    /// The sequence of the product event this row was last written from.
    pub version: u64,
}

/// Ordering's replica of the catalogue, on ordering's database (the event store's pool will
/// do). Cheap to clone.
#[derive(Debug, Clone)]
pub struct CatalogueReplica {
    pool: PgPool,
}

impl CatalogueReplica {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates or updates ordering's tables, tracked in [`MIGRATIONS_TABLE`] (idempotent; safe
    /// with several instances starting at once: sqlx takes an advisory lock).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        let mut migrator = sqlx::migrate!("./migrations");
        migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
        migrator.run(&self.pool).await
    }

    /// Writes what a product event says, if it is newer than what the replica holds.
    ///
    /// `name` is `Some` for a definition (`ProductDefined`), which creates the row or moves it
    /// forward; `None` for a reprice (`ProductRepriced`), which only moves an existing row
    /// forward and never creates one (see [`Applied::Undefined`]). `version` is the event's
    /// sequence in its product's stream.
    pub async fn apply(
        &self,
        sku: &Sku,
        name: Option<&str>,
        price: Money,
        version: u64,
    ) -> Result<Applied, ReplicaError> {
        let version_i64 = i64::try_from(version)
            .ok()
            .filter(|v| *v > 0)
            .ok_or(ReplicaError::InvalidVersion(version))?;
        match name {
            Some(name) => {
                let result = sqlx::query(
                    "INSERT INTO catalogue (sku, name, price_minor, currency, version) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, \
                         price_minor = EXCLUDED.price_minor, currency = EXCLUDED.currency, \
                         version = EXCLUDED.version \
                     WHERE catalogue.version < EXCLUDED.version",
                )
                .bind(sku.as_str())
                .bind(name)
                .bind(price.amount_minor)
                .bind(price.currency.as_str())
                .bind(version_i64)
                .execute(&self.pool)
                .await?;
                Ok(if result.rows_affected() > 0 {
                    Applied::Written
                } else {
                    Applied::AlreadyCurrent
                })
            }
            None => {
                // One statement: the update, and whether the SKU is known at all (the row is
                // never deleted, so the snapshot before the update answers that too).
                let (written, known): (bool, bool) = sqlx::query_as(
                    "WITH updated AS ( \
                         UPDATE catalogue SET price_minor = $2, currency = $3, version = $4 \
                         WHERE sku = $1 AND version < $4 RETURNING 1) \
                     SELECT EXISTS (SELECT 1 FROM updated), \
                            EXISTS (SELECT 1 FROM catalogue WHERE sku = $1)",
                )
                .bind(sku.as_str())
                .bind(price.amount_minor)
                .bind(price.currency.as_str())
                .bind(version_i64)
                .fetch_one(&self.pool)
                .await?;
                Ok(match (written, known) {
                    (true, _) => Applied::Written,
                    (false, true) => Applied::AlreadyCurrent,
                    (false, false) => Applied::Undefined,
                })
            }
        }
    }

    /// The current unit price of each of `skus` the replica knows; unknown SKUs are absent.
    pub async fn prices(&self, skus: &[Sku]) -> Result<HashMap<Sku, Money>, ReplicaError> {
        if skus.is_empty() {
            return Ok(HashMap::new());
        }
        let wanted: Vec<&str> = skus.iter().map(Sku::as_str).collect();
        let rows: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT sku, price_minor, currency FROM catalogue WHERE sku = ANY($1)")
                .bind(&wanted)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(sku, amount_minor, currency)| {
                let currency = parse_currency(&sku, currency)?;
                Ok((parse_sku(sku)?, Money::new(amount_minor, currency)))
            })
            .collect()
    }

    /// The replica's row for `sku`, if it has one.
    pub async fn entry(&self, sku: &Sku) -> Result<Option<CatalogueEntry>, ReplicaError> {
        let row: Option<(String, String, i64, String, i64)> = sqlx::query_as(
            "SELECT sku, name, price_minor, currency, version FROM catalogue WHERE sku = $1",
        )
        .bind(sku.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some((sku, name, amount_minor, currency, version)) = row else {
            return Ok(None);
        };
        let currency = parse_currency(&sku, currency)?;
        let version = u64::try_from(version).map_err(|_| ReplicaError::InvalidRow {
            sku: sku.clone(),
            reason: format!("negative version {version}"),
        })?;
        Ok(Some(CatalogueEntry {
            sku: parse_sku(sku)?,
            name,
            price: Money::new(amount_minor, currency),
            version,
        }))
    }
}

fn parse_sku(sku: String) -> Result<Sku, ReplicaError> {
    Sku::try_from(sku.clone()).map_err(|e| ReplicaError::InvalidRow {
        sku,
        reason: e.to_string(),
    })
}

fn parse_currency(sku: &str, currency: String) -> Result<Currency, ReplicaError> {
    Currency::try_from(currency).map_err(|e| ReplicaError::InvalidRow {
        sku: sku.to_owned(),
        reason: e.to_string(),
    })
}
