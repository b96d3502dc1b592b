//! Stream, subject and consumer names: the one place they are built.
//!
//! A context `ordering` publishes to stream `ORDERING` on subjects
//! `ordering.<aggregate type>.<aggregate id>.<event type>`, e.g.
//! `ordering.order.0190f5c2-....OrderPlaced`, so a consumer can filter by event type
//! (`ordering.order.*.OrderPlaced`) or by aggregate (`ordering.order.<id>.*`).

use std::fmt;

/// The bounded contexts that publish events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BoundedContext {
    Ordering,
    Inventory,
    Payments,
    Shipping,
}

impl BoundedContext {
    pub const ALL: [BoundedContext; 4] = [
        BoundedContext::Ordering,
        BoundedContext::Inventory,
        BoundedContext::Payments,
        BoundedContext::Shipping,
    ];

    /// The lower-case name: subject root, database suffix, service name.
    pub fn name(self) -> &'static str {
        match self {
            BoundedContext::Ordering => "ordering",
            BoundedContext::Inventory => "inventory",
            BoundedContext::Payments => "payments",
            BoundedContext::Shipping => "shipping",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The stream the context publishes to.
    pub fn stream(self) -> StreamName {
        StreamName::for_context(self.name())
    }
}

impl fmt::Display for BoundedContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A subject token is invalid: empty, or holding `.`, `*`, `>` or white space.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} {token:?} cannot be a subject token (empty, or contains '.', '*', '>' or white space)"
)]
pub struct InvalidToken {
    pub what: &'static str,
    pub token: String,
}

/// Checks that `token` can stand alone between two dots of a subject.
pub fn check_token(what: &'static str, token: &str) -> Result<(), InvalidToken> {
    let bad = token.is_empty()
        || token
            .chars()
            .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control());
    if bad {
        Err(InvalidToken {
            what,
            token: token.to_owned(),
        })
    } else {
        Ok(())
    }
}

/// A context's event stream: its name and the subjects it captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamName {
    context: String,
}

impl StreamName {
    /// The stream of the context named `context` (a lower-case subject token).
    pub fn for_context(context: &str) -> Self {
        Self {
            context: context.to_owned(),
        }
    }

    /// The context name, e.g. `ordering`.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The stream name, e.g. `ORDERING`.
    pub fn name(&self) -> String {
        self.context.to_uppercase().replace('-', "_")
    }

    /// Every subject of the stream, e.g. `ordering.>`.
    pub fn all_subjects(&self) -> String {
        format!("{}.>", self.context)
    }

    /// The subject of one event.
    pub fn event_subject(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        event_type: &str,
    ) -> Result<String, InvalidToken> {
        check_token("aggregate type", aggregate_type)?;
        check_token("aggregate id", aggregate_id)?;
        check_token("event type", event_type)?;
        Ok(format!(
            "{}.{aggregate_type}.{aggregate_id}.{event_type}",
            self.context
        ))
    }

    /// Filter for one event type of one aggregate type, e.g. `ordering.order.*.OrderPlaced`.
    pub fn event_type_filter(&self, aggregate_type: &str, event_type: &str) -> String {
        format!("{}.{aggregate_type}.*.{event_type}", self.context)
    }

    /// Filter for every event of one aggregate, e.g. `ordering.order.<id>.*`.
    pub fn aggregate_filter(&self, aggregate_type: &str, aggregate_id: &str) -> String {
        format!("{}.{aggregate_type}.{aggregate_id}.*", self.context)
    }
}

/// The stream holding messages that consumers gave up on.
pub const DEAD_LETTER_STREAM: &str = "DEAD_LETTERS";

/// Every subject of the dead-letter stream.
pub const DEAD_LETTER_SUBJECTS: &str = "deadletter.>";

/// The subject a consumer's dead letters go to, e.g. `deadletter.inventory-from-ordering`.
pub fn dead_letter_subject(consumer: &str) -> String {
    format!("deadletter.{consumer}")
}

/// Durable consumer name of the context (or team) `reactor` reading `source`'s stream,
/// e.g. `inventory-from-ordering`.
pub fn durable_name(reactor: &str, source: &StreamName) -> String {
    format!("{reactor}-from-{}", source.context())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_context_aggregate_id_and_type() {
        let stream = BoundedContext::Ordering.stream();
        assert_eq!(stream.name(), "ORDERING");
        assert_eq!(stream.all_subjects(), "ordering.>");
        assert_eq!(
            stream.event_subject("order", "abc", "OrderPlaced").unwrap(),
            "ordering.order.abc.OrderPlaced"
        );
        assert_eq!(
            stream.event_type_filter("order", "OrderPlaced"),
            "ordering.order.*.OrderPlaced"
        );
        assert_eq!(
            stream.aggregate_filter("order", "abc"),
            "ordering.order.abc.*"
        );
        assert_eq!(
            durable_name("inventory", &stream),
            "inventory-from-ordering"
        );
    }

    #[test]
    fn tokens_that_would_change_a_subject_are_refused() {
        let stream = BoundedContext::Inventory.stream();
        for bad in ["", "a.b", "a*", ">", "a b", "a\tb"] {
            let err = stream
                .event_subject("stock", bad, "StockReceived")
                .unwrap_err();
            assert_eq!(err.token, bad);
        }
    }
}
