//! A host's metrics as `GET /metrics` serves them, moving with real work: commands answered
//! and rejected, events appended by them, published by the relay, handled and dead-lettered
//! by a consumer, deadlines fired and failed, and a consumer's lag while it is held up.

use std::future::Future;
use std::sync::Arc;

use bus::{ConsumerSpec, Handler, HandlerError, Received};
use chrono::{DateTime, Utc};
use events::command::{CommandReply, command_subject};
use events::{BoundedContext, Metadata};
use eventstore::{CommandError, Deadline, DeadlineHandler, Repository, Store, UnitOfWork};
use harness::account::{Account, AccountCommand};
use host::metrics::read_sum;
use host::{Commands, Host};
use serde_json::json;
use tokio::sync::watch;

use crate::{Infra, PATIENCE, REMINDER, metrics_until};

const ORDERING: BoundedContext = BoundedContext::Ordering;

/// `deposit {"account": id, "amount": n}`: deposits on the account and schedules a reminder
/// due at once, in one unit of work.
struct Bank {
    accounts: Repository<Account>,
    store: Store,
}

impl Bank {
    async fn deposit(&self, body: &[u8], metadata: Metadata) -> CommandReply {
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(body) else {
            return CommandReply::invalid_field("body", "not JSON");
        };
        let (Some(id), Some(amount)) = (body["account"].as_str(), body["amount"].as_u64()) else {
            return CommandReply::invalid_field("account", "account and amount are required");
        };
        let mut uow = UnitOfWork::new(&self.store);
        let command = AccountCommand::Deposit(amount);
        match self
            .accounts
            .execute(&mut uow, id, command, &metadata)
            .await
        {
            Ok(_) => {}
            Err(CommandError::Rejected(e)) => {
                return CommandReply::rejected("zero_amount", e.to_string());
            }
            Err(e) => return CommandReply::rejected("unavailable", e.to_string()),
        }
        uow.schedule_deadline(REMINDER, id, Utc::now(), json!({}));
        match uow.commit().await {
            Ok(position) => CommandReply::Accepted {
                aggregate_id: id.to_owned(),
                position,
                version: 0,
            },
            Err(e) => CommandReply::rejected("unavailable", e.to_string()),
        }
    }
}

impl Commands for Bank {
    fn names(&self) -> &'static [&'static str] {
        &["deposit"]
    }

    fn run(
        &self,
        _: &str,
        body: &[u8],
        metadata: Metadata,
    ) -> impl Future<Output = CommandReply> + Send {
        self.deposit(body, metadata)
    }
}

/// Dead-letters the events of accounts named `bad…`, takes the others.
struct Picky;

impl Handler for Picky {
    async fn handle(&self, _: &mut UnitOfWork, message: &Received) -> Result<(), HandlerError> {
        if message.aggregate_id.starts_with("bad") {
            return Err(HandlerError::permanent("a bad account"));
        }
        Ok(())
    }
}

/// Takes every message once the gate opens.
struct Gated(watch::Receiver<bool>);

impl Handler for Gated {
    async fn handle(&self, _: &mut UnitOfWork, _: &Received) -> Result<(), HandlerError> {
        let mut open = self.0.clone();
        open.wait_for(|open| *open)
            .await
            .map_err(HandlerError::transient)?;
        Ok(())
    }
}

/// Refuses the reminders of accounts named `bad…`.
struct Reminders;

impl DeadlineHandler for Reminders {
    async fn fire(
        &self,
        _: &mut UnitOfWork,
        deadline: &Deadline,
        _: DateTime<Utc>,
    ) -> Result<(), String> {
        if deadline.key.starts_with("bad") {
            return Err("no reminders for bad accounts".to_owned());
        }
        Ok(())
    }
}

