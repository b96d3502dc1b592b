use std::sync::Arc;

use events::Metadata;
use eventstore::{CommandError, Repository, Store, StoreError, UnitOfWork};
use harness::TestDatabase;
use uuid::Uuid;

use harness::account::{Account, AccountCommand, AccountError, AccountEvent, Deposited};

async fn store(db: &TestDatabase) -> Store {
    let store = Store::from_pool(db.pool(20).await.unwrap());
    store.migrate().await.unwrap();
    store
}

async fn count(store: &Store, table: &str) -> i64 {
    let sql = match table {
        "events" => "SELECT count(*) FROM events",
        "outbox" => "SELECT count(*) FROM outbox",
        "inbox" => "SELECT count(*) FROM inbox",
        other => panic!("no table {other}"),
    };
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// (sequence, position) of every event of one account, in sequence order.
async fn history(store: &Store, id: &str) -> Vec<(i64, i64)> {
    store
        .aggregate_events("account", id, 0)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.sequence, e.position))
        .collect()
}

fn meta() -> Metadata {
    Metadata {
        correlation_id: Some("corr-1".into()),
        ..Metadata::default()
    }
}

#[tokio::test]
async fn a_command_appends_gapless_sequences_and_fills_the_outbox() {
    let db = TestDatabase::create().await.unwrap();
    let store = store(&db).await;
    let accounts = Repository::<Account>::new(store.clone(), ());

    accounts
        .handle("a1", AccountCommand::Deposit(5), &meta())
        .await
        .unwrap();
    let done = accounts
        .handle("a1", AccountCommand::DepositEach(vec![1, 2]), &meta())
        .await
        .unwrap();

    assert_eq!(done.version, 3);
    assert_eq!(done.events.len(), 2);
    let history = history(&store, "a1").await;
    assert_eq!(
        history.iter().map(|h| h.0).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(
        history.windows(2).all(|w| w[0].1 < w[1].1),
        "positions follow sequences: {history:?}"
    );
    assert_eq!(
        done.position, history[2].1,
        "the reply carries the last position written"
    );
    assert_eq!(count(&store, "outbox").await, 3);

    let stored = store.events_after(0, 10).await.unwrap();
    assert_eq!(stored[0].metadata.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(stored[0].event_type, "Deposited");
    let envelope = stored[0].clone().decode::<AccountEvent>().unwrap();
    assert_eq!(
        envelope.payload,
        AccountEvent::Deposited(Deposited { amount: 5 })
    );
}

#[tokio::test]
async fn a_rejected_command_appends_and_publishes_nothing() {
    let db = TestDatabase::create().await.unwrap();
    let store = store(&db).await;
    let accounts = Repository::<Account>::new(store.clone(), ());
    accounts
        .handle("a1", AccountCommand::Deposit(5), &meta())
        .await
        .unwrap();

    let err = accounts
        .handle("a1", AccountCommand::Withdraw(6), &meta())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::Rejected(AccountError::InsufficientFunds {
                balance: 5,
                amount: 6
            })
        ),
        "{err:?}"
    );
    let err = accounts
        .handle("a1", AccountCommand::DepositEach(vec![3, 0]), &meta())
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Rejected(AccountError::ZeroAmount)),
        "{err:?}"
    );
    let err = accounts
        .handle("a.1", AccountCommand::Deposit(1), &meta())
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::InvalidId(_)), "{err:?}");

    assert_eq!(count(&store, "events").await, 1);
    assert_eq!(count(&store, "outbox").await, 1);
    // The rejected commands left the cached state alone.
    assert_eq!(
        accounts.load("a1").await.unwrap(),
        (Account { balance: 5 }, 1)
    );
}

