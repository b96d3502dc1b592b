//! A service's Prometheus metrics, served as text at `GET /metrics` (see [`crate::http`]).
//!
//! Each [`Host`](crate::Host) has a registry of its own (several run in one test process, and
//! `chorus dev` runs four), and every series carries the label `context`. Names follow the
//! gateway's (`chorus_gateway_http_*`): `chorus_<what>_<unit>`, counters ending in `_total`.
//!
//! Counted as the work happens:
//!
//! - `chorus_commands_handled_total{command}`: commands answered, accepted or rejected;
//! - `chorus_commands_rejected_total{command, code}`: those rejected, by the reply's code;
//! - `chorus_command_duration_seconds{command}`: how long answering took;
//! - `chorus_events_appended_total{event_type}`: events this process committed, whatever
//!   appended them (a command, a reaction, a deadline). The store counts them when their unit
//!   of work commits ([`eventstore::Store::on_append`]): a command's reply, a consumer or the
//!   relay each see only part of them, and the relay publishes some twice after a failure;
//! - `chorus_relay_events_published_total`: events JetStream acknowledged from this process's
//!   relay (only the active instance's relay publishes; an event published again after a
//!   failure counts again); `chorus_relay_duplicates_total`: of them, those JetStream already
//!   had and did not store again;
//! - `chorus_relay_latency_seconds`: from an event's recording (the start of the transaction
//!   that appended it) to its ack by JetStream, taken when the publish round's last ack is in;
//! - `chorus_consumer_messages_total{consumer, outcome}`: messages settled, by
//!   [`MessageOutcome`]: `handled`, `skipped` (handled before), `retried` (naked for later),
//!   `dead_lettered`;
//! - `chorus_consumer_batch_duration_seconds{consumer}`: a batch from its pull to the last
//!   settlement: handling, commit, acks;
//! - `chorus_deadlines_fired_total{kind}`: deadlines fired (their effects committed);
//!   `chorus_deadlines_failed_total{kind}`: firings that failed (retried later, or left for an
//!   operator); `chorus_deadline_ticks_failed_total{kind}`: ticks that failed as a whole.
//!
//! Sampled when scraped, each within [`SAMPLE_TIMEOUT`]: a sample that fails or takes longer
//! is left out of that scrape rather than reported stale.
//!
//! - `chorus_outbox_backlog_events`: events waiting in the outbox (the same number on every
//!   instance: they share the store);
//! - `chorus_consumer_pending_messages{consumer}`: messages of the stream the durable consumer
//!   has not delivered yet (`num_pending` in its info), the consumer's lag;
//!   `chorus_consumer_ack_pending_messages{consumer}`: delivered and not acked yet.
//!
//! Series whose labels are known beforehand (each command, each consumer's outcomes, each
//! deadline kind) are there from the start, at zero, so that a rate over them is defined
//! before the first event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bus::{ConsumerObserver, MessageOutcome, RelayObserver};
use events::BoundedContext;
use eventstore::{StoredEvent, Tick};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
};

/// The media type of the Prometheus text format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a sampled series may take to read before it is left out of a scrape.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Upper bounds of the buckets of the duration histograms, in seconds: 1 ms to 5 min.
pub const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// One host's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    commands_handled: IntCounterVec,
    commands_rejected: IntCounterVec,
    command_duration: HistogramVec,
    events_appended: IntCounterVec,
    relay_published: IntCounter,
    relay_duplicates: IntCounter,
    relay_latency: Histogram,
    consumer_messages: IntCounterVec,
    consumer_batch: HistogramVec,
    consumer_pending: IntGaugeVec,
    consumer_ack_pending: IntGaugeVec,
    outbox_backlog: IntGaugeVec,
    deadlines_fired: IntCounterVec,
    deadlines_failed: IntCounterVec,
    ticks_failed: IntCounterVec,
}

