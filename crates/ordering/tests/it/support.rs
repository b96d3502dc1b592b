//! What every test needs: a migrated database, the reactions, and messages as the consumer
//! runtime builds them.

use bus::{Handler, HandlerError, Received};
use events::inventory::{
    AllocationEvent, ProductDefined, ProductEvent, ProductRepriced, ReleaseReason, Shortage,
    StockRejected, StockReleased,
};
use events::ordering::{Address, OrderEvent};
use events::payments::{DeclineCode, PaymentCaptured, PaymentDeclined, PaymentEvent};
use events::shipping::{ShipmentDelivered, ShipmentDispatched, ShipmentEvent};
use events::values::{Currency, CustomerId, Money, OrderId, Quantity, Sku};
use events::{Event, Metadata};
use eventstore::{Committed, Repository, Store, StoredEvent, UnitOfWork};
use harness::TestDatabase;
use ordering::catalogue::CatalogueReplica;
use ordering::reactions::Reactions;
use ordering::{Order, OrderStatus, PlaceError, PlaceOrder, RequestedLine, place_order};
use std::sync::Arc;

pub struct Setup {
    pub store: Store,
    pub catalogue: CatalogueReplica,
    pub reactions: Arc<Reactions>,
    pub db: TestDatabase,
}

impl Setup {
    /// A fresh database with the event store's tables and ordering's own.
    pub async fn new() -> Self {
        let db = TestDatabase::create().await.unwrap();
        let pool = db.pool(10).await.unwrap();
        let store = Store::from_pool(pool.clone());
        store.migrate().await.unwrap();
        let catalogue = CatalogueReplica::new(pool);
        catalogue.migrate().await.unwrap();
        let reactions = Arc::new(Reactions::new(&store, catalogue.clone(), payment_timeout()));
        Self {
            store,
            catalogue,
            reactions,
            db,
        }
    }

    /// Handles the messages in one unit of work, as one consumer batch would.
    pub async fn handle(&self, messages: &[Received]) {
        let mut uow = UnitOfWork::new(&self.store);
        for message in messages {
            self.reactions.handle(&mut uow, message).await.unwrap();
        }
        uow.commit().await.unwrap();
    }

    /// Handles one message as the consumer runtime does: on a failure, what the handler
    /// staged is rolled back, and the unit commits the rest (here: nothing).
    pub async fn try_handle(&self, message: &Received) -> Result<(), HandlerError> {
        let mut uow = UnitOfWork::new(&self.store);
        let mark = uow.mark();
        let result = self.reactions.handle(&mut uow, message).await;
        if result.is_err() {
            uow.rollback_to(mark);
        }
        uow.commit().await.unwrap();
        result
    }

    /// Places `order` for `lines`, priced from the replica.
    pub async fn place(
        &self,
        order: OrderId,
        lines: &[(&str, u32)],
    ) -> Result<Committed<OrderEvent>, PlaceError> {
        place_order(
            self.reactions.orders(),
            &self.catalogue,
            request(order, lines),
            payment_timeout(),
            &Metadata::default(),
        )
        .await
    }

    /// Runs ordering's payment-deadline ticker once, as if the clock read `now`; returns how
    /// many deadlines it handled.
    pub async fn tick(&self, now: chrono::DateTime<chrono::Utc>) -> usize {
        let ticker = eventstore::Ticker::new(
            self.store.clone(),
            ordering::PAYMENT_TIMEOUT,
            Arc::clone(&self.reactions),
        );
        ticker.tick(now).await.unwrap()
    }

    /// The order's payment deadline, if one is scheduled.
    pub async fn payment_deadline(&self, order: OrderId) -> Option<eventstore::Deadline> {
        self.store
            .deadline(ordering::PAYMENT_TIMEOUT, &order.to_string())
            .await
            .unwrap()
    }

    /// The order's events as stored, with their envelopes.
    pub async fn stored_order_events(&self, order: OrderId) -> Vec<StoredEvent> {
        self.store
            .aggregate_events("order", &order.to_string(), 0)
            .await
            .unwrap()
    }

    pub async fn order_events(&self, order: OrderId) -> Vec<OrderEvent> {
        self.stored_order_events(order)
            .await
            .into_iter()
            .map(|e| e.decode::<OrderEvent>().unwrap().payload)
            .collect()
    }

