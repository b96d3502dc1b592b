//! The service against a real server: exactly one message per confirmed and per shipped
//! order, through duplicates, redeliveries, restarts and crashes, and bad messages that do
//! not stop it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::bail;
use notifications::{Attempt, FileSink, Kind, Notification, Options, Sink};
use serde_json::json;
use tokio::sync::{Semaphore, oneshot};

use crate::publish::{Order, publish, publish_as};
use crate::server::wait_until;
use crate::support::{World, confirmed_and_shipped, expected, keys_in, notifications_in, quick};

/// What goes wrong at one notification.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The process dies just before the sink is called.
    DieBeforeSink,
    /// The process dies just after the sink took the notification.
    DieAfterSink,
    /// The sink refuses it once, as a sink that is briefly down.
    FailOnce,
}

/// A sink that misbehaves at the notification `key` and passes the rest to `inner`. Dying is
/// hanging: the test then crashes the service, which is what a kill at that instant is.
struct Faulty<S> {
    inner: S,
    key: String,
    fault: Fault,
    reached: Mutex<Option<oneshot::Sender<()>>>,
    failed: AtomicBool,
}

impl<S: Sink> Faulty<S> {
    fn new(inner: S, key: String, fault: Fault) -> (Self, oneshot::Receiver<()>) {
        let (reached, at_fault) = oneshot::channel();
        let sink = Self {
            inner,
            key,
            fault,
            reached: Mutex::new(Some(reached)),
            failed: AtomicBool::new(false),
        };
        (sink, at_fault)
    }

    fn signal(&self) {
        if let Some(reached) = self.reached.lock().unwrap().take() {
            reached.send(()).ok();
        }
    }
}

impl<S: Sink> Sink for Faulty<S> {
    async fn deliver(&self, notification: &Notification, attempt: Attempt) -> anyhow::Result<()> {
        if notification.key != self.key {
            return self.inner.deliver(notification, attempt).await;
        }
        match self.fault {
            Fault::DieBeforeSink => {
                self.signal();
                std::future::pending().await
            }
            Fault::DieAfterSink => {
                self.inner.deliver(notification, attempt).await?;
                self.signal();
                std::future::pending().await
            }
            Fault::FailOnce => {
                if !self.failed.swap(true, Ordering::SeqCst) {
                    self.signal();
                    bail!("the sink is down");
                }
                self.inner.deliver(notification, attempt).await
            }
        }
    }
}

/// A sink that holds the notification `key` back until `inner` has taken another one.
struct HoldsBack<S> {
    inner: S,
    key: String,
    others: Semaphore,
}

impl<S: Sink> Sink for HoldsBack<S> {
    async fn deliver(&self, notification: &Notification, attempt: Attempt) -> anyhow::Result<()> {
        if notification.key == self.key {
            self.others.acquire().await?.forget();
            return self.inner.deliver(notification, attempt).await;
        }
        self.inner.deliver(notification, attempt).await?;
        self.others.add_permits(1);
        Ok(())
    }
}

fn key(kind: Kind, order: &Order) -> String {
    format!("{kind}.{}", order.id)
}

#[tokio::test]
async fn one_message_per_confirmed_and_per_shipped_order_across_a_restart() {
    let world = World::new().await;
    let path = world.path("notifications.jsonl");
    let (a, b, c) = (Order::new(1), Order::new(2), Order::new(3));
    for event in [
        a.placed(),
        b.placed(),
        c.placed(),
        a.confirmed(),
        b.confirmed(),
    ] {
        publish(&world.js, &event).await;
    }
    let running = world.start(FileSink::open(&path).unwrap(), quick()).await;
    world.wait_drained().await;
    running.stop().await;

    // Stopped mid-way; the rest of the saga goes on meanwhile.
    publish(&world.js, &a.shipped()).await;
    let cancelled = c.event(
        "OrderCancelled",
        2,
        json!({"order_id": c.id, "reason": null}),
    );
    publish(&world.js, &cancelled).await;
    let running = world.start(FileSink::open(&path).unwrap(), quick()).await;
    world.wait_drained().await;
    running.stop().await;

    assert_eq!(
        keys_in(&path),
        expected(&[
            ("order-confirmed", &a),
            ("order-confirmed", &b),
            ("order-shipped", &a),
        ]),
        "one confirmed message per confirmed order, one shipped per shipped order, none for the rest"
    );
    let sent = notifications_in(&path);
    let confirmed = sent
        .iter()
        .find(|n| n.key == key(Kind::OrderConfirmed, &a))
        .unwrap();
    assert_eq!(confirmed.recipient, a.recipient);
    assert_eq!(confirmed.customer_id, a.customer_id);
    assert_eq!(confirmed.total.amount_minor, a.total_minor);
    assert_eq!(confirmed.total.currency, "EUR");
    assert_eq!(confirmed.event_id, a.confirmed().event_id);
    assert!(
        confirmed.body.contains(&a.recipient) && confirmed.body.contains("10.01 EUR"),
        "the message addresses the customer with the order's total: {}",
        confirmed.body
    );
    assert!(world.dead_letters().await.is_empty());
}

