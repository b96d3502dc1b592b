//! The registry of projections: their names, the streams they read, and their tables.
//!
//! Each projection lives in a PostgreSQL schema of its own, named after it (`orders`,
//! `catalogue`, `sales`). Besides its read-model tables, a schema holds the projection's
//! progress: `checkpoints` (the last stream sequence applied, per source stream, with the
//! stream's creation time) and `applied` (the last event sequence and store position applied,
//! per aggregate). Because data and progress share a schema, a rebuilt schema swapped in by
//! renaming carries its own progress with it.
//!
//! The same DDL creates the live schema and the `<name>_rebuild` and `<name>_verify` schemas of
//! the rebuild engine.

use std::fmt;

use events::BoundedContext;
use sqlx::{AssertSqlSafe, PgConnection};

/// A read model fed from the contexts' streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
    /// Order summaries with their saga timeline, from all four contexts.
    Orders,
    /// The catalogue with stock levels per SKU, from inventory.
    Catalogue,
    /// Sales per day and currency, from ordering.
    Sales,
}

/// A read-model table: its name in the projection's schema and its primary key columns
/// (the order rows are compared in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    pub key: &'static [&'static str],
    ddl: &'static str,
}

/// Progress, present in every projection's schema. `first_sequence` is the sequence the model
/// starts after (0: from the beginning of the stream; more after a rebuild `--from`), so that a
/// verification rebuilds from the same point as the model it checks.
const CHECKPOINTS: Table = Table {
    name: "checkpoints",
    key: &["stream"],
    ddl: "CREATE TABLE {s}.checkpoints (
            stream text PRIMARY KEY,
            stream_created timestamptz NOT NULL,
            sequence bigint NOT NULL,
            first_sequence bigint NOT NULL DEFAULT 0)",
};

/// The last event applied per aggregate: what makes applying idempotent, and what a
/// read-your-writes query waits on.
const APPLIED: Table = Table {
    name: "applied",
    key: &["aggregate_type", "aggregate_id"],
    ddl: "CREATE TABLE {s}.applied (
            aggregate_type text NOT NULL,
            aggregate_id text NOT NULL,
            sequence bigint NOT NULL,
            position bigint NOT NULL,
            PRIMARY KEY (aggregate_type, aggregate_id))",
};

const ORDERS_TABLES: &[Table] = &[
    APPLIED,
    Table {
        name: "orders",
        key: &["order_id"],
        ddl: "CREATE TABLE {s}.orders (
                order_id text PRIMARY KEY,
                customer_id text,
                status text,
                rejection_reason text,
                cancellation_reason text,
                total_minor bigint,
                currency text,
                placed_at timestamptz,
                stock_status text,
                payment_status text,
                captured_minor bigint NOT NULL DEFAULT 0,
                refunded_minor bigint NOT NULL DEFAULT 0,
                shipment_status text,
                tracking_number text,
                updated_at timestamptz NOT NULL) WITH (fillfactor = 80);
              CREATE INDEX orders_newest ON {s}.orders (placed_at DESC, order_id DESC);
              CREATE INDEX orders_by_customer ON {s}.orders (customer_id, placed_at DESC, order_id DESC)",
    },
    Table {
        name: "order_lines",
        key: &["order_id", "line_no"],
        ddl: "CREATE TABLE {s}.order_lines (
                order_id text NOT NULL,
                line_no integer NOT NULL,
                sku text NOT NULL,
                quantity bigint NOT NULL,
                unit_price_minor bigint NOT NULL,
                currency text NOT NULL,
                PRIMARY KEY (order_id, line_no))",
    },
    Table {
        name: "timeline",
        key: &["order_id", "aggregate_type", "sequence"],
        ddl: "CREATE TABLE {s}.timeline (
                order_id text NOT NULL,
                aggregate_type text NOT NULL,
                sequence bigint NOT NULL,
                context text NOT NULL,
                event_type text NOT NULL,
                occurred_at timestamptz NOT NULL,
                detail text NOT NULL,
                PRIMARY KEY (order_id, aggregate_type, sequence))",
    },
];

const CATALOGUE_TABLES: &[Table] = &[
    APPLIED,
    Table {
        name: "products",
        key: &["sku"],
        ddl: "CREATE TABLE {s}.products (
                sku text PRIMARY KEY,
                name text,
                price_minor bigint,
                currency text,
                on_hand bigint NOT NULL DEFAULT 0,
                reserved bigint NOT NULL DEFAULT 0)",
    },
];

