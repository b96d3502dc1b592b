use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, PgPool};
use uuid::Uuid;

/// Admin URL used when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh database `chorus_test_<uuid>` on the server named by `DATABASE_URL`,
/// dropped (with its open connections) when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    pub async fn create() -> Result<TestDatabase> {
        let admin_url =
            std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
        let name = format!("chorus_test_{}", Uuid::new_v4().simple());
        let mut admin = connect_admin(&admin_url).await?;
        admin
            .execute(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        let _ = admin.close().await;
        let url = with_database(&admin_url, &name);
        Ok(TestDatabase {
            admin_url,
            name,
            url,
        })
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens a new pool to the database.
    pub async fn pool(&self, max_connections: u32) -> Result<PgPool> {
        PgPoolOptions::new()
            .max_connections(max_connections)
            .connect(&self.url)
            .await
            .with_context(|| format!("cannot open a pool to {}", self.name))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop cannot await, and may run inside or outside a runtime; a thread
        // with its own runtime works in every case.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || -> Result<()> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(drop_database(&admin_url, &name))
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(database = %self.name, "cannot drop test database: {err:#}")
            }
            Err(_) => tracing::warn!(database = %self.name, "dropping the test database panicked"),
        }
    }
}

async fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    let mut admin = connect_admin(admin_url).await?;
    admin
        .execute(AssertSqlSafe(format!(
            r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
        )))
        .await?;
    let _ = admin.close().await;
    Ok(())
}

async fn connect_admin(url: &str) -> Result<PgConnection> {
    let unreachable = || {
        format!(
            "PostgreSQL is not reachable at {url}: start a local server \
             (Debian: apt-get install postgresql && pg_ctlcluster <version> main start) \
             or set DATABASE_URL"
        )
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(err @ sqlx::Error::Io(_))) => Err(anyhow!(err).context(unreachable())),
        Ok(Err(err)) => Err(anyhow!(err).context(format!("cannot connect to PostgreSQL at {url}"))),
        Err(_) => Err(anyhow!("no answer within {CONNECT_TIMEOUT:?}").context(unreachable())),
    }
}

/// Replaces the database (the URL path) of `url` with `name`, dropping any
/// `dbname` query parameter, which would override the path.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let mut result = format!("{}/{name}", &base[..path]);
    let params: Vec<&str> = query
        .split('&')
        .filter(|param| !param.is_empty() && !param.starts_with("dbname="))
        .collect();
    if !params.is_empty() {
        result.push('?');
        result.push_str(&params.join("&"));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_in_urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t"),
            "postgres://postgres@127.0.0.1:5432/t"
        );
        assert_eq!(with_database("postgres://u:p@h", "t"), "postgres://u:p@h/t");
        assert_eq!(
            with_database("postgres://h/db?sslmode=disable&dbname=x", "t"),
            "postgres://h/t?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres:///db?host=/var/run/postgresql", "t"),
            "postgres:///t?host=/var/run/postgresql"
        );
    }
}