#[tokio::test]
async fn the_series_exist_from_the_start_and_move_as_an_order_of_work_flows() {
    let infra = Infra::new().await;
    let mut host = Host::start(&infra.settings(ORDERING)).await.unwrap();
    let store = host.store().clone();
    host.serve(Arc::new(Bank {
        accounts: Repository::new(store.clone(), ()),
        store,
    }))
    .await
    .unwrap();
    host.react(
        vec![ConsumerSpec::new("ordering", ORDERING.stream())],
        Arc::new(Picky),
    );
    let (gate, gated) = watch::channel(false);
    let held = ConsumerSpec {
        // One message delivered at a time: the others wait on the server, as lag.
        max_ack_pending: 1,
        ..ConsumerSpec::new("audit", ORDERING.stream())
    };
    host.react(vec![held], Arc::new(Gated(gated)));
    host.tick(REMINDER, Arc::new(Reminders));
    let http = host
        .listen_http("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let shutdown = host.shutdown_token();
    let running = tokio::spawn(host.run(std::future::pending()));

    // Before any work: every series whose labels are known, at zero.
    let sum = |text: &str, name: &str, labels: &[(&str, &str)]| read_sum(text, name, labels);
    let ordering = ("context", "ordering");
    let picky = ("consumer", "ordering-from-ordering");
    let audit = ("consumer", "audit-from-ordering");
    let text = metrics_until(http, "both consumers' lag", |text| {
        sum(text, "chorus_consumer_pending_messages", &[picky]).is_some()
            && sum(text, "chorus_consumer_pending_messages", &[audit]).is_some()
    })
    .await;
    for (name, labels) in [
        (
            "chorus_commands_handled_total",
            vec![ordering, ("command", "deposit")],
        ),
        (
            "chorus_command_duration_seconds_count",
            vec![ordering, ("command", "deposit")],
        ),
        ("chorus_relay_events_published_total", vec![ordering]),
        ("chorus_relay_duplicates_total", vec![ordering]),
        ("chorus_relay_latency_seconds_count", vec![ordering]),
        ("chorus_consumer_messages_total", vec![ordering, picky]),
        ("chorus_consumer_messages_total", vec![ordering, audit]),
        (
            "chorus_consumer_batch_duration_seconds_count",
            vec![ordering],
        ),
        ("chorus_consumer_pending_messages", vec![ordering, picky]),
        (
            "chorus_consumer_ack_pending_messages",
            vec![ordering, audit],
        ),
        ("chorus_outbox_backlog_events", vec![ordering]),
        (
            "chorus_deadlines_fired_total",
            vec![ordering, ("kind", REMINDER)],
        ),
        (
            "chorus_deadlines_failed_total",
            vec![ordering, ("kind", REMINDER)],
        ),
        (
            "chorus_deadline_ticks_failed_total",
            vec![ordering, ("kind", REMINDER)],
        ),
    ] {
        assert_eq!(
            sum(&text, name, &labels),
            Some(0.0),
            "{name} {labels:?}:\n{text}"
        );
    }
    for outcome in ["handled", "skipped", "retried", "dead_lettered"] {
        let labels = [picky, ("outcome", outcome)];
        assert_eq!(
            sum(&text, "chorus_consumer_messages_total", &labels),
            Some(0.0)
        );
    }
    assert_eq!(sum(&text, "chorus_commands_rejected_total", &[]), None);
    assert_eq!(sum(&text, "chorus_events_appended_total", &[]), None);

    // Two deposits accepted (one on a bad account), one refused by the account, one that does
    // not parse.
    let client = infra.nats.connect().await.unwrap();
    let subject = command_subject(ORDERING.name(), "deposit");
    let mut replies = Vec::new();
    for body in [
        json!({ "account": "a1", "amount": 5 }).to_string(),
        json!({ "account": "bad1", "amount": 1 }).to_string(),
        json!({ "account": "a2", "amount": 0 }).to_string(),
        "{".to_owned(),
    ] {
        let reply = client.request(subject.clone(), body.into()).await.unwrap();
        replies.push(serde_json::from_slice::<CommandReply>(&reply.payload).unwrap());
    }
    assert!(
        matches!(replies[0], CommandReply::Accepted { .. }),
        "{replies:?}"
    );
    assert!(
        matches!(replies[1], CommandReply::Accepted { .. }),
        "{replies:?}"
    );

    let text = metrics_until(http, "the work done", |text| {
        let picked = |outcome| {
            sum(
                text,
                "chorus_consumer_messages_total",
                &[picky, ("outcome", outcome)],
            )
        };
        picked("handled") == Some(1.0)
            && picked("dead_lettered") == Some(1.0)
            && sum(text, "chorus_relay_events_published_total", &[]) >= Some(2.0)
            && sum(text, "chorus_deadlines_fired_total", &[]) == Some(1.0)
            && sum(text, "chorus_deadlines_failed_total", &[]) >= Some(1.0)
            && sum(text, "chorus_outbox_backlog_events", &[]) == Some(0.0)
            // The held consumer has the first event in hand and the second waits.
            && sum(text, "chorus_consumer_ack_pending_messages", &[audit]) == Some(1.0)
            && sum(text, "chorus_consumer_pending_messages", &[audit]) == Some(1.0)
    })
    .await;
    let command = ("command", "deposit");
    assert_eq!(
        sum(&text, "chorus_commands_handled_total", &[ordering, command]),
        Some(4.0)
    );
    assert_eq!(
        sum(&text, "chorus_command_duration_seconds_count", &[command]),
        Some(4.0)
    );
    assert_eq!(
        sum(&text, "chorus_commands_rejected_total", &[command]),
        Some(2.0)
    );
    for code in ["zero_amount", "invalid_request"] {
        let labels = [ordering, command, ("code", code)];
        assert_eq!(
            sum(&text, "chorus_commands_rejected_total", &labels),
            Some(1.0),
            "{code}"
        );
    }
    // Counted once each, by the store, though the relay published them and two consumers
    // received them.
    assert_eq!(
        sum(
            &text,
            "chorus_events_appended_total",
            &[ordering, ("event_type", "Deposited")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sum(&text, "chorus_relay_latency_seconds_count", &[]),
        sum(&text, "chorus_relay_events_published_total", &[]),
    );
    assert!(
        sum(
            &text,
            "chorus_consumer_batch_duration_seconds_count",
            &[picky]
        ) >= Some(1.0)
    );
    assert_eq!(
        sum(&text, "chorus_deadline_ticks_failed_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        sum(&text, "chorus_consumer_pending_messages", &[picky]),
        Some(0.0)
    );

    // The held consumer goes on: its lag is gone, its messages handled.
    gate.send(true).unwrap();
    metrics_until(http, "the held consumer caught up", |text| {
        sum(
            text,
            "chorus_consumer_messages_total",
            &[audit, ("outcome", "handled")],
        ) == Some(2.0)
            && sum(text, "chorus_consumer_pending_messages", &[audit]) == Some(0.0)
            && sum(text, "chorus_consumer_ack_pending_messages", &[audit]) == Some(0.0)
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(PATIENCE, running)
        .await
        .expect("the host stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_metrics_are_the_hosts_own_and_served_as_prometheus_text() {
    let (infra, elsewhere) = tokio::join!(Infra::new(), Infra::new());
    let mut one = Host::start(&infra.settings(ORDERING)).await.unwrap();
    let other = Host::start(&elsewhere.settings(ORDERING)).await.unwrap();
    let http = one
        .listen_http("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let accounts = Repository::<Account>::new(one.store().clone(), ());
    accounts
        .handle(
            "a1",
            AccountCommand::DepositEach(vec![1, 2, 3]),
            &Metadata::default(),
        )
        .await
        .unwrap();

    let appended = |text: &str| read_sum(text, "chorus_events_appended_total", &[]);
    let text = one.scrape_metrics().await;
    assert_eq!(appended(&text), Some(3.0), "{text}");
    assert!(
        text.contains("# TYPE chorus_events_appended_total counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE chorus_relay_latency_seconds histogram"),
        "{text}"
    );
    assert_eq!(
        appended(&other.scrape_metrics().await),
        None,
        "another host's registry"
    );

    let response = crate::get(http, "/metrics").await.unwrap();
    assert_eq!(response.0, 200);
    assert_eq!(appended(&response.1), Some(3.0));
    let mut stream = tokio::net::TcpStream::connect(http).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        format!("GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut raw)
        .await
        .unwrap();
    let head = raw.split("\r\n\r\n").next().unwrap().to_lowercase();
    assert!(
        head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    drop((one, other));
}