/// A service's registry: every series it registers carries the service's label (a context's
/// `context="ordering"`, another service's `service="projections"`), and its histograms share
/// [`BUCKETS`]. Each service builds its series on one and renders it at `GET /metrics`.
#[derive(Debug, Clone)]
pub struct Registry {
    registry: prometheus::Registry,
}

impl Registry {
    /// A registry whose every series carries `label="value"`.
    pub fn new(label: &str, value: &str) -> prometheus::Result<Self> {
        let labels = HashMap::from([(label.to_owned(), value.to_owned())]);
        Ok(Self {
            registry: prometheus::Registry::new_custom(None, Some(labels))?,
        })
    }

    pub fn counter(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        let counter = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.registry.register(Box::new(counter.clone()))?;
        Ok(counter)
    }

    pub fn gauge(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntGaugeVec> {
        let gauge = IntGaugeVec::new(Opts::new(name, help), labels)?;
        self.registry.register(Box::new(gauge.clone()))?;
        Ok(gauge)
    }

    /// A histogram with `buckets`, e.g. [`BUCKETS`] for durations in seconds.
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> prometheus::Result<HistogramVec> {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        let histogram = HistogramVec::new(opts, labels)?;
        self.registry.register(Box::new(histogram.clone()))?;
        Ok(histogram)
    }

    /// Every series, in the Prometheus text format (without sampling anything).
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buffer)
        {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Metrics {
    /// A registry of `context`'s series, every one labelled `context`.
    pub fn new(context: BoundedContext) -> prometheus::Result<Self> {
        let registry = Registry::new("context", context.name())?;
        let counter =
            |name: &str, help: &str, labels: &[&str]| registry.counter(name, help, labels);
        let gauge = |name: &str, help: &str, labels: &[&str]| registry.gauge(name, help, labels);
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            registry.histogram(name, help, labels, &BUCKETS)
        };
        Ok(Self {
            commands_handled: counter(
                "chorus_commands_handled_total",
                "Commands answered, accepted or rejected, by command",
                &["command"],
            )?,
            commands_rejected: counter(
                "chorus_commands_rejected_total",
                "Commands rejected, by command and rejection code",
                &["command", "code"],
            )?,
            command_duration: histogram(
                "chorus_command_duration_seconds",
                "How long commands took to answer, by command",
                &["command"],
            )?,
            events_appended: counter(
                "chorus_events_appended_total",
                "Events this process committed to the event store, by event type",
                &["event_type"],
            )?,
            relay_published: counter(
                "chorus_relay_events_published_total",
                "Events the relay published and JetStream acknowledged",
                &[],
            )?
            .with_label_values::<&str>(&[]),
            relay_duplicates: counter(
                "chorus_relay_duplicates_total",
                "Events the relay published that JetStream already had",
                &[],
            )?
            .with_label_values::<&str>(&[]),
            relay_latency: histogram(
                "chorus_relay_latency_seconds",
                "From an event's recording to its acknowledgement by JetStream",
                &[],
            )?
            .with_label_values::<&str>(&[]),
            consumer_messages: counter(
                "chorus_consumer_messages_total",
                "Messages settled by the durable consumers, by consumer and outcome",
                &["consumer", "outcome"],
            )?,
            consumer_batch: histogram(
                "chorus_consumer_batch_duration_seconds",
                "How long a batch of messages took to handle, commit and settle, by consumer",
                &["consumer"],
            )?,
            consumer_pending: gauge(
                "chorus_consumer_pending_messages",
                "Messages the durable consumer has not delivered yet (its lag), by consumer",
                &["consumer"],
            )?,
            consumer_ack_pending: gauge(
                "chorus_consumer_ack_pending_messages",
                "Messages delivered to the durable consumer and not acked yet, by consumer",
                &["consumer"],
            )?,
            outbox_backlog: gauge(
                "chorus_outbox_backlog_events",
                "Events in the outbox, waiting for the relay",
                &[],
            )?,
            deadlines_fired: counter(
                "chorus_deadlines_fired_total",
                "Deadlines fired, their effects committed, by kind",
                &["kind"],
            )?,
            deadlines_failed: counter(
                "chorus_deadlines_failed_total",
                "Deadline firings that failed, by kind",
                &["kind"],
            )?,
            ticks_failed: counter(
                "chorus_deadline_ticks_failed_total",
                "Ticks of a deadline ticker that failed as a whole, by kind",
                &["kind"],
            )?,
            registry,
        })
    }

    /// Every series, in the Prometheus text format (without sampling anything).
    pub fn render(&self) -> String {
        self.registry.render()
    }

    /// Counts an event committed through the store.
    pub(crate) fn appended(&self, event_type: &str) {
        self.events_appended.with_label_values(&[event_type]).inc();
    }

    /// The series of the command `name`, at zero until it is first answered.
    pub(crate) fn command(&self, name: &'static str) -> CommandMetrics {
        CommandMetrics {
            name,
            handled: self.commands_handled.with_label_values(&[name]),
            duration: self.command_duration.with_label_values(&[name]),
            rejected: self.commands_rejected.clone(),
        }
    }

    /// What the relay reports.
    pub(crate) fn relay(&self) -> Arc<dyn RelayObserver> {
        Arc::new(RelayMetrics {
            published: self.relay_published.clone(),
            duplicates: self.relay_duplicates.clone(),
            latency: self.relay_latency.clone(),
        })
    }

    /// What the durable consumer `name` reports.
    pub(crate) fn consumer(&self, name: &str) -> Arc<dyn ConsumerObserver> {
        let outcome = |o: MessageOutcome| {
            self.consumer_messages
                .with_label_values(&[name, o.as_str()])
        };
        Arc::new(ConsumerMetrics {
            handled: outcome(MessageOutcome::Handled),
            skipped: outcome(MessageOutcome::Skipped),
            retried: outcome(MessageOutcome::Retried),
            dead_lettered: outcome(MessageOutcome::DeadLettered),
            batch: self.consumer_batch.with_label_values(&[name]),
        })
    }

    /// The series of the deadline ticker of `kind`, at zero until it first fires.
    pub(crate) fn ticker(&self, kind: &str) -> TickerMetrics {
        TickerMetrics {
            fired: self.deadlines_fired.with_label_values(&[kind]),
            failed: self.deadlines_failed.with_label_values(&[kind]),
            ticks_failed: self.ticks_failed.with_label_values(&[kind]),
        }
    }
}

/// A command's series.
#[derive(Debug)]
pub(crate) struct CommandMetrics {
    name: &'static str,
    handled: IntCounter,
    duration: Histogram,
    rejected: IntCounterVec,
}

impl CommandMetrics {
    /// Counts an answer given `started` ago; `rejected`: with this code.
    pub(crate) fn answered(&self, started: Instant, rejected: Option<&str>) {
        self.duration.observe(started.elapsed().as_secs_f64());
        self.handled.inc();
        if let Some(code) = rejected {
            self.rejected.with_label_values(&[self.name, code]).inc();
        }
    }
}

#[derive(Debug)]
struct RelayMetrics {
    published: IntCounter,
    duplicates: IntCounter,
    latency: Histogram,
}

impl RelayObserver for RelayMetrics {
    fn published(&self, events: &[&StoredEvent], duplicates: u64) {
        let now = chrono::Utc::now();
        for event in events {
            // The database's clock stamped the event, this host's reads now: a small skew
            // could make it negative.
            let latency = (now - event.recorded_at).to_std().unwrap_or_default();
            self.latency.observe(latency.as_secs_f64());
        }
        self.published.inc_by(events.len() as u64);
        self.duplicates.inc_by(duplicates);
    }
}

#[derive(Debug)]
struct ConsumerMetrics {
    handled: IntCounter,
    skipped: IntCounter,
    retried: IntCounter,
    dead_lettered: IntCounter,
    batch: Histogram,
}

impl ConsumerObserver for ConsumerMetrics {
    fn settled(&self, outcome: MessageOutcome) {
        match outcome {
            MessageOutcome::Handled => &self.handled,
            MessageOutcome::Skipped => &self.skipped,
            MessageOutcome::Retried => &self.retried,
            MessageOutcome::DeadLettered => &self.dead_lettered,
        }
        .inc();
    }

