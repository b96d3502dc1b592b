//! Private servers and databases for tests and the local launcher: a throwaway
//! `nats-server` with JetStream on a free port ([`NatsServer`]), a fresh
//! PostgreSQL database per test ([`TestDatabase`]) and a polling helper
//! ([`wait_until`]) so tests wait on conditions instead of sleeping,
//! [`account`], a minimal aggregate the runtime's tests run commands against,
//! and [`received`], a message as a consumer hands it to a context's reactions.
//!
//! Other crates use it only as a dev-dependency; the one exception is the
//! `chorus dev` launcher, which starts its nats-server through
//! [`NatsServer::start_in`]. No service may use it in a production path, and
//! it holds no Chorus domain code.

pub mod account;
mod health;
mod nats;
mod postgres;
mod received;

use std::future::Future;
use std::time::Duration;

use anyhow::{Result, anyhow};

pub use health::ready_report;
pub use nats::{
    MIN_NATS_SERVER, NatsServer, find_nats_server, nats_server_version, select_nats_server,
};
pub use postgres::{DEFAULT_DATABASE_URL, TestDatabase};
pub use received::received;

const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `check` every 20 ms until it returns true. A check that hangs is cut
/// off by the same `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let poll = async {
        while !check().await {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    };
    tokio::time::timeout(timeout, poll)
        .await
        .map_err(|_| anyhow!("timed out after {timeout:?} waiting for {what}"))
}
