use eventstore::{ANALYZE_AFTER, Store, analyze_grown};
use harness::TestDatabase;
use sqlx::{Connection, PgConnection};

async fn connect(db: &TestDatabase) -> PgConnection {
    PgConnection::connect(&db.url()).await.unwrap()
}

/// Adds `rows` inbox rows for `consumer` and reports them to PostgreSQL's statistics at once.
async fn handle(conn: &mut PgConnection, consumer: &str, rows: i64) {
    sqlx::query(
        "INSERT INTO inbox (consumer, event_id) \
         SELECT $1, gen_random_uuid() FROM generate_series(1, $2)",
    )
    .bind(consumer)
    .bind(rows)
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
}

/// The plan a connection holds for the inbox look-up, as `EXPLAIN` prints it.
async fn lookup_plan(conn: &mut PgConnection) -> String {
    let lines: Vec<String> = sqlx::query_scalar(
        "EXPLAIN EXECUTE lookup('c', ARRAY['00000000-0000-0000-0000-000000000000'::uuid])",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    lines.join("\n")
}

#[tokio::test]
async fn tables_are_analyzed_each_time_they_double_and_a_cached_plan_is_made_again() {
    let db = TestDatabase::create().await.unwrap();
    let store = Store::from_pool(db.pool(2).await.unwrap());
    store.migrate().await.unwrap();
    let mut writer = connect(&db).await;
    let mut maintainer = connect(&db).await;

    // A session that prepared the look-up while the inbox held a few rows keeps the plan it
    // made then: a scan of the table.
    handle(&mut writer, "c", 5).await;
    sqlx::query("VACUUM inbox")
        .execute(&mut maintainer)
        .await
        .unwrap();
    let mut reader = connect(&db).await;
    sqlx::raw_sql(
        "SET plan_cache_mode = force_generic_plan; \
         PREPARE lookup(text, uuid[]) AS \
         SELECT event_id FROM inbox WHERE consumer = $1 AND event_id = ANY($2)",
    )
    .execute(&mut reader)
    .await
    .unwrap();
    assert!(
        lookup_plan(&mut reader).await.contains("Seq Scan on inbox"),
        "{}",
        lookup_plan(&mut reader).await
    );

    // Below the threshold, nothing is analyzed.
    handle(&mut writer, "c", ANALYZE_AFTER - 10).await;
    assert_eq!(
        analyze_grown(&mut maintainer, None).await.unwrap(),
        Vec::<String>::new()
    );

    // Past it, the inbox is analyzed, and the reader's plan is made again: by the index, once
    // the inbox is large enough for the index to pay.
    handle(&mut writer, "c", 4_000).await;
    assert_eq!(
        analyze_grown(&mut maintainer, None).await.unwrap(),
        vec!["public.inbox".to_owned()]
    );
    let plan = lookup_plan(&mut reader).await;
    assert!(plan.contains("inbox_pkey"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");

    // Not again until it has doubled; then again; and only in the schema asked for.
    handle(&mut writer, "c", 4_000).await;
    assert_eq!(
        analyze_grown(&mut maintainer, None).await.unwrap(),
        Vec::<String>::new()
    );
    handle(&mut writer, "c", 1_000).await;
    assert_eq!(
        analyze_grown(&mut maintainer, Some("elsewhere"))
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        analyze_grown(&mut maintainer, Some("public"))
            .await
            .unwrap(),
        vec!["public.inbox".to_owned()]
    );
    let analyzed: i64 =
        sqlx::query_scalar("SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'inbox'")
            .fetch_one(&mut maintainer)
            .await
            .unwrap();
    assert_eq!(analyzed, 2);
}

#[tokio::test]
async fn a_store_plans_each_statement_once_for_any_array() {
    let db = TestDatabase::create().await.unwrap();
    // One connection: the look-ups and the check below share its session.
    let store = Store::connect(&db.url(), 1).await.unwrap();
    store.migrate().await.unwrap();
    for n in 1..=10 {
        let ids: Vec<uuid::Uuid> = (0..n).map(|_| uuid::Uuid::now_v7()).collect();
        assert!(store.handled("c", &ids).await.unwrap().is_empty());
    }
    // PostgreSQL's default would plan this look-up on every run (its generic plan assumes
    // more elements than one array holds, so it looks dearer than each custom plan).
    let (generic, custom): (i64, i64) = sqlx::query_as(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements \
         WHERE statement LIKE 'SELECT event_id FROM inbox %'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!((generic, custom), (10, 0));
}