const SALES_TABLES: &[Table] = &[
    APPLIED,
    Table {
        name: "order_totals",
        key: &["order_id"],
        ddl: "CREATE TABLE {s}.order_totals (
                order_id text PRIMARY KEY,
                total_minor bigint NOT NULL,
                currency text NOT NULL,
                confirmed_on date,
                cancelled_on date)",
    },
    Table {
        name: "daily_sales",
        key: &["day", "currency"],
        ddl: "CREATE TABLE {s}.daily_sales (
                day date NOT NULL,
                currency text NOT NULL,
                orders_confirmed bigint NOT NULL DEFAULT 0,
                revenue_minor bigint NOT NULL DEFAULT 0,
                orders_cancelled bigint NOT NULL DEFAULT 0,
                cancelled_minor bigint NOT NULL DEFAULT 0,
                PRIMARY KEY (day, currency))",
    },
];

impl Projection {
    pub const ALL: [Projection; 3] = [Projection::Orders, Projection::Catalogue, Projection::Sales];

    /// The name: what `replay <projection>` takes, and the live schema's name.
    pub fn name(self) -> &'static str {
        match self {
            Projection::Orders => "orders",
            Projection::Catalogue => "catalogue",
            Projection::Sales => "sales",
        }
    }

    /// The projection called `name`; `None` for an unknown name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The contexts whose streams the projection reads, each from its first message to its last.
    pub fn sources(self) -> &'static [BoundedContext] {
        match self {
            Projection::Orders => &BoundedContext::ALL,
            Projection::Catalogue => &[BoundedContext::Inventory],
            Projection::Sales => &[BoundedContext::Ordering],
        }
    }

    /// The aggregate types whose events the projection applies; it passes over the others
    /// in its streams.
    pub fn aggregate_types(self) -> &'static [&'static str] {
        match self {
            Projection::Orders => &["order", "allocation", "payment", "shipment"],
            Projection::Catalogue => &["product", "stock"],
            Projection::Sales => &["order"],
        }
    }

    /// The tables that make up the read model (`applied` included, `checkpoints` not: a
    /// rebuilt model equals the live one when these hold the same rows).
    pub fn tables(self) -> &'static [Table] {
        match self {
            Projection::Orders => ORDERS_TABLES,
            Projection::Catalogue => CATALOGUE_TABLES,
            Projection::Sales => SALES_TABLES,
        }
    }

    /// The live schema.
    pub fn schema(self) -> &'static str {
        self.name()
    }

    /// The schema a rebuild builds into before it is swapped in.
    pub fn rebuild_schema(self) -> String {
        format!("{}_rebuild", self.name())
    }

    /// The scratch schema of a verification.
    pub fn verify_schema(self) -> String {
        format!("{}_verify", self.name())
    }

    /// The schema the live schema is renamed to during a swap, dropped in the same transaction.
    pub(crate) fn retired_schema(self) -> String {
        format!("{}_retired", self.name())
    }
}

impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Creates `schema` with the tables of `projection`, unless the schema exists. Run it inside a
/// transaction holding [`ddl_lock`], so that instances starting together do not race.
pub(crate) async fn create_schema(
    conn: &mut PgConnection,
    projection: Projection,
    schema: &str,
) -> Result<bool, sqlx::Error> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&mut *conn)
            .await?;
    if exists {
        return Ok(false);
    }
    let quoted = quote_ident(schema);
    let mut ddl = format!("CREATE SCHEMA {quoted};\n{};\n", CHECKPOINTS.ddl);
    for table in projection.tables() {
        ddl.push_str(table.ddl);
        ddl.push_str(";\n");
    }
    let ddl = ddl.replace("{s}", &quoted);
    // A multi-statement string runs through the simple query protocol.
    sqlx::raw_sql(AssertSqlSafe(ddl))
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

/// Takes the transaction-scoped lock under which schemas are created, renamed and dropped.
pub(crate) async fn ddl_lock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_key("ddl", ""))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// `name` as a quoted SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A stable 64-bit advisory-lock key (FNV-1a) for `purpose` on `name`.
pub(crate) fn lock_key(purpose: &str, name: &str) -> i64 {
    let hash = format!("chorus-projection-{purpose}:{name}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    i64::from_ne_bytes(hash.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projections_are_found_by_name_and_nothing_else() {
        for projection in Projection::ALL {
            assert_eq!(Projection::parse(projection.name()), Some(projection));
        }
        assert_eq!(Projection::parse("Orders"), None);
        assert_eq!(Projection::parse("stock"), None);
    }

    #[test]
    fn every_table_has_a_key_and_its_ddl_names_it() {
        for projection in Projection::ALL {
            for table in projection.tables() {
                assert!(!table.key.is_empty());
                assert!(
                    table
                        .ddl
                        .contains(&format!("CREATE TABLE {{s}}.{} (", table.name)),
                    "{}",
                    table.name
                );
            }
        }
    }

    #[test]
    fn lock_keys_differ_by_purpose_and_name() {
        assert_ne!(lock_key("apply", "orders"), lock_key("writer", "orders"));
        assert_ne!(
            lock_key("apply", "orders"),
            lock_key("apply", "orders_rebuild")
        );
        assert_eq!(lock_key("apply", "sales"), lock_key("apply", "sales"));
    }
}
