//! The health of a context's service, as it answers on `chorus.<context>.health` (and a
//! service's `GET /readyz`): the contract the gateway's `/readyz` and operators' tools read.
//! The checks themselves are the host's (`host::health`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::command::command_subject;
use crate::naming::BoundedContext;

/// The name of the health endpoint in a context's NATS service.
pub const HEALTH_ENDPOINT: &str = "health";

/// The subject of a context's health endpoint, e.g. `chorus.ordering.health`.
pub fn health_subject(context: BoundedContext) -> String {
    command_subject(context.name(), HEALTH_ENDPOINT)
}

/// The answer of `chorus.<context>.health` and the body of `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HealthReport {
    /// The context, e.g. `ordering`.
    pub context: String,
    /// The instance that answered: `chorus-<context>-<pid>-<random>`, also the
    /// `application_name` of its database sessions.
    pub instance: String,
    /// True when every check is ready and the instance is not stopping.
    pub ready: bool,
    /// True once the instance has been told to stop: it finishes its work in hand and takes
    /// no new work.
    pub stopping: bool,
    /// How long the checks took, together (they run at the same time).
    pub duration_ms: f64,
    pub checks: Vec<Check>,
}

/// One thing the service depends on, and how it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Check {
    pub kind: CheckKind,
    /// What was checked: the database, the stream, the consumer's durable name, the ticker's
    /// deadline kind.
    pub name: String,
    pub state: CheckState,
    /// Whether this check lets the service be ready.
    pub ready: bool,
    /// Why it is not ready, or what was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How long the check took.
    pub duration_ms: f64,
    /// How long a task has been in its state (consumers and tickers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Database,
    Jetstream,
    Relay,
    Consumer,
    Ticker,
    /// A projection's live writer, with its lag per source stream.
    Projection,
    /// A NATS service's endpoints, e.g. the query service.
    Service,
    /// A JetStream key-value bucket.
    Bucket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    /// The database or the stream answered.
    Up,
    /// It did not answer, or not in time.
    Down,
    /// This instance's relay holds the lock and publishes.
    Active,
    /// Another instance's relay holds the lock.
    Standby,
    /// A relay nobody runs, or a ticker whose last tick failed.
    Failing,
    /// A consumer whose stream does not exist yet: it waits for the context that owns the
    /// stream to start, and tries again.
    Waiting,
    /// A consumer, ticker, writer or service at work.
    Running,
    /// A consumer, ticker, writer or service that ended.
    Stopped,
}

impl HealthReport {
    /// The names of the checks of `kind`, in report order: e.g. the durable consumers a
    /// service runs.
    pub fn names(&self, kind: CheckKind) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| c.kind == kind)
            .map(|c| c.name.clone())
            .collect()
    }
}

impl CheckState {
    pub fn is_ready(self) -> bool {
        matches!(
            self,
            CheckState::Up | CheckState::Active | CheckState::Standby | CheckState::Running
        )
    }
}