    fn batch(&self, _messages: usize, took: Duration) {
        self.batch.observe(took.as_secs_f64());
    }
}

/// A deadline ticker's series.
#[derive(Debug)]
pub(crate) struct TickerMetrics {
    fired: IntCounter,
    failed: IntCounter,
    ticks_failed: IntCounter,
}

impl TickerMetrics {
    pub(crate) fn ticked(&self, tick: &Tick) {
        self.fired.inc_by(tick.fired as u64);
        self.failed.inc_by(tick.failed as u64);
        if tick.error.is_some() {
            self.ticks_failed.inc();
        }
    }
}

/// The sum of the values of the series named `name` whose labels include `labels`, in `text`
/// (the Prometheus text format, as [`Metrics::render`] writes it); `None` when no series
/// matches. For tests and tools that read a scrape: `sum(name{labels})` without Prometheus.
pub fn read_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, series_labels, value)) = parse_sample(line) else {
            continue;
        };
        let matches = series == name
            && labels
                .iter()
                .all(|(k, v)| series_labels.iter().any(|(sk, sv)| sk == k && sv == v));
        if matches {
            *sum.get_or_insert(0.0) += value;
        }
    }
    sum
}

/// A sample's labels: names and unescaped values.
type Labels<'a> = Vec<(&'a str, String)>;

