//! The accounts and users of `nats/` (`auth.conf`, included by `secure.conf` and the cluster
//! nodes) on a private server: each service's user is refused what its service must not do,
//! and the saga runs under them with nothing refused.
//!
//! A refusal is observed where the server reports it, not inferred from a silence: the server
//! answers a refused publish or subscription with `-ERR 'Permissions Violation for ...'` on the
//! connection (async-nats hands it to the event callback), and drops the message. The request
//! that carried it then gets no answer (a refused JetStream publish gets no ack), and the
//! stream it aimed at is unchanged. Each refusal is paired with the same user doing what it is
//! allowed to, so that a test cannot pass on a connection that does nothing at all.
//!
//! Each context provisions only its own stream (and creates the dead letters if they are
//! missing); its consumers on the other streams wait for their owners to start.
//!
//! The saga under least privilege ends by reading the server's log: a missing permission that
//! a retry would hide (a consumer that cannot ack, a relay whose publish is dropped and tried
//! again) still leaves its violation there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, pull};
use async_nats::jetstream::response::Response;
use async_nats::jetstream::{self, kv, stream};
use async_nats::{Client, ConnectOptions, Event, ServerError};
use bus::ConsumerSpec;
use events::BoundedContext;
use events::health::{CheckKind, CheckState, HealthReport};
use events::naming::{DEAD_LETTER_STREAM, dead_letter_subject};
use futures::StreamExt;
use harness::{NatsServer, TestDatabase};
use host::Settings;

use crate::scenarios;
use crate::system::{Options, PATIENCE, System};

/// The users of `nats/auth.conf`; each one's password comes from [`password_var`].
pub const USERS: [&str; 9] = [
    "ordering",
    "inventory",
    "payments",
    "shipping",
    "projections",
    "gateway",
    "notifications",
    "operator",
    "sys",
];

/// How long a JetStream request of a test waits for its answer. A refused request never gets
/// one: this bounds how long the test waits for the evidence, it is not what is asserted.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The `nats/` directory of the repository.
pub fn nats_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../nats")
}

/// The variable `auth.conf` reads `user`'s password from, e.g. `ORDERING_NATS_PASSWORD`.
pub fn password_var(user: &str) -> String {
    format!("{}_NATS_PASSWORD", user.to_uppercase())
}

/// A password nats-server reads as a string from its environment: a letter first, then hex.
fn new_password() -> String {
    format!("pw{}", uuid::Uuid::now_v7().simple())
}

/// The lines of `server`'s log that report a permission violation.
pub fn logged_violations(server: &NatsServer) -> Vec<String> {
    std::fs::read_to_string(server.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("Violation"))
        .map(str::to_owned)
        .collect()
}

/// A private nats-server on `nats/secure.conf`, every user with a fresh password.
#[derive(Debug)]
pub struct SecureNats {
    server: NatsServer,
    passwords: BTreeMap<&'static str, String>,
}

impl SecureNats {
    pub async fn start() -> Self {
        let passwords: BTreeMap<_, _> = USERS.iter().map(|u| (*u, new_password())).collect();
        let env = passwords.iter().map(|(u, p)| (password_var(u), p.clone()));
        let server = NatsServer::start_with_config_and_env(&nats_dir().join("secure.conf"), env)
            .await
            .expect("nats-server starts on nats/secure.conf");
        Self { server, passwords }
    }

    pub fn server(&self) -> &NatsServer {
        &self.server
    }

    /// The URL a service connects with as `user`, password included.
    pub fn url(&self, user: &str) -> String {
        format!(
            "nats://{user}:{}@127.0.0.1:{}",
            self.passwords[user],
            self.server.port()
        )
    }

    /// Connects as `user` (under its own inbox prefix), keeping the errors the
    /// server sends. (async-nats does not take credentials from a URL: they are given apart.)
    pub async fn connect(&self, user: &str) -> Connection {
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = Arc::clone(&errors);
        let mut options = ConnectOptions::new()
            .name(format!("e2e-{user}"))
            .user_and_password(user.to_owned(), self.passwords[user].clone())
            .event_callback(move |event| {
                let sink = Arc::clone(&sink);
                async move {
                    if let Event::ServerError(ServerError::Other(error)) = event {
                        sink.lock().unwrap().push(error);
                    }
                }
            });
        // Every service's user reads only its own inbox prefix, as `bus::connect` sets it.
        if user != "operator" {
            options = options.custom_inbox_prefix(format!("_INBOX_{user}"));
        }
        let client = options
            .connect(self.server.url())
            .await
            .unwrap_or_else(|e| panic!("{user} cannot connect: {e}"));
        client.flush().await.expect("the server answers");
        let mut js = jetstream::new(client.clone());
        js.set_timeout(REQUEST_TIMEOUT);
        Connection {
            user: user.to_owned(),
            client,
            js,
            errors,
        }
    }
}