    /// The order's status as committed (read by a repository with an empty cache).
    pub async fn status(&self, order: OrderId) -> Option<OrderStatus> {
        let orders = Repository::<Order>::new(self.store.clone(), ());
        orders.load(&order.to_string()).await.unwrap().0.status()
    }

    /// The replica's price of `sku`, if it has one.
    pub async fn price(&self, sku: &str) -> Option<Money> {
        self.catalogue
            .entry(&sku.parse().unwrap())
            .await
            .unwrap()
            .map(|e| e.price)
    }
}

/// The payment timeout of these tests: 15 minutes.
pub fn payment_timeout() -> chrono::Duration {
    chrono::Duration::minutes(15)
}

/// `event`, the `sequence`-th event of its aggregate, as a first delivery brings it.
pub fn message<E: Event>(event: E, aggregate_id: &str, sequence: u64) -> Received {
    Received {
        sequence,
        ..harness::received(event, aggregate_id)
    }
}

pub fn sku(s: &str) -> Sku {
    s.parse().unwrap()
}

pub fn eur(amount_minor: i64) -> Money {
    Money::new(amount_minor, "EUR".parse::<Currency>().unwrap())
}

pub fn address() -> Address {
    Address {
        name: "Ada Lovelace".into(),
        line1: "12 St James's Square".into(),
        line2: None,
        city: "London".into(),
        postal_code: "SW1Y 4JH".into(),
        country: "GB".into(),
    }
}

pub fn lines(lines: &[(&str, u32)]) -> Vec<RequestedLine> {
    lines
        .iter()
        .map(|(s, quantity)| RequestedLine {
            sku: sku(s),
            quantity: Quantity::try_from(*quantity).unwrap(),
        })
        .collect()
}

pub fn request(order: OrderId, requested: &[(&str, u32)]) -> PlaceOrder {
    PlaceOrder {
        order_id: order,
        customer_id: CustomerId::new(),
        lines: lines(requested),
        shipping_address: address(),
        payment_token: "tok_success".into(),
    }
}

// --- Inventory's messages ---

/// `ProductDefined`: always the first event (sequence 1) of its product.
pub fn defined(s: &str, name: &str, price: Money) -> Received {
    let event = ProductEvent::from(ProductDefined {
        sku: sku(s),
        name: name.into(),
        price,
    });
    message(event, s, 1)
}

/// `ProductRepriced`, the `sequence`-th event of its product.
pub fn repriced(s: &str, price: Money, sequence: u64) -> Received {
    let event = ProductEvent::from(ProductRepriced { sku: sku(s), price });
    message(event, s, sequence)
}

pub fn stock_rejected(order: OrderId, shortages: &[(&str, u32, u32)]) -> Received {
    let shortages = shortages
        .iter()
        .map(|(s, requested, available)| Shortage {
            sku: sku(s),
            requested: Quantity::try_from(*requested).unwrap(),
            available: *available,
        })
        .collect();
    let event = AllocationEvent::from(StockRejected {
        order_id: order,
        shortages,
    });
    message(event, &order.to_string(), 1)
}

pub fn released(order: OrderId, reason: ReleaseReason) -> Received {
    let event = AllocationEvent::from(StockReleased {
        order_id: order,
        reason,
    });
    message(event, &order.to_string(), 2)
}

// --- Payments' messages ---

pub fn captured(order: OrderId) -> Received {
    let event = PaymentEvent::from(PaymentCaptured {
        order_id: order,
        amount: eur(1500),
        provider_reference: "sim-1".into(),
    });
    message(event, &order.to_string(), 2)
}

pub fn declined(order: OrderId, reason: &str) -> Received {
    let event = PaymentEvent::from(PaymentDeclined {
        order_id: order,
        code: DeclineCode::Refused,
        detail: reason.into(),
    });
    message(event, &order.to_string(), 2)
}

// --- Shipping's messages ---

pub fn dispatched(order: OrderId) -> Received {
    let event = ShipmentEvent::from(ShipmentDispatched {
        order_id: order,
        tracking_number: Some("TRACK-1".into()),
    });
    message(event, &order.to_string(), 2)
}

pub fn delivered(order: OrderId) -> Received {
    let event = ShipmentEvent::from(ShipmentDelivered { order_id: order });
    message(event, &order.to_string(), 3)
}