#[tokio::test]
async fn the_same_event_again_sends_nothing_more_even_through_a_fresh_sink() {
    let world = World::new().await;
    let path = world.path("notifications.jsonl");
    let a = Order::new(1);
    publish(&world.js, &a.placed()).await;
    publish(&world.js, &a.confirmed()).await;
    // Published again by an operator: another Nats-Msg-Id, the same event id.
    publish_as(&world.js, &a.confirmed(), "republished-1").await;
    let running = world.start(FileSink::open(&path).unwrap(), quick()).await;
    world.wait_drained().await;
    publish_as(&world.js, &a.confirmed(), "republished-2").await;
    world.wait_drained().await;
    running.stop().await;
    assert_eq!(keys_in(&path), expected(&[("order-confirmed", &a)]));

    // A new instance with a sink that has never seen anything, replaying the whole stream
    // (its consumer is provisioned anew), and a second OrderConfirmed of the same order with
    // an event id of its own: what was sent is not sent again.
    world.delete_consumer().await;
    let fresh = world.path("fresh.jsonl");
    let second = a.event(
        "OrderConfirmed",
        4,
        json!({"order_id": a.id, "shipping_address": {
            "name": a.recipient, "line1": "1 Main Street", "city": "Lyon",
            "postal_code": "69001", "country": "FR"
        }}),
    );
    publish(&world.js, &second).await;
    let running = world.start(FileSink::open(&fresh).unwrap(), quick()).await;
    world.wait_drained().await;
    running.stop().await;
    assert_eq!(
        keys_in(&fresh),
        expected(&[]),
        "resent through a fresh sink"
    );
    assert_eq!(keys_in(&path), expected(&[("order-confirmed", &a)]));
}

/// Crashes the service at `fault` on order 2's confirmation, restarts it with a new sink on
/// the same file, and checks that every order got each of its messages once.
async fn crash_at(fault: Fault) {
    let world = World::new().await;
    let path = world.path("notifications.jsonl");
    let orders: Vec<Order> = (1..=3).map(Order::new).collect();
    for order in &orders {
        for event in [order.placed(), order.confirmed(), order.shipped()] {
            publish(&world.js, &event).await;
        }
    }
    // A short ack wait: the message in hand at the crash is never acked, and comes back
    // once the wait is over.
    let options = Options {
        ack_wait: Duration::from_secs(3),
        batch: 5,
        ..quick()
    };
    let at = key(Kind::OrderConfirmed, &orders[1]);
    let (sink, reached) = Faulty::new(FileSink::open(&path).unwrap(), at.clone(), fault);
    let running = world.start(sink, options.clone()).await;
    reached.await.unwrap();
    running.crash().await;
    let taken = keys_in(&path).contains_key(&at);
    assert_eq!(
        taken,
        matches!(fault, Fault::DieAfterSink),
        "the crash came at the wrong point"
    );

    let running = world.start(FileSink::open(&path).unwrap(), options).await;
    world.wait_drained().await;
    running.stop().await;
    assert_eq!(keys_in(&path), confirmed_and_shipped(&orders));
}

#[tokio::test]
async fn a_slow_delivery_does_not_hold_up_other_orders() {
    let world = World::new().await;
    let path = world.path("notifications.jsonl");
    let orders: Vec<Order> = (1..=5).map(Order::new).collect();
    for order in &orders {
        publish(&world.js, &order.placed()).await;
        publish(&world.js, &order.confirmed()).await;
    }
    // The first order's confirmation comes first on the stream and is held until another
    // order's has been taken: handled one message at a time, nothing would ever be taken.
    let slow = key(Kind::OrderConfirmed, &orders[0]);
    let sink = HoldsBack {
        inner: FileSink::open(&path).unwrap(),
        key: slow.clone(),
        others: Semaphore::new(0),
    };
    let running = world.start(sink, quick()).await;
    world.wait_drained().await;
    running.stop().await;
    let all: Vec<_> = orders.iter().map(|o| ("order-confirmed", o)).collect();
    assert_eq!(keys_in(&path), expected(&all));
    assert_ne!(notifications_in(&path)[0].key, slow);
}

