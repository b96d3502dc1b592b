//! The port through which notifications leave the service, and its two adapters.
//!
//! The port's promise is idempotency by [`Notification::key`]: delivering a notification whose
//! key the sink has already taken must not reach the customer a second time. Only a
//! [`Attempt::Resumed`] delivery can meet a key the sink took before: the service records its
//! intent to send a notification (an atomic create) before it calls the sink, so a delivery
//! whose intent it has just created is the first of its key anywhere ([`Attempt::First`]).
//! A resumed one follows a crash, or a failure to record the notification as sent, after the
//! sink took it; see the crate docs. A sink therefore looks a key up only when asked to resume,
//! and keeps no key in memory for it (ADR 0015).
//!
//! - [`FileSink`] appends one JSON line per notification and keeps the promise across
//!   restarts: a resumed delivery looks for its key in the file. Notifications handed to it at
//!   the same time share one `fsync`.
//! - [`LogSink`] writes each notification to the log (`tracing`). It remembers the keys of the
//!   last [`LOG_SINK_REMEMBERS`] notifications it wrote, in memory: a resumed delivery of an
//!   older one, or any after a restart, is logged again.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};

use anyhow::{Context as _, anyhow};
use tokio::sync::oneshot;

use crate::notification::Notification;

/// Whether the sink may have taken this notification before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The service has just recorded its intent to send the notification: no delivery of its
    /// key has reached a sink before.
    First,
    /// The service resumes a delivery whose intent was recorded earlier and not marked sent:
    /// the sink may have taken it already, and must not pass it on again.
    Resumed,
}

/// Where notifications go. Delivery must be idempotent by the notification's key.
pub trait Sink: Send + Sync + 'static {
    /// Hands `notification` to the customer-facing channel. `Ok` means it was taken (now, or,
    /// for a [`Attempt::Resumed`] delivery, by an earlier one with the same key); an error
    /// means it may be retried.
    fn deliver(
        &self,
        notification: &Notification,
        attempt: Attempt,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Appends notifications as JSON lines to a file, one line per key.
///
/// One writer thread appends for every caller, and a notification is taken once its line is on
/// the disk (`fsync`). The notifications handed to the writer while it waits for the disk go to
/// the file together, with one write and one `fsync` (at most [`FILE_SINK_BATCH`]): with many
/// orders handled at once, the disk is asked far fewer times than once per notification.
#[derive(Debug, Clone)]
pub struct FileSink {
    path: PathBuf,
    appends: std_mpsc::Sender<Append>,
}

/// Notifications the file sink writes with one `fsync`, at most.
pub const FILE_SINK_BATCH: usize = 256;

/// One notification handed to the writer thread, and where its outcome goes.
#[derive(Debug)]
struct Append {
    key: String,
    line: Vec<u8>,
    attempt: Attempt,
    taken: oneshot::Sender<Taken>,
}

/// Whether a notification was appended (false: its key was in the file, or earlier in its
/// batch, already), or why it could not be; one error is shared by the whole batch it failed.
type Taken = Result<bool, Arc<io::Error>>;

impl FileSink {
    /// Opens (or creates) the file and checks that every line is a notification. A last line
    /// cut short by a crash mid-write is removed: that notification was never fully taken and
    /// will be delivered again. Any other line that is not a notification makes the open fail.
    /// The file is read a line at a time: its size does not weigh on memory. Starts the writer
    /// thread, which ends when the last clone of the sink is dropped.
    pub fn open(path: impl AsRef<Path>) -> anyhow::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut complete = 0u64;
        let mut cut_short = false;
        let mut reader = BufReader::new(&file);
        let mut line = Vec::new();
        for n in 1.. {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if read == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                cut_short = true;
                break;
            }
            complete += read as u64;
            if !line.iter().all(u8::is_ascii_whitespace) && line_key(&line).is_none() {
                return Err(anyhow!(
                    "{}:{n}: not a notification (a JSON object with a \"key\")",
                    path.display()
                ));
            }
        }
        if cut_short {
            tracing::warn!(path = %path.display(), "removing a notification cut short at the end of the file");
            file.set_len(complete)
                .and_then(|()| file.sync_data())
                .with_context(|| format!("cannot truncate {}", path.display()))?;
        }
        let (appends, received) = std_mpsc::channel();
        let writer_path = path.clone();
        std::thread::Builder::new()
            .name("file-sink".to_owned())
            .spawn(move || write_batches(file, &writer_path, &received))
            .with_context(|| format!("cannot start the writer of {}", path.display()))?;
        Ok(Self { path, appends })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The writer thread: takes what has been handed to it since its last write, up to
/// [`FILE_SINK_BATCH`], writes it with one `fsync`, and tells each caller.
fn write_batches(mut file: File, path: &Path, received: &std_mpsc::Receiver<Append>) {
    while let Ok(first) = received.recv() {
        let mut batch = vec![first];
        batch.extend(received.try_iter().take(FILE_SINK_BATCH - 1));
        let outcomes = write_batch(&mut file, path, &batch);
        for (append, outcome) in batch.into_iter().zip(outcomes) {
            // A caller that stopped waiting no longer needs the answer.
            append.taken.send(outcome).ok();
        }
    }
}

/// Appends the batch's lines that are not in the file yet, with one write and one `fsync`,
/// and says for each whether it was appended. A resumed delivery is looked up in the file, and
/// a key is written at most once per batch. When the write fails the file is cut back to where
/// it was, leaving no half line behind for the next append to run into.
fn write_batch(file: &mut File, path: &Path, batch: &[Append]) -> Vec<Taken> {
    let mut buffer = Vec::new();
    let mut written = HashSet::new();
    let mut outcomes: Vec<Taken> = batch
        .iter()
        .map(|append| -> io::Result<bool> {
            if written.contains(append.key.as_str()) {
                return Ok(false);
            }
            if append.attempt == Attempt::Resumed && holds(path, &append.key)? {
                return Ok(false);
            }
            buffer.extend_from_slice(&append.line);
            written.insert(append.key.as_str());
            Ok(true)
        })
        .map(|outcome| outcome.map_err(Arc::new))
        .collect();
    if buffer.is_empty() {
        return outcomes;
    }
    let result = file.seek(SeekFrom::End(0)).and_then(|before| {
        file.write_all(&buffer)
            .and_then(|()| file.sync_data())
            .inspect_err(|_| {
                file.set_len(before).ok();
            })
    });
    if let Err(e) = result {
        // Neither the line nor its repeats in the batch were taken.
        let e = Arc::new(e);
        for (append, outcome) in batch.iter().zip(&mut outcomes) {
            if written.contains(append.key.as_str()) {
                *outcome = Err(Arc::clone(&e));
            }
        }
    }
    outcomes
}

/// Whether a line of the file holds `key`. Read from the start, a line at a time: only a
/// resumed delivery asks.
fn holds(path: &Path, key: &str) -> io::Result<bool> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(false);
        }
        if line_key(&line).as_deref() == Some(key) {
            return Ok(true);
        }
    }
}

