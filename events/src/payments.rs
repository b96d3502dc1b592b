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

/// Why a payment was declined, in a form a program can act on: a shop's UI offers "try another
/// card" for a refusal, but not for an order that ended before its payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeclineCode {
    /// The provider or the card's issuer refused the payment (funds, limits, a blocked card).
    Refused,
    /// The payment token is not one the provider knows: the payment was never possible.
    InvalidToken,
    /// The order was cancelled at the provider before its payment was captured.
    Voided,
    /// Declined before decline codes were recorded (schema version 1): only `detail` says why.
    Unclassified,
}

impl DeclineCode {
    /// The snake_case name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            DeclineCode::Refused => "refused",
            DeclineCode::InvalidToken => "invalid_token",
            DeclineCode::Voided => "voided",
            DeclineCode::Unclassified => "unclassified",
        }
    }
}

impl std::fmt::Display for DeclineCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The provider refused the payment.
///
/// Version 2 replaced version 1's free-text `reason` with a [`DeclineCode`] and the provider's
/// `detail`: consumers had to match provider wording to tell a refused card from an order that
/// ended first, and wording changes with the provider. Version 1 events are read as version 2
/// with code `unclassified` and their reason as the detail ([`upcast_payment_declined`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentDeclined {
    pub order_id: OrderId,
    pub code: DeclineCode,
    /// The provider's own words, for people.
    pub detail: String,
}

/// Reads a version 1 `PaymentDeclined` (`{order_id, reason}`) as version 2: its reason becomes
/// the detail, its code `unclassified` (version 1 recorded none, and guessing from provider
/// wording is what version 2 exists to stop).
/// A payload that is not a version 1 one is passed on unchanged, and fails to decode as
/// version 2 with the reason.
pub fn upcast_payment_declined(_version: u32, mut payload: serde_json::Value) -> serde_json::Value {
    if let Some(object) = payload.as_object_mut()
        && let Some(reason) = object.remove("reason")
    {
        object.insert("detail".into(), reason);
        object.insert("code".into(), DeclineCode::Unclassified.as_str().into());
    }
    payload
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
        PaymentDeclined = 2 (upcast with upcast_payment_declined),
        PaymentRefunded = 1,
        PaymentVoided = 1,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Event;

    #[test]
    fn a_version_1_decline_reads_as_version_2_unclassified_with_its_reason() {
        let order_id = OrderId::new();
        let v1 = json!({ "order_id": order_id, "reason": "card declined" });
        let event = PaymentEvent::from_payload("PaymentDeclined", 1, v1).unwrap();
        assert_eq!(
            event,
            PaymentEvent::PaymentDeclined(PaymentDeclined {
                order_id,
                code: DeclineCode::Unclassified,
                detail: "card declined".into(),
            })
        );
        assert_eq!(event.schema_version(), 2);
    }

    #[test]
    fn version_2_is_written_and_read_as_is() {
        let event = PaymentEvent::from(PaymentDeclined {
            order_id: OrderId::new(),
            code: DeclineCode::Refused,
            detail: "card declined".into(),
        });
        let payload = event.to_payload();
        assert_eq!(payload["code"], "refused");
        assert_eq!(
            PaymentEvent::from_payload("PaymentDeclined", 2, payload).unwrap(),
            event
        );
    }

    #[test]
    fn an_incomplete_payload_or_an_unknown_version_is_refused() {
        let broken = json!({ "order_id": OrderId::new() });
        assert!(PaymentEvent::from_payload("PaymentDeclined", 1, broken).is_err());
        assert!(PaymentEvent::from_payload("PaymentDeclined", 3, json!({})).is_err());
    }
}
