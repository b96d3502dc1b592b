use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bus::{Backoff, Consumer, ConsumerSpec, Handler, HandlerError, Received};
use events::headers;
use events::naming::DEAD_LETTER_STREAM;
use eventstore::{Store, UnitOfWork};
use harness::wait_until;
use tokio_util::sync::CancellationToken;

use crate::{PATIENCE, World, new_store};

const AUDITOR: &str = "auditor-from-ordering";

/// Refuses every message for good while `refusing` is set; accepts them after.
struct Auditor {
    refusing: Arc<AtomicBool>,
}

impl Handler for Auditor {
    async fn handle(&self, _: &mut UnitOfWork, message: &Received) -> Result<(), HandlerError> {
        if self.refusing.load(Ordering::SeqCst) {
            return Err(HandlerError::permanent(format!(
                "the auditor refuses {} of {} for now",
                message.event_type, message.aggregate_id
            )));
        }
        Ok(())
    }
}

/// The auditor consuming the ordering stream, with an inbox in a store of its own.
struct Audit {
    refusing: Arc<AtomicBool>,
    store: Store,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _db: harness::TestDatabase,
}

impl Audit {
    async fn start(world: &World) -> Self {
        let (store, db) = new_store().await;
        let refusing = Arc::new(AtomicBool::new(true));
        let mut spec = ConsumerSpec::new("auditor", world.stream.clone());
        spec.backoff = Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
        };
        let handler = Auditor {
            refusing: Arc::clone(&refusing),
        };
        let shutdown = CancellationToken::new();
        let consumer = Consumer::new(store.clone(), world.js.clone(), spec, handler);
        let task = tokio::spawn(consumer.run(shutdown.clone()));
        Self {
            refusing,
            store,
            shutdown,
            task,
            _db: db,
        }
    }

    async fn has_handled(&self, event_id: &str) -> bool {
        let id = event_id.parse().unwrap();
        self.store
            .handled(AUDITOR, &[id])
            .await
            .unwrap()
            .contains(&id)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Three events, refused by the auditor: three dead letters, 1 to 3, in event order.
async fn three_dead_letters(world: &World) -> Audit {
    for (id, amount) in [("acc-1", 10), ("acc-2", 20), ("acc-3", 30)] {
        world.deposit(id, amount).await;
    }
    world.relay_until(3).await;
    let audit = Audit::start(world).await;
    wait_until("three dead letters", PATIENCE, || async {
        world.message_count(DEAD_LETTER_STREAM).await == 3
    })
    .await
    .unwrap();
    audit
}

#[tokio::test]
async fn dead_letters_are_listed_shown_retried_and_purged() {
    let world = World::new().await;
    let audit = three_dead_letters(&world).await;
    let letters = world.messages(DEAD_LETTER_STREAM).await;
    let event_id = |sequence: u64| {
        letters
            .iter()
            .find(|m| m.sequence == sequence)
            .unwrap()
            .header(headers::EVENT_ID)
            .to_owned()
    };
    let first_event = event_id(1);

    // The list: one row per dead letter with where it came from and why it failed.
    let list = world.chorus(&["dlq", "list"]).await.success();
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        5,
        "header, three rows, summary: {}",
        list.stdout
    );
    assert!(
        lines[0].starts_with("SEQ") && lines[0].contains("ERROR"),
        "{}",
        lines[0]
    );
    for (row, (account, source)) in
        lines[1..4]
            .iter()
            .zip([("acc-1", 1), ("acc-2", 2), ("acc-3", 3)])
    {
        let expected = [
            AUDITOR.to_owned(),
            format!("ORDERING:{source}"),
            "Deposited".to_owned(),
            format!("account/{account}"),
            format!("the auditor refuses Deposited of {account} for now"),
        ];
        for part in expected {
            assert!(row.contains(&part), "row {row:?} lacks {part:?}");
        }
    }
    assert!(lines[4].starts_with("3 dead letters"), "{}", lines[4]);
    assert!(list.stderr.is_empty(), "{}", list.stderr);

    let filtered = world
        .chorus(&["dlq", "list", "--consumer", "billing-from-ordering"])
        .await
        .success();
    assert_eq!(
        filtered.stdout.trim(),
        "no dead letters of consumer billing-from-ordering"
    );

    // One in full: every header and the payload as JSON.
    let show = world.chorus(&["dlq", "show", "1"]).await.success();
    for line in [
        format!("  {}: {AUDITOR}", headers::DLQ_CONSUMER),
        format!(
            "  {}: the auditor refuses Deposited of acc-1 for now",
            headers::DLQ_ERROR
        ),
        format!("  {}: ORDERING", headers::DLQ_STREAM),
        format!("  {}: 1", headers::DLQ_STREAM_SEQUENCE),
        format!(
            "  {}: ordering.account.acc-1.Deposited",
            headers::DLQ_SUBJECT
        ),
        format!("  {}: {first_event}", headers::EVENT_ID),
        format!("  {}: corr-1", headers::CORRELATION_ID),
        "payload (JSON):".to_owned(),
        "  \"amount\": 10".to_owned(),
    ] {
        assert!(
            show.stdout.lines().any(|l| l == line),
            "`dlq show 1` lacks {line:?}:\n{}",
            show.stdout
        );
    }

    // Retried once the auditor accepts: the auditor handles it, the dead letter is gone.
    audit.refusing.store(false, Ordering::SeqCst);
    let retry = world.chorus(&["dlq", "retry", "1"]).await.success();
    assert!(
        retry.stdout.contains("retried dead letter 1") && retry.stdout.contains("ORDERING"),
        "{}",
        retry.stdout
    );
    wait_until("the auditor to handle the retried event", PATIENCE, || {
        audit.has_handled(&first_event)
    })
    .await
    .unwrap();
    assert_eq!(world.message_count(DEAD_LETTER_STREAM).await, 2);
    let republished = world.messages("ORDERING").await;
    assert_eq!(republished.len(), 4);
    let copy = &republished[3];
    assert_eq!(copy.subject, "ordering.account.acc-1.Deposited");
    assert_eq!(
        copy.header(headers::MSG_ID),
        format!("{first_event}:retry:1")
    );
    assert_eq!(copy.header(headers::EVENT_ID), first_event);
    assert_eq!(
        copy.header(headers::DLQ_ERROR),
        "",
        "no dead-letter header is sent back"
    );
    assert_eq!(copy.payload, republished[0].payload);

    // A dead letter that is not there: a clear error, nothing done.
    let gone = world.chorus(&["dlq", "retry", "1"]).await.failure(1);
    assert!(
        gone.stderr
            .contains("there is no dead letter 1 in DEAD_LETTERS"),
        "{}",
        gone.stderr
    );
    let unknown = world.chorus(&["dlq", "retry", "99"]).await.failure(1);
    assert!(
        unknown.stderr.contains("no dead letter 99"),
        "{}",
        unknown.stderr
    );
    assert_eq!(unknown.stderr.lines().count(), 1, "{}", unknown.stderr);
    world.chorus(&["dlq", "show", "99"]).await.failure(1);
    world.chorus(&["dlq", "purge", "99"]).await.failure(1);
    assert_eq!(world.message_count(DEAD_LETTER_STREAM).await, 2);
    assert_eq!(world.message_count("ORDERING").await, 4);

    // Purged: one by its sequence, then the rest.
    let one = world.chorus(&["dlq", "purge", "2"]).await.success();
    assert_eq!(one.stdout.trim(), "purged 1 dead letter");
    world.chorus(&["dlq", "show", "2"]).await.failure(1);
    let rest = world.chorus(&["dlq", "purge", "--all"]).await.success();
    assert_eq!(rest.stdout.trim(), "purged 1 dead letter");
    let empty = world.chorus(&["dlq", "list"]).await.success();
    assert_eq!(empty.stdout.trim(), "no dead letters");
    assert!(
        !audit.has_handled(&event_id(2)).await,
        "a purged dead letter is not retried"
    );
    audit.stop().await;
}

