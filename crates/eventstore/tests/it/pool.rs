use eventstore::{CHECK_IDLE_AFTER, pool_options};
use harness::TestDatabase;
use sqlx::{Connection, PgConnection, PgPool};

async fn backend(pool: &PgPool) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_connection_broken_while_it_sat_idle_is_replaced_before_use() {
    let db = TestDatabase::create().await.unwrap();
    let pool = pool_options()
        .max_connections(1)
        .connect(&db.url())
        .await
        .unwrap();
    let first = backend(&pool).await;

    // The pool's only connection goes while it sits idle, as in a restart of PostgreSQL.
    let mut admin = PgConnection::connect(&db.url()).await.unwrap();
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
        .bind(first)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(terminated);

    // Idle for longer than the threshold: the pool checks the connection, finds it broken and
    // opens another, so the statement succeeds.
    tokio::time::sleep(CHECK_IDLE_AFTER * 2).await;
    let second = backend(&pool).await;
    assert_ne!(second, first);
}
