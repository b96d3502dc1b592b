use harness::{DEFAULT_DATABASE_URL, TestDatabase};
use sqlx::{Connection, PgConnection};

async fn database_exists(name: &str) -> bool {
    let admin_url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .expect("connect to the admin database");
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .expect("query pg_database")
}

#[tokio::test]
async fn creates_and_drops_a_fresh_database() {
    let database = TestDatabase::create().await.unwrap();
    let name = database.name().to_owned();
    assert!(name.starts_with("chorus_test_"), "{name}");
    assert!(database.url().ends_with(&format!("/{name}")));

    let pool = database.pool(2).await.unwrap();
    let current: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(current, name);
    assert!(database_exists(&name).await);

    // The pool is still open: the drop must force its connections out.
    drop(database);
    assert!(!database_exists(&name).await);
    pool.close().await;
}

#[test]
fn drops_outside_a_runtime() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database = runtime.block_on(TestDatabase::create()).unwrap();
    let name = database.name().to_owned();
    drop(database);
    assert!(!runtime.block_on(database_exists(&name)));
}