#[tokio::test]
async fn many_orders_at_once_are_each_told_once_and_in_their_order() {
    let world = World::new().await;
    let path = world.path("notifications.jsonl");
    let orders: Vec<Order> = (1..=64).map(Order::new).collect();
    // Each order's events in its order, the orders' interleaved.
    for order in &orders {
        publish(&world.js, &order.placed()).await;
    }
    for order in &orders {
        publish(&world.js, &order.confirmed()).await;
        publish(&world.js, &order.shipped()).await;
    }
    let running = world.start(FileSink::open(&path).unwrap(), quick()).await;
    world.wait_drained().await;
    running.stop().await;

    assert_eq!(keys_in(&path), confirmed_and_shipped(&orders));
    let lines: Vec<String> = notifications_in(&path).into_iter().map(|n| n.key).collect();
    for order in &orders {
        let at = |kind| lines.iter().position(|k| *k == key(kind, order)).unwrap();
        assert!(
            at(Kind::OrderConfirmed) < at(Kind::OrderShipped),
            "order {} was shipped before it was confirmed",
            order.n
        );
    }
    assert_eq!(
        world.consumer().await.num_redelivered,
        0,
        "an event was handled before an earlier one of its order and had to wait"
    );
    assert!(world.dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_crash_before_the_sink_is_called_is_made_good_after_restart() {
    crash_at(Fault::DieBeforeSink).await;
}

#[tokio::test]
async fn a_crash_after_the_sink_took_a_message_does_not_repeat_it_after_restart() {
    crash_at(Fault::DieAfterSink).await;
}

#[tokio::test]
async fn a_confirmation_before_its_order_placed_waits_for_it() {
    let world = World::new().await;
    let path = world.path("notifications.jsonl");
    let b = Order::new(2);
    publish(&world.js, &b.confirmed()).await;
    // Patient enough that a slow machine does not give up on it before the test goes on.
    let options = Options {
        max_wait_attempts: 100,
        ..quick()
    };
    let running = world.start(FileSink::open(&path).unwrap(), options).await;
    wait_until("the confirmation is delivered and held back", || async {
        world.consumer().await.num_redelivered > 0
    })
    .await;
    assert!(keys_in(&path).is_empty(), "sent without knowing whom to");

    publish(&world.js, &b.placed()).await;
    world.wait_drained().await;
    running.stop().await;
    assert_eq!(keys_in(&path), expected(&[("order-confirmed", &b)]));
    let sent = notifications_in(&path);
    assert_eq!(sent[0].recipient, b.recipient);
    assert!(world.dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_dead_lettered_event_published_again_is_tried_again() {
    let world = World::new().await;
    let path = world.path("notifications.jsonl");
    let c = Order::new(3);
    publish(&world.js, &c.confirmed()).await;
    let options = Options {
        max_wait_attempts: 1,
        ..quick()
    };
    let running = world.start(FileSink::open(&path).unwrap(), options).await;
    world.wait_drained().await;
    assert_eq!(
        world.dead_letters().await.len(),
        1,
        "no OrderPlaced on the stream: no one to address"
    );

    // The order's OrderPlaced comes late; an operator publishes the confirmation again.
    publish(&world.js, &c.placed()).await;
    publish_as(&world.js, &c.confirmed(), "republished-1").await;
    world.wait_drained().await;
    running.stop().await;
    assert_eq!(keys_in(&path), expected(&[("order-confirmed", &c)]));
    assert_eq!(world.dead_letters().await.len(), 1);
}

#[tokio::test]
async fn a_shipped_message_waits_for_its_confirmation_being_retried() {
    let world = World::new().await;
    let path = world.path("notifications.jsonl");
    let a = Order::new(1);
    for event in [a.placed(), a.confirmed(), a.shipped()] {
        publish(&world.js, &event).await;
    }
    let (sink, refused) = Faulty::new(
        FileSink::open(&path).unwrap(),
        key(Kind::OrderConfirmed, &a),
        Fault::FailOnce,
    );
    let running = world.start(sink, quick()).await;
    refused.await.unwrap();
    world.wait_drained().await;
    running.stop().await;
    let order: Vec<String> = notifications_in(&path).into_iter().map(|n| n.key).collect();
    assert_eq!(
        order,
        [key(Kind::OrderConfirmed, &a), key(Kind::OrderShipped, &a)],
        "the customer must hear of the confirmation first, and of each once"
    );
}

#[tokio::test]
async fn bad_messages_are_dead_lettered_and_the_service_goes_on() {
    let world = World::new().await;
    let path = world.path("notifications.jsonl");
    let (m, y) = (Order::new(7), Order::new(8));
    publish(&world.js, &m.placed()).await;
    // A payload no schema allows.
    let malformed = m.confirmed().with_raw_payload(br#"{"order_id": 42}"#);
    publish(&world.js, &malformed).await;
    // A message without an envelope.
    world
        .js
        .publish(
            format!("ordering.order.{}.OrderConfirmed", y.id),
            "{}".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    for event in [m.shipped(), y.placed(), y.confirmed()] {
        publish(&world.js, &event).await;
    }
    let running = world.start(FileSink::open(&path).unwrap(), quick()).await;
    world.wait_drained().await;
    running.stop().await;

    assert_eq!(
        keys_in(&path),
        expected(&[("order-shipped", &m), ("order-confirmed", &y)]),
        "the good messages are all handled; the shipped message does not wait for a confirmation given up on"
    );
    let dead = world.dead_letters().await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    for headers in &dead {
        assert_eq!(
            headers.get("Chorus-Dlq-Consumer").map(|v| v.as_str()),
            Some("notifications-from-ordering")
        );
        assert_eq!(
            headers.get("Chorus-Dlq-Stream").map(|v| v.as_str()),
            Some("ORDERING")
        );
    }
    let errors: Vec<&str> = dead
        .iter()
        .filter_map(|h| h.get("Chorus-Dlq-Error").map(|v| v.as_str()))
        .collect();
    assert!(errors[0].contains("payload"), "{errors:?}");
    assert!(errors[1].contains("envelope"), "{errors:?}");
    assert_eq!(
        dead[0].get("Chorus-Event-Id").map(|v| v.as_str()),
        Some(malformed.event_id.as_str()),
        "a dead letter keeps the original envelope"
    );
}

#[tokio::test]
async fn an_unknown_schema_version_is_neither_acked_nor_dropped() {
    let world = World::new().await;
    let path = world.path("notifications.jsonl");
    let (v, w) = (Order::new(9), Order::new(10));
    // Version 2 is not published: the payload is v1's, only the header says otherwise.
    for event in [
        v.placed(),
        v.confirmed().with_version(2),
        w.placed(),
        w.confirmed(),
    ] {
        publish(&world.js, &event).await;
    }
    let running = world.start(FileSink::open(&path).unwrap(), quick()).await;
    wait_until("the messages after it are handled", || async {
        keys_in(&path).contains_key(&key(Kind::OrderConfirmed, &w))
            && world.ack_pending().await == 1
    })
    .await;
    running.stop().await;
    assert_eq!(
        keys_in(&path),
        expected(&[("order-confirmed", &w)]),
        "a version it cannot read is not guessed at"
    );
    assert_eq!(
        world.ack_pending().await,
        1,
        "the v2 message is kept for a build that reads it"
    );
    assert!(world.dead_letters().await.is_empty());
}

/// Started before the ordering context has created its stream (services started in any
/// order), the service waits for the stream instead of failing, then provisions its consumer
/// and notifies as usual.
#[tokio::test]
async fn the_service_waits_for_the_ordering_stream_to_be_created() {
    let server = crate::server::NatsServer::start().await;
    let client = notifications::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let mut starting = tokio::spawn(notifications::Service::start(
        client,
        notifications::LogSink::default(),
        quick(),
    ));
    // Still waiting, not failed, while the stream is missing.
    let early = tokio::time::timeout(Duration::from_millis(600), &mut starting).await;
    assert!(early.is_err(), "start ended without the stream: {early:?}");

    crate::publish::provision_streams(&js).await;
    let service = starting.await.unwrap().unwrap();
    let consumer = js
        .get_stream("ORDERING")
        .await
        .unwrap()
        .consumer_info(notifications::contract::CONSUMER)
        .await
        .unwrap();
    assert_eq!(consumer.num_pending, 0);
    drop(service);
}