/// One user's connection, with the errors the server has sent it.
#[derive(Debug)]
pub struct Connection {
    user: String,
    pub client: Client,
    pub js: jetstream::Context,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Connection {
    /// Waits until the server has told this connection that it may not publish on `subject`.
    pub async fn refused_publish(&self, subject: &str) {
        self.refused(&format!(
            "Permissions Violation for Publish to \"{subject}\""
        ))
        .await;
    }

    /// Waits until the server has told this connection that it may not subscribe to `subject`.
    pub async fn refused_subscription(&self, subject: &str) {
        self.refused(&format!(
            "Permissions Violation for Subscription to \"{subject}\""
        ))
        .await;
    }

    async fn refused(&self, expected: &str) {
        let told = harness::wait_until(
            &format!("the server to refuse {} {expected}", self.user),
            PATIENCE,
            || async { self.errors().iter().any(|e| e.contains(expected)) },
        )
        .await;
        if let Err(e) = told {
            panic!("{e:#}; the server said: {:?}", self.errors());
        }
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// Publishes on `subject` and flushes: what the server does with it, it has done once the
    /// flush returns.
    async fn publish(&self, subject: &str) {
        self.client
            .publish(subject.to_owned(), "{}".into())
            .await
            .expect("publish");
        self.client.flush().await.expect("flush");
    }
}

/// The durable consumers each context creates, as its service defines them.
fn consumers(context: BoundedContext) -> Vec<ConsumerSpec> {
    match context {
        BoundedContext::Ordering => ordering::reactions::consumers(),
        BoundedContext::Inventory => inventory::reactions::consumers(),
        BoundedContext::Payments => payments::reactions::consumers(),
        BoundedContext::Shipping => shipping::reactions::consumers(),
    }
}

/// A subject of `context`'s stream, as its relay publishes.
fn event_subject(context: BoundedContext) -> String {
    context
        .stream()
        .event_subject("order", "b7c1", "Probed")
        .expect("subject")
}

/// The streams, created as the services create them, by the operator.
async fn provision(nats: &SecureNats) -> Connection {
    let operator = nats.connect("operator").await;
    let streams: Vec<_> = BoundedContext::ALL.iter().map(|c| c.stream()).collect();
    bus::provision::streams(&operator.js, &streams, 1)
        .await
        .expect("the operator provisions the streams");
    operator
}

async fn messages_in(operator: &Connection, stream: &str) -> u64 {
    let mut stream = operator.js.get_stream(stream).await.expect("stream");
    stream.info().await.expect("stream info").state.messages
}

async fn consumer_names(operator: &Connection, stream: &str) -> Vec<String> {
    let stream = operator.js.get_stream(stream).await.expect("stream");
    let mut names: Vec<String> = stream
        .consumer_names()
        .map(|name| name.expect("consumer name"))
        .collect()
        .await;
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_publishes_events_and_dead_letters_only_on_its_own_subjects() {
    let nats = SecureNats::start().await;
    let operator = provision(&nats).await;
    let mut contexts = Vec::new();
    for context in BoundedContext::ALL {
        contexts.push((context, nats.connect(context.name()).await));
    }

    // Each context's own event and its own consumers' dead letter are taken.
    for (context, connection) in &contexts {
        let ack = connection
            .js
            .publish(event_subject(*context), "{}".into())
            .await
            .expect("publish");
        ack.await
            .unwrap_or_else(|e| panic!("{context} cannot publish its own event: {e}"));
        let own = &consumers(*context)[0].name;
        connection
            .js
            .publish(dead_letter_subject(own), "{}".into())
            .await
            .expect("publish")
            .await
            .unwrap_or_else(|e| panic!("{context} cannot dead-letter for {own}: {e}"));
    }

    // Every other context's subjects are refused: a violation, no ack, nothing stored.
    let mut acks = Vec::new();
    for (context, connection) in &contexts {
        for other in BoundedContext::ALL.into_iter().filter(|o| o != context) {
            let subject = event_subject(other);
            let ack = connection
                .js
                .publish(subject.clone(), "{}".into())
                .await
                .expect("the message leaves the client");
            connection.refused_publish(&subject).await;
            acks.push(async move { (context, subject, ack.await) });
            let theirs = dead_letter_subject(&consumers(other)[0].name);
            connection.publish(&theirs).await;
            connection.refused_publish(&theirs).await;
        }
    }
    for (context, subject, ack) in futures::future::join_all(acks).await {
        assert!(
            ack.is_err(),
            "{context} got an ack for an event on {subject}"
        );
    }
    for context in BoundedContext::ALL {
        assert_eq!(
            messages_in(&operator, &context.stream().name()).await,
            1,
            "{context}'s stream holds only {context}'s own event"
        );
    }
    assert_eq!(
        messages_in(&operator, DEAD_LETTER_STREAM).await,
        BoundedContext::ALL.len() as u64,
        "the dead-letter stream holds only the contexts' own dead letters"
    );
}

/// The users that run services, which may change no stream but their own.
const SERVICE_USERS: [&str; 7] = [
    "ordering",
    "inventory",
    "payments",
    "shipping",
    "projections",
    "notifications",
    "gateway",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_context_provisions_its_stream_and_no_service_changes_another() {
    let nats = SecureNats::start().await;
    let nats = &nats;
    // Each context provisions as its service does at start (twice: again changes nothing):
    // its own stream, and the dead letters if they are missing, with nothing but a CREATE.
    for context in BoundedContext::ALL {
        let connection = nats.connect(context.name()).await;
        for _ in 0..2 {
            bus::provision::streams(&connection.js, std::slice::from_ref(&context.stream()), 1)
                .await
                .unwrap_or_else(|e| panic!("{context} cannot provision its own stream: {e:#}"));
        }
        assert!(connection.errors().is_empty(), "{:?}", connection.errors());
    }

    // Whatever any service asks of a stream that is not its own is refused: creating it (here
    // with another configuration), updating it, deleting it. A context may create the dead
    // letters (which exist: the same configuration again changes nothing) and no more.
    let checks = SERVICE_USERS.map(|user| async move {
        let connection = nats.connect(user).await;
        let js = &connection.js;
        let theirs: Vec<stream::Config> = BoundedContext::ALL
            .into_iter()
            .filter(|c| c.name() != user)
            .map(|c| bus::provision::event_stream(&c.stream(), 1))
            .chain([bus::provision::dead_letter_stream(1)])
            .collect();
        let a_context = BoundedContext::parse(user).is_some();
        let attempts = theirs.iter().map(|config| async move {
            let name = config.name.clone();
            let changed = stream::Config {
                description: Some(format!("changed by {user}")),
                max_messages: 1,
                ..config.clone()
            };
            let create = if a_context && name == DEAD_LETTER_STREAM {
                let same = js.create_stream(config.clone()).await;
                assert!(same.is_ok(), "{user} cannot create {name}: {same:?}");
                None
            } else {
                Some(js.create_stream(changed.clone()).await.is_ok())
            };
            let update = js.update_stream(changed).await.is_ok();
            let delete = js.delete_stream(&name).await.is_ok();
            (name, create, update, delete)
        });
        for (name, create, update, delete) in futures::future::join_all(attempts).await {
            let mut refused = vec!["UPDATE", "DELETE"];
            if let Some(created) = create {
                assert!(!created, "{user} created {name}");
                refused.push("CREATE");
            }
            assert!(!update && !delete, "{user} updated or deleted {name}");
            for operation in refused {
                connection
                    .refused_publish(&format!("$JS.API.STREAM.{operation}.{name}"))
                    .await;
            }
        }
    });
    futures::future::join_all(checks).await;

    let operator = nats.connect("operator").await;
    let all = BoundedContext::ALL
        .map(|c| bus::provision::event_stream(&c.stream(), 1))
        .into_iter()
        .chain([bus::provision::dead_letter_stream(1)]);
    for expected in all {
        let mut stream = operator
            .js
            .get_stream(&expected.name)
            .await
            .unwrap_or_else(|e| {
                panic!("{} was deleted: {e}", expected.name);
            });
        let config = stream.info().await.expect("stream info").config.clone();
        assert_eq!(
            (config.description, config.max_messages),
            (expected.description, -1),
            "{} keeps the configuration its owner gave it",
            expected.name
        );
    }
}

/// Ordering started first on an empty server, as `System` starts the contexts in the secure
/// saga tests below: the streams its consumers read do not exist yet. It starts all the same,
/// its consumers wait for those streams and its health says so; each consumer starts once its
/// stream's context has started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_started_before_the_streams_it_reads_waits_for_them() {
    let nats = SecureNats::start().await;
    let (ordering_db, inventory_db) = (
        TestDatabase::create().await.expect("test database"),
        TestDatabase::create().await.expect("test database"),
    );
    let settings = |context: BoundedContext, db: &TestDatabase| Settings {
        context,
        database_url: db.url(),
        nats_url: nats.url(context.name()),
        database_connections: 2,
    };
    let ordering = ordering::service::start(
        &settings(BoundedContext::Ordering, &ordering_db),
        chrono::Duration::seconds(60),
    )
    .await
    .expect("ordering starts before the streams it reads exist");
    let consumer_states = |report: &HealthReport| -> BTreeMap<String, (CheckState, String)> {
        report
            .checks
            .iter()
            .filter(|c| c.kind == CheckKind::Consumer)
            .map(|c| {
                let detail = c.detail.clone().unwrap_or_default();
                (c.name.clone(), (c.state, detail))
            })
            .collect()
    };
    let waiting_for = |states: &BTreeMap<String, (CheckState, String)>, spec: &ConsumerSpec| {
        let stream = spec.stream.name();
        matches!(&states[&spec.name], (CheckState::Waiting, detail) if detail.contains(&stream))
    };
    let specs = consumers(BoundedContext::Ordering);
    let all_waiting = harness::wait_until(
        "ordering's consumers to wait for their streams",
        PATIENCE,
        || async {
            let states = consumer_states(&ordering.health().await);
            specs.iter().all(|spec| waiting_for(&states, spec))
        },
    )
    .await;
    let report = ordering.health().await;
    assert!(all_waiting.is_ok(), "{report:#?}");
    assert!(
        !report.ready,
        "ordering is ready without its consumers: {report:#?}"
    );

    let inventory = inventory::service::start(&settings(BoundedContext::Inventory, &inventory_db))
        .await
        .expect("inventory starts");
    let from_inventory = specs
        .iter()
        .find(|spec| spec.stream == BoundedContext::Inventory.stream())
        .expect("ordering reads inventory's stream");
    let running = harness::wait_until(
        "ordering's consumer of INVENTORY to start",
        PATIENCE,
        || async {
            let states = consumer_states(&ordering.health().await);
            states[&from_inventory.name].0 == CheckState::Running
        },
    )
    .await;
    let states = consumer_states(&ordering.health().await);
    assert!(running.is_ok(), "{states:#?}");
    // The others still wait: their contexts have not started.
    for spec in specs.iter().filter(|spec| spec.name != from_inventory.name) {
        assert!(waiting_for(&states, spec), "{}: {states:#?}", spec.name);
    }
    // Inventory's consumer of ORDERING found its stream at once.
    let inventory_states = consumer_states(&inventory.health().await);
    assert_eq!(
        inventory_states["inventory-from-ordering"].0,
        CheckState::Running,
        "{inventory_states:#?}"
    );
    assert_eq!(logged_violations(nats.server()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_creates_and_reads_only_its_own_consumers() {
    let nats = SecureNats::start().await;
    let operator = provision(&nats).await;
    let nats = &nats;
    // The contexts at once: each refused request waits out its timeout.
    let checks = BoundedContext::ALL.map(|context| async move {
        let connection = nats.connect(context.name()).await;
        for spec in consumers(context) {
            bus::provision::consumer(&connection.js, &spec)
                .await
                .unwrap_or_else(|e| panic!("{context} cannot create {}: {e:#}", spec.name));
        }
        let others: Vec<_> = BoundedContext::ALL
            .into_iter()
            .filter(|o| *o != context)
            .collect();
        let theirs: Vec<_> = others.iter().copied().flat_map(consumers).collect();
        let js = &connection.js;
        let created = futures::future::join_all(
            theirs
                .iter()
                .map(|spec| async move { (spec, bus::provision::consumer(js, spec).await) }),
        )
        .await;
        for (spec, created) in created {
            assert!(created.is_err(), "{context} created {}", spec.name);
            let stream = spec.stream.name();
            connection
                .refused_publish(&format!("$JS.API.CONSUMER.CREATE.{stream}.{}", spec.name))
                .await;
            let next = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{}", spec.name);
            connection.publish(&next).await;
            connection.refused_publish(&next).await;
        }
        // Nor reads another context's stream but through its consumers.
        let infos = futures::future::join_all(others.iter().map(|other| async move {
            let stream = other.stream().name();
            (js.get_stream(&stream).await.is_err(), stream)
        }))
        .await;
        for (refused, stream) in infos {
            assert!(refused, "{context} read the info of {stream}");
            connection
                .refused_publish(&format!("$JS.API.STREAM.INFO.{stream}"))
                .await;
            let direct = format!("$JS.API.DIRECT.GET.{stream}");
            connection.publish(&direct).await;
            connection.refused_publish(&direct).await;
        }
    });
    futures::future::join_all(checks).await;
    // An unnamed consumer (the server would name it) is refused as well.
    let inventory = nats.connect("inventory").await;
    let unnamed = inventory
        .js
        .create_consumer_on_stream(pull::Config::default(), "ORDERING")
        .await;
    assert!(unnamed.is_err(), "inventory created an unnamed consumer");
    inventory
        .refused_publish("$JS.API.CONSUMER.CREATE.ORDERING")
        .await;

    for context in BoundedContext::ALL {
        let stream = context.stream().name();
        let mut expected: Vec<String> = BoundedContext::ALL
            .into_iter()
            .flat_map(consumers)
            .filter(|spec| spec.stream.name() == stream)
            .map(|spec| spec.name)
            .collect();
        expected.sort();
        assert_eq!(
            consumer_names(&operator, &stream).await,
            expected,
            "{stream} holds exactly the consumers its readers created themselves"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_sends_requests_and_cannot_read_streams() {
    let nats = SecureNats::start().await;
    let operator = provision(&nats).await;
    let ordering = nats.connect("ordering").await;
    operator
        .js
        .publish(event_subject(BoundedContext::Ordering), "{}".into())
        .await
        .expect("publish")
        .await
        .expect("the operator publishes an event");
    let gateway = nats.connect("gateway").await;

    // What it may do: a command and its reply, its idempotency bucket.
    let mut endpoint = ordering
        .client
        .subscribe("chorus.ordering.probe")
        .await
        .expect("ordering serves");
    ordering.client.flush().await.expect("flush");
    let answering = tokio::spawn(async move {
        let request = endpoint.next().await.expect("a request");
        let reply = request.reply.expect("a reply subject");
        ordering
            .client
            .publish(reply, "accepted".into())
            .await
            .expect("ordering replies");
        ordering.client.flush().await.expect("flush");
    });
    // Interest in a new subscription can reach the requesting connection's view a moment
    // after the subscriber's flush when the machine is loaded: "no responders" is asked again.
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT * 10;
    let reply = loop {
        match gateway
            .client
            .request("chorus.ordering.probe", "{}".into())
            .await
        {
            Err(e)
                if e.kind() == async_nats::RequestErrorKind::NoResponders
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => break other.expect("the gateway's command is answered"),
        }
    };
    assert_eq!(&reply.payload[..], b"accepted");
    answering.await.unwrap();
    let bucket = gateway
        .js
        .create_key_value(kv::Config {
            bucket: "idempotency".to_owned(),
            ..Default::default()
        })
        .await
        .expect("the gateway creates its idempotency bucket");
    bucket
        .put("key-1", "reply".into())
        .await
        .expect("the gateway writes a key");
    assert_eq!(
        bucket.get("key-1").await.expect("the gateway reads a key"),
        Some("reply".into())
    );

    // What it may not: any stream of events, by any road (the streams at once: each refused
    // request waits out its timeout).
    let gateway = &gateway;
    futures::future::join_all(BoundedContext::ALL.map(|context| async move {
        let stream = context.stream().name();
        assert!(
            gateway.js.get_stream(&stream).await.is_err(),
            "the gateway read the info of {stream}"
        );
        gateway
            .refused_publish(&format!("$JS.API.STREAM.INFO.{stream}"))
            .await;
        let created = gateway
            .js
            .create_consumer_on_stream(
                pull::Config {
                    ack_policy: AckPolicy::None,
                    ..Default::default()
                },
                &stream,
            )
            .await;
        assert!(
            created.is_err(),
            "the gateway created a consumer on {stream}"
        );
        gateway
            .refused_publish(&format!("$JS.API.CONSUMER.CREATE.{stream}"))
            .await;
        let named = gateway
            .js
            .create_consumer_on_stream(
                pull::Config {
                    durable_name: Some("gateway-from-ordering".to_owned()),
                    ..Default::default()
                },
                &stream,
            )
            .await;
        assert!(named.is_err(), "the gateway created a durable on {stream}");
        gateway
            .refused_publish(&format!(
                "$JS.API.CONSUMER.CREATE.{stream}.gateway-from-ordering"
            ))
            .await;
        let stream_handle = gateway
            .js
            .get_stream_no_info(&stream)
            .await
            .expect("a handle, without asking the server");
        assert!(
            stream_handle.direct_get(1).await.is_err(),
            "the gateway read message 1 of {stream}"
        );
        gateway
            .refused_publish(&format!("$JS.API.DIRECT.GET.{stream}"))
            .await;
        let subject = event_subject(context);
        gateway.publish(&subject).await;
        gateway.refused_publish(&subject).await;
    }))
    .await;
    // Nor the subjects where streams deliver: the events, or other clients' inboxes.
    for subject in ["ordering.>", "_INBOX.>", "$JS.ACK.>"] {
        let _refused = gateway
            .client
            .subscribe(subject)
            .await
            .expect("the subscription leaves the client");
        gateway.client.flush().await.expect("flush");
        gateway.refused_subscription(subject).await;
    }
    assert_eq!(messages_in(&operator, "ORDERING").await, 1);
    assert!(consumer_names(&operator, "ORDERING").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_and_notifications_read_only_through_their_own_consumers() {
    let nats = SecureNats::start().await;
    let operator = provision(&nats).await;
    for context in BoundedContext::ALL {
        operator
            .js
            .publish(event_subject(context), "{}".into())
            .await
            .expect("publish")
            .await
            .expect("the operator publishes an event");
    }
    for context in BoundedContext::ALL {
        for spec in consumers(context) {
            bus::provision::consumer(&operator.js, &spec)
                .await
                .expect("the operator creates the contexts' consumers");
        }
    }

    // Projections: an ordered consumer on every event stream, read from its start.
    let projections = nats.connect("projections").await;
    for context in BoundedContext::ALL {
        let stream = context.stream().name();
        let mut messages = projections
            .js
            .create_consumer_on_stream(pull::OrderedConfig::default(), &stream)
            .await
            .unwrap_or_else(|e| panic!("projections cannot read {stream}: {e}"))
            .messages()
            .await
            .expect("messages");
        let first = messages
            .next()
            .await
            .expect("a message")
            .expect("the first event");
        assert_eq!(first.subject.as_str(), event_subject(context));
    }
    // ... but no durable consumer of the contexts: not created, not pulled from, not deleted,
    // not replaced through the subject that creates unnamed consumers.
    let durable = "inventory-from-ordering";
    for subject in [
        format!("$JS.API.CONSUMER.CREATE.ORDERING.{durable}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.ORDERING.{durable}"),
        format!("$JS.API.CONSUMER.DELETE.ORDERING.{durable}"),
    ] {
        projections.publish(&subject).await;
        projections.refused_publish(&subject).await;
    }
    let replaced = projections
        .js
        .create_consumer_on_stream(
            pull::Config {
                name: Some(durable.to_owned()),
                ack_policy: AckPolicy::None,
                ..Default::default()
            },
            "ORDERING",
        )
        .await;
    assert!(replaced.is_err(), "projections replaced {durable}");
    projections
        .refused_publish(&format!("$JS.API.CONSUMER.CREATE.ORDERING.{durable}"))
        .await;
    // The subject of unnamed (ordered) consumers is allowed: the server itself refuses a name
    // in the body there.
    let legacy: Response<consumer::Info> = projections
        .js
        .request(
            "CONSUMER.CREATE.ORDERING",
            &serde_json::json!({
                "stream_name": "ORDERING",
                "config": { "name": durable, "ack_policy": "none", "deliver_policy": "all" },
            }),
        )
        .await
        .expect("JetStream answers");
    assert!(
        matches!(legacy, Response::Err { .. }),
        "projections replaced {durable} through the unnamed subject: {legacy:?}"
    );
    let mut kept = operator
        .js
        .get_stream("ORDERING")
        .await
        .expect("stream")
        .get_consumer::<pull::Config>(durable)
        .await
        .expect("inventory's consumer is still there");
    assert_eq!(
        kept.info().await.expect("consumer info").config.ack_policy,
        AckPolicy::Explicit
    );
    for context in BoundedContext::ALL {
        let subject = event_subject(context);
        projections.publish(&subject).await;
        projections.refused_publish(&subject).await;
    }

    // Notifications: its durable consumer on ORDERING and its bucket; nothing of the others.
    let notifications = nats.connect("notifications").await;
    let own = ConsumerSpec::new("notifications", BoundedContext::Ordering.stream());
    bus::provision::consumer(&notifications.js, &own)
        .await
        .expect("notifications creates its consumer");
    let bucket = notifications
        .js
        .create_key_value(kv::Config {
            bucket: "notifications".to_owned(),
            history: 1,
            ..Default::default()
        })
        .await
        .expect("notifications creates its bucket");
    bucket
        .put("order.1", "{}".into())
        .await
        .expect("notifications writes its bucket");
    let theirs = ConsumerSpec::new("notifications", BoundedContext::Inventory.stream());
    assert!(
        bus::provision::consumer(&notifications.js, &theirs)
            .await
            .is_err()
    );
    notifications
        .refused_publish("$JS.API.CONSUMER.CREATE.INVENTORY.notifications-from-inventory")
        .await;
    let subject = event_subject(BoundedContext::Ordering);
    notifications.publish(&subject).await;
    notifications.refused_publish(&subject).await;

    assert_eq!(messages_in(&operator, "ORDERING").await, 1);
}

#[test]
fn every_config_file_passes_the_servers_config_test() {
    let bin = harness::find_nats_server().expect("nats-server");
    let mut env: Vec<(String, String)> = USERS
        .iter()
        .map(|u| (password_var(u), new_password()))
        .collect();
    let route = new_password();
    env.push(("ROUTE_NATS_PASSWORD".to_owned(), route.clone()));
    let routes: Vec<String> = (1..=3)
        .map(|n| format!("nats-route://route:{route}@chorus-nats-{n}:6222"))
        .collect();
    env.push(("NATS_ROUTES".to_owned(), format!("[{}]", routes.join(", "))));

    let config_test = |file: &Path, env: &[(String, String)]| {
        let output = Command::new(&bin)
            .arg("-t")
            .arg("-c")
            .arg(file)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("nats-server runs");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), said)
    };

    let mut files = conf_files(&nats_dir());
    files.sort();
    let names: Vec<_> = files
        .iter()
        .map(|f| f.strip_prefix(nats_dir()).unwrap().display().to_string())
        .collect();
    for expected in [
        "single.conf",
        "auth.conf",
        "secure.conf",
        "cluster/node-1.conf",
        "cluster/node-2.conf",
        "cluster/node-3.conf",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    for file in &files {
        let (valid, said) = config_test(file, &env);
        assert!(
            valid && said.contains("is valid"),
            "{}: {said}",
            file.display()
        );
    }

    // Without a password, the config is refused, naming the variable.
    let secure = nats_dir().join("secure.conf");
    let missing = password_var("gateway");
    let without: Vec<_> = env.iter().filter(|(k, _)| *k != missing).cloned().collect();
    let (valid, said) = config_test(&secure, &without);
    assert!(!valid && said.contains(&missing), "{said}");
}

/// Every `.conf` file under `dir`.
fn conf_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("nats/ is readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(conf_files(&path));
        } else if path.extension().is_some_and(|e| e == "conf") {
            files.push(path);
        }
    }
    files
}

fn secure() -> Options {
    Options {
        secure: true,
        ..Options::default()
    }
}

/// The contexts start in the "wrong" order, each as its own user on an empty server (`System`
/// starts ordering, inventory, payments, shipping, one after the other, and nothing is
/// provisioned for them): ordering starts before the streams it reads exist, and its consumers
/// wait for them. The saga completes all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_least_privilege_an_order_is_delivered_with_nothing_refused() {
    let system = System::start_with(secure()).await;
    scenarios::an_order_is_confirmed_shipped_and_delivered(&system).await;
    assert_eq!(system.permission_violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_least_privilege_a_declined_payment_is_compensated_with_nothing_refused() {
    let system = System::start_with(secure()).await;
    scenarios::a_declined_payment_is_compensated(&system).await;
    assert_eq!(system.permission_violations(), Vec::<String>::new());
}
