//! `chorus dlq`: the dead letters, listed, shown, retried and purged.
//!
//! A consumer that gives up on a message copies it to the `DEAD_LETTERS` stream, on subject
//! `deadletter.<durable consumer>`, with its payload and envelope headers and the
//! `Chorus-Dlq-*` headers saying which consumer gave up, why, after how many attempts, and
//! where the message came from (stream, sequence, subject). Each dead letter is read by its
//! sequence in `DEAD_LETTERS` (a direct message get, no consumer is created).
//!
//! **Retry** publishes the original payload and envelope headers again to the original subject,
//! so the message lands in its source stream once more, with `Nats-Msg-Id` =
//! `<event id>:retry:<dead-letter sequence>`: the event id alone would be dropped by the
//! stream's duplicate window, while this id still makes a repeated retry of the same dead
//! letter a duplicate. Only when JetStream has acknowledged the copy is the dead letter
//! deleted, so a retry that fails midway loses nothing. Every consumer of that subject receives
//! the message again, not only the one that gave up; that is safe because every Chorus
//! consumer skips the event ids its inbox holds, and the projections skip what is not the next
//! sequence of its aggregate. The retried message arrives after any later events of its
//! aggregate.

use anyhow::{Context as _, anyhow, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream::RawMessageErrorKind};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use events::headers;
use events::naming::{DEAD_LETTER_STREAM, DEAD_LETTER_SUBJECTS, dead_letter_subject};