#[tokio::test]
async fn all_dead_letters_of_one_consumer_are_retried_at_once() {
    let world = World::new().await;
    let audit = three_dead_letters(&world).await;
    // A dead letter of another consumer, which `--consumer` leaves alone.
    let mut other = world.messages(DEAD_LETTER_STREAM).await[0].clone();
    other.headers.insert(
        headers::DLQ_CONSUMER.to_owned(),
        vec!["billing-from-ordering".to_owned()],
    );
    let mut map = async_nats::HeaderMap::new();
    for (name, values) in &other.headers {
        if name != headers::MSG_ID {
            map.insert(name.as_str(), values[0].as_str());
        }
    }
    world
        .js
        .publish_with_headers(
            "deadletter.billing-from-ordering",
            map,
            other.payload.into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    audit.refusing.store(false, Ordering::SeqCst);
    let retry = world
        .chorus(&["dlq", "retry", "--all", "--consumer", AUDITOR])
        .await
        .success();
    assert!(
        retry.stdout.contains("retried 3 dead letters"),
        "{}",
        retry.stdout
    );
    let letters_left = world.messages(DEAD_LETTER_STREAM).await;
    assert_eq!(letters_left.len(), 1);
    assert_eq!(
        letters_left[0].header(headers::DLQ_CONSUMER),
        "billing-from-ordering"
    );
    let events: Vec<String> = world.messages("ORDERING").await[..3]
        .iter()
        .map(|m| m.header(headers::EVENT_ID).to_owned())
        .collect();
    for event in &events {
        wait_until(
            "the auditor to handle every retried event",
            PATIENCE,
            || audit.has_handled(event),
        )
        .await
        .unwrap();
    }
    let purged = world
        .chorus(&[
            "dlq",
            "purge",
            "--all",
            "--consumer",
            "billing-from-ordering",
        ])
        .await
        .success();
    assert_eq!(
        purged.stdout.trim(),
        "purged 1 dead letter of consumer billing-from-ordering"
    );
    assert_eq!(world.message_count(DEAD_LETTER_STREAM).await, 0);
    audit.stop().await;
}
