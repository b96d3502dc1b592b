use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream;
use bus::{Backoff, Consumer, ConsumerSpec, Handler, HandlerError, Received, Relay, RelayConfig};
use events::naming::DEAD_LETTER_STREAM;
use events::{Event, Metadata, headers};
use eventstore::{CommandError, Repository, Store, StoredEvent, UnitOfWork};
use harness::account::{Account, AccountCommand, AccountEvent, Deposited, Withdrawn};
use harness::wait_until;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{PATIENCE, World, new_store};

/// Mirrors the ledger's accounts into a store of its own. Deposits of 99 always fail
/// transiently; deposits of 7 fail transiently on their first two deliveries. Deposits of 98
/// always arrive early; deposits of 8 arrive early on their first four deliveries, more than
/// the spec's attempts for other transient failures.
struct Mirror {
    accounts: Repository<Account>,
}

impl Handler for Mirror {
    async fn handle(&self, uow: &mut UnitOfWork, message: &Received) -> Result<(), HandlerError> {
        let command = match message.decode::<AccountEvent>()? {
            AccountEvent::Deposited(Deposited { amount: 99 }) => {
                return Err(HandlerError::transient("the mirror is busy"));
            }
            AccountEvent::Deposited(Deposited { amount: 7 }) if message.delivered < 3 => {
                return Err(HandlerError::transient("the mirror is busy for now"));
            }
            AccountEvent::Deposited(Deposited { amount: 98 }) => {
                return Err(HandlerError::early("the account is not opened yet"));
            }
            AccountEvent::Deposited(Deposited { amount: 8 }) if message.delivered < 5 => {
                return Err(HandlerError::early("the account is not opened yet"));
            }
            AccountEvent::Deposited(d) => AccountCommand::Deposit(d.amount),
            AccountEvent::Withdrawn(w) => AccountCommand::Withdraw(w.amount),
        };
        self.accounts
            .execute(
                uow,
                &message.aggregate_id,
                command,
                &message.caused_metadata(),
            )
            .await
            .map_err(|e| match e {
                CommandError::Rejected(e) => HandlerError::permanent(e),
                other => HandlerError::transient(other),
            })?;
        Ok(())
    }
}

fn spec(world: &World) -> ConsumerSpec {
    let mut spec = ConsumerSpec::new("mirror", world.ledger.clone());
    spec.max_attempts = 3;
    spec.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
    };
    spec
}

struct Running {
    store: Store,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _db: harness::TestDatabase,
}

impl Running {
    async fn start(world: &World, spec: ConsumerSpec) -> Self {
        let (store, db) = new_store().await;
        Self::start_on(world, spec, store, db)
    }

    fn start_on(
        world: &World,
        spec: ConsumerSpec,
        store: Store,
        db: harness::TestDatabase,
    ) -> Self {
        let mirror = Mirror {
            accounts: Repository::new(store.clone(), ()),
        };
        let shutdown = CancellationToken::new();
        let consumer = Consumer::new(store.clone(), world.js.clone(), spec, mirror);
        let task = tokio::spawn(consumer.run(shutdown.clone()));
        Self {
            store,
            shutdown,
            task,
            _db: db,
        }
    }

    async fn balance(&self, id: &str) -> u64 {
        Repository::<Account>::new(self.store.clone(), ())
            .load(id)
            .await
            .unwrap()
            .0
            .balance
    }

    async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(self.store.pool())
            .await
            .unwrap()
    }

    async fn stop(self) -> (Store, harness::TestDatabase) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        (self.store, self._db)
    }
}

