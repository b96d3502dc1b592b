//! Streams and consumers, defined in code and created or updated idempotently.
//!
//! Every context's stream keeps its events until an operator says otherwise (no age or size
//! limit), on file storage, with a two-minute duplicate window for `Nats-Msg-Id`. Dead letters
//! of every consumer go to one stream, [`DEAD_LETTER_STREAM`](events::naming::DEAD_LETTER_STREAM).
//!
//! Least privilege decides who provisions what: a context's service creates or updates its own
//! stream only, creates the dead-letter stream if it is missing (never updates it), and creates
//! its durable consumers on the other contexts' streams, waiting for a stream that its owner has
//! not created yet ([`consumer_when_stream_exists`]). Nothing else provisions an event stream:
//! the projections and notifications read streams the contexts made, and the operator's
//! `chorus` CLI may change any (see `nats/README.md`).

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::context::CreateStreamErrorKind;
use async_nats::jetstream::stream::ConsumerErrorKind;
use async_nats::jetstream::{self, ErrorCode, stream};
use events::naming::{DEAD_LETTER_STREAM, DEAD_LETTER_SUBJECTS, StreamName};

use crate::consumer::ConsumerSpec;

/// How long JetStream remembers a `Nats-Msg-Id` to drop a duplicate publish.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The configuration of a context's event stream.
pub fn event_stream(stream: &StreamName, replicas: usize) -> stream::Config {
    kept_stream(
        stream.name(),
        format!("Events of the {} context", stream.context()),
        stream.all_subjects(),
        replicas,
    )
}

/// The configuration of the dead-letter stream.
pub fn dead_letter_stream(replicas: usize) -> stream::Config {
    kept_stream(
        DEAD_LETTER_STREAM.to_owned(),
        "Messages consumers gave up on, with the error and attempts".to_owned(),
        DEAD_LETTER_SUBJECTS.to_owned(),
        replicas,
    )
}

/// A file-backed stream that keeps its messages until an operator removes them.
fn kept_stream(
    name: String,
    description: String,
    subjects: String,
    replicas: usize,
) -> stream::Config {
    stream::Config {
        name,
        description: Some(description),
        subjects: vec![subjects],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: replicas,
        allow_direct: true,
        ..Default::default()
    }
}

/// Creates or updates the event streams of `contexts`, and creates the dead-letter stream if it
/// does not exist yet (see [`dead_letters`]). A context's service passes its own stream only;
/// an operator (`chorus republish`) may pass any.
pub async fn streams(
    js: &jetstream::Context,
    contexts: &[StreamName],
    replicas: usize,
) -> anyhow::Result<()> {
    for stream in contexts {
        js.create_or_update_stream(event_stream(stream, replicas))
            .await
            .with_context(|| format!("cannot provision stream {}", stream.name()))?;
    }
    dead_letters(js, replicas).await
}

/// Creates the dead-letter stream unless it exists. Every context's service does this at start
/// (its consumers dead-letter there, whichever context starts first), with a CREATE request
/// only: creating a stream that exists with the same configuration changes nothing, and one that
/// exists with another (an operator changed it, e.g. its replicas) is left as it is. No service
/// may update it: its configuration is the operator's.
pub async fn dead_letters(js: &jetstream::Context, replicas: usize) -> anyhow::Result<()> {
    match js.create_stream(dead_letter_stream(replicas)).await {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(e.kind(), CreateStreamErrorKind::JetStream(e)
                if e.error_code() == ErrorCode::STREAM_NAME_EXIST) =>
        {
            tracing::info!(
                stream = DEAD_LETTER_STREAM,
                "the dead-letter stream exists with another configuration; left as it is"
            );
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("cannot provision stream {DEAD_LETTER_STREAM}")),
    }
}

/// Creates the durable consumer of `spec`, or updates it to match. Its stream must exist.
pub async fn consumer(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    let stream = spec.stream.name();
    js.create_consumer_on_stream(spec.config(), &stream)
        .await
        .with_context(|| format!("cannot provision consumer {} on {stream}", spec.name))
}

/// The first delay before asking again for a consumer whose stream does not exist yet; it
/// doubles up to [`STREAM_WAIT_MAX_DELAY`].
pub const STREAM_WAIT_FIRST_DELAY: Duration = Duration::from_millis(250);

/// The longest delay between two tries of a consumer whose stream does not exist yet.
pub const STREAM_WAIT_MAX_DELAY: Duration = Duration::from_secs(5);

/// Like [`consumer`], but while the stream does not exist (the context that owns it has not
/// started yet) tries again, with a delay doubling from [`STREAM_WAIT_FIRST_DELAY`] to
/// [`STREAM_WAIT_MAX_DELAY`], and tells `waiting` why before each wait (the service shows it in
/// its health report) and logs it. Any other failure ends it. The server says the stream is
/// missing in its answer to the consumer's creation: a context need not (and may not) read
/// another context's stream to know.
pub async fn consumer_when_stream_exists(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    mut waiting: impl FnMut(String),
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    let stream = spec.stream.name();
    let mut delay = STREAM_WAIT_FIRST_DELAY;
    let mut attempts = 1;
    loop {
        match js.create_consumer_on_stream(spec.config(), &stream).await {
            Ok(consumer) => {
                if attempts > 1 {
                    tracing::info!(consumer = %spec.name, stream, "stream found; consumer created");
                }
                return Ok(consumer);
            }
            Err(e)
                if matches!(e.kind(), ConsumerErrorKind::JetStream(e)
                    if e.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
            {
                let why = format!(
                    "waiting for stream {stream} (the {} context creates it when it starts): \
                     {attempts} tries, the next in {delay:?}",
                    spec.stream.context()
                );
                tracing::warn!(consumer = %spec.name, stream, attempts, "{why}");
                waiting(why);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(STREAM_WAIT_MAX_DELAY);
                attempts += 1;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot provision consumer {} on {stream}", spec.name)
                });
            }
        }
    }
}
