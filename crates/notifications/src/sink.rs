//! The port through which notifications leave the service, and its two adapters.
//!
//! The port's promise is idempotency by [`Notification::key`]: delivering a notification whose
//! key the sink has already taken must not reach the customer a second time. The service
//! leans on that promise for the one crash window its key-value records cannot close (after a
//! sink took a notification, before the service recorded it as sent); see the crate docs.
//!
//! - [`FileSink`] appends one JSON line per notification and keeps the promise across
//!   restarts: it loads the keys already in the file when it opens. One process per file.
//! - [`LogSink`] writes each notification to the log (`tracing`). It remembers nothing across
//!   restarts, so in that window it may log a notification twice.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, anyhow};

use crate::notification::Notification;

/// Where notifications go. Delivery must be idempotent by the notification's key.
pub trait Sink: Send + Sync + 'static {
    /// Hands `notification` to the customer-facing channel. `Ok` means it was taken (now or by
    /// an earlier delivery with the same key); an error means it may be retried.
    fn deliver(
        &self,
        notification: &Notification,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Appends notifications as JSON lines to a file, one line per key.
#[derive(Debug, Clone)]
pub struct FileSink {
    path: PathBuf,
    inner: Arc<Mutex<FileInner>>,
}

#[derive(Debug)]
struct FileInner {
    file: File,
    keys: HashSet<String>,
}

impl FileSink {
    /// Opens (or creates) the file and loads the keys it holds. A last line cut short by a
    /// crash mid-write is removed: that notification was never fully taken and will be
    /// delivered again. Any other line that is not a notification makes the open fail.
    pub fn open(path: impl AsRef<Path>) -> anyhow::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut contents = Vec::new();
        file.read_to_end(&mut contents)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let complete = contents
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        if complete < contents.len() {
            tracing::warn!(path = %path.display(), "removing a notification cut short at the end of the file");
            file.set_len(complete as u64)
                .and_then(|()| file.sync_data())
                .with_context(|| format!("cannot truncate {}", path.display()))?;
        }
        let mut keys = HashSet::new();
        for (n, line) in contents[..complete].split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let key = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("key").and_then(|k| k.as_str()).map(str::to_owned))
                .ok_or_else(|| {
                    anyhow!(
                        "{}:{}: not a notification (a JSON object with a \"key\")",
                        path.display(),
                        n + 1
                    )
                })?;
            keys.insert(key);
        }
        Ok(Self {
            path,
            inner: Arc::new(Mutex::new(FileInner { file, keys })),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(inner: &Mutex<FileInner>, notification: &Notification) -> anyhow::Result<bool> {
        let mut inner = inner
            .lock()
            .map_err(|_| anyhow!("the file sink was poisoned by an earlier failure"))?;
        if inner.keys.contains(&notification.key) {
            return Ok(false);
        }
        let mut line = serde_json::to_vec(notification)?;
        line.push(b'\n');
        let file = &mut inner.file;
        let before = file.seek(SeekFrom::End(0))?;
        if let Err(e) = file.write_all(&line).and_then(|()| file.sync_data()) {
            // Leave no half line behind for the next append to run into.
            file.set_len(before).ok();
            return Err(e.into());
        }
        inner.keys.insert(notification.key.clone());
        Ok(true)
    }
}

impl Sink for FileSink {
    async fn deliver(&self, notification: &Notification) -> anyhow::Result<()> {
        let inner = Arc::clone(&self.inner);
        let owned = notification.clone();
        let appended = tokio::task::spawn_blocking(move || Self::append(&inner, &owned))
            .await
            .context("the file sink's writer failed")?
            .with_context(|| format!("cannot append to {}", self.path.display()))?;
        if appended {
            tracing::info!(key = %notification.key, path = %self.path.display(), "notification written");
        } else {
            tracing::debug!(key = %notification.key, "notification already in the file");
        }
        Ok(())
    }
}

/// Writes notifications to the log. Idempotent within one process only.
#[derive(Debug, Default)]
pub struct LogSink {
    keys: Mutex<HashSet<String>>,
}

impl Sink for LogSink {
    async fn deliver(&self, notification: &Notification) -> anyhow::Result<()> {
        let first = self
            .keys
            .lock()
            .map_err(|_| anyhow!("the log sink was poisoned"))?
            .insert(notification.key.clone());
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
    async fn deliver(&self, notification: &Notification) -> anyhow::Result<()> {
        match self {
            ConfiguredSink::File(sink) => sink.deliver(notification).await,
            ConfiguredSink::Log(sink) => sink.deliver(notification).await,
        }
    }
}
