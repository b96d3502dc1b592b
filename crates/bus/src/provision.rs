//! Streams and consumers, defined in code and created or updated idempotently.
//!
//! Every context's stream keeps its events until an operator says otherwise (no age or size
//! limit), on file storage, with a two-minute duplicate window for `Nats-Msg-Id`. Dead letters
//! of every consumer go to one stream, [`DEAD_LETTER_STREAM`](events::naming::DEAD_LETTER_STREAM).

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
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

/// Creates or updates the event streams of `contexts` and the dead-letter stream.
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
    js.create_or_update_stream(dead_letter_stream(replicas))
        .await
        .with_context(|| format!("cannot provision stream {DEAD_LETTER_STREAM}"))?;
    Ok(())
}

/// Creates the durable consumer of `spec`, or updates it to match.
pub async fn consumer(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    let stream = spec.stream.name();
    js.create_consumer_on_stream(spec.config(), &stream)
        .await
        .with_context(|| format!("cannot provision consumer {} on {stream}", spec.name))
}
