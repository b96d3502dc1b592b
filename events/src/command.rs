//! Commands over NATS request/reply: what a context answers, and on which subject it listens.
//!
//! Each context runs a NATS service named after it (queue group `chorus`), with one endpoint per
//! command: subject `chorus.<context>.<command>`, e.g. `chorus.ordering.place-order`. The request
//! body is the command as JSON (unknown fields refused); the headers may carry
//! `Chorus-Correlation-Id`, `traceparent` and `tracestate`. The reply body is a [`CommandReply`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The queue group every instance of a context's service joins.
pub const QUEUE_GROUP: &str = "chorus";

/// The subject of a command endpoint, e.g. `chorus.ordering.place-order`.
pub fn command_subject(context: &str, command: &str) -> String {
    format!("chorus.{context}.{command}")
}

/// The answer to a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandReply {
    /// The command was accepted and its events committed.
    Accepted {
        aggregate_id: String,
        /// The highest event-store position it wrote (0 if it changed nothing): a query can
        /// wait for the read model to reach it.
        position: i64,
        /// The aggregate's version after the command.
        version: u64,
    },
    /// The command was refused; nothing was written.
    Rejected {
        /// A stable snake_case code, e.g. `unknown_sku`, `invalid_request`.
        code: String,
        message: String,
        /// The request field at fault, when there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
    },
}

impl CommandReply {
    pub fn rejected(code: &str, message: impl Into<String>) -> Self {
        Self::Rejected {
            code: code.to_owned(),
            message: message.into(),
            field: None,
        }
    }

    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::Rejected {
            code: "invalid_request".to_owned(),
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }
}
