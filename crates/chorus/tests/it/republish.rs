use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bus::{Backoff, Consumer, ConsumerSpec, Handler, HandlerError, Received, Relay, RelayConfig};
use events::headers;
use eventstore::{Repository, Store, StoredEvent, UnitOfWork};
use harness::account::{Account, AccountCommand, AccountEvent};
use harness::wait_until;
use tokio_util::sync::CancellationToken;

use crate::{PATIENCE, StreamMessage, World, new_store};

const MIRROR: &str = "mirror-from-ordering";

/// Mirrors every deposit into an account of its own store: one event per message handled.
struct Mirror {
    accounts: Repository<Account>,
}

impl Handler for Mirror {
    async fn handle(&self, uow: &mut UnitOfWork, message: &Received) -> Result<(), HandlerError> {
        let AccountEvent::Deposited(deposit) = message.decode::<AccountEvent>()? else {
            return Ok(());
        };
        self.accounts
            .execute(
                uow,
                &message.aggregate_id,
                AccountCommand::Deposit(deposit.amount),
                &message.caused_metadata(),
            )
            .await?;
        Ok(())
    }
}

/// Runs the mirror on the ordering stream until every message there is handled and acked.
async fn mirror_until_caught_up(world: &World, store: &Store) {
    let mut spec = ConsumerSpec::new("mirror", world.stream.clone());
    spec.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
    };
    let mirror = Mirror {
        accounts: Repository::new(store.clone(), ()),
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(
        Consumer::new(store.clone(), world.js.clone(), spec, mirror).run(shutdown.clone()),
    );
    let last = world.message_count("ORDERING").await;
    wait_until("the mirror to handle every message", PATIENCE, || async {
        let Ok(stream) = world.js.get_stream("ORDERING").await else {
            return false;
        };
        let Ok(info) = stream.consumer_info(MIRROR).await else {
            return false;
        };
        info.delivered.stream_sequence >= last && info.num_pending == 0 && info.num_ack_pending == 0
    })
    .await
    .unwrap();
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

async fn count(store: &Store, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// Reads `name: N` from a summary line.
fn figure(stdout: &str, name: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.parse().ok())
        .unwrap_or_else(|| panic!("no {name:?} in {stdout}"))
}

/// Asserts that `messages` are exactly `stored`, once each, with the relay's subject and
/// headers, and each aggregate's events in sequence order.
fn assert_published_as_the_relay_does(
    world: &World,
    messages: &[StreamMessage],
    stored: &[StoredEvent],
) {
    let by_id: HashMap<String, &StoredEvent> =
        stored.iter().map(|e| (e.event_id.to_string(), e)).collect();
    let mut seen = HashSet::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    for message in messages {
        let id = message.header(headers::EVENT_ID);
        let event = by_id
            .get(id)
            .unwrap_or_else(|| panic!("message {} is no event of the store", message.sequence));
        assert!(
            seen.insert(id.to_owned()),
            "event {id} is in the stream twice"
        );
        let subject = world
            .stream
            .event_subject(
                &event.aggregate_type,
                &event.aggregate_id,
                &event.event_type,
            )
            .unwrap();
        assert_eq!(message.subject, subject);
        let expected: HashMap<String, Vec<String>> = bus::event_headers(event)
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.iter().map(|v| v.as_str().to_owned()).collect(),
                )
            })
            .collect();
        assert_eq!(
            message.headers, expected,
            "headers of event {}",
            event.position
        );
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&message.payload).unwrap(),
            serde_json::from_str::<serde_json::Value>(&event.payload).unwrap()
        );
        if let Some(previous) = last.insert(event.aggregate_id.clone(), event.sequence) {
            assert_eq!(
                event.sequence,
                previous + 1,
                "aggregate {} out of order",
                event.aggregate_id
            );
        }
    }
    assert_eq!(
        seen.len(),
        stored.len(),
        "every event of the store is in the stream"
    );
}