#[tokio::test]
async fn of_two_commands_on_a_stale_aggregate_exactly_one_commits() {
    let db = TestDatabase::create().await.unwrap();
    let store = store(&db).await;
    // Two instances of a service: each has its own cache.
    let first = Repository::<Account>::new(store.clone(), ()).with_max_attempts(1);
    let second = Repository::<Account>::new(store.clone(), ()).with_max_attempts(1);
    first
        .handle("a1", AccountCommand::Deposit(10), &meta())
        .await
        .unwrap();
    assert_eq!(second.load("a1").await.unwrap().1, 1);

    let metadata = meta();
    let (a, b) = tokio::join!(
        first.handle("a1", AccountCommand::Withdraw(10), &metadata),
        second.handle("a1", AccountCommand::Withdraw(10), &metadata),
    );
    let outcomes = [a.is_ok(), b.is_ok()];
    assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 1, "{a:?} {b:?}");
    let failed = match (a, b) {
        (Ok(_), Err(e)) | (Err(e), Ok(_)) => e,
        other => panic!("exactly one should fail: {other:?}"),
    };
    assert!(
        matches!(failed, CommandError::Conflict { attempts: 1 }),
        "{failed:?}"
    );

    // The loser's cache was evicted: its next command sees the winner's withdrawal.
    let loser = if outcomes[0] { &second } else { &first };
    let err = loser
        .handle("a1", AccountCommand::Withdraw(1), &meta())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::Rejected(AccountError::InsufficientFunds { balance: 0, .. })
        ),
        "{err:?}"
    );
    assert_eq!(history(&store, "a1").await.len(), 2);
}

#[tokio::test]
async fn many_concurrent_writers_on_one_aggregate_succeed_on_retry_without_gaps() {
    let db = TestDatabase::create().await.unwrap();
    let store = store(&db).await;
    let instances = [
        Arc::new(Repository::<Account>::new(store.clone(), ()).with_max_attempts(100)),
        Arc::new(Repository::<Account>::new(store.clone(), ()).with_max_attempts(100)),
    ];
    let mut tasks = Vec::new();
    for writer in 0..16 {
        let repo = Arc::clone(&instances[writer % 2]);
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                repo.handle("hot", AccountCommand::Deposit(1), &meta())
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let history = history(&store, "hot").await;
    let sequences: Vec<i64> = history.iter().map(|h| h.0).collect();
    assert_eq!(
        sequences,
        (1..=160).collect::<Vec<_>>(),
        "no sequence duplicated or skipped"
    );
    assert!(
        history.windows(2).all(|w| w[0].1 < w[1].1),
        "positions follow sequences"
    );
    let fresh = Repository::<Account>::new(store.clone(), ());
    assert_eq!(
        fresh.load("hot").await.unwrap(),
        (Account { balance: 160 }, 160)
    );
}

#[tokio::test]
async fn a_unit_of_work_commits_several_aggregates_and_inbox_rows_at_once() {
    let db = TestDatabase::create().await.unwrap();
    let store = store(&db).await;
    let accounts = Repository::<Account>::new(store.clone(), ());
    let message = Uuid::now_v7();

    let mut uow = UnitOfWork::new(&store);
    accounts
        .execute(&mut uow, "a", AccountCommand::Deposit(10), &meta())
        .await
        .unwrap();
    // A second command on the same aggregate sees the first one's event.
    accounts
        .execute(&mut uow, "a", AccountCommand::Withdraw(10), &meta())
        .await
        .unwrap();
    accounts
        .execute(&mut uow, "b", AccountCommand::Deposit(1), &meta())
        .await
        .unwrap();
    uow.record_handled("test-consumer", message);
    assert_eq!(
        count(&store, "events").await,
        0,
        "nothing is written before commit"
    );
    let position = uow.commit().await.unwrap();

    assert_eq!(count(&store, "events").await, 3);
    assert_eq!(store.head().await.unwrap(), position);
    assert_eq!(
        store
            .handled("test-consumer", &[message, Uuid::now_v7()])
            .await
            .unwrap(),
        [message].into_iter().collect()
    );

    // The same message recorded again (a concurrent handler) fails the whole unit.
    let mut again = UnitOfWork::new(&store);
    accounts
        .execute(&mut again, "c", AccountCommand::Deposit(1), &meta())
        .await
        .unwrap();
    again.record_handled("test-consumer", message);
    let err = again.commit().await.unwrap_err();
    assert!(matches!(err, StoreError::InboxConflict), "{err:?}");
    assert!(history(&store, "c").await.is_empty());
}

#[tokio::test]
async fn a_conflict_on_one_aggregate_commits_nothing_of_the_unit() {
    let db = TestDatabase::create().await.unwrap();
    let store = store(&db).await;
    let fresh = Repository::<Account>::new(store.clone(), ());
    let stale = Repository::<Account>::new(store.clone(), ());
    fresh
        .handle("a", AccountCommand::Deposit(1), &meta())
        .await
        .unwrap();
    stale.load("a").await.unwrap();
    fresh
        .handle("a", AccountCommand::Deposit(1), &meta())
        .await
        .unwrap();

    let mut uow = UnitOfWork::new(&store);
    stale
        .execute(&mut uow, "b", AccountCommand::Deposit(1), &meta())
        .await
        .unwrap();
    stale
        .execute(&mut uow, "a", AccountCommand::Deposit(1), &meta())
        .await
        .unwrap();
    uow.record_handled("test-consumer", Uuid::now_v7());
    let err = uow.commit().await.unwrap_err();
    assert!(err.is_conflict(), "{err:?}");

    assert!(history(&store, "b").await.is_empty());
    assert_eq!(count(&store, "inbox").await, 0);
    // Evicted on conflict: the retry sees the real version.
    assert_eq!(stale.load("a").await.unwrap().1, 2);
}

#[tokio::test]
async fn rolling_back_to_a_mark_forgets_only_what_followed_it() {
    let db = TestDatabase::create().await.unwrap();
    let store = store(&db).await;
    let accounts = Repository::<Account>::new(store.clone(), ());

    let mut uow = UnitOfWork::new(&store);
    accounts
        .execute(&mut uow, "a", AccountCommand::Deposit(10), &meta())
        .await
        .unwrap();
    uow.record_handled("c", Uuid::now_v7());
    let mark = uow.mark();
    accounts
        .execute(&mut uow, "a", AccountCommand::Deposit(5), &meta())
        .await
        .unwrap();
    accounts
        .execute(&mut uow, "b", AccountCommand::Deposit(5), &meta())
        .await
        .unwrap();
    uow.record_handled("c", Uuid::now_v7());
    uow.rollback_to(mark);
    // After the rollback, `a` is back at 10.
    let err = accounts
        .execute(&mut uow, "a", AccountCommand::Withdraw(11), &meta())
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Rejected(_)), "{err:?}");
    uow.commit().await.unwrap();

    assert_eq!(history(&store, "a").await.len(), 1);
    assert!(history(&store, "b").await.is_empty());
    assert_eq!(count(&store, "inbox").await, 1);
    let fresh = Repository::<Account>::new(store.clone(), ());
    assert_eq!(fresh.load("a").await.unwrap(), (Account { balance: 10 }, 1));
    assert_eq!(
        accounts.load("a").await.unwrap(),
        (Account { balance: 10 }, 1)
    );
}

