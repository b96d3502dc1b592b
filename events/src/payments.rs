//! Events of the payments context: the `payment` aggregate, one per order.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::{Money, OrderId};

/// Payments learned what an order will cost (from `OrderPlaced`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRequested {
    pub order_id: OrderId,
    pub amount: Money,
    /// The opaque token from `OrderPlaced`, kept so the capture can be made after a restart.
    pub payment_token: String,
}

/// The provider captured the amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentCaptured {
    pub order_id: OrderId,
    pub amount: Money,
    /// The provider's reference for the capture.
    pub provider_reference: String,
}

/// The provider refused the payment, or could not be reached within the retry budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentDeclined {
    pub order_id: OrderId,
    pub reason: String,
}

/// A captured amount was paid back (the order was cancelled after capture).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRefunded {
    pub order_id: OrderId,
    pub amount: Money,
    pub provider_reference: String,
}

/// Nothing will be captured for the order (it ended before capture).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentVoided {
    pub order_id: OrderId,
}

crate::event_enum! {
    /// Events of the `payment` aggregate.
    pub enum PaymentEvent: "payment" {
        PaymentRequested = 1,
        PaymentCaptured = 1,
        PaymentDeclined = 1,
        PaymentRefunded = 1,
        PaymentVoided = 1,
    }
}
