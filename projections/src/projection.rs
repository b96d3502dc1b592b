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
    /// The column definitions.
    columns: &'static str,
    /// Storage parameters (`WITH (...)`), or empty.
    with: &'static str,
    /// Secondary indexes as `<name> ON {t} (<columns>)`; a bulk load builds them at its end.
    indexes: &'static [&'static str],
}

/// How a schema's tables are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Every index: the live schemas, and what a bulk load becomes.
    Live,
    /// For a bulk load (a rebuild, a verification): no secondary indexes, which
    /// [`build_indexes`] builds in one pass each over the loaded rows rather than row by row.
    /// Primary keys stay: upserts need them, and kept up as rows arrive they cost less than
    /// built at the end (measured; see ADR 0010), as logged tables cost less than unlogged
    /// ones turned logged at the end.
    Bulk,
}

/// Progress, present in every projection's schema. `first_sequence` is the sequence the model
/// starts after (0: from the beginning of the stream; more after a rebuild `--from`), so that a
/// verification rebuilds from the same point as the model it checks.
const CHECKPOINTS: Table = Table {
    name: "checkpoints",
    key: &["stream"],
    columns: "stream text COLLATE \"C\" NOT NULL,
            stream_created timestamptz NOT NULL,
            sequence bigint NOT NULL,
            first_sequence bigint NOT NULL DEFAULT 0",
    with: "",
    indexes: &[],
};

/// The last event applied per aggregate: what makes applying idempotent, and what a
/// read-your-writes query waits on.
const APPLIED: Table = Table {
    name: "applied",
    key: &["aggregate_type", "aggregate_id"],
    columns: "aggregate_type text COLLATE \"C\" NOT NULL,
            aggregate_id text COLLATE \"C\" NOT NULL,
            sequence bigint NOT NULL,
            position bigint NOT NULL",
    with: "",
    indexes: &[],
};

const ORDERS_TABLES: &[Table] = &[
    APPLIED,
    Table {
        name: "orders",
        key: &["order_id"],
        columns: "order_id text COLLATE \"C\" NOT NULL,
                customer_id text COLLATE \"C\",
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
                updated_at timestamptz NOT NULL",
        with: "fillfactor = 80",
        indexes: &[
            "orders_newest ON {t} (placed_at DESC, order_id DESC)",
            "orders_by_customer ON {t} (customer_id, placed_at DESC, order_id DESC)",
        ],
    },
    Table {
        name: "order_lines",
        key: &["order_id", "line_no"],
        columns: "order_id text COLLATE \"C\" NOT NULL,
                line_no integer NOT NULL,
                sku text NOT NULL,
                quantity bigint NOT NULL,
                unit_price_minor bigint NOT NULL,
                currency text NOT NULL",
        with: "",
        indexes: &[],
    },
    Table {
        name: "timeline",
        key: &["order_id", "aggregate_type", "sequence"],
        columns: "order_id text COLLATE \"C\" NOT NULL,
                aggregate_type text COLLATE \"C\" NOT NULL,
                sequence bigint NOT NULL,
                context text NOT NULL,
                event_type text NOT NULL,
                occurred_at timestamptz NOT NULL,
                detail text NOT NULL",
        with: "",
        indexes: &[],
    },
];

const CATALOGUE_TABLES: &[Table] = &[
    APPLIED,
    Table {
        name: "products",
        key: &["sku"],
        columns: "sku text COLLATE \"C\" NOT NULL,
                name text,
                price_minor bigint,
                currency text,
                on_hand bigint NOT NULL DEFAULT 0,
                reserved bigint NOT NULL DEFAULT 0",
        with: "",
        indexes: &[],
    },
];

const SALES_TABLES: &[Table] = &[
    APPLIED,
    Table {
        name: "order_totals",
        key: &["order_id"],
        columns: "order_id text COLLATE \"C\" NOT NULL,
                total_minor bigint NOT NULL,
                currency text NOT NULL,
                confirmed_on date,
                cancelled_on date",
        with: "",
        indexes: &[],
    },
    Table {
        name: "daily_sales",
        key: &["day", "currency"],
        columns: "day date NOT NULL,
                currency text COLLATE \"C\" NOT NULL,
                orders_confirmed bigint NOT NULL DEFAULT 0,
                revenue_minor bigint NOT NULL DEFAULT 0,
                orders_cancelled bigint NOT NULL DEFAULT 0,
                cancelled_minor bigint NOT NULL DEFAULT 0",
        with: "",
        indexes: &[],
    },
];

impl Table {
    /// `table` in `schema`, quoted.
    fn qualified(&self, schema: &str) -> String {
        format!("{}.{}", quote_ident(schema), quote_ident(self.name))
    }

    /// The statements that create the table in `schema` (quoted) with `layout`.
    fn create(&self, schema: &str, layout: Layout) -> String {
        let mut ddl = format!(
            "CREATE TABLE {} ({},\n            PRIMARY KEY ({}))",
            self.qualified(schema),
            self.columns,
            self.key.join(", ")
        );
        if !self.with.is_empty() {
            ddl.push_str(&format!(" WITH ({})", self.with));
        }
        ddl.push_str(";\n");
        if layout == Layout::Live {
            ddl.push_str(&self.create_indexes(schema));
        }
        ddl
    }