/// The `key` of a line that is a notification.
fn line_key(line: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()?
        .get("key")?
        .as_str()
        .map(str::to_owned)
}

impl Sink for FileSink {
    async fn deliver(&self, notification: &Notification, attempt: Attempt) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(notification)?;
        line.push(b'\n');
        let stopped = || anyhow!("the writer of {} has stopped", self.path.display());
        let (taken, outcome) = oneshot::channel();
        self.appends
            .send(Append {
                key: notification.key.clone(),
                line,
                attempt,
                taken,
            })
            .map_err(|_| stopped())?;
        let appended = outcome
            .await
            .map_err(|_| stopped())?
            .with_context(|| format!("cannot append to {}", self.path.display()))?;
        if appended {
            tracing::info!(key = %notification.key, path = %self.path.display(), "notification written");
        } else {
            tracing::debug!(key = %notification.key, "notification already in the file");
        }
        Ok(())
    }
}

/// How many keys the [`LogSink`] remembers, the most recent ones.
pub const LOG_SINK_REMEMBERS: usize = 10_000;

/// Writes notifications to the log. Idempotent within one process, for the keys of its last
/// [`LOG_SINK_REMEMBERS`] notifications.
#[derive(Debug, Default)]
pub struct LogSink {
    recent: Mutex<Recent>,
}

/// Keys in the order they were taken, and the same keys as a set.
#[derive(Debug, Default)]
struct Recent {
    order: VecDeque<String>,
    keys: HashSet<String>,
}

impl Recent {
    /// Remembers `key`; false if it was remembered already.
    fn insert(&mut self, key: &str) -> bool {
        if !self.keys.insert(key.to_owned()) {
            return false;
        }
        self.order.push_back(key.to_owned());
        if self.order.len() > LOG_SINK_REMEMBERS
            && let Some(oldest) = self.order.pop_front()
        {
            self.keys.remove(&oldest);
        }
        true
    }
}

impl Sink for LogSink {
    async fn deliver(&self, notification: &Notification, _attempt: Attempt) -> anyhow::Result<()> {
        let first = self
            .recent
            .lock()
            .map_err(|_| anyhow!("the log sink was poisoned"))?
            .insert(&notification.key);
        if first {
            tracing::info!(
                key = %notification.key,
                customer_id = %notification.customer_id,
                recipient = %notification.recipient,
                subject = %notification.subject,
                body = %notification.body,
                "notification"
            );
        }
        Ok(())
    }
}

/// The sink chosen by configuration (`NOTIFICATIONS_SINK`).
#[derive(Debug)]
pub enum ConfiguredSink {
    File(FileSink),
    Log(LogSink),
}

impl Sink for ConfiguredSink {
    async fn deliver(&self, notification: &Notification, attempt: Attempt) -> anyhow::Result<()> {
        match self {
            ConfiguredSink::File(sink) => sink.deliver(notification, attempt).await,
            ConfiguredSink::Log(sink) => sink.deliver(notification, attempt).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_sink_remembers_its_latest_keys_only() {
        let mut recent = Recent::default();
        assert!(recent.insert("k0"));
        assert!(
            !recent.insert("k0"),
            "a key it remembers is not taken again"
        );
        for n in 1..=LOG_SINK_REMEMBERS {
            assert!(recent.insert(&format!("k{n}")));
        }
        assert_eq!(recent.keys.len(), LOG_SINK_REMEMBERS);
        assert_eq!(recent.order.len(), LOG_SINK_REMEMBERS);
        assert!(
            !recent.insert(&format!("k{LOG_SINK_REMEMBERS}")),
            "the latest key is remembered"
        );
        assert!(
            recent.insert("k0"),
            "the oldest key is forgotten beyond the bound"
        );
    }
}
