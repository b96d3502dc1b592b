//! Value types used in event payloads: ids, SKUs, quantities and money.
//!
//! Each is parsed once, at the edge (`FromStr` / `TryFrom`, and on deserialisation), and is
//! valid from then on: a `Sku` is always a usable subject token, `Money` never holds a float.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::naming::check_token;

/// A value that did not parse, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {reason}")]
pub struct InvalidValue {
    pub what: &'static str,
    pub reason: String,
}

impl InvalidValue {
    fn new(what: &'static str, reason: impl Into<String>) -> Self {
        Self {
            what,
            reason: reason.into(),
        }
    }
}

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered (v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|e| InvalidValue::new($what, e.to_string()))
            }
        }
    };
}

uuid_id!(
    /// Identifies an order across every context (payments and shipping key on it too).
    OrderId,
    "order id"
);
uuid_id!(
    /// Identifies a customer (the subject of a shopper's token).
    CustomerId,
    "customer id"
);

/// A stock-keeping unit: 1 to 64 of `A-Z`, `0-9`, `-` and `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sku(String);

impl Sku {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Sku {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            return Err(InvalidValue::new(
                "sku",
                format!("{s:?} must be 1 to 64 of A-Z, 0-9, '-' and '_'"),
            ));
        }
        // The character set above is a subset of what a subject token allows.
        debug_assert!(check_token("sku", &s).is_ok());
        Ok(Self(s))
    }
}

impl FromStr for Sku {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from(s.to_owned())
    }
}

impl From<Sku> for String {
    fn from(sku: Sku) -> Self {
        sku.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A count of units: at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Quantity(u32);

impl Quantity {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Quantity {
    type Error = InvalidValue;
    fn try_from(n: u32) -> Result<Self, Self::Error> {
        if n == 0 {
            Err(InvalidValue::new("quantity", "must be at least 1"))
        } else {
            Ok(Self(n))
        }
    }
}

impl From<Quantity> for u32 {
    fn from(q: Quantity) -> Self {
        q.0
    }
}

/// An ISO 4217 currency code: three upper-case letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters are ever stored (see `TryFrom<String>`).
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl TryFrom<String> for Currency {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(InvalidValue::new(
                "currency",
                format!("{s:?} is not three upper-case letters"),
            )),
        }
    }
}

impl FromStr for Currency {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from(s.to_owned())
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> Self {
        c.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// JSON Schemas of the parsed value types: the same rules as their parsers.
macro_rules! schema {
    ($name:ident, $($schema:tt)+) => {
        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!($($schema)+)
            }
        }
    };
}

schema!(Sku, { "type": "string", "pattern": "^[A-Z0-9_-]{1,64}$" });
schema!(Quantity, { "type": "integer", "format": "uint32", "minimum": 1, "maximum": u32::MAX });
schema!(Currency, { "type": "string", "pattern": "^[A-Z]{3}$" });

/// An amount of money in integer minor units (cents) of a currency. Never a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Money {
    /// Amount in minor units, e.g. 1999 for 19.99 EUR.
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount_minor: i64, currency: Currency) -> Self {
        Self {
            amount_minor,
            currency,
        }
    }

    /// Sum of two amounts of one currency; `None` on a currency mismatch or overflow.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        (self.currency == other.currency)
            .then(|| self.amount_minor.checked_add(other.amount_minor))
            .flatten()
            .map(|amount_minor| Money::new(amount_minor, self.currency))
    }

    /// This amount times a quantity; `None` on overflow.
    pub fn checked_mul(self, quantity: Quantity) -> Option<Money> {
        self.amount_minor
            .checked_mul(i64::from(quantity.get()))
            .map(|amount_minor| Money::new(amount_minor, self.currency))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.amount_minor < 0 { "-" } else { "" };
        let abs = self.amount_minor.unsigned_abs();
        write!(f, "{sign}{}.{:02} {}", abs / 100, abs % 100, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_at_the_edge_and_refuse_bad_input() {
        assert!("SKU-1_A".parse::<Sku>().is_ok());
        for bad in ["", "sku-lower", "A.B", "A B", &"X".repeat(65)] {
            assert!(bad.parse::<Sku>().is_err(), "{bad:?} should be refused");
        }
        assert!(Quantity::try_from(0).is_err());
        assert_eq!(Quantity::try_from(3).unwrap().get(), 3);
        assert!("eur".parse::<Currency>().is_err());
        assert!("EURO".parse::<Currency>().is_err());
        assert!("not-a-uuid".parse::<OrderId>().is_err());
    }

    #[test]
    fn deserialisation_enforces_the_same_rules() {
        assert!(serde_json::from_str::<Sku>("\"a.b\"").is_err());
        assert!(serde_json::from_str::<Quantity>("0").is_err());
        assert!(serde_json::from_str::<Currency>("\"EU\"").is_err());
        let m: Money = serde_json::from_str(r#"{"amount_minor":1999,"currency":"EUR"}"#).unwrap();
        assert_eq!(m.to_string(), "19.99 EUR");
    }

    #[test]
    fn money_arithmetic_is_checked() {
        let eur: Currency = "EUR".parse().unwrap();
        let usd: Currency = "USD".parse().unwrap();
        let q = Quantity::try_from(3).unwrap();
        assert_eq!(
            Money::new(250, eur).checked_mul(q),
            Some(Money::new(750, eur))
        );
        assert_eq!(Money::new(1, eur).checked_add(Money::new(1, usd)), None);
        assert_eq!(
            Money::new(i64::MAX, eur).checked_add(Money::new(1, eur)),
            None
        );
    }
}
