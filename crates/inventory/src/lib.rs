//! The domain of the inventory context: the catalogue and every unit of stock.
//!
//! - [`Product`] (`product`, one per SKU): the catalogue, a name and a price that ordering
//!   replicates from the events.
//! - [`StockItem`] (`stock`, one per SKU): units on hand, reserved per order, and committed
//!   (gone with a shipment). It never reserves more than is on hand.
//! - [`Allocation`] (`allocation`, one per order): what inventory decided for an order
//!   (reserved, or rejected with its shortages) and what became of the
//!   reservation (released or committed). It names the stock items a compensation must touch.
//!
//! Inventory reacts to `OrderPlaced` (reserve every line, all or
//! nothing), `OrderCancelled`, `OrderRejected` and `PaymentDeclined` (release: an order
//! rejected `PaymentTimedOut` releases as `Expired`) and `ShipmentDispatched` (commit). It
//! keeps no deadline: ordering owns the payment deadline (ADR 0008). Every reaction is
//! idempotent: the same command delivered twice succeeds the second time with no events.
//!
//! The aggregates hold the domain only: no I/O, no clock (time arrives in commands). The
//! [`reactions`] module is the application layer around them: it turns other contexts' events
//! into commands, in units of work of inventory's store.
//! [`commands`] answers the operator's commands (the catalogue, deliveries) over NATS, and
//! [`service`] runs all of it on a `host::Host` (the `inventory` binary).

pub mod allocation;
pub mod commands;
pub mod product;
pub mod reactions;
pub mod service;
pub mod stock;

pub use allocation::{Allocation, AllocationCommand, AllocationError, AllocationStatus};
pub use product::{Product, ProductCommand, ProductError};
pub use stock::{StockCommand, StockError, StockItem};
