//! The AsyncAPI 3.0 document of Chorus's events, `events/asyncapi.yaml`.
//!
//! Generated from the same list as the schema files ([`crate::schema::published_events`]), so
//! that it cannot drift from the code: one channel per event type (subject
//! `<context>.<aggregate>.{aggregateId}.<EventType>`), one `send` operation saying which
//! context publishes it, one message whose headers are the envelope and whose payload refers to
//! the committed JSON Schema of the version this build writes. The dead-letter stream is in it
//! too, for operators' tools. `cargo run -p events --bin generate-schemas` writes it; a test
//! fails when the committed file is stale or does not validate against the AsyncAPI 3.0 schema.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::headers;
use crate::naming::{BoundedContext, DEAD_LETTER_STREAM, DEAD_LETTER_SUBJECTS};
use crate::schema::{PublishedEvent, published_events};

/// The committed document of this crate.
pub fn default_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("asyncapi.yaml")
}

/// Where the document refers to the schema files from (both live in `events/`).
const SCHEMA_DIR: &str = "schemas";

/// The payloads are JSON Schema 2020-12, as schemars writes them.
const SCHEMA_FORMAT: &str = "application/schema+json;version=2020-12";

/// The document as JSON.
pub fn document() -> Value {
    let events = published_events();
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    for event in &events {
        let channel = channel_id(event);
        let message = event.event_type;
        channels.insert(
            channel.clone(),
            json!({
                "address": format!(
                    "{}.{}.{{aggregateId}}.{}",
                    event.context, event.aggregate_type, event.event_type
                ),
                "title": event.event_type,
                "description": format!(
                    "Every {} event of the {} context, one subject per {} aggregate. Stream `{}`.",
                    event.event_type,
                    event.context,
                    event.aggregate_type,
                    event.context.stream().name()
                ),
                "parameters": {
                    "aggregateId": {
                        "description": aggregate_id_description(event.aggregate_type),
                    }
                },
                "messages": { message: { "$ref": format!("#/components/messages/{message}") } },
                "tags": [{ "name": event.context.name() }],
                "x-chorus-stream": event.context.stream().name(),
            }),
        );
        operations.insert(
            format!("{}Publishes{}", event.context, event.event_type),
            json!({
                "action": "send",
                "channel": { "$ref": format!("#/channels/{channel}") },
                "summary": format!("{} publishes {}.", event.context, event.event_type),
                "messages": [{ "$ref": format!("#/channels/{channel}/messages/{message}") }],
                "tags": [{ "name": event.context.name() }],
            }),
        );
        messages.insert(message.to_owned(), message_object(event));
    }
    channels.insert(
        "deadLetters".into(),
        json!({
            "address": "deadletter.{consumer}",
            "title": "Dead letters",
            "description": format!(
                "Messages a consumer gave up on, with the reason. Stream `{DEAD_LETTER_STREAM}` \
                 (subjects `{DEAD_LETTER_SUBJECTS}`). The payload and envelope headers are the \
                 original event's; `chorus dlq` lists, shows, retries and purges them."
            ),
            "parameters": {
                "consumer": { "description": "The durable consumer that gave up, e.g. `inventory-from-ordering`." }
            },
            "messages": { "DeadLetter": { "$ref": "#/components/messages/DeadLetter" } },
            "x-chorus-stream": DEAD_LETTER_STREAM,
        }),
    );
    messages.insert(
        "DeadLetter".into(),
        json!({
            "name": "DeadLetter",
            "title": "A dead letter",
            "summary": "An event a consumer could not handle, with why.",
            "contentType": "application/json",
            "headers": { "$ref": "#/components/schemas/DeadLetterHeaders" },
            "payload": { "description": "The original event's payload, unchanged." },
        }),
    );
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Chorus events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": description(),
            "license": { "name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0" },
            "tags": BoundedContext::ALL
                .iter()
                .map(|context| json!({
                    "name": context.name(),
                    "description": format!(
                        "Published by the {context} context to stream `{}` (subjects `{}`).",
                        context.stream().name(),
                        context.stream().all_subjects()
                    ),
                }))
                .collect::<Vec<_>>(),
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "localhost:4300",
                "protocol": "nats",
                "description": "The nats-server of `chorus dev` (JetStream, 2.12 or newer).",
            },
            "compose": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "The nats-server of `compose.yaml`.",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": {
                "EventHeaders": event_headers(),
                "DeadLetterHeaders": dead_letter_headers(),
            },
        },
    })
}