#[tokio::test]
async fn an_aggregate_is_rebuilt_from_its_history_by_a_new_instance() {
    let db = TestDatabase::create().await.unwrap();
    let store = store(&db).await;
    let accounts = Repository::<Account>::new(store.clone(), ()).with_cache_capacity(0);
    for _ in 0..20 {
        accounts
            .handle("a", AccountCommand::Deposit(3), &meta())
            .await
            .unwrap();
    }
    accounts
        .handle("a", AccountCommand::Withdraw(10), &meta())
        .await
        .unwrap();
    let restarted = Repository::<Account>::new(store.clone(), ());
    assert_eq!(
        restarted.load("a").await.unwrap(),
        (Account { balance: 50 }, 21)
    );
    // Migrations are idempotent: a second instance starting up changes nothing.
    store.migrate().await.unwrap();
    assert_eq!(count(&store, "events").await, 21);
}

#[tokio::test]
async fn units_committed_at_once_each_get_their_own_outcome() {
    let db = TestDatabase::create().await.unwrap();
    let store = store(&db).await;
    let fresh = Arc::new(Repository::<Account>::new(store.clone(), ()));
    let stale = Arc::new(Repository::<Account>::new(store.clone(), ()).with_max_attempts(1));
    fresh
        .handle("contested", AccountCommand::Deposit(1), &meta())
        .await
        .unwrap();
    stale.load("contested").await.unwrap();
    fresh
        .handle("contested", AccountCommand::Deposit(1), &meta())
        .await
        .unwrap();

    // 40 units at once, one of them built on a stale aggregate.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (repo, id) = if i == 20 {
            (Arc::clone(&stale), "contested".to_owned())
        } else {
            (Arc::clone(&fresh), format!("acc-{i}"))
        };
        tasks.push(tokio::spawn(async move {
            let outcome = repo
                .handle(&id, AccountCommand::DepositEach(vec![1, 2]), &meta())
                .await;
            (id, outcome)
        }));
    }
    for task in tasks {
        let (id, outcome) = task.await.unwrap();
        if id == "contested" {
            assert!(
                matches!(outcome, Err(CommandError::Conflict { .. })),
                "{outcome:?}"
            );
            continue;
        }
        let committed = outcome.unwrap();
        let history = history(&store, &id).await;
        assert_eq!(
            history.len(),
            2,
            "{id} committed its own events, and only those"
        );
        assert_eq!(
            committed.position, history[1].1,
            "{id} was told its own last position"
        );
    }
    assert_eq!(history(&store, "contested").await.len(), 2);
    assert_eq!(count(&store, "events").await, 2 + 39 * 2);
}

