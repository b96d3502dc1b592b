//! What the relay and the consumer runtime tell their observers (a service's metrics count
//! from there): every event acknowledged, with its duplicates, and every message's outcome.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::{
    Backoff, Consumer, ConsumerObserver, ConsumerSpec, Handler, HandlerError, MessageOutcome,
    Received, Relay, RelayConfig, RelayObserver,
};
use events::{Event, Metadata, headers};
use eventstore::{Repository, StoredEvent, UnitOfWork};
use harness::account::{Account, AccountCommand, AccountEvent, Deposited};
use harness::wait_until;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{PATIENCE, World, new_store};

/// What a relay told it.
#[derive(Debug, Default)]
struct Seen {
    positions: Vec<i64>,
    duplicates: u64,
    rounds: usize,
}

#[derive(Debug, Default)]
struct RelayWatch(Mutex<Seen>);

impl RelayObserver for RelayWatch {
    fn published(&self, events: &[&StoredEvent], duplicates: u64) {
        let mut seen = self.0.lock().unwrap();
        seen.positions.extend(events.iter().map(|e| e.position));
        seen.duplicates += duplicates;
        seen.rounds += 1;
    }
}

impl RelayWatch {
    fn published(&self) -> usize {
        self.0.lock().unwrap().positions.len()
    }
}

#[tokio::test]
async fn the_relay_tells_of_every_event_acknowledged_and_of_the_duplicates() {
    let world = World::new().await;
    let accounts = Repository::<Account>::new(world.store.clone(), ());
    let metadata = Metadata::default();
    accounts
        .handle("a", AccountCommand::DepositEach(vec![1, 2, 3]), &metadata)
        .await
        .unwrap();
    accounts
        .handle("b", AccountCommand::Deposit(4), &metadata)
        .await
        .unwrap();
    let watch = Arc::new(RelayWatch::default());
    let config = RelayConfig {
        poll_interval: Duration::from_millis(100),
        retry_delay: Duration::from_millis(50),
        ..RelayConfig::default()
    };
    let relay = Relay::new(world.store.clone(), world.js.clone(), world.ledger.clone())
        .with_config(config)
        .with_observer(Arc::clone(&watch) as Arc<dyn RelayObserver>);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));

    wait_until("four events published", PATIENCE, || async {
        watch.published() >= 4
    })
    .await
    .unwrap();
    let stored: Vec<i64> = world
        .store
        .events_after(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect();
    {
        let seen = watch.0.lock().unwrap();
        let mut positions = seen.positions.clone();
        positions.sort_unstable();
        assert_eq!(positions, stored, "each event once");
        assert_eq!(seen.duplicates, 0);
    }

    // The outbox rows back, as after a relay that died before removing them: JetStream
    // acknowledges the events again as duplicates, and the observer hears of both.
    sqlx::query("INSERT INTO outbox (position) SELECT position FROM events")
        .execute(world.store.pool())
        .await
        .unwrap();
    wait_until("four events published again", PATIENCE, || async {
        watch.published() >= 8
    })
    .await
    .unwrap();
    assert_eq!(watch.published(), 8);
    assert_eq!(watch.0.lock().unwrap().duplicates, 4);
    assert_eq!(world.message_count("LEDGER").await, 4);
    shutdown.cancel();
    task.await.unwrap();
}

/// Deposits of 7 fail transiently on their first two deliveries, deposits of 99 always do.
struct Flaky;

impl Handler for Flaky {
    async fn handle(&self, _: &mut UnitOfWork, message: &Received) -> Result<(), HandlerError> {
        match message.decode::<AccountEvent>()? {
            AccountEvent::Deposited(Deposited { amount: 99 }) => {
                Err(HandlerError::transient("never"))
            }
            AccountEvent::Deposited(Deposited { amount: 7 }) if message.delivered < 3 => {
                Err(HandlerError::transient("not yet"))
            }
            _ => Ok(()),
        }
    }
}

/// What a consumer told it.
#[derive(Debug, Default)]
struct ConsumerWatch {
    outcomes: Mutex<HashMap<MessageOutcome, u64>>,
    batches: Mutex<(usize, usize)>,
}

impl ConsumerObserver for ConsumerWatch {
    fn settled(&self, outcome: MessageOutcome) {
        *self.outcomes.lock().unwrap().entry(outcome).or_default() += 1;
    }

    fn batch(&self, messages: usize, _took: Duration) {
        let mut batches = self.batches.lock().unwrap();
        batches.0 += 1;
        batches.1 += messages;
    }
}

impl ConsumerWatch {
    fn count(&self, outcome: MessageOutcome) -> u64 {
        self.outcomes
            .lock()
            .unwrap()
            .get(&outcome)
            .copied()
            .unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.outcomes.lock().unwrap().values().sum()
    }
}

/// Publishes a deposit on `id` as the relay would, with `msg_id` as `Nats-Msg-Id`.
async fn publish(world: &World, id: &str, amount: u64, event_id: Uuid, msg_id: &str) {
    let event = AccountEvent::from(Deposited { amount });
    let stored = StoredEvent {
        position: 1,
        event_id,
        aggregate_type: "account".into(),
        aggregate_id: id.into(),
        sequence: 1,
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
    world
        .js
        .publish_with_headers(subject, map, stored.payload.into_bytes().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn the_consumer_tells_what_became_of_each_message() {
    let world = World::new().await;
    // Handled once, then a copy under another message id (a republish): skipped.
    let first = Uuid::now_v7();
    publish(&world, "a", 5, first, &first.to_string()).await;
    publish(&world, "a", 5, first, "republished").await;
    // Retried twice, then handled.
    let id = Uuid::now_v7();
    publish(&world, "b", 7, id, &id.to_string()).await;
    // Retried twice, then dead-lettered when its attempts run out.
    let id = Uuid::now_v7();
    publish(&world, "c", 99, id, &id.to_string()).await;
    // Without an envelope: dead-lettered at once.
    let subject = world
        .ledger
        .event_subject("account", "d", "Deposited")
        .unwrap();
    world
        .js
        .publish(subject, "no headers".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let (store, _db) = new_store().await;
    let mut spec = ConsumerSpec::new("watched", world.ledger.clone());
    spec.max_attempts = 3;
    spec.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
    };
    let watch = Arc::new(ConsumerWatch::default());
    let consumer = Consumer::new(store, world.js.clone(), spec, Flaky)
        .with_observer(Arc::clone(&watch) as Arc<dyn ConsumerObserver>);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(consumer.run(shutdown.clone()));

    // Each delivery is settled once, in the batch it came in.
    let batched = || u64::try_from(watch.batches.lock().unwrap().1).unwrap();
    wait_until("every message settled for good", PATIENCE, || async {
        watch.count(MessageOutcome::Handled) == 2
            && watch.count(MessageOutcome::DeadLettered) == 2
            && batched() == watch.total()
    })
    .await
    .unwrap();
    assert_eq!(watch.count(MessageOutcome::Skipped), 1);
    assert_eq!(watch.count(MessageOutcome::Retried), 4);
    assert!(watch.batches.lock().unwrap().0 >= 1);
    assert_eq!(world.message_count("DEAD_LETTERS").await, 2);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
