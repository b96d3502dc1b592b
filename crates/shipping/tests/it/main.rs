//! Shipping's reactions and operations against a real PostgreSQL (a database per test): the
//! messages are built as the consumer runtime hands them over. The service (`service`) runs
//! on a private nats-server too.

// A test fails by panicking; helpers unwrap like the tests do.
#![allow(clippy::unwrap_used)]

mod operations;
mod reactions;
mod service;

use bus::{Handler, HandlerError, Received};
use events::ordering::{Address, OrderCancelled, OrderConfirmed, OrderEvent};
use events::shipping::ShipmentEvent;
use events::values::OrderId;
use eventstore::{Repository, Store, StoredEvent, UnitOfWork};
use harness::{TestDatabase, received};
use shipping::Shipment;
use shipping::reactions::Reactions;

struct Setup {
    store: Store,
    reactions: Reactions,
    _db: TestDatabase,
}

impl Setup {
    async fn new() -> Self {
        let db = TestDatabase::create().await.unwrap();
        let store = Store::from_pool(db.pool(10).await.unwrap());
        store.migrate().await.unwrap();
        let reactions = Reactions::new(&store);
        Self {
            store,
            reactions,
            _db: db,
        }
    }

    /// A repository of shipments on the test's store, as the gateway's service would hold.
    fn shipments(&self) -> Repository<Shipment> {
        Repository::new(self.store.clone(), ())
    }

    /// Handles the messages in one unit of work, as one consumer batch would.
    async fn handle(&self, messages: &[Received]) {
        let mut uow = UnitOfWork::new(&self.store);
        for message in messages {
            self.reactions.handle(&mut uow, message).await.unwrap();
        }
        uow.commit().await.unwrap();
    }

    /// Handles one message that must fail, as the consumer runtime would: a concurrency
    /// conflict at commit (this process's cache was stale) reruns it on fresh state. Checks
    /// that the failed message staged nothing and returns the error with the number of runs.
    async fn handle_failing(&self, message: &Received) -> (HandlerError, u32) {
        for run in 1..=5 {
            let mut uow = UnitOfWork::new(&self.store);
            match self.reactions.handle(&mut uow, message).await {
                Err(error) => {
                    assert_eq!(uow.pending_events(), 0, "a failed reaction staged events");
                    uow.commit().await.unwrap();
                    return (error, run);
                }
                Ok(()) => match uow.commit().await {
                    Err(e) if e.is_conflict() => continue,
                    other => panic!("expected the message to fail, it committed: {other:?}"),
                },
            }
        }
        panic!("still conflicting after 5 runs");
    }

    async fn stored(&self, order: OrderId) -> Vec<StoredEvent> {
        self.store
            .aggregate_events("shipment", &order.to_string(), 0)
            .await
            .unwrap()
    }

    async fn events(&self, order: OrderId) -> Vec<ShipmentEvent> {
        self.stored(order)
            .await
            .into_iter()
            .map(|e| e.decode::<ShipmentEvent>().unwrap().payload)
            .collect()
    }
}

fn address() -> Address {
    Address {
        name: "Ada Lovelace".into(),
        line1: "12 St James's Square".into(),
        line2: Some("Flat 2".into()),
        city: "London".into(),
        postal_code: "SW1Y 4JH".into(),
        country: "GB".into(),
    }
}

fn confirmed(order_id: OrderId) -> Received {
    received(
        OrderEvent::from(OrderConfirmed {
            order_id,
            shipping_address: address(),
        }),
        order_id,
    )
}

fn cancelled(order_id: OrderId) -> Received {
    received(
        OrderEvent::from(OrderCancelled {
            order_id,
            reason: Some("changed my mind".into()),
        }),
        order_id,
    )
}
