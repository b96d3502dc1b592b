//! Whether the projections service can do its work, and its metrics, as
//! `chorus.projections.health`, `GET /readyz` and `GET /metrics` report them (the parts are
//! `host`'s, see `host::health` and `host::http`).
//!
//! Checks, put together when asked for:
//!
//! - `database`: `SELECT 1` on the projections database;
//! - `jetstream`, one per source stream: the NATS connection is up and the stream answers;
//! - `projection`, one per writer (`orders`, `catalogue`, `sales`): running (live, or standing
//!   by behind another instance's writer lock) or stopped, with its lag per source stream in
//!   the detail (messages after its checkpoint). A writer that lags is still ready: it is
//!   catching up, and queries wait for what they need (read-your-writes);
//! - `service` `query`: the query endpoints answer, or stopped.

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream;
use events::BoundedContext;
use events::query::ProjectionStatus;
use host::health::{self, CheckKind, CheckState, HealthReport, PROBE_TIMEOUT, Tasks};
use host::metrics::SAMPLE_TIMEOUT;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::rebuild;

/// The service's name: its NATS service, its health subject, its HTTP variable's prefix.
pub const NAME: &str = "projections";

/// What the service's health and metrics are read from.
#[derive(Debug, Clone)]
pub(crate) struct Observer {
    pub(crate) instance: String,
    pub(crate) pool: PgPool,
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) tasks: Tasks,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shutdown: CancellationToken,
    /// One scrape samples at a time: the lag is cleared, then set again.
    pub(crate) sampling: Arc<tokio::sync::Mutex<()>>,
}

impl Observer {
    /// Every projection's position, or `None` when it cannot be read within `bound`.
    async fn positions(&self, bound: std::time::Duration) -> Option<Vec<ProjectionStatus>> {
        match tokio::time::timeout(bound, rebuild::status(&self.pool, &self.js)).await {
            Ok(Ok(statuses)) => Some(statuses),
            Ok(Err(e)) => {
                tracing::debug!(error = format!("{e:#}"), "cannot read the projections' lag");
                None
            }
            Err(_) => {
                tracing::debug!("the projections' lag took too long to read");
                None
            }
        }
    }
}

impl host::http::Observed for Observer {
    async fn health(&self) -> HealthReport {
        let started = Instant::now();
        let streams: Vec<String> = BoundedContext::ALL
            .iter()
            .map(|c| c.stream().name())
            .collect();
        let (database, jetstream, positions) = tokio::join!(
            health::database(&self.pool),
            futures::future::join_all(streams.iter().map(|stream| health::jetstream(
                &self.client,
                &self.js,
                stream
            ))),
            self.positions(PROBE_TIMEOUT),
        );
        let mut checks = vec![database];
        checks.extend(jetstream);
        for mut check in self.tasks.checks() {
            let lag = positions
                .iter()
                .flatten()
                .find(|status| status.projection == check.name);
            if check.kind == CheckKind::Projection
                && check.state == CheckState::Running
                && let Some(status) = lag
            {
                let behind: Vec<String> = status
                    .streams
                    .iter()
                    .map(|s| {
                        format!(
                            "{} {} behind (at {} of {})",
                            s.stream, s.lag, s.checkpoint, s.last_sequence
                        )
                    })
                    .collect();
                check.detail = Some(behind.join(", "));
            }
            checks.push(check);
        }
        health::report(
            NAME,
            &self.instance,
            self.shutdown.is_cancelled(),
            started,
            checks,
        )
    }

    async fn metrics(&self) -> String {
        let _one_at_a_time = self.sampling.lock().await;
        let positions = self.positions(SAMPLE_TIMEOUT).await;
        self.metrics.render(positions.as_deref())
    }
}
