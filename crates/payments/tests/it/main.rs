//! Payments' reactions against a real PostgreSQL (a database per test), with the built-in
//! [`Simulator`] as the provider: the messages are built as the consumer runtime hands them
//! over, and handled in units of work as it handles them. The service (`service`) runs on a
//! private nats-server too.

// A test fails by panicking; helpers unwrap like the tests do.
#![allow(clippy::unwrap_used)]

mod reactions;
mod service;

use std::sync::Arc;

use bus::{Handler, HandlerError, Received};
use chrono::{Duration, Utc};
use events::inventory::{AllocatedLine, AllocationEvent, StockReserved};
use events::ordering::{
    Address, OrderCancelled, OrderEvent, OrderLine, OrderPlaced, OrderRejected, RejectionReason,
};
use events::payments::PaymentEvent;
use events::values::{Currency, CustomerId, Money, OrderId, Quantity};
use eventstore::{Repository, Store, StoredEvent, UnitOfWork};
use harness::{TestDatabase, received};
use payments::reactions::Reactions;
use payments::{Payment, PaymentProvider, PaymentStatus, Simulator};

struct Setup {
    store: Store,
    reactions: Reactions,
    _db: TestDatabase,
}

impl Setup {
    /// Payments' store in a fresh database, reacting through `provider`.
    async fn new(provider: Arc<dyn PaymentProvider>) -> Self {
        let db = TestDatabase::create().await.unwrap();
        let store = Store::from_pool(db.pool(10).await.unwrap());
        store.migrate().await.unwrap();
        let reactions = Reactions::new(&store, provider);
        Self {
            store,
            reactions,
            _db: db,
        }
    }

    /// With the simulator as the provider; the handle counts its calls.
    async fn with_simulator() -> (Self, Arc<Simulator>) {
        let sim = Arc::new(Simulator::new());
        let provider: Arc<dyn PaymentProvider> = sim.clone();
        (Self::new(provider).await, sim)
    }

    /// Handles the messages as one consumer batch does: in one unit of work, each message's
    /// work rolled back alone when it fails, then one commit. Returns each message's result.
    async fn handle_batch(&self, messages: &[Received]) -> Vec<Result<(), HandlerError>> {
        let mut uow = UnitOfWork::new(&self.store);
        let mut results = Vec::with_capacity(messages.len());
        for message in messages {
            let mark = uow.mark();
            let result = self.reactions.handle(&mut uow, message).await;
            if result.is_err() {
                uow.rollback_to(mark);
            }
            results.push(result);
        }
        uow.commit().await.unwrap();
        results
    }

    /// Handles one message in a batch of its own.
    async fn handle(&self, message: Received) -> Result<(), HandlerError> {
        self.handle_batch(&[message]).await.pop().unwrap()
    }

    /// Handles the messages in one batch; every one must succeed.
    async fn handle_ok(&self, messages: &[Received]) {
        for (result, message) in self.handle_batch(messages).await.iter().zip(messages) {
            assert!(result.is_ok(), "{} failed: {result:?}", message.event_type);
        }
    }

    async fn stored(&self, order: OrderId) -> Vec<StoredEvent> {
        self.store
            .aggregate_events("payment", &order.to_string(), 0)
            .await
            .unwrap()
    }

    /// The order's payment events, as committed.
    async fn events(&self, order: OrderId) -> Vec<PaymentEvent> {
        self.stored(order)
            .await
            .into_iter()
            .map(|e| e.decode::<PaymentEvent>().unwrap().payload)
            .collect()
    }

    /// The names of the order's payment events, as committed.
    async fn event_types(&self, order: OrderId) -> Vec<String> {
        self.stored(order)
            .await
            .into_iter()
            .map(|e| e.event_type)
            .collect()
    }

    /// The order's payment as committed, read by a repository of its own (no shared cache).
    async fn payment(&self, order: OrderId) -> Payment {
        let provider: Arc<dyn PaymentProvider> = Arc::new(Simulator::new());
        Repository::<Payment>::new(self.store.clone(), provider)
            .load(&order.to_string())
            .await
            .unwrap()
            .0
    }

    async fn status(&self, order: OrderId) -> PaymentStatus {
        self.payment(order).await.status()
    }
}

fn eur(amount_minor: i64) -> Money {
    let eur: Currency = "EUR".parse().unwrap();
    Money::new(amount_minor, eur)
}

/// An order of one line costing `total_minor` euro cents, paid with `token`.
fn placed(order_id: OrderId, total_minor: i64, token: &str) -> Received {
    let event = OrderEvent::from(OrderPlaced {
        order_id,
        customer_id: CustomerId::new(),
        lines: vec![OrderLine {
            sku: "APPLE".parse().unwrap(),
            quantity: Quantity::try_from(1).unwrap(),
            unit_price: eur(total_minor),
        }],
        total: eur(total_minor),
        shipping_address: Address {
            name: "A".into(),
            line1: "1 Street".into(),
            line2: None,
            city: "Town".into(),
            postal_code: "1000".into(),
            country: "NL".into(),
        },
        payment_token: token.into(),
    });
    received(event, order_id)
}

fn reserved(order_id: OrderId) -> Received {
    let event = AllocationEvent::from(StockReserved {
        order_id,
        lines: vec![AllocatedLine {
            sku: "APPLE".parse().unwrap(),
            quantity: Quantity::try_from(1).unwrap(),
        }],
        expires_at: Utc::now() + Duration::minutes(15),
    });
    received(event, order_id)
}

fn cancelled(order_id: OrderId) -> Received {
    let event = OrderEvent::from(OrderCancelled {
        order_id,
        reason: None,
    });
    received(event, order_id)
}

fn rejected(order_id: OrderId, reason: RejectionReason) -> Received {
    let event = OrderEvent::from(OrderRejected {
        order_id,
        reason,
        detail: "test".into(),
    });
    received(event, order_id)
}

#[track_caller]
fn assert_transient(result: &Result<(), HandlerError>, what: &str) {
    assert!(
        matches!(result, Err(HandlerError::Transient(_))),
        "{what}: expected a transient failure (retried with backoff), got {result:?}"
    );
}

#[track_caller]
fn assert_permanent(result: &Result<(), HandlerError>, what: &str) {
    assert!(
        matches!(result, Err(HandlerError::Permanent(_))),
        "{what}: expected a permanent failure (dead-lettered), got {result:?}"
    );
}
