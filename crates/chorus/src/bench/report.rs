//! A run's figures: latency percentiles, throughput, errors by kind, the memory of the
//! processes sampled, as text and as JSON (the same [`SagaResult`] that `chorus bench plot`
//! reads back).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::load::{End, Outcome, Plan, Shape, Via};
use super::target::System;
use crate::exit::UsageError;

/// How often resident memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// A process to sample, with the name it is reported under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPid {
    pub name: String,
    pub pid: u32,
}

/// `PID` or `NAME=PID`.
pub fn named_pid(value: &str) -> Result<NamedPid, String> {
    let (name, pid) = match value.split_once('=') {
        Some((name, pid)) if !name.trim().is_empty() => (name.trim().to_owned(), pid),
        Some(_) => return Err(format!("{value:?}: the name before '=' is empty")),
        None => (format!("pid {}", value.trim()), value),
    };
    let pid = pid
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or_else(|| format!("{value:?} is not PID or NAME=PID"))?;
    Ok(NamedPid { name, pid })
}

/// Refuses a process whose memory cannot be read.
pub fn check_pid(pid: &NamedPid) -> anyhow::Result<()> {
    if rss_kib(pid.pid).is_none() {
        return Err(UsageError(format!(
            "--rss-pid {}: no running process {} whose memory can be read in /proc",
            pid.name, pid.pid
        ))
        .into());
    }
    Ok(())
}

/// A process's resident memory (VmRSS), in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Samples the processes' memory until stopped.
#[derive(Debug)]
pub struct Sampler {
    stop: CancellationToken,
    task: JoinHandle<Vec<Memory>>,
}

impl Sampler {
    pub fn start(pids: Vec<NamedPid>) -> Self {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut samples: Vec<Vec<(f64, u64)>> = vec![Vec::new(); pids.len()];
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stopped.cancelled() => break,
                }
                let minutes = start.elapsed().as_secs_f64() / 60.0;
                for (pid, samples) in pids.iter().zip(&mut samples) {
                    // A process that has ended has no more samples.
                    if let Some(kib) = rss_kib(pid.pid) {
                        samples.push((minutes, kib));
                    }
                }
            }
            pids.into_iter()
                .zip(samples)
                .map(|(pid, samples)| Memory::new(pid, &samples))
                .collect()
        });
        Self { stop, task }
    }

    pub async fn stop(self) -> Vec<Memory> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// One process's memory over the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Memory {
    pub name: String,
    pub pid: u32,
    pub samples: usize,
    pub first_mib: f64,
    pub max_mib: f64,
    pub last_mib: f64,
    /// The slope of a least-squares line through the samples.
    pub growth_mib_per_minute: f64,
}

impl Memory {
    /// From `(minutes since the start, KiB)` samples.
    fn new(pid: NamedPid, samples: &[(f64, u64)]) -> Self {
        let mib = |kib: u64| kib as f64 / 1024.0;
        Self {
            name: pid.name,
            pid: pid.pid,
            samples: samples.len(),
            first_mib: samples.first().map_or(0.0, |s| mib(s.1)),
            max_mib: samples.iter().map(|s| mib(s.1)).fold(0.0, f64::max),
            last_mib: samples.last().map_or(0.0, |s| mib(s.1)),
            growth_mib_per_minute: slope(samples.iter().map(|&(t, kib)| (t, mib(kib)))),
        }
    }
}

/// The least-squares slope of `points` (0 with fewer than two distinct x).
fn slope(points: impl Iterator<Item = (f64, f64)> + Clone) -> f64 {
    let n = points.clone().count() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (sum_x, sum_y) = points
        .clone()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mean_x, mean_y) = (sum_x / n, sum_y / n);
    let (covariance, variance) = points.fold((0.0, 0.0), |(c, v), (x, y)| {
        (c + (x - mean_x) * (y - mean_y), v + (x - mean_x).powi(2))
    });
    if variance == 0.0 {
        0.0
    } else {
        covariance / variance
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// From a histogram of microseconds.
    fn new(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        let at = |q: f64| ms(histogram.value_at_quantile(q));
        Self {
            count: histogram.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: ms(histogram.max()),
            mean: histogram.mean() / 1000.0,
        }
    }

    fn line(&self) -> String {
        format!(
            "p50 {:.1} ms  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  ({} orders)",
            self.p50, self.p90, self.p99, self.p999, self.max, self.count
        )
    }
}

/// What was asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub via: Via,
    /// `open` or `closed`.
    #[serde(rename = "loop")]
    pub shape: String,
    pub rate: Option<u32>,
    pub concurrency: Option<u32>,
    pub duration_s: Option<f64>,
    pub count: Option<u64>,
    pub warmup_s: f64,
    pub settle_s: f64,
    pub skus: u32,
    pub stock_per_sku: u32,
    pub customers: usize,
    pub gateway_url: String,
    pub nats_url: String,
}