/// Publishes an account event as the relay would, with `msg_id` as `Nats-Msg-Id`.
async fn publish(
    world: &World,
    id: &str,
    sequence: i64,
    event: AccountEvent,
    event_id: Uuid,
    msg_id: &str,
) {
    let stored = StoredEvent {
        position: sequence,
        event_id,
        aggregate_type: "account".into(),
        aggregate_id: id.into(),
        sequence,
        event_type: event.event_type().into(),
        schema_version: 1,
        payload: event.to_payload().to_string(),
        metadata: Metadata::default(),
        recorded_at: chrono::Utc::now(),
    };
    let mut map = bus::event_headers(&stored);
    map.insert(headers::MSG_ID, msg_id);
    let subject = world
        .ledger
        .event_subject("account", id, event.event_type())
        .unwrap();
    let payload = stored.payload.clone().into_bytes();
    world
        .js
        .publish_with_headers(subject, map, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn deposit(world: &World, id: &str, sequence: i64, amount: u64) -> Uuid {
    let event_id = Uuid::now_v7();
    publish(
        world,
        id,
        sequence,
        Deposited { amount }.into(),
        event_id,
        &event_id.to_string(),
    )
    .await;
    event_id
}

/// Waits until the consumer has acknowledged everything in its stream.
async fn drained(world: &World, name: &str) {
    wait_until("the consumer to ack everything", PATIENCE, || async {
        // The consumer may not be provisioned yet.
        let found: Result<jetstream::consumer::PullConsumer, _> =
            world.js.get_consumer_from_stream(name, "LEDGER").await;
        let Ok(mut consumer) = found else {
            return false;
        };
        let info = consumer.info().await.unwrap();
        info.num_pending == 0 && info.num_ack_pending == 0
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_message_delivered_again_or_republished_under_a_new_id_has_one_effect() {
    let world = World::new().await;
    let event_id = deposit(&world, "a", 1, 5).await;
    // The same event again: once more (deduplicated by JetStream), then twice under new
    // message ids, as a republish after the duplicate window would do.
    publish(
        &world,
        "a",
        1,
        Deposited { amount: 5 }.into(),
        event_id,
        &event_id.to_string(),
    )
    .await;
    publish(
        &world,
        "a",
        1,
        Deposited { amount: 5 }.into(),
        event_id,
        "republished-1",
    )
    .await;
    assert_eq!(world.message_count("LEDGER").await, 2);

    let running = Running::start(&world, spec(&world)).await;
    drained(&world, "mirror-from-ledger").await;
    // And once more after the first copy was handled and committed.
    publish(
        &world,
        "a",
        1,
        Deposited { amount: 5 }.into(),
        event_id,
        "republished-2",
    )
    .await;
    drained(&world, "mirror-from-ledger").await;

    assert_eq!(running.balance("a").await, 5);
    assert_eq!(running.count("SELECT count(*) FROM inbox").await, 1);
    assert_eq!(running.count("SELECT count(*) FROM events").await, 1);
    assert_eq!(world.message_count(DEAD_LETTER_STREAM).await, 0);
    running.stop().await;
}

/// A first delivery is handled without asking the inbox; a copy of an event handled before
/// that the aggregate now refuses (the withdrawal would overdraw the account the second time)
/// must still be skipped as a copy, not dead-lettered as a refusal.
#[tokio::test]
async fn a_republished_copy_that_the_aggregate_would_now_refuse_is_skipped_not_dead_lettered() {
    let world = World::new().await;
    deposit(&world, "b", 1, 5).await;
    let withdrawal = Uuid::now_v7();
    let withdrawn = || -> AccountEvent { Withdrawn { amount: 5 }.into() };
    let msg_id = withdrawal.to_string();
    publish(&world, "b", 2, withdrawn(), withdrawal, &msg_id).await;
    let running = Running::start(&world, spec(&world)).await;
    drained(&world, "mirror-from-ledger").await;
    assert_eq!(running.balance("b").await, 0);

    publish(&world, "b", 2, withdrawn(), withdrawal, "republished").await;
    drained(&world, "mirror-from-ledger").await;

    assert_eq!(world.message_count(DEAD_LETTER_STREAM).await, 0);
    assert_eq!(running.balance("b").await, 0);
    assert_eq!(running.count("SELECT count(*) FROM inbox").await, 2);
    assert_eq!(running.count("SELECT count(*) FROM events").await, 2);
    running.stop().await;
}

#[tokio::test]
async fn bad_messages_are_dead_lettered_with_their_error_and_the_rest_are_handled() {
    let world = World::new().await;
    deposit(&world, "a", 1, 5).await;
    // Not JSON.
    let garbage = world
        .ledger
        .event_subject("account", "b", "Deposited")
        .unwrap();
    let stored = StoredEvent {
        position: 1,
        event_id: Uuid::now_v7(),
        aggregate_type: "account".into(),
        aggregate_id: "b".into(),
        sequence: 1,
        event_type: "Deposited".into(),
        schema_version: 1,
        payload: "null".into(),
        metadata: Metadata::default(),
        recorded_at: chrono::Utc::now(),
    };
    world
        .js
        .publish_with_headers(garbage, bus::event_headers(&stored), "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // No envelope headers at all.
    world
        .js
        .publish("ledger.account.c.Deposited", "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // Always fails transiently: dead-lettered after 3 attempts.
    deposit(&world, "d", 1, 99).await;
    // Always arrives early: dead-lettered after 3 + 7 attempts.
    deposit(&world, "f", 1, 98).await;
    // Refused by the mirror's aggregate for good.
    let id = Uuid::now_v7();
    publish(
        &world,
        "e",
        1,
        Withdrawn { amount: 1_000 }.into(),
        id,
        &id.to_string(),
    )
    .await;
    deposit(&world, "a", 2, 6).await;

    let running = Running::start(&world, spec(&world)).await;
    wait_until("5 dead letters", PATIENCE, || async {
        world.message_count(DEAD_LETTER_STREAM).await == 5
    })
    .await
    .unwrap();
    drained(&world, "mirror-from-ledger").await;
    assert_eq!(
        running.balance("a").await,
        11,
        "the good messages around the bad ones were handled"
    );
    assert_eq!(running.count("SELECT count(*) FROM inbox").await, 2);

    let letters = world.messages(DEAD_LETTER_STREAM).await;
    let by_aggregate = |id: &str| {
        letters
            .iter()
            .find(|m| {
                m.subject == "deadletter.mirror-from-ledger"
                    && m.header(headers::DLQ_SUBJECT).contains(&format!(".{id}."))
            })
            .unwrap_or_else(|| panic!("no dead letter for {id}: {letters:?}"))
    };
    let b = by_aggregate("b");
    assert!(
        b.header(headers::DLQ_ERROR).contains("payload is not JSON"),
        "{b:?}"
    );
    assert_eq!(b.header(headers::DLQ_ATTEMPTS), "1");
    assert_eq!(b.header(headers::DLQ_CONSUMER), "mirror-from-ledger");
    assert_eq!(b.header(headers::DLQ_STREAM), "LEDGER");
    assert_eq!(b.payload, b"{not json");
    let c = by_aggregate("c");
    assert!(
        c.header(headers::DLQ_ERROR)
            .contains("header Chorus-Event-Id is missing"),
        "{c:?}"
    );
    let d = by_aggregate("d");
    assert!(
        d.header(headers::DLQ_ERROR)
            .contains("gave up after 3 attempts: the mirror is busy"),
        "{d:?}"
    );
    assert_eq!(d.header(headers::DLQ_ATTEMPTS), "3");
    assert_eq!(
        d.header(headers::EVENT_TYPE),
        "Deposited",
        "the original headers are kept"
    );
    let e = by_aggregate("e");
    assert!(
        e.header(headers::DLQ_ERROR)
            .contains("balance 0 is below 1000"),
        "{e:?}"
    );
    assert_eq!(e.header(headers::DLQ_ATTEMPTS), "1");
    let f = by_aggregate("f");
    assert!(
        f.header(headers::DLQ_ERROR)
            .contains("gave up after 10 attempts: the account is not opened yet"),
        "{f:?}"
    );
    assert_eq!(f.header(headers::DLQ_ATTEMPTS), "10");
    running.stop().await;
}

#[tokio::test]
async fn a_transient_or_early_failure_is_retried_and_then_succeeds_once() {
    let world = World::new().await;
    deposit(&world, "a", 1, 7).await;
    // Early on 4 deliveries, one more than the spec's 3 attempts: still handled.
    deposit(&world, "b", 1, 8).await;
    let running = Running::start(&world, spec(&world)).await;
    drained(&world, "mirror-from-ledger").await;
    assert_eq!(running.balance("a").await, 7);
    assert_eq!(running.balance("b").await, 8);
    assert_eq!(running.count("SELECT count(*) FROM events").await, 2);
    assert_eq!(world.message_count(DEAD_LETTER_STREAM).await, 0);
    running.stop().await;
}

#[tokio::test]
async fn a_batch_commits_together_and_one_failure_costs_the_others_nothing() {
    let world = World::new().await;
    for i in 0..60 {
        if i == 30 {
            let id = Uuid::now_v7();
            publish(
                &world,
                "broke",
                1,
                Withdrawn { amount: 1 }.into(),
                id,
                &id.to_string(),
            )
            .await;
        }
        deposit(&world, &format!("acc-{i}"), 1, 1).await;
    }
    let running = Running::start(&world, spec(&world)).await;
    drained(&world, "mirror-from-ledger").await;

    assert_eq!(
        running.count("SELECT count(*) FROM events").await,
        60,
        "each good message applied once"
    );
    assert_eq!(running.count("SELECT count(*) FROM inbox").await, 60);
    assert_eq!(
        running
            .count("SELECT count(DISTINCT aggregate_id) FROM events")
            .await,
        60
    );
    // Rows written by one transaction share its id (xmin): far fewer commits than messages.
    let commits = running
        .count("SELECT count(DISTINCT xmin::text) FROM events")
        .await;
    assert!(commits < 20, "60 messages took {commits} commits");
    assert_eq!(world.message_count(DEAD_LETTER_STREAM).await, 1);
    running.stop().await;
}

#[tokio::test]
async fn after_shutdown_and_restart_every_message_has_exactly_one_effect() {
    let world = World::new().await;
    for i in 0..300 {
        deposit(&world, &format!("acc-{}", i % 10), i / 10 + 1, 1).await;
    }
    let mut small = spec(&world);
    small.batch_size = 16;
    small.ack_wait = Duration::from_secs(1);
    let running = Running::start(&world, small.clone()).await;
    wait_until("some messages handled", PATIENCE, || async {
        running.count("SELECT count(*) FROM inbox").await > 0
    })
    .await
    .unwrap();
    let (store, db) = running.stop().await;

    let restarted = Running::start_on(&world, small, store, db);
    drained(&world, "mirror-from-ledger").await;
    assert_eq!(restarted.count("SELECT count(*) FROM inbox").await, 300);
    let mut total = 0;
    for i in 0..10 {
        total += restarted.balance(&format!("acc-{i}")).await;
    }
    assert_eq!(total, 300);
    restarted.stop().await;
}

#[tokio::test]
async fn a_command_in_one_context_reaches_the_reacting_context_through_the_relay() {
    let world = World::new().await;
    let ledger = Repository::<Account>::new(world.store.clone(), ());
    let metadata = Metadata {
        correlation_id: Some("order-42".into()),
        ..Metadata::default()
    };
    ledger
        .handle("a", AccountCommand::DepositEach(vec![1, 2, 3]), &metadata)
        .await
        .unwrap();
    ledger
        .handle("a", AccountCommand::Withdraw(6), &metadata)
        .await
        .unwrap();

    let shutdown = CancellationToken::new();
    let relay = Relay::new(world.store.clone(), world.js.clone(), world.ledger.clone())
        .with_config(RelayConfig {
            poll_interval: Duration::from_millis(100),
            ..RelayConfig::default()
        });
    let relay = tokio::spawn(relay.run(shutdown.clone()));
    let running = Running::start(&world, spec(&world)).await;
    wait_until("the mirror to see all 4 events", PATIENCE, || async {
        running.count("SELECT count(*) FROM inbox").await == 4
    })
    .await
    .unwrap();
    assert_eq!(running.balance("a").await, 0);
    let mirrored = running.store.events_after(0, 10).await.unwrap();
    let source: HashSet<String> = world
        .store
        .events_after(0, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event_id.to_string())
        .collect();
    for event in &mirrored {
        assert_eq!(event.metadata.correlation_id.as_deref(), Some("order-42"));
        let cause = event.metadata.causation_id.as_deref().unwrap();
        assert!(
            source.contains(cause),
            "causation id {cause} is a source event id"
        );
    }
    running.stop().await;
    shutdown.cancel();
    relay.await.unwrap();
}

#[tokio::test]
async fn provisioning_is_idempotent_and_updates_a_changed_consumer() {
    let world = World::new().await;
    bus::provision::streams(&world.js, std::slice::from_ref(&world.ledger), 1)
        .await
        .unwrap();
    let spec = spec(&world);
    bus::provision::consumer(&world.js, &spec).await.unwrap();
    bus::provision::consumer(&world.js, &spec).await.unwrap();
    let filtered = spec
        .clone()
        .filter(world.ledger.event_type_filter("account", "Withdrawn"));
    let mut consumer = bus::provision::consumer(&world.js, &filtered)
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(
        info.config.filter_subjects,
        vec!["ledger.account.*.Withdrawn".to_owned()]
    );

    // The filter holds on the server: only withdrawals reach the consumer.
    deposit(&world, "a", 1, 5).await;
    let id = Uuid::now_v7();
    publish(
        &world,
        "a",
        2,
        Withdrawn { amount: 1 }.into(),
        id,
        &id.to_string(),
    )
    .await;
    let info = consumer.info().await.unwrap();
    assert_eq!(info.num_pending, 1);
}

#[tokio::test]
async fn a_message_redelivered_after_its_effects_committed_has_no_second_effect() {
    let world = World::new().await;
    let event_id = deposit(&world, "a", 1, 5).await;
    deposit(&world, "b", 1, 3).await;

    // What a consumer that committed `event_id` and died before its ack leaves behind: the
    // effect and the inbox row, committed together. JetStream will deliver the message again.
    let (store, db) = new_store().await;
    let accounts = Repository::<Account>::new(store.clone(), ());
    let mut uow = UnitOfWork::new(&store);
    accounts
        .execute(
            &mut uow,
            "a",
            AccountCommand::Deposit(5),
            &Metadata::default(),
        )
        .await
        .unwrap();
    uow.record_handled("mirror-from-ledger", event_id);
    uow.commit().await.unwrap();

    let running = Running::start_on(&world, spec(&world), store, db);
    drained(&world, "mirror-from-ledger").await;
    assert_eq!(
        running.balance("a").await,
        5,
        "the redelivery had no effect"
    );
    assert_eq!(running.balance("b").await, 3);
    assert_eq!(running.count("SELECT count(*) FROM inbox").await, 2);
    running.stop().await;
}

#[tokio::test]
async fn while_a_message_waits_for_its_retry_the_later_messages_of_its_aggregate_wait_too() {
    let world = World::new().await;
    // The deposit fails transiently twice; the withdrawal after it needs the deposit first.
    deposit(&world, "a", 1, 7).await;
    let id = Uuid::now_v7();
    publish(
        &world,
        "a",
        2,
        Withdrawn { amount: 7 }.into(),
        id,
        &id.to_string(),
    )
    .await;
    deposit(&world, "b", 1, 1).await;

    let running = Running::start(&world, spec(&world)).await;
    drained(&world, "mirror-from-ledger").await;
    assert_eq!(
        world.message_count(DEAD_LETTER_STREAM).await,
        0,
        "the withdrawal did not overtake the deposit"
    );
    assert_eq!(running.balance("a").await, 0);
    assert_eq!(running.balance("b").await, 1);
    let types: Vec<String> = running
        .store
        .aggregate_events("account", "a", 0)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(types, vec!["Deposited", "Withdrawn"]);
    running.stop().await;
}
