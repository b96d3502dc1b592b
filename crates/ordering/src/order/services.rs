//! What the `Order` aggregate needs from outside: prices.

use std::sync::Arc;

use events::values::{Money, Sku};

/// Ordering's replica of the catalogue (built from inventory's catalogue events).
///
/// Prices always come from here, never from the client.
pub trait Catalogue: Send + Sync {
    /// The current unit price of a SKU; `None` if the SKU is unknown.
    fn price(&self, sku: &Sku) -> Option<Money>;
}

/// The `Services` of the `Order` aggregate. An `Arc` so that one replica can be shared by
/// every command execution without copying it.
pub type OrderServices = Arc<dyn Catalogue>;