    fn create_indexes(&self, schema: &str) -> String {
        self.indexes
            .iter()
            .map(|index| {
                format!(
                    "CREATE INDEX {};\n",
                    index.replace("{t}", &self.qualified(schema))
                )
            })
            .collect()
    }
}

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
    create_schema_with(conn, projection, schema, Layout::Live).await
}

/// [`create_schema`] with the tables laid out for `layout`.
pub(crate) async fn create_schema_with(
    conn: &mut PgConnection,
    projection: Projection,
    schema: &str,
    layout: Layout,
) -> Result<bool, sqlx::Error> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&mut *conn)
            .await?;
    if exists {
        return Ok(false);
    }
    let mut ddl = format!(
        "CREATE SCHEMA {};\n{}",
        quote_ident(schema),
        CHECKPOINTS.create(schema, layout)
    );
    for table in projection.tables() {
        ddl.push_str(&table.create(schema, layout));
    }
    // A multi-statement string runs through the simple query protocol.
    sqlx::raw_sql(AssertSqlSafe(ddl))
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

/// Turns a schema created with [`Layout::Bulk`] and loaded into what [`Layout::Live`] creates:
/// builds its secondary indexes.
pub(crate) async fn build_indexes(
    conn: &mut PgConnection,
    projection: Projection,
    schema: &str,
) -> Result<(), sqlx::Error> {
    let ddl: String = projection
        .tables()
        .iter()
        .map(|table| table.create_indexes(schema))
        .collect();
    if !ddl.is_empty() {
        sqlx::raw_sql(AssertSqlSafe(ddl))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
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
            for table in std::iter::once(&CHECKPOINTS).chain(projection.tables()) {
                assert!(!table.key.is_empty());
                for column in table.key {
                    assert!(
                        table.columns.contains(&format!("{column} ")),
                        "{}.{column}",
                        table.name
                    );
                }
                let live = table.create("s", Layout::Live);
                assert!(
                    live.starts_with(&format!("CREATE TABLE \"s\".\"{}\" (", table.name)),
                    "{live}"
                );
                assert!(
                    live.contains(&format!("PRIMARY KEY ({}))", table.key.join(", "))),
                    "{live}"
                );
                assert_eq!(
                    live.matches("CREATE INDEX").count(),
                    table.indexes.len(),
                    "{live}"
                );
                let bulk = table.create("s", Layout::Bulk);
                assert!(live.starts_with(bulk.trim_end()), "{bulk}");
                assert!(!bulk.contains("CREATE INDEX"), "{bulk}");
            }
        }
    }

    /// The catalogue of `schema`: every relation (tables, indexes) with its kind, persistence
    /// and options, every column, every index and constraint definition, with the schema's
    /// name taken out.
    async fn layout_of(conn: &mut PgConnection, schema: &str) -> Vec<String> {
        let sql = "SELECT format('%s %s %s %s', c.relname, c.relkind, c.relpersistence, \
                       c.reloptions) FROM pg_class c \
                       JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 \
                   UNION ALL SELECT format('%s.%s %s %s %s %s', table_name, column_name, \
                       ordinal_position, data_type, is_nullable, column_default) \
                       FROM information_schema.columns WHERE table_schema = $1 \
                   UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname = $1 \
                   UNION ALL SELECT format('%s %s', conname, pg_get_constraintdef(c.oid)) \
                       FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace \
                       WHERE n.nspname = $1 \
                   ORDER BY 1";
        let rows: Vec<String> = sqlx::query_scalar(sql)
            .bind(schema)
            .fetch_all(&mut *conn)
            .await
            .expect("the catalogue");
        rows.into_iter()
            .map(|row| row.replace(&quote_ident(schema), "S").replace(schema, "S"))
            .collect()
    }

    #[tokio::test]
    async fn a_finished_bulk_schema_is_laid_out_as_a_live_one() {
        let db = harness::TestDatabase::create().await.expect("a database");
        let pool = db.pool(1).await.expect("a pool");
        let mut conn = pool.acquire().await.expect("a connection");
        for projection in Projection::ALL {
            let live = format!("{projection}_live");
            let bulk = format!("{projection}_bulk");
            assert!(
                create_schema(&mut conn, projection, &live)
                    .await
                    .expect("live schema")
            );
            assert!(
                create_schema_with(&mut conn, projection, &bulk, Layout::Bulk)
                    .await
                    .expect("bulk schema")
            );
            let expected = layout_of(&mut conn, &live).await;
            let loading = layout_of(&mut conn, &bulk).await;
            let indexes: usize = projection.tables().iter().map(|t| t.indexes.len()).sum();
            // Each secondary index is a relation and an index definition.
            assert_eq!(
                expected.len() - loading.len(),
                2 * indexes,
                "{projection} while loading: {loading:#?}"
            );
            build_indexes(&mut conn, projection, &bulk)
                .await
                .expect("finished");
            assert_eq!(layout_of(&mut conn, &bulk).await, expected, "{projection}");
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
