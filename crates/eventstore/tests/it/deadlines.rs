use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{DateTime, Utc};
use events::Metadata;
use eventstore::{Deadline, DeadlineHandler, Repository, Store, Ticker, UnitOfWork};
use harness::TestDatabase;
use harness::account::{Account, AccountCommand};
use serde_json::json;

async fn store(db: &TestDatabase) -> Store {
    let store = Store::from_pool(db.pool(10).await.unwrap());
    store.migrate().await.unwrap();
    store
}

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
}

/// Pays out the `amount` in the deadline's payload from the account named by its key.
struct Payout {
    accounts: Repository<Account>,
    firings: Arc<AtomicU32>,
}

impl DeadlineHandler for Payout {
    async fn fire(
        &self,
        uow: &mut UnitOfWork,
        deadline: &Deadline,
        _now: DateTime<Utc>,
    ) -> Result<(), String> {
        self.firings.fetch_add(1, Ordering::SeqCst);
        let amount = deadline.payload["amount"].as_u64().ok_or("no amount")?;
        self.accounts
            .execute(
                uow,
                &deadline.key,
                AccountCommand::Withdraw(amount),
                &Metadata::default(),
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

fn payout(store: &Store) -> Payout {
    Payout {
        accounts: Repository::new(store.clone(), ()),
        firings: Arc::default(),
    }
}

async fn balance(store: &Store, id: &str) -> u64 {
    Repository::<Account>::new(store.clone(), ())
        .load(id)
        .await
        .unwrap()
        .0
        .balance
}

#[tokio::test]
async fn a_deadline_is_written_with_the_events_that_start_it_and_fired_once_when_due() {
    let db = TestDatabase::create().await.unwrap();
    let store = store(&db).await;
    let accounts = Repository::<Account>::new(store.clone(), ());
    let mut uow = UnitOfWork::new(&store);
    accounts
        .execute(
            &mut uow,
            "a",
            AccountCommand::Deposit(10),
            &Metadata::default(),
        )
        .await
        .unwrap();
    uow.schedule_deadline("payout", "a", at(60), json!({"amount": 4}));
    assert!(
        store.deadline("payout", "a").await.unwrap().is_none(),
        "nothing before commit"
    );
    uow.commit().await.unwrap();
    assert_eq!(
        store.deadline("payout", "a").await.unwrap().unwrap().due_at,
        at(60)
    );

    // A new ticker, as after a restart: the deadline was kept with the data.
    let handler = payout(&store);
    let firings = Arc::clone(&handler.firings);
    let ticker = Ticker::new(store.clone(), "payout", handler);
    assert_eq!(ticker.tick(at(59)).await.unwrap(), 0, "not due yet");
    assert_eq!(balance(&store, "a").await, 10);
    assert_eq!(ticker.tick(at(60)).await.unwrap(), 1);
    assert_eq!(balance(&store, "a").await, 6);
    assert!(
        store.deadline("payout", "a").await.unwrap().is_none(),
        "deleted with its effect"
    );
    assert_eq!(ticker.tick(at(120)).await.unwrap(), 0);
    assert_eq!(balance(&store, "a").await, 6);
    assert_eq!(firings.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_unit_that_fails_writes_no_deadline_and_a_cancelled_one_never_fires() {
    let db = TestDatabase::create().await.unwrap();
    let store = store(&db).await;
    let fresh = Repository::<Account>::new(store.clone(), ());
    let stale = Repository::<Account>::new(store.clone(), ());
    fresh
        .handle("a", AccountCommand::Deposit(10), &Metadata::default())
        .await
        .unwrap();
    stale.load("a").await.unwrap();
    fresh
        .handle("a", AccountCommand::Deposit(10), &Metadata::default())
        .await
        .unwrap();

    let mut uow = UnitOfWork::new(&store);
    stale
        .execute(
            &mut uow,
            "a",
            AccountCommand::Deposit(1),
            &Metadata::default(),
        )
        .await
        .unwrap();
    uow.schedule_deadline("payout", "a", at(0), json!({"amount": 1}));
    assert!(uow.commit().await.unwrap_err().is_conflict());
    assert!(store.deadline("payout", "a").await.unwrap().is_none());

    let mut uow = UnitOfWork::new(&store);
    uow.schedule_deadline("payout", "a", at(0), json!({"amount": 1}));
    uow.commit().await.unwrap();
    let mut uow = UnitOfWork::new(&store);
    uow.cancel_deadline("payout", "a");
    uow.commit().await.unwrap();
    let ticker = Ticker::new(store.clone(), "payout", payout(&store));
    assert_eq!(ticker.tick(at(1_000)).await.unwrap(), 0);
    assert_eq!(balance(&store, "a").await, 20);
}

/// The time of the statement that wrote the account's first event (`now()` is the statement's).
async fn written_at(store: &Store, id: &str) -> DateTime<Utc> {
    store.aggregate_events("account", id, 0).await.unwrap()[0].recorded_at
}

#[tokio::test]
async fn units_changing_other_deadlines_share_a_statement_and_one_deadline_changes_in_turn() {
    let db = TestDatabase::create().await.unwrap();
    let store = store(&db).await;
    let accounts = Repository::<Account>::new(store.clone(), ());
    let mut units = Vec::new();
    let mut unit = async |id: &str, change: &dyn Fn(&mut UnitOfWork)| {
        let mut uow = UnitOfWork::new(&store);
        accounts
            .execute(
                &mut uow,
                id,
                AccountCommand::Deposit(1),
                &Metadata::default(),
            )
            .await
            .unwrap();
        change(&mut uow);
        units.push(uow);
    };
    for i in 0..8 {
        let key = format!("d-{i}");
        unit(&format!("a-{i}"), &|uow| {
            uow.schedule_deadline("payout", &key, at(i), json!({}));
        })
        .await;
    }
    // Two more units change deadlines the first ones schedule: they come after them.
    unit("b-0", &|uow| {
        uow.schedule_deadline("payout", "d-0", at(100), json!({}));
    })
    .await;
    unit("b-1", &|uow| uow.cancel_deadline("payout", "d-1")).await;

    // Committed together: all are queued before the first statement is written.
    let outcomes = futures::future::join_all(units.into_iter().map(UnitOfWork::commit)).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");

    let first = written_at(&store, "a-0").await;
    for i in 1..8 {
        assert_eq!(
            written_at(&store, &format!("a-{i}")).await,
            first,
            "units changing different deadlines share one statement"
        );
    }
    let second = written_at(&store, "b-0").await;
    assert!(
        second > first,
        "the second change of d-0 waits for the first"
    );
    assert_eq!(written_at(&store, "b-1").await, second);
    let d0 = store.deadline("payout", "d-0").await.unwrap().unwrap();
    assert_eq!(d0.due_at, at(100), "the later change wins");
    assert!(store.deadline("payout", "d-1").await.unwrap().is_none());
    for i in 2..8 {
        let key = format!("d-{i}");
        let deadline = store.deadline("payout", &key).await.unwrap().unwrap();
        assert_eq!(deadline.due_at, at(i));
    }
}

#[tokio::test]
async fn a_failing_deadline_is_retried_later_then_left_failed_and_visible() {
    let db = TestDatabase::create().await.unwrap();
    let store = store(&db).await;
    let mut uow = UnitOfWork::new(&store);
    // Nothing to pay out from: the withdrawal is refused every time.
    uow.schedule_deadline("payout", "empty", at(0), json!({"amount": 5}));
    uow.schedule_deadline("payout", "no-amount", at(0), json!({}));
    uow.commit().await.unwrap();
    Repository::<Account>::new(store.clone(), ())
        .handle("rich", AccountCommand::Deposit(5), &Metadata::default())
        .await
        .unwrap();
    let mut uow = UnitOfWork::new(&store);
    uow.schedule_deadline("payout", "rich", at(0), json!({"amount": 5}));
    uow.commit().await.unwrap();

    let mut ticker = Ticker::new(store.clone(), "payout", payout(&store));
    ticker.max_attempts = 3;
    ticker.first_delay = std::time::Duration::from_secs(10);
    assert_eq!(
        ticker.tick(at(0)).await.unwrap(),
        1,
        "the good one fires despite the bad ones"
    );
    assert_eq!(balance(&store, "rich").await, 0);

    let empty = store.deadline("payout", "empty").await.unwrap().unwrap();
    assert_eq!(empty.attempts, 1);
    assert_eq!(empty.due_at, at(10), "retried after the first delay");
    assert!(
        empty
            .last_error
            .as_deref()
            .unwrap()
            .contains("balance 0 is below 5"),
        "{empty:?}"
    );
    assert_eq!(
        ticker.tick(at(5)).await.unwrap(),
        0,
        "not before its retry time"
    );
    ticker.tick(at(10)).await.unwrap();
    assert_eq!(
        store
            .deadline("payout", "empty")
            .await
            .unwrap()
            .unwrap()
            .due_at,
        at(30),
        "the delay doubles"
    );
    ticker.tick(at(30)).await.unwrap();

    let failed = store.failed_deadlines().await.unwrap();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(
        failed
            .iter()
            .all(|d| d.attempts == 3 && d.failed_at.is_some())
    );
    assert_eq!(
        ticker.tick(at(10_000)).await.unwrap(),
        0,
        "a failed deadline is not fired again"
    );

    // Scheduling it again (an operator's retry) clears the failure.
    let mut uow = UnitOfWork::new(&store);
    uow.schedule_deadline("payout", "empty", at(20_000), json!({"amount": 5}));
    uow.commit().await.unwrap();
    let again = store.deadline("payout", "empty").await.unwrap().unwrap();
    assert_eq!(
        (again.attempts, again.failed_at, again.last_error),
        (0, None, None)
    );
}

#[tokio::test]
async fn two_tickers_firing_at_once_have_one_effect() {
    let db = TestDatabase::create().await.unwrap();
    let store = store(&db).await;
    let accounts = Repository::<Account>::new(store.clone(), ());
    for i in 0..20 {
        let id = format!("acc-{i}");
        let mut uow = UnitOfWork::new(&store);
        accounts
            .execute(
                &mut uow,
                &id,
                AccountCommand::Deposit(10),
                &Metadata::default(),
            )
            .await
            .unwrap();
        uow.schedule_deadline("payout", &id, at(i), json!({"amount": 3}));
        uow.commit().await.unwrap();
    }
    let first = Ticker::new(store.clone(), "payout", payout(&store));
    let second = Ticker::new(store.clone(), "payout", payout(&store));
    let (a, b) = tokio::join!(first.tick(at(100)), second.tick(at(100)));
    // One of them may lose on a conflict; whatever is left fires on the next tick.
    for result in [a, b] {
        if let Err(e) = result {
            assert!(e.is_conflict(), "{e:?}");
        }
    }
    first.tick(at(101)).await.unwrap();
    for i in 0..20 {
        assert_eq!(
            balance(&store, &format!("acc-{i}")).await,
            7,
            "acc-{i} paid out exactly once"
        );
    }
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'Withdrawn'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(events, 20);
    assert!(
        store
            .due_deadlines("payout", at(1_000), 100)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A correlation id PostgreSQL cannot store (JSON text holds no NUL).
const UNSTORABLE: &str = "bad\u{0}value";

/// Pays out like [`Payout`], but a deadline whose payload says `"poisoned"` appends its event
/// with a correlation id PostgreSQL refuses: the handler succeeds, the commit cannot.
struct PoisonedPayout(Payout);

impl DeadlineHandler for PoisonedPayout {
    async fn fire(
        &self,
        uow: &mut UnitOfWork,
        deadline: &Deadline,
        now: DateTime<Utc>,
    ) -> Result<(), String> {
        if deadline.payload["poisoned"] != json!(true) {
            return self.0.fire(uow, deadline, now).await;
        }
        self.0.firings.fetch_add(1, Ordering::SeqCst);
        let amount = deadline.payload["amount"].as_u64().ok_or("no amount")?;
        let metadata = Metadata {
            correlation_id: Some(UNSTORABLE.to_owned()),
            ..Metadata::default()
        };
        self.0
            .accounts
            .execute(
                uow,
                &deadline.key,
                AccountCommand::Withdraw(amount),
                &metadata,
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[tokio::test]
async fn a_deadline_whose_event_cannot_be_stored_fails_alone_and_the_others_fire() {
    let db = TestDatabase::create().await.unwrap();
    let store = store(&db).await;
    let accounts = Repository::<Account>::new(store.clone(), ());
    for (id, payload) in [
        ("a", json!({"amount": 3})),
        ("poisoned", json!({"amount": 4, "poisoned": true})),
        ("c", json!({"amount": 2})),
    ] {
        let mut uow = UnitOfWork::new(&store);
        accounts
            .execute(
                &mut uow,
                id,
                AccountCommand::Deposit(10),
                &Metadata::default(),
            )
            .await
            .unwrap();
        uow.schedule_deadline("payout", id, at(0), payload);
        uow.commit().await.unwrap();
    }
    // The store does refuse that event for its data.
    let mut uow = UnitOfWork::new(&store);
    let bad = Metadata {
        correlation_id: Some(UNSTORABLE.into()),
        ..Metadata::default()
    };
    accounts
        .execute(&mut uow, "a", AccountCommand::Withdraw(1), &bad)
        .await
        .unwrap();
    assert!(uow.commit().await.unwrap_err().is_data_error());

    let mut ticker = Ticker::new(store.clone(), "payout", PoisonedPayout(payout(&store)));
    ticker.max_attempts = 2;
    ticker.first_delay = std::time::Duration::from_secs(10);
    assert_eq!(
        ticker.tick(at(0)).await.unwrap(),
        2,
        "the two good deadlines fire despite the bad one"
    );
    assert_eq!(balance(&store, "a").await, 7);
    assert_eq!(balance(&store, "c").await, 8);
    assert_eq!(balance(&store, "poisoned").await, 10);
    for id in ["a", "c"] {
        assert!(
            store.deadline("payout", id).await.unwrap().is_none(),
            "{id}"
        );
    }
    let poisoned = store.deadline("payout", "poisoned").await.unwrap().unwrap();
    assert_eq!(poisoned.attempts, 1);
    assert_eq!(poisoned.due_at, at(10), "retried after the first delay");
    assert_eq!(poisoned.failed_at, None);
    let reason = poisoned.last_error.unwrap();
    assert!(reason.contains("cannot be stored"), "{reason}");

    // Alone in its tick, it fails again, and after its last attempt it is left failed.
    assert_eq!(ticker.tick(at(10)).await.unwrap(), 0);
    let failed = store.failed_deadlines().await.unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        (failed[0].key.as_str(), failed[0].attempts),
        ("poisoned", 2)
    );
    assert_eq!(ticker.tick(at(10_000)).await.unwrap(), 0);
    assert_eq!(balance(&store, "poisoned").await, 10);
    let withdrawals: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'Withdrawn'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(withdrawals, 2);
}
