//! The projections service's Prometheus metrics, on a registry of its own whose every series
//! carries `service="projections"` (see `host::metrics` for the names and conventions).
//!
//! Counted as the work happens:
//!
//! - `chorus_projection_messages_total{projection, stream}`: stream messages a live writer
//!   committed past (applied, skipped as applied before, or dead-lettered);
//! - `chorus_projection_batch_size_messages{projection}`: messages per committed batch (its
//!   `_count` is the number of batches);
//! - `chorus_projection_batch_duration_seconds{projection}`: how long a batch took to apply
//!   and commit;
//! - `chorus_projection_rebuilds_total{projection}`: the writer found its checkpoints moved
//!   under it: a rebuild was swapped in (or a source stream was recreated), and it resumed
//!   from the new checkpoints;
//! - `chorus_queries_total{query, outcome}`: queries answered, by endpoint and outcome
//!   (`found`, `not_found`, `not_yet`, `invalid_request`, `unavailable`);
//! - `chorus_query_duration_seconds{query}`: request in to reply out.
//!
//! Sampled when scraped (within `host::metrics::SAMPLE_TIMEOUT`, else left out):
//! `chorus_projection_lag_messages{projection, stream}`, the messages of a source stream
//! after the projection's checkpoint.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use events::BoundedContext;
use events::query::ProjectionStatus;
use host::metrics::{BUCKETS, Registry};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec};

use crate::projection::Projection;

/// Upper bounds of the batch size buckets, in messages.
const BATCH_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1_000.0, 2_000.0, 5_000.0,
];

/// The service's series.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    messages: IntCounterVec,
    batch_size: HistogramVec,
    batch_duration: HistogramVec,
    rebuilds: IntCounterVec,
    lag: IntGaugeVec,
    queries: IntCounterVec,
    query_duration: HistogramVec,
}

impl Metrics {
    pub(crate) fn new() -> prometheus::Result<Self> {
        let registry = Registry::new("service", "projections")?;
        Ok(Self {
            messages: registry.counter(
                "chorus_projection_messages_total",
                "Stream messages a projection's writer committed past, by projection and stream",
                &["projection", "stream"],
            )?,
            batch_size: registry.histogram(
                "chorus_projection_batch_size_messages",
                "Messages per batch a projection's writer committed, by projection",
                &["projection"],
                &BATCH_BUCKETS,
            )?,
            batch_duration: registry.histogram(
                "chorus_projection_batch_duration_seconds",
                "How long a batch took to apply and commit, by projection",
                &["projection"],
                &BUCKETS,
            )?,
            rebuilds: registry.counter(
                "chorus_projection_rebuilds_total",
                "Rebuilds swapped in under a projection's writer (its checkpoints moved)",
                &["projection"],
            )?,
            lag: registry.gauge(
                "chorus_projection_lag_messages",
                "Messages of a source stream after the projection's checkpoint",
                &["projection", "stream"],
            )?,
            queries: registry.counter(
                "chorus_queries_total",
                "Queries answered, by query endpoint and outcome",
                &["query", "outcome"],
            )?,
            query_duration: registry.histogram(
                "chorus_query_duration_seconds",
                "How long queries took to answer, by query endpoint",
                &["query"],
                &BUCKETS,
            )?,
            registry,
        })
    }

    /// The series of `projection`'s writer, at zero until its first batch.
    pub(crate) fn writer(&self, projection: Projection) -> WriterMetrics {
        let name = projection.name();
        WriterMetrics {
            messages: projection
                .sources()
                .iter()
                .map(|&context| {
                    let stream = context.stream().name();
                    let counter = self.messages.with_label_values(&[name, stream.as_str()]);
                    (context, counter)
                })
                .collect(),
            batch_size: self.batch_size.with_label_values(&[name]),
            batch_duration: self.batch_duration.with_label_values(&[name]),
            rebuilds: self.rebuilds.with_label_values(&[name]),
        }
    }

    /// Counts a query on `endpoint` answered with `outcome`, received at `started`.
    pub(crate) fn answered(&self, endpoint: &str, outcome: &str, started: Instant) {
        self.query_duration
            .with_label_values(&[endpoint])
            .observe(started.elapsed().as_secs_f64());
        self.queries.with_label_values(&[endpoint, outcome]).inc();
    }

    /// Every series, the lag set from `statuses` (none: left out of this rendering).
    pub(crate) fn render(&self, statuses: Option<&[ProjectionStatus]>) -> String {
        self.lag.reset();
        for status in statuses.unwrap_or_default() {
            for stream in &status.streams {
                self.lag
                    .with_label_values(&[status.projection.as_str(), stream.stream.as_str()])
                    .set(i64::try_from(stream.lag).unwrap_or(i64::MAX));
            }
        }
        self.registry.render()
    }
}

/// A writer's series.
#[derive(Debug)]
pub(crate) struct WriterMetrics {
    messages: BTreeMap<BoundedContext, IntCounter>,
    batch_size: Histogram,
    batch_duration: Histogram,
    rebuilds: IntCounter,
}

impl WriterMetrics {
    /// Counts a committed batch of `messages` per source stream, which took `took`.
    pub(crate) fn committed(&self, messages: &BTreeMap<BoundedContext, u64>, took: Duration) {
        for (context, &n) in messages {
            if let Some(counter) = self.messages.get(context) {
                counter.inc_by(n);
            }
        }
        self.batch_size
            .observe(messages.values().sum::<u64>() as f64);
        self.batch_duration.observe(took.as_secs_f64());
    }

    /// Counts checkpoints found moved under the writer.
    pub(crate) fn rebuilt(&self) {
        self.rebuilds.inc();
    }
}
