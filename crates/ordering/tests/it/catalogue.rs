//! The catalogue replica: ordering's own migrations, and rows that only move forward.

use ordering::catalogue::{Applied, CatalogueReplica, MIGRATIONS_TABLE, ReplicaError};

use crate::support::{Setup, eur, sku};

#[tokio::test]
async fn ordering_migrates_beside_the_event_store_with_its_own_tracking_table() {
    let s = Setup::new().await;
    // Both migrators again, in both orders: each knows only its own migrations, and would
    // refuse to run if it found the other's in its table.
    s.catalogue.migrate().await.unwrap();
    s.store.migrate().await.unwrap();
    s.catalogue.migrate().await.unwrap();

    let pool = s.store.pool();
    let ours: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT description FROM {MIGRATIONS_TABLE} ORDER BY version"
    )))
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(ours, ["catalogue"]);
    let theirs: Vec<String> =
        sqlx::query_scalar("SELECT description FROM _sqlx_migrations ORDER BY version")
            .fetch_all(pool)
            .await
            .unwrap();
    assert!(!theirs.is_empty());
    assert!(
        !theirs.iter().any(|d| d == "catalogue"),
        "the event store's table holds only its own migrations: {theirs:?}"
    );

    // A second instance, with its own pool, starting at the same time.
    let other = CatalogueReplica::new(s.db.pool(2).await.unwrap());
    let (a, b) = tokio::join!(s.catalogue.migrate(), other.migrate());
    a.unwrap();
    b.unwrap();
}

#[tokio::test]
async fn the_replica_only_moves_forward() {
    let s = Setup::new().await;
    let mug = sku("MUG");
    let c = &s.catalogue;
    assert_eq!(
        c.apply(&mug, Some("Mug"), eur(250), 1).await.unwrap(),
        Applied::Written
    );
    assert_eq!(
        c.apply(&mug, None, eur(300), 3).await.unwrap(),
        Applied::Written
    );
    // Older events, late or redelivered: nothing changes.
    assert_eq!(
        c.apply(&mug, None, eur(275), 2).await.unwrap(),
        Applied::AlreadyCurrent
    );
    assert_eq!(
        c.apply(&mug, None, eur(300), 3).await.unwrap(),
        Applied::AlreadyCurrent
    );
    assert_eq!(
        c.apply(&mug, Some("Mug"), eur(250), 1).await.unwrap(),
        Applied::AlreadyCurrent
    );

    let entry = c.entry(&mug).await.unwrap().unwrap();
    assert_eq!(
        (entry.name.as_str(), entry.price, entry.version),
        ("Mug", eur(300), 3),
        "the name comes from the definition, the price from the newest reprice"
    );
}

#[tokio::test]
async fn a_reprice_before_its_definition_writes_nothing_until_the_definition_arrives() {
    let s = Setup::new().await;
    let mug = sku("MUG");
    let c = &s.catalogue;
    assert_eq!(
        c.apply(&mug, None, eur(300), 2).await.unwrap(),
        Applied::Undefined
    );
    assert_eq!(c.entry(&mug).await.unwrap(), None, "no row without a name");
    assert!(
        c.prices(std::slice::from_ref(&mug))
            .await
            .unwrap()
            .is_empty()
    );

    assert_eq!(
        c.apply(&mug, Some("Mug"), eur(250), 1).await.unwrap(),
        Applied::Written
    );
    // The reprice, retried.
    assert_eq!(
        c.apply(&mug, None, eur(300), 2).await.unwrap(),
        Applied::Written
    );
    assert_eq!(s.price("MUG").await, Some(eur(300)));
}

#[tokio::test]
async fn prices_are_those_of_the_known_skus_only() {
    let s = Setup::new().await;
    let c = &s.catalogue;
    c.apply(&sku("MUG"), Some("Mug"), eur(250), 1)
        .await
        .unwrap();
    c.apply(&sku("BOOK"), Some("Book"), eur(1000), 1)
        .await
        .unwrap();
    c.apply(&sku("CAP"), Some("Cap"), eur(500), 1)
        .await
        .unwrap();

    let prices = c
        .prices(&[sku("MUG"), sku("NOPE"), sku("BOOK"), sku("MUG")])
        .await
        .unwrap();
    assert_eq!(
        prices,
        [(sku("MUG"), eur(250)), (sku("BOOK"), eur(1000))].into()
    );
    assert!(c.prices(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_version_that_no_event_can_have_is_refused() {
    let s = Setup::new().await;
    for version in [0, u64::MAX] {
        let applied = s
            .catalogue
            .apply(&sku("MUG"), Some("Mug"), eur(250), version)
            .await;
        assert!(
            matches!(applied, Err(ReplicaError::InvalidVersion(v)) if v == version),
            "{applied:?}"
        );
    }
    assert_eq!(s.price("MUG").await, None);
}