/// A sample line: its name, its labels and its value.
fn parse_sample(line: &str) -> Option<(&str, Labels<'_>, f64)> {
    let end = line.find(['{', ' '])?;
    let name = &line[..end];
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let close = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key.trim_start_matches(','), value));
            rest = &after[close + 1..];
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// Renders a host's metrics, sampling first what is read rather than counted.
#[derive(Debug, Clone)]
pub(crate) struct Scraper {
    metrics: Arc<Metrics>,
    store: eventstore::Store,
    js: jetstream::Context,
    /// The durable consumers to sample: (stream, consumer).
    consumers: Arc<Mutex<Vec<(String, String)>>>,
    /// One scrape samples at a time: a sampled series is cleared, then set again.
    sampling: Arc<tokio::sync::Mutex<()>>,
}

impl Scraper {
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        store: eventstore::Store,
        js: jetstream::Context,
    ) -> Self {
        Self {
            metrics,
            store,
            js,
            consumers: Arc::default(),
            sampling: Arc::default(),
        }
    }

    /// Samples the lag of the durable consumer `name` on `stream` from now on.
    pub(crate) fn add_consumer(&self, stream: &str, name: &str) {
        self.consumers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((stream.to_owned(), name.to_owned()));
    }

    /// Every series, the sampled ones read now, in the Prometheus text format.
    pub(crate) async fn scrape(&self) -> String {
        let _one_at_a_time = self.sampling.lock().await;
        let consumers = self
            .consumers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let backlog = tokio::time::timeout(SAMPLE_TIMEOUT, self.store.outbox_backlog());
        let lags =
            futures::future::join_all(consumers.iter().map(|(stream, name)| {
                tokio::time::timeout(SAMPLE_TIMEOUT, self.lag(stream, name))
            }));
        let (backlog, lags) = tokio::join!(backlog, lags);

        let metrics = &self.metrics;
        metrics.outbox_backlog.reset();
        match backlog {
            Ok(Ok(events)) => metrics
                .outbox_backlog
                .with_label_values::<&str>(&[])
                .set(events),
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot sample the outbox backlog"),
            Err(_) => tracing::debug!("the outbox backlog took too long to sample"),
        }
        metrics.consumer_pending.reset();
        metrics.consumer_ack_pending.reset();
        for ((_, name), lag) in consumers.iter().zip(lags) {
            match lag {
                Ok(Ok((pending, ack_pending))) => {
                    let name = [name.as_str()];
                    metrics
                        .consumer_pending
                        .with_label_values(&name)
                        .set(pending);
                    metrics
                        .consumer_ack_pending
                        .with_label_values(&name)
                        .set(ack_pending);
                }
                Ok(Err(e)) => {
                    tracing::debug!(consumer = %name, error = format!("{e:#}"), "cannot sample the consumer's lag");
                }
                Err(_) => {
                    tracing::debug!(consumer = %name, "the consumer's lag took too long to sample")
                }
            }
        }
        metrics.render()
    }

    /// The consumer's pending and ack-pending messages, from its info.
    async fn lag(&self, stream: &str, name: &str) -> anyhow::Result<(i64, i64)> {
        let info = self
            .js
            .get_stream_no_info(stream)
            .await?
            .consumer_info(name)
            .await?;
        Ok((
            i64::try_from(info.num_pending).unwrap_or(i64::MAX),
            i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_carries_the_context_and_the_known_ones_start_at_zero() {
        let metrics = Arc::new(Metrics::new(BoundedContext::Shipping).unwrap());
        let command = metrics.command("dispatch-shipment");
        let _consumer = metrics.consumer("shipping-from-ordering");
        let _ticker = metrics.ticker("reminder");
        let text = metrics.render();
        let shipping = ("context", "shipping");
        for (name, labels) in [
            (
                "chorus_commands_handled_total",
                vec![shipping, ("command", "dispatch-shipment")],
            ),
            (
                "chorus_consumer_messages_total",
                vec![
                    shipping,
                    ("consumer", "shipping-from-ordering"),
                    ("outcome", "dead_lettered"),
                ],
            ),
            (
                "chorus_deadlines_fired_total",
                vec![shipping, ("kind", "reminder")],
            ),
            ("chorus_relay_events_published_total", vec![shipping]),
            ("chorus_relay_latency_seconds_count", vec![shipping]),
        ] {
            assert_eq!(read_sum(&text, name, &labels), Some(0.0), "{name}:\n{text}");
        }
        assert_eq!(read_sum(&text, "chorus_commands_rejected_total", &[]), None);
        assert_eq!(read_sum(&text, "chorus_outbox_backlog_events", &[]), None);

        command.answered(Instant::now(), Some("unknown_order"));
        command.answered(Instant::now(), None);
        metrics.appended("ShipmentScheduled");
        let text = metrics.render();
        let sum = |name, labels: &[(&str, &str)]| read_sum(&text, name, labels);
        assert_eq!(sum("chorus_commands_handled_total", &[shipping]), Some(2.0));
        assert_eq!(
            sum(
                "chorus_commands_rejected_total",
                &[("command", "dispatch-shipment"), ("code", "unknown_order")]
            ),
            Some(1.0)
        );
        assert_eq!(sum("chorus_command_duration_seconds_count", &[]), Some(2.0));
        assert_eq!(
            sum(
                "chorus_events_appended_total",
                &[shipping, ("event_type", "ShipmentScheduled")]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn a_sample_is_read_with_its_labels_unescaped() {
        let text = "# HELP x A help\n# TYPE x counter\n\
                    x{a=\"1\",b=\"say \\\"hi\\\"\"} 2\n\
                    x{a=\"2\"} 3.5\n\
                    y 7\n";
        assert_eq!(read_sum(text, "x", &[]), Some(5.5));
        assert_eq!(read_sum(text, "x", &[("b", "say \"hi\"")]), Some(2.0));
        assert_eq!(read_sum(text, "x", &[("a", "3")]), None);
        assert_eq!(read_sum(text, "y", &[]), Some(7.0));
        assert_eq!(read_sum(text, "z", &[]), None);
    }

    #[test]
    fn two_hosts_in_one_process_count_apart() {
        let one = Metrics::new(BoundedContext::Ordering).unwrap();
        let other = Metrics::new(BoundedContext::Ordering).unwrap();
        one.appended("OrderPlaced");
        assert!(one.render().contains("chorus_events_appended_total"));
        assert!(!other.render().contains("chorus_events_appended_total"));
    }
}