/// A run's result, as printed and as written by --json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SagaResult {
    pub settings: Settings,
    /// Measured orders sent (the warm-up's are left out of every figure).
    pub sent: u64,
    pub warmup_sent: u64,
    pub confirmed: u64,
    /// Every measured order that was not confirmed, by kind.
    pub errors: BTreeMap<String, u64>,
    pub error_total: u64,
    /// From the end of the warm-up to the last confirmation.
    pub window_s: f64,
    pub confirmed_per_second: f64,
    /// From send to OrderConfirmed.
    pub end_to_end_ms: Latency,
    /// From send to the answer of the POST (or the NATS request), accepted orders.
    pub request_ms: Latency,
    pub memory: Vec<Memory>,
    /// /proc/loadavg at the end of the run.
    pub load_average: String,
}

impl SagaResult {
    pub fn new(
        plan: &Plan,
        stock_per_sku: u32,
        system: &System,
        outcome: Outcome,
        memory: Vec<Memory>,
    ) -> Self {
        let (shape, rate, concurrency) = match plan.shape {
            Shape::Open { rate } => ("open", Some(rate), None),
            Shape::Closed { workers } => ("closed", None, Some(workers)),
        };
        let (duration_s, count) = match plan.end {
            End::After(duration) => (Some(duration.as_secs_f64()), None),
            End::Count(count) => (None, Some(count)),
        };
        let window_s = outcome.window.as_secs_f64();
        Self {
            settings: Settings {
                via: plan.via,
                shape: shape.to_owned(),
                rate,
                concurrency,
                duration_s,
                count,
                warmup_s: plan.warmup.as_secs_f64(),
                settle_s: plan.settle.as_secs_f64(),
                skus: plan.skus,
                stock_per_sku,
                customers: system.customers.len(),
                gateway_url: system.gateway_url.clone(),
                nats_url: system.nats_url.clone(),
            },
            sent: outcome.sent,
            warmup_sent: outcome.warmup_sent,
            confirmed: outcome.confirmed,
            error_total: outcome.errors.values().sum(),
            errors: outcome.errors,
            window_s,
            confirmed_per_second: if window_s > 0.0 {
                outcome.confirmed as f64 / window_s
            } else {
                0.0
            },
            end_to_end_ms: Latency::new(&outcome.end_to_end),
            request_ms: Latency::new(&outcome.request),
            memory,
            load_average: std::fs::read_to_string("/proc/loadavg")
                .map(|l| l.trim().to_owned())
                .unwrap_or_default(),
        }
    }

    /// The result as printed.
    pub fn text(&self) -> String {
        let s = &self.settings;
        let shape = match (s.rate, s.concurrency) {
            (Some(rate), _) => format!("open loop at {rate} orders/s"),
            (None, Some(workers)) => format!("closed loop of {workers} workers"),
            (None, None) => "no loop".to_owned(),
        };
        let end = match (s.duration_s, s.count) {
            (Some(seconds), _) => format!("for {seconds} s"),
            (_, Some(count)) => format!("for {count} orders"),
            _ => String::new(),
        };
        let via = match s.via {
            Via::Gateway => "the gateway",
            Via::Nats => "NATS",
        };
        let mut text = String::new();
        let mut line = |l: String| {
            text.push_str(&l);
            text.push('\n');
        };
        line(format!(
            "via {via}, {shape} {end} (warm-up {} s, {} orders)",
            s.warmup_s, self.warmup_sent
        ));
        line(format!(
            "orders      sent {}, confirmed {} ({:.1}/s over {:.1} s), errors {}",
            self.sent, self.confirmed, self.confirmed_per_second, self.window_s, self.error_total
        ));
        line(format!("end to end  {}", self.end_to_end_ms.line()));
        line(format!("request     {}", self.request_ms.line()));
        for (kind, count) in &self.errors {
            line(format!("error       {kind}: {count}"));
        }
        for m in &self.memory {
            line(format!(
                "memory      {} (pid {}): first {:.1} MiB, max {:.1}, last {:.1}, growth {:+.2} \
                 MiB/min ({} samples)",
                m.name,
                m.pid,
                m.first_mib,
                m.max_mib,
                m.last_mib,
                m.growth_mib_per_minute,
                m.samples
            ));
        }
        line(format!("load        {}", self.load_average));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_may_have_a_name() {
        let named = named_pid("dev=42").unwrap();
        assert_eq!((named.name.as_str(), named.pid), ("dev", 42));
        assert_eq!(named_pid("42").unwrap().pid, 42);
        for bad in ["", "=42", "dev=", "dev=x", "0", "-1"] {
            assert!(named_pid(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn growth_is_the_least_squares_slope() {
        let flat = [(0.0, 100), (1.0, 100), (2.0, 100)];
        assert_eq!(Memory::new(pid(), &flat).growth_mib_per_minute, 0.0);
        // 1 MiB more each minute, with noise either side.
        let growing = [
            (0.0, 1024),
            (1.0, 2048 + 100),
            (2.0, 3072 - 100),
            (3.0, 4096),
        ];
        let memory = Memory::new(pid(), &growing);
        assert!(
            (memory.growth_mib_per_minute - 0.98).abs() < 0.05,
            "{memory:?}"
        );
        assert_eq!((memory.first_mib, memory.last_mib), (1.0, 4.0));
        assert_eq!(
            Memory::new(pid(), &[(0.0, 1024)]).growth_mib_per_minute,
            0.0
        );
    }

    #[test]
    fn this_process_has_resident_memory() {
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }

    fn pid() -> NamedPid {
        NamedPid {
            name: "p".to_owned(),
            pid: 1,
        }
    }
}