#[tokio::test]
async fn a_lost_stream_is_republished_once_and_consumers_see_no_second_effect() {
    let world = World::new().await;
    let accounts = Repository::<Account>::new(world.store.clone(), ());
    for i in 0..40u64 {
        let id = format!("acc-{}", i % 5);
        let command = if i % 4 == 3 {
            AccountCommand::DepositEach(vec![1, 2])
        } else {
            AccountCommand::Deposit(i + 1)
        };
        accounts.handle(&id, command, &crate::meta()).await.unwrap();
    }
    let stored = world.store.events_after(0, 1_000).await.unwrap();
    let total = stored.len() as u64;
    assert_eq!(total, 50);
    world.relay_until(total).await;
    let (mirror, _mirror_db) = new_store().await;
    mirror_until_caught_up(&world, &mirror).await;
    assert_eq!(count(&mirror, "SELECT count(*) FROM events").await, 50);

    // The stream is lost; the store still has everything.
    world.js.delete_stream("ORDERING").await.unwrap();
    let run = world
        .chorus(&["republish", "--context", "ordering"])
        .await
        .success();
    assert_eq!(
        figure(&run.stdout, "events published"),
        total,
        "{}",
        run.stdout
    );
    assert_eq!(figure(&run.stdout, "duplicates dropped by JetStream"), 0);
    assert!(
        run.stdout.lines().any(|l| l.starts_with("time: ")),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.is_empty(),
        "no progress bar without a terminal: {}",
        run.stderr
    );
    let messages = world.messages("ORDERING").await;
    assert_published_as_the_relay_does(&world, &messages, &stored);

    // A consumer that reads the recreated stream from its start finds every event in its
    // inbox: no second effect.
    mirror_until_caught_up(&world, &mirror).await;
    assert_eq!(count(&mirror, "SELECT count(*) FROM events").await, 50);
    assert_eq!(count(&mirror, "SELECT count(*) FROM inbox").await, 50);

    // Again, within the duplicate window: JetStream drops every copy.
    let again = world
        .chorus(&["republish", "--context", "ordering"])
        .await
        .success();
    assert_eq!(figure(&again.stdout, "events published"), total);
    assert_eq!(
        figure(&again.stdout, "duplicates dropped by JetStream"),
        total
    );
    assert_eq!(world.message_count("ORDERING").await, total);
}

#[tokio::test]
async fn from_publishes_only_the_tail_and_clears_it_from_the_outbox() {
    let world = World::new().await;
    for i in 0..10 {
        world.deposit(&format!("acc-{}", i % 3), i + 1).await;
    }
    // Never relayed: the outbox holds all ten, and there is no stream yet.
    world.js.delete_stream("ORDERING").await.unwrap();
    assert_eq!(world.store.outbox_backlog().await.unwrap(), 10);
    let stored = world.store.events_after(0, 100).await.unwrap();
    let from = stored[6].position;

    let run = world
        .chorus(&[
            "republish",
            "--context",
            "ordering",
            "--from",
            &from.to_string(),
        ])
        .await
        .success();
    assert_eq!(figure(&run.stdout, "events published"), 4);
    let messages = world.messages("ORDERING").await;
    assert_published_as_the_relay_does(&world, &messages, &stored[6..]);
    assert_eq!(
        count(&world.store, "SELECT count(*) FROM outbox").await,
        6,
        "the published tail left the outbox, the rest waits for the relay"
    );
    let waiting: i64 = sqlx::query_scalar("SELECT max(position) FROM outbox")
        .fetch_one(world.store.pool())
        .await
        .unwrap();
    assert!(waiting < from);
}

#[tokio::test]
async fn it_refuses_to_run_beside_an_active_relay() {
    let world = World::new().await;
    world.deposit("acc-1", 5).await;
    let relay = Relay::new(world.store.clone(), world.js.clone(), world.stream.clone())
        .with_config(RelayConfig {
            poll_interval: Duration::from_millis(100),
            ..RelayConfig::default()
        });
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    wait_until("the relay to be active", PATIENCE, || async {
        world.message_count("ORDERING").await == 1
    })
    .await
    .unwrap();
    world.js.delete_stream("ORDERING").await.unwrap();

    let run = world
        .chorus(&["republish", "--context", "ordering"])
        .await
        .failure(1);
    assert!(
        run.stderr.contains("the ordering relay is running")
            && run.stderr.contains("stop the ordering service first"),
        "{}",
        run.stderr
    );
    assert_eq!(
        world.message_count("ORDERING").await,
        0,
        "nothing was published"
    );
    shutdown.cancel();
    task.await.unwrap();
}
