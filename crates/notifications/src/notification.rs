//! The messages sent to customers, and the facts of an order they are written from.
//!
//! A notification is identified by its key, `<kind>.<order id>`: there is at most one of each
//! kind per order, whatever the number of events or deliveries that ask for it. Sinks
//! deduplicate by that key, and the service records it in its key-value bucket.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::contract::{Money, OrderId, OrderPlaced};

/// What a notification tells the customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The order is confirmed: stock reserved, payment captured.
    OrderConfirmed,
    /// The order's parcel left the warehouse.
    OrderShipped,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::OrderConfirmed => "order-confirmed",
            Kind::OrderShipped => "order-shipped",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The key of the one notification of `kind` for `order`: `<kind>.<order id>`.
pub fn key(kind: Kind, order: &OrderId) -> String {
    format!("{kind}.{order}")
}

/// What the service keeps from an order's `OrderPlaced` to address its later notifications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderFacts {
    pub customer_id: String,
    /// The name on the shipping address.
    pub recipient: String,
    pub total: Money,
}

impl From<&OrderPlaced> for OrderFacts {
    fn from(placed: &OrderPlaced) -> Self {
        Self {
            customer_id: placed.customer_id.clone(),
            recipient: placed.shipping_address.name.clone(),
            total: placed.total.clone(),
        }
    }
}

/// One message to one customer, as a sink receives it (and the file sink writes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// `<kind>.<order id>`: the idempotency key.
    pub key: String,
    pub kind: Kind,
    pub order_id: OrderId,
    pub customer_id: String,
    pub recipient: String,
    pub total: Money,
    /// The message's title.
    pub subject: String,
    /// The message's text.
    pub body: String,
    /// The event that asked for it.
    pub event_id: String,
}

impl Notification {
    /// Writes the notification of `kind` for `order` from what its `OrderPlaced` said.
    pub fn compose(kind: Kind, order: &OrderId, facts: &OrderFacts, event_id: &str) -> Self {
        let total = format_money(&facts.total);
        let (subject, body) = match kind {
            Kind::OrderConfirmed => (
                "Your order is confirmed".to_owned(),
                format!(
                    "Hello {}, your order {order} for {total} is confirmed. We will tell you when it ships.",
                    facts.recipient
                ),
            ),
            Kind::OrderShipped => (
                "Your order has shipped".to_owned(),
                format!(
                    "Hello {}, your order {order} for {total} is on its way.",
                    facts.recipient
                ),
            ),
        };
        Self {
            key: key(kind, order),
            kind,
            order_id: order.clone(),
            customer_id: facts.customer_id.clone(),
            recipient: facts.recipient.clone(),
            total: facts.total.clone(),
            subject,
            body,
            event_id: event_id.to_owned(),
        }
    }
}

/// `1999 EUR` as `19.99 EUR`: minor units shown with the currency's ISO 4217 exponent.
pub fn format_money(money: &Money) -> String {
    let exponent = match money.currency.as_str() {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    };
    let sign = if money.amount_minor < 0 { "-" } else { "" };
    let amount = money.amount_minor.unsigned_abs();
    if exponent == 0 {
        return format!("{sign}{amount} {}", money.currency);
    }
    let unit = 10u64.pow(exponent);
    format!(
        "{sign}{}.{:0width$} {}",
        amount / unit,
        amount % unit,
        money.currency,
        width = exponent as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(amount_minor: i64, currency: &str) -> Money {
        Money {
            amount_minor,
            currency: currency.to_owned(),
        }
    }

    #[test]
    fn money_is_shown_with_its_currency_exponent() {
        for (amount, currency, shown) in [
            (1999, "EUR", "19.99 EUR"),
            (5, "EUR", "0.05 EUR"),
            (0, "USD", "0.00 USD"),
            (-250, "GBP", "-2.50 GBP"),
            (1500, "JPY", "1500 JPY"),
            (1234, "KWD", "1.234 KWD"),
            (i64::MIN, "EUR", "-92233720368547758.08 EUR"),
        ] {
            assert_eq!(format_money(&money(amount, currency)), shown);
        }
    }

    #[test]
    fn a_notification_is_keyed_by_kind_and_order() {
        let order = OrderId::parse("0190f5c2-7d3e-7c1a-9a57-5b8f0e3c2a11").unwrap();
        let facts = OrderFacts {
            customer_id: "c".to_owned(),
            recipient: "Ada Lovelace".to_owned(),
            total: money(5997, "EUR"),
        };
        let n = Notification::compose(Kind::OrderShipped, &order, &facts, "e");
        assert_eq!(n.key, "order-shipped.0190f5c2-7d3e-7c1a-9a57-5b8f0e3c2a11");
        assert!(n.body.contains("Ada Lovelace"), "{}", n.body);
        assert!(n.body.contains("59.97 EUR"), "{}", n.body);
    }
}