#[tokio::test]
async fn a_refusal_is_never_decided_on_a_stale_cached_aggregate() {
    let db = TestDatabase::create().await.unwrap();
    let store = store(&db).await;
    let reader = Repository::<Account>::new(store.clone(), ());
    let writer = Repository::<Account>::new(store.clone(), ());
    assert_eq!(reader.load("a").await.unwrap().1, 0, "cached as empty");
    writer
        .handle("a", AccountCommand::Deposit(10), &meta())
        .await
        .unwrap();

    // On its cached copy the withdrawal would be refused; the store says otherwise.
    let done = reader
        .handle("a", AccountCommand::Withdraw(5), &meta())
        .await
        .unwrap();
    assert_eq!(done.version, 2);
    let err = reader
        .handle("a", AccountCommand::Withdraw(6), &meta())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::Rejected(AccountError::InsufficientFunds {
                balance: 5,
                amount: 6
            })
        ),
        "{err:?}"
    );
}

/// The relay of the same process waits on `committed`: a commit wakes it, and a commit made
/// while it was busy elsewhere is remembered for its next wait; a unit without events is not
/// a reason to wake it.
#[tokio::test]
async fn a_commit_that_wrote_events_wakes_the_waiter_or_is_remembered_for_it() {
    let db = TestDatabase::create().await.unwrap();
    let store = store(&db).await;
    let accounts = Repository::<Account>::new(store.clone(), ());
    let soon = std::time::Duration::from_millis(100);

    // Remembered: committed first, waited for afterwards.
    accounts
        .handle("a1", AccountCommand::Deposit(5), &meta())
        .await
        .unwrap();
    tokio::time::timeout(soon, store.committed())
        .await
        .expect("a commit made before the wait is remembered");
    // Once only.
    assert!(tokio::time::timeout(soon, store.committed()).await.is_err());

    // Woken: waiting first, through a clone of the store.
    let waiter = tokio::spawn({
        let store = store.clone();
        async move { store.committed().await }
    });
    let mut uow = UnitOfWork::new(&store);
    uow.record_handled("nobody", Uuid::now_v7());
    uow.commit().await.unwrap();
    tokio::time::sleep(soon).await;
    assert!(!waiter.is_finished(), "a unit without events wakes nobody");
    accounts
        .handle("a1", AccountCommand::Deposit(1), &meta())
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE_SHORT, waiter)
        .await
        .expect("the commit wakes the waiter")
        .unwrap();
}

const PATIENCE_SHORT: std::time::Duration = std::time::Duration::from_secs(5);

/// The payload of the next notification `listener` receives.
async fn next_notification(listener: &mut sqlx::postgres::PgListener) -> String {
    tokio::time::timeout(PATIENCE_SHORT, listener.recv())
        .await
        .expect("a notification")
        .unwrap()
        .payload()
        .to_owned()
}

