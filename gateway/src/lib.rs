//! The HTTP gateway of Chorus: the API shoppers and operators use, in front of the contexts and
//! the read models.
//!
//! It is thin on purpose. It holds no domain logic and opens no database: a command becomes a
//! NATS request to its context (`chorus.<context>.<command>`, see [`events::command`]) and a
//! query a NATS request to the projections' query service (`chorus.query.<endpoint>`, see
//! [`events::query`]). What it adds is what an HTTP edge owes its clients, and nothing a context
//! could decide better:
//!
//! - [`api`]: the one route table. Each [`api::Route`] carries its handler *and* its OpenAPI
//!   description, so the router and the document ([`openapi`]) are built from the same list
//!   and cannot drift apart.
//! - [`auth`]: bearer JWTs with a `shopper` or `operator` role ([`auth::Verifier`]), and the
//!   minting of tokens for local use ([`auth::mint`], also behind `chorus token`).
//! - [`body`]: request bodies parsed at the edge into the API's own types (unknown fields and
//!   wrong types refused, naming the field), within the size limit.
//! - [`idempotency`]: `Idempotency-Key` records in a JetStream key-value bucket, so that a
//!   retried POST replays its first response on any instance.
//! - [`consistency`]: the read-your-writes token a command's response carries and a query
//!   may wait for.
//! - [`upstream`]: NATS request/reply with timeouts, correlation and trace headers; a context
//!   without responders is a 503 at once, one that does not answer in time a 504.
//! - [`problem`]: the one error type, rendered as RFC 9457 `application/problem+json`.
//! - [`protect`]: correlation ids, per-principal rate limits, CORS; [`metrics`]: Prometheus.
//! - [`settings`] (the environment, read once) and [`server`] (start, serve, stop).

pub mod api;
pub mod auth;
pub mod body;
pub mod consistency;
pub mod idempotency;
pub mod metrics;
pub mod openapi;
pub mod problem;
pub mod protect;
pub mod server;
pub mod settings;
pub mod upstream;

pub use auth::{Role, mint};
pub use server::Gateway;
pub use settings::Settings;