use crate::connect::NatsArgs;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the dead letters: sequence, time, consumer, source, event, attempts, error.
    ///
    /// The error is cut to fit a line; `chorus dlq show <seq>` prints it whole.
    List {
        /// Only the dead letters of this durable consumer (e.g. inventory-from-ordering).
        #[arg(long, value_parser = consumer_name)]
        consumer: Option<String>,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Print one dead letter: every header, and the payload (pretty JSON when it is JSON).
    Show {
        /// Its sequence in DEAD_LETTERS (the SEQ column of `chorus dlq list`).
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        sequence: u64,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Put dead letters back on their consumers' path, then delete them.
    ///
    /// Publishes each message's original payload and envelope headers to its original subject
    /// (Chorus-Dlq-Subject), in its source stream, with Nats-Msg-Id =
    /// <event id>:retry:<dead-letter sequence>, waits for JetStream's ack, and only then
    /// deletes the dead letter. Every consumer of that subject receives the message again, not
    /// only the one that gave up: that is safe, because every Chorus consumer skips the event
    /// ids its inbox holds, and the projections skip what is not the next sequence of its
    /// aggregate. Fix the cause first: a message that fails again is dead-lettered again.
    Retry {
        #[command(flatten)]
        selection: Selection,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Delete dead letters for good, without asking; prints how many.
    Purge {
        #[command(flatten)]
        selection: Selection,
        #[command(flatten)]
        nats: NatsArgs,
    },
}

/// One dead letter by its sequence, or all of them (of one consumer).
#[derive(Debug, Args)]
pub struct Selection {
    /// Sequence of the dead letter in DEAD_LETTERS (the SEQ column of `chorus dlq list`).
    #[arg(
        required_unless_present = "all",
        conflicts_with = "all",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    sequence: Option<u64>,
    /// Every dead letter (of --consumer, when given).
    #[arg(long)]
    all: bool,
    /// With --all: only the dead letters of this durable consumer.
    #[arg(long, requires = "all", value_parser = consumer_name)]
    consumer: Option<String>,
}

/// A durable consumer name is one subject token of `deadletter.<consumer>`.
fn consumer_name(name: &str) -> Result<String, String> {
    events::naming::check_token("consumer", name).map_err(|e| e.to_string())?;
    Ok(name.to_owned())
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::List { consumer, nats } => {
            let letters = DeadLetters::open(&nats).await?;
            list(&letters, consumer.as_deref()).await
        }
        Command::Show { sequence, nats } => {
            let letters = DeadLetters::open(&nats).await?;
            show(&letters.require(sequence).await?);
            Ok(())
        }
        Command::Retry { selection, nats } => {
            let letters = DeadLetters::open(&nats).await?;
            retry(&letters, &selection).await
        }
        Command::Purge { selection, nats } => {
            let letters = DeadLetters::open(&nats).await?;
            purge(&letters, &selection).await
        }
    }
}

/// A message of the dead-letter stream.
#[derive(Debug)]
struct DeadLetter {
    sequence: u64,
    stored_at: Option<DateTime<Utc>>,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
}

impl DeadLetter {
    fn from_message(message: jetstream::message::StreamMessage) -> Self {
        let time = message.time;
        Self {
            sequence: message.sequence,
            stored_at: DateTime::from_timestamp(time.unix_timestamp(), time.nanosecond()),
            subject: message.subject.to_string(),
            headers: message.headers,
            payload: message.payload,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }

    /// The header, or `-` when the message lacks it.
    fn column(&self, name: &str) -> &str {
        self.header(name).unwrap_or("-")
    }
}

/// The dead-letter stream of one NATS server.
#[derive(Debug)]
struct DeadLetters {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
}

impl DeadLetters {
    async fn open(nats: &NatsArgs) -> anyhow::Result<Self> {
        let js = nats.connect().await?;
        let stream = js.get_stream(DEAD_LETTER_STREAM).await.map_err(|e| {
            anyhow!(
                "cannot open stream {DEAD_LETTER_STREAM} on NATS at {}: {e}; the Chorus \
                 services create it when they start: is --nats-url or NATS_URL their server?",
                nats.url()
            )
        })?;
        Ok(Self { js, stream })
    }

    /// The dead letter at `sequence`, if there is one.
    async fn get(&self, sequence: u64) -> anyhow::Result<Option<DeadLetter>> {
        match self.stream.get_raw_message(sequence).await {
            Ok(message) => Ok(Some(DeadLetter::from_message(message))),
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => Ok(None),
            Err(e) => Err(anyhow!(e).context(format!(
                "cannot read dead letter {sequence} from {DEAD_LETTER_STREAM}"
            ))),
        }
    }

    async fn require(&self, sequence: u64) -> anyhow::Result<DeadLetter> {
        self.get(sequence).await?.ok_or_else(|| {
            anyhow!(
                "there is no dead letter {sequence} in {DEAD_LETTER_STREAM} (it was retried or \
                 purged, or never existed): `chorus dlq list` shows the sequences there are"
            )
        })
    }

    /// Every dead letter (of `consumer`), in sequence order.
    async fn all(&self, consumer: Option<&str>) -> anyhow::Result<Vec<DeadLetter>> {
        let filter = consumer.map_or_else(|| DEAD_LETTER_SUBJECTS.to_owned(), dead_letter_subject);
        let mut found = Vec::new();
        let mut next = 1;
        loop {
            let message = self
                .stream
                .raw_message_builder()
                .sequence(next)
                .next_by_subject(filter.clone())
                .send()
                .await;
            match message {
                Ok(message) => {
                    next = message.sequence + 1;
                    found.push(DeadLetter::from_message(message));
                }
                Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => {
                    return Ok(found);
                }
                Err(e) => {
                    return Err(anyhow!(e).context(format!(
                        "cannot read {DEAD_LETTER_STREAM} from sequence {next}"
                    )));
                }
            }
        }
    }

    /// The dead letters `selection` names; an unknown sequence is an error.
    async fn select(&self, selection: &Selection) -> anyhow::Result<Vec<DeadLetter>> {
        match selection.sequence {
            Some(sequence) => Ok(vec![self.require(sequence).await?]),
            None => self.all(selection.consumer.as_deref()).await,
        }
    }
}

fn of_consumer(consumer: Option<&str>) -> String {
    consumer.map_or_else(String::new, |c| format!(" of consumer {c}"))
}

async fn list(letters: &DeadLetters, consumer: Option<&str>) -> anyhow::Result<()> {
    let found = letters.all(consumer).await?;
    if found.is_empty() {
        println!("no dead letters{}", of_consumer(consumer));
        return Ok(());
    }
    let mut rows = vec![[
        "SEQ".to_owned(),
        "TIME (UTC)".to_owned(),
        "CONSUMER".to_owned(),
        "SOURCE".to_owned(),
        "EVENT".to_owned(),
        "AGGREGATE".to_owned(),
        "ATTEMPTS".to_owned(),
        "ERROR".to_owned(),
    ]];
    for letter in &found {
        rows.push([
            letter.sequence.to_string(),
            letter.stored_at.map_or_else(
                || "-".to_owned(),
                |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
            ),
            letter.column(headers::DLQ_CONSUMER).to_owned(),
            format!(
                "{}:{}",
                letter.column(headers::DLQ_STREAM),
                letter.column(headers::DLQ_STREAM_SEQUENCE)
            ),
            letter.column(headers::EVENT_TYPE).to_owned(),
            format!(
                "{}/{}",
                letter.column(headers::AGGREGATE_TYPE),
                letter.column(headers::AGGREGATE_ID)
            ),
            letter.column(headers::DLQ_ATTEMPTS).to_owned(),
            shorten(letter.column(headers::DLQ_ERROR), ERROR_WIDTH),
        ]);
    }
    print!("{}", table(&rows));
    println!(
        "{} dead letter{}{}; `chorus dlq show <seq>` prints one in full",
        found.len(),
        if found.len() == 1 { "" } else { "s" },
        of_consumer(consumer)
    );
    Ok(())
}

/// Characters of an error shown in the list.
const ERROR_WIDTH: usize = 72;

/// `text` on one line, cut to `width` characters with an ellipsis.
fn shorten(text: &str, width: usize) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .collect();
    if line.chars().count() <= width {
        return line;
    }
    let mut cut: String = line.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

/// Rows as left-aligned columns two spaces apart; the last column is not padded.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            line.push_str(cell);
            if i + 1 < N {
                let pad = width - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn show(letter: &DeadLetter) {
    let stored = letter.stored_at.map_or_else(
        || "at an unknown time".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string(),
    );
    println!(
        "dead letter {} in {DEAD_LETTER_STREAM}, stored {stored}",
        letter.sequence
    );
    println!("subject: {}", letter.subject);
    println!();
    println!("headers:");
    let mut names: Vec<(&str, Vec<&str>)> = letter
        .headers
        .iter()
        .map(|(name, values)| {
            (
                name.as_ref(),
                values.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
            )
        })
        .collect();
    names.sort();
    for (name, values) in names {
        for value in values {
            println!("  {name}: {value}");
        }
    }
    println!();
    match serde_json::from_slice::<serde_json::Value>(&letter.payload) {
        Ok(json) => {
            println!("payload (JSON):");
            println!(
                "{}",
                serde_json::to_string_pretty(&json).unwrap_or_else(|_| json.to_string())
            );
        }
        Err(_) => match std::str::from_utf8(&letter.payload) {
            Ok(text) => {
                println!("payload (not JSON, {} bytes):", letter.payload.len());
                println!("{text}");
            }
            Err(_) => {
                println!("payload (binary, {} bytes, hex):", letter.payload.len());
                let hex: Vec<String> = letter.payload.iter().map(|b| format!("{b:02x}")).collect();
                println!("{}", hex.join(" "));
            }
        },
    }
}

async fn retry(letters: &DeadLetters, selection: &Selection) -> anyhow::Result<()> {
    let selected = letters.select(selection).await?;
    if selected.is_empty() {
        println!(
            "no dead letters{} to retry",
            of_consumer(selection.consumer.as_deref())
        );
        return Ok(());
    }
    let total = selected.len();
    for (done, letter) in selected.iter().enumerate() {
        retry_one(letters, letter).await.with_context(|| {
            let before = if total > 1 {
                format!(" ({done} of {total} retried before it)")
            } else {
                String::new()
            };
            format!("cannot retry dead letter {}{before}", letter.sequence)
        })?;
    }
    if total > 1 {
        println!("retried {total} dead letters");
    }
    Ok(())
}

/// Headers of the dead-letter copy that are not part of the original message, or must not be
/// sent again: the dead-letter headers, the dead letter's own de-duplication id, and any
/// publish expectation (it held once, for the first publish).
fn is_original_header(name: &str) -> bool {
    let dead_letter = [
        headers::DLQ_CONSUMER,
        headers::DLQ_ERROR,
        headers::DLQ_ATTEMPTS,
        headers::DLQ_STREAM,
        headers::DLQ_STREAM_SEQUENCE,
        headers::DLQ_SUBJECT,
        headers::MSG_ID,
    ];
    !dead_letter.contains(&name) && !name.starts_with("Nats-Expected-")
}

async fn retry_one(letters: &DeadLetters, letter: &DeadLetter) -> anyhow::Result<()> {
    let required = |name: &str| {
        letter.header(name).ok_or_else(|| {
            anyhow!("it has no {name} header: it was not written by a Chorus consumer")
        })
    };
    let subject = required(headers::DLQ_SUBJECT)?;
    let source = required(headers::DLQ_STREAM)?;
    // Refused before anything is published: the copy must land where the message came from.
    let capturing = letters.js.stream_by_subject(subject).await.map_err(|e| {
        anyhow!(
            "no stream takes its subject {subject} ({e}); was stream {source} deleted? \
             `chorus republish --context <context>` recreates a context's stream"
        )
    })?;
    if capturing != source {
        bail!(
            "its subject {subject} now goes to stream {capturing}, not to {source}, where it came from"
        );
    }

    let mut map = HeaderMap::new();
    for (name, values) in letter.headers.iter() {
        if is_original_header(name.as_ref()) {
            for value in values {
                map.append(name.clone(), value.clone());
            }
        }
    }
    // A message without an event id (dead-lettered because its envelope was unreadable) is
    // retried under the dead letter's own id.
    let id = letter
        .header(headers::EVENT_ID)
        .or_else(|| letter.header(headers::MSG_ID))
        .unwrap_or(DEAD_LETTER_STREAM);
    map.insert(
        headers::MSG_ID,
        format!("{id}:retry:{}", letter.sequence).as_str(),
    );
    let ack = letters
        .js
        .publish_with_headers(subject.to_owned(), map, letter.payload.clone())
        .await
        .with_context(|| format!("cannot publish it to {subject}"))?
        .await
        .with_context(|| format!("JetStream did not acknowledge its copy on {subject}"))?;
    letters
        .stream
        .delete_message(letter.sequence)
        .await
        .with_context(|| {
            format!(
                "it is back in {} at sequence {}, but the dead letter could not be deleted \
                 (purge it with `chorus dlq purge {}`)",
                ack.stream, ack.sequence, letter.sequence
            )
        })?;
    let what = format!(
        "{} {}/{} of {}",
        letter.column(headers::EVENT_TYPE),
        letter.column(headers::AGGREGATE_TYPE),
        letter.column(headers::AGGREGATE_ID),
        letter.column(headers::DLQ_CONSUMER)
    );
    if ack.duplicate {
        println!(
            "dead letter {} ({what}) was retried moments ago: JetStream kept that copy; \
             dead letter deleted",
            letter.sequence
        );
    } else {
        println!(
            "retried dead letter {} ({what}): back in {} at sequence {}",
            letter.sequence, ack.stream, ack.sequence
        );
    }
    Ok(())
}

async fn purge(letters: &DeadLetters, selection: &Selection) -> anyhow::Result<()> {
    let purged = match selection.sequence {
        Some(sequence) => {
            letters.require(sequence).await?;
            let deleted = letters
                .stream
                .delete_message(sequence)
                .await
                .with_context(|| format!("cannot delete dead letter {sequence}"))?;
            u64::from(deleted)
        }
        None => {
            let request = letters.stream.purge();
            let response = match &selection.consumer {
                Some(consumer) => request.filter(dead_letter_subject(consumer)).await,
                None => request.await,
            };
            response
                .with_context(|| format!("cannot purge {DEAD_LETTER_STREAM}"))?
                .purged
        }
    };
    println!(
        "purged {purged} dead letter{}{}",
        if purged == 1 { "" } else { "s" },
        of_consumer(selection.consumer.as_deref())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_to_one_line() {
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("a\nb", 10), "a b");
        assert_eq!(shorten("0123456789abc", 10), "012345678…");
        assert_eq!(shorten("0123456789abc", 10).chars().count(), 10);
    }

    #[test]
    fn columns_are_aligned() {
        let rows = [
            ["A".to_owned(), "BB".to_owned(), "C".to_owned()],
            ["long".to_owned(), "x".to_owned(), "last".to_owned()],
        ];
        assert_eq!(table(&rows), "A     BB  C\nlong  x   last\n");
    }

    #[test]
    fn dead_letter_headers_are_not_sent_again() {
        assert!(is_original_header(headers::EVENT_ID));
        assert!(is_original_header(headers::TRACEPARENT));
        assert!(!is_original_header(headers::DLQ_ERROR));
        assert!(!is_original_header(headers::MSG_ID));
        assert!(!is_original_header("Nats-Expected-Stream"));
    }
}