/// Relays of other processes LISTEN: a commit into an empty outbox notifies them (a relay may
/// be idle), one that finds older rows waiting does not (a relay is at work on them).
#[tokio::test]
async fn a_commit_notifies_listeners_only_when_the_outbox_held_no_row() {
    let db = TestDatabase::create().await.unwrap();
    let store = store(&db).await;
    let accounts = Repository::<Account>::new(store.clone(), ());
    let mut listener = sqlx::postgres::PgListener::connect(&db.url())
        .await
        .unwrap();
    listener.listen(eventstore::OUTBOX_CHANNEL).await.unwrap();

    accounts
        .handle("a1", AccountCommand::Deposit(5), &meta())
        .await
        .unwrap();
    assert_eq!(
        next_notification(&mut listener).await,
        "",
        "the outbox was empty"
    );

    accounts
        .handle("a2", AccountCommand::Deposit(1), &meta())
        .await
        .unwrap();
    // Notifications arrive in commit order: a marker sent after the commit comes first only
    // if the commit sent none.
    sqlx::query("SELECT pg_notify($1, 'after the quiet commit')")
        .bind(eventstore::OUTBOX_CHANNEL)
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(
        next_notification(&mut listener).await,
        "after the quiet commit",
        "a commit behind a waiting row notifies nobody"
    );

    sqlx::query("DELETE FROM outbox")
        .execute(store.pool())
        .await
        .unwrap();
    accounts
        .handle("a3", AccountCommand::Deposit(1), &meta())
        .await
        .unwrap();
    assert_eq!(
        next_notification(&mut listener).await,
        "",
        "the outbox was empty again"
    );
}

/// `execute_new` does not read the store for an aggregate it does not hold: a new aggregate
/// costs no read, and one that exists after all is found by the conflict at commit. The next
/// attempt reads it, and the command then applies to what was stored.
#[tokio::test]
async fn a_command_expecting_a_new_aggregate_finds_an_existing_one_by_the_conflict() {
    let db = TestDatabase::create().await.unwrap();
    let store = store(&db).await;
    let earlier = Repository::<Account>::new(store.clone(), ());
    earlier
        .handle("a", AccountCommand::Deposit(5), &meta())
        .await
        .unwrap();
    let accounts = Repository::<Account>::new(store.clone(), ());

    // Decided on the empty account it assumed: sequence 1, which the store already holds.
    let mut uow = UnitOfWork::new(&store);
    accounts
        .execute_new(&mut uow, "a", AccountCommand::Deposit(3), &meta())
        .await
        .unwrap();
    let err = uow.commit().await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err:?}");
    assert_eq!(
        count(&store, "events").await,
        1,
        "the conflict wrote nothing"
    );

    let mut uow = UnitOfWork::new(&store);
    accounts
        .execute_new(&mut uow, "a", AccountCommand::Deposit(3), &meta())
        .await
        .unwrap();
    uow.commit().await.unwrap();
    assert_eq!(history(&store, "a").await.len(), 2);
    assert_eq!(accounts.load("a").await.unwrap().0.balance, 8);

    // A new account: nothing to collide with.
    let mut uow = UnitOfWork::new(&store);
    accounts
        .execute_new(&mut uow, "b", AccountCommand::Deposit(4), &meta())
        .await
        .unwrap();
    uow.commit().await.unwrap();
    assert_eq!(
        accounts.load("b").await.unwrap(),
        (Account { balance: 4 }, 1)
    );
}

/// A command that the empty aggregate would refuse is checked against the store at once, as
/// any refusal is: `execute_new` refuses only what the stored aggregate refuses.
#[tokio::test]
async fn a_command_expecting_a_new_aggregate_is_refused_only_on_the_stored_one() {
    let db = TestDatabase::create().await.unwrap();
    let store = store(&db).await;
    Repository::<Account>::new(store.clone(), ())
        .handle("a", AccountCommand::Deposit(5), &meta())
        .await
        .unwrap();
    let accounts = Repository::<Account>::new(store.clone(), ());

    let mut uow = UnitOfWork::new(&store);
    accounts
        .execute_new(&mut uow, "a", AccountCommand::Withdraw(5), &meta())
        .await
        .unwrap();
    uow.commit().await.unwrap();
    assert_eq!(accounts.load("a").await.unwrap().0.balance, 0);

    let mut uow = UnitOfWork::new(&store);
    let err = accounts
        .execute_new(&mut uow, "c", AccountCommand::Withdraw(1), &meta())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::Rejected(AccountError::InsufficientFunds {
                balance: 0,
                amount: 1
            })
        ),
        "{err:?}"
    );
}