/// The document as YAML, as committed.
pub fn render() -> String {
    let mut text = String::from(
        "# Generated by `cargo run -p events --bin generate-schemas` from the events crate.\n\
         # Do not edit: change the code and generate it again.\n",
    );
    // A document built from JSON values always serialises.
    text.push_str(&serde_norway::to_string(&document()).expect("the document serializes"));
    text
}

/// Whether the committed document differs from the generated one (or is missing).
pub fn is_stale(path: &Path) -> std::io::Result<bool> {
    match std::fs::read_to_string(path) {
        Ok(found) => Ok(found != render()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// Writes the document if it is stale; says whether it wrote.
pub fn write(path: &Path) -> std::io::Result<bool> {
    if !is_stale(path)? {
        return Ok(false);
    }
    std::fs::write(path, render())?;
    Ok(true)
}

fn channel_id(event: &PublishedEvent) -> String {
    format!("{}.{}", event.context, event.event_type)
}

fn message_object(event: &PublishedEvent) -> Value {
    let schema_ref = format!("{SCHEMA_DIR}/{}", event.path().display()).replace('\\', "/");
    let mut message = json!({
        "name": event.event_type,
        "title": event.event_type,
        "contentType": "application/json",
        "headers": { "$ref": "#/components/schemas/EventHeaders" },
        "payload": {
            "schemaFormat": SCHEMA_FORMAT,
            "schema": { "$ref": schema_ref },
        },
        "correlationId": {
            "description": "Shared by every event of one business flow (one order's saga).",
            "location": format!("$message.header#/{}", headers::CORRELATION_ID),
        },
        "tags": [{ "name": event.context.name() }],
        "x-chorus-aggregate-type": event.aggregate_type,
        "x-chorus-schema-version": event.version,
    });
    if let Some(summary) = event.summary() {
        message["summary"] = summary.into();
    }
    message
}

fn aggregate_id_description(aggregate_type: &str) -> String {
    match aggregate_type {
        "product" | "stock" => format!("The SKU: {aggregate_type} aggregates are keyed by it."),
        _ => format!("The order id (a UUID): {aggregate_type} aggregates are keyed by it."),
    }
}

fn description() -> String {
    format!(
        "The events the Chorus contexts publish on NATS JetStream, one stream per context. \
         Every message carries the envelope in its headers and the payload as JSON.\n\n\
         - **Deduplicate** by `{event_id}` (also JetStream's `{msg_id}`): a message may be \
         delivered more than once, and an operator may publish events again.\n\
         - **Order** by `{sequence}` within one aggregate (`{aggregate_type}` + \
         `{aggregate_id}`): it starts at 1 and has no gaps. There is no order across aggregates.\n\
         - **Versions**: `{version}` names the payload's schema version. Within a version \
         payloads only widen (new optional fields, new enum values); a breaking change is a new \
         version, and the old version's schema stays published.\n\n\
         See `docs/consuming-events.md` for connecting a consumer of your own.",
        event_id = headers::EVENT_ID,
        msg_id = headers::MSG_ID,
        sequence = headers::SEQUENCE,
        aggregate_type = headers::AGGREGATE_TYPE,
        aggregate_id = headers::AGGREGATE_ID,
        version = headers::SCHEMA_VERSION,
    )
}

/// (header, JSON Schema, description, required)
fn envelope() -> Vec<(&'static str, Value, &'static str, bool)> {
    let string = json!({ "type": "string" });
    let positive = json!({ "type": "string", "pattern": "^[1-9][0-9]*$" });
    vec![
        (
            headers::MSG_ID,
            string.clone(),
            "JetStream's de-duplication id: the event id.",
            true,
        ),
        (
            headers::EVENT_ID,
            json!({ "type": "string", "format": "uuid" }),
            "The event's id (UUIDv7): deduplicate by it.",
            true,
        ),
        (
            headers::EVENT_TYPE,
            string.clone(),
            "The event type, also the subject's last token.",
            true,
        ),
        (
            headers::SCHEMA_VERSION,
            positive.clone(),
            "The payload's schema version.",
            true,
        ),
        (
            headers::AGGREGATE_TYPE,
            string.clone(),
            "The aggregate type, e.g. `order`.",
            true,
        ),
        (
            headers::AGGREGATE_ID,
            string.clone(),
            "The aggregate's id.",
            true,
        ),
        (
            headers::SEQUENCE,
            positive.clone(),
            "The event's sequence within its aggregate, from 1, without gaps: order by it.",
            true,
        ),
        (
            headers::POSITION,
            positive,
            "The event's position in its context's event store.",
            true,
        ),
        (
            headers::OCCURRED_AT,
            json!({ "type": "string", "format": "date-time" }),
            "When the event was recorded (RFC 3339).",
            true,
        ),
        (
            headers::CORRELATION_ID,
            string.clone(),
            "Shared by every event of one business flow.",
            false,
        ),
        (
            headers::CAUSATION_ID,
            string.clone(),
            "The id of the event or request that caused this event.",
            false,
        ),
        (
            headers::TRACEPARENT,
            string.clone(),
            "W3C trace context of the span that recorded the event.",
            false,
        ),
        (
            headers::TRACESTATE,
            string,
            "W3C trace state, when the trace has vendor state.",
            false,
        ),
    ]
}

fn headers_schema(fields: Vec<(&'static str, Value, &'static str, bool)>) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (name, mut schema, description, is_required) in fields {
        schema["description"] = description.into();
        properties.insert(name.to_owned(), schema);
        if is_required {
            required.push(name);
        }
    }
    json!({ "type": "object", "properties": properties, "required": required })
}

fn event_headers() -> Value {
    headers_schema(envelope())
}

fn dead_letter_headers() -> Value {
    let string = json!({ "type": "string" });
    let mut fields = envelope();
    fields.extend([
        (
            headers::DLQ_CONSUMER,
            string.clone(),
            "The durable consumer that gave up.",
            true,
        ),
        (headers::DLQ_ERROR, string.clone(), "Why it gave up.", true),
        (
            headers::DLQ_ATTEMPTS,
            string.clone(),
            "How many deliveries were tried.",
            true,
        ),
        (
            headers::DLQ_STREAM,
            string.clone(),
            "The stream the event came from.",
            true,
        ),
        (
            headers::DLQ_STREAM_SEQUENCE,
            string.clone(),
            "Its sequence in that stream.",
            true,
        ),
        (
            headers::DLQ_SUBJECT,
            string,
            "Its subject in that stream.",
            true,
        ),
    ]);
    // A message that could not even be parsed may lack envelope headers.
    let mut schema = headers_schema(fields);
    schema["required"] = json!([headers::DLQ_CONSUMER, headers::DLQ_ERROR]);
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_document_is_up_to_date() {
        assert!(
            !is_stale(&default_path()).unwrap(),
            "events/asyncapi.yaml is stale: run `cargo run -p events --bin generate-schemas` and commit the result"
        );
    }

    #[test]
    fn the_document_is_valid_asyncapi_3() {
        let spec: Value =
            serde_json::from_str(include_str!("../tests/fixtures/asyncapi-3.0.0.schema.json"))
                .unwrap();
        let validator = jsonschema::draft7::new(&spec).unwrap();
        // Validate what is committed, read back from YAML, not only the value it came from.
        let committed: Value = serde_norway::from_str(&render()).unwrap();
        assert_eq!(committed, document());
        let errors: Vec<String> = validator
            .iter_errors(&committed)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "invalid AsyncAPI 3.0:\n{}",
            errors.join("\n")
        );
    }

    #[test]
    fn a_broken_document_is_invalid() {
        let spec: Value =
            serde_json::from_str(include_str!("../tests/fixtures/asyncapi-3.0.0.schema.json"))
                .unwrap();
        let validator = jsonschema::draft7::new(&spec).unwrap();
        let mut broken = document();
        broken["operations"]["orderingPublishesOrderPlaced"]["action"] = "publish".into();
        assert!(!validator.is_valid(&broken));
    }

    #[test]
    fn every_payload_reference_names_a_committed_schema() {
        let document = document();
        let dir = crate::schema::default_dir();
        for event in published_events() {
            let message = &document["components"]["messages"][event.event_type];
            let reference = message["payload"]["schema"]["$ref"].as_str().unwrap();
            let file = reference.strip_prefix("schemas/").unwrap();
            assert!(dir.join(file).exists(), "{reference} is not committed");
            assert_eq!(
                message["x-chorus-schema-version"],
                json!(event.version),
                "{reference}"
            );
        }
    }

    #[test]
    fn every_event_type_has_a_channel_with_its_subject() {
        let document = document();
        let channel = &document["channels"]["ordering.OrderPlaced"];
        assert_eq!(
            channel["address"],
            json!("ordering.order.{aggregateId}.OrderPlaced")
        );
        assert_eq!(channel["x-chorus-stream"], json!("ORDERING"));
        assert_eq!(
            document["operations"].as_object().unwrap().len(),
            published_events().len()
        );
    }
}
