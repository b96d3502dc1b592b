//! The service's local types against the committed contract: every field it reads is required
//! by the published schema of the version it reads, with the JSON type it expects; payloads
//! valid per those schemas deserialize; the envelope headers it reads are required; the
//! subjects it consumes are the published channels.

use notifications::contract::{
    self, EventType, HEADERS_READ, JsonType, OrderConfirmed, OrderPlaced, OrderShipped, Payload,
};
use serde_json::{Map, Value, json};

use crate::publish::{Order, assert_valid, load_schema};

fn asyncapi() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events/asyncapi.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Follows a local `$ref` (`#/$defs/Name`) to the schema it names.
fn resolve<'a>(root: &'a Value, mut node: &'a Value) -> &'a Value {
    while let Some(reference) = node.get("$ref").and_then(Value::as_str) {
        let name = reference
            .strip_prefix("#/$defs/")
            .unwrap_or_else(|| panic!("unexpected $ref {reference}"));
        node = &root["$defs"][name];
        assert!(!node.is_null(), "$ref {reference} names nothing");
    }
    node
}

/// Checks every field `P` reads against the schema of `P`'s event type and version.
fn check_reads<P: Payload>() {
    let event_type = P::EVENT_TYPE.name();
    let schema = load_schema(event_type, P::SCHEMA_VERSION);
    for (path, expected) in P::READS {
        let mut node = &schema;
        for segment in path.split('/') {
            node = resolve(&schema, node);
            let required = node["required"].as_array().cloned().unwrap_or_default();
            assert!(
                required.iter().any(|r| r == segment),
                "{event_type} v{}: {path} is read but {segment:?} is not required",
                P::SCHEMA_VERSION
            );
            node = &node["properties"][segment];
            assert!(!node.is_null(), "{event_type}: {path} is not in the schema");
        }
        let leaf = resolve(&schema, node);
        assert_eq!(
            leaf["type"],
            json!(expected.schema_name()),
            "{event_type} v{}: {path} is read as {expected:?} (and never null)",
            P::SCHEMA_VERSION
        );
    }
}

#[test]
fn every_field_read_is_required_by_the_published_schema() {
    check_reads::<OrderPlaced>();
    check_reads::<OrderConfirmed>();
    check_reads::<OrderShipped>();
}

/// A payload holding exactly the fields `reads` lists, with values of their types.
fn minimal(reads: &[(&str, JsonType)]) -> Value {
    let mut root = Map::new();
    for (path, ty) in reads {
        let segments: Vec<&str> = path.split('/').collect();
        let mut object = &mut root;
        for segment in &segments[..segments.len() - 1] {
            object = object
                .entry(*segment)
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .unwrap();
        }
        let value = match ty {
            JsonType::String => json!("0190f5c2-7d3e-7c1a-9a57-000000000001"),
            JsonType::Integer => json!(1),
        };
        object.insert(segments[segments.len() - 1].to_owned(), value);
    }
    Value::Object(root)
}

fn remove(value: &mut Value, path: &str) {
    let segments: Vec<&str> = path.split('/').collect();
    let mut node = value;
    for segment in &segments[..segments.len() - 1] {
        node = node.get_mut(*segment).unwrap();
    }
    node.as_object_mut()
        .unwrap()
        .remove(segments[segments.len() - 1]);
}

/// `P::READS` is exactly what `P` needs: its listed fields suffice, and each is needed.
fn check_reads_match_the_type<P: Payload>() {
    let payload = minimal(P::READS);
    serde_json::from_value::<P>(payload.clone())
        .unwrap_or_else(|e| panic!("{}: needs more than READS lists: {e}", P::EVENT_TYPE));
    for (path, _) in P::READS {
        let mut without = payload.clone();
        remove(&mut without, path);
        assert!(
            serde_json::from_value::<P>(without).is_err(),
            "{}: {path} is listed in READS but not read",
            P::EVENT_TYPE
        );
    }
}

#[test]
fn the_listed_reads_are_exactly_what_the_local_types_read() {
    check_reads_match_the_type::<OrderPlaced>();
    check_reads_match_the_type::<OrderConfirmed>();
    check_reads_match_the_type::<OrderShipped>();
}

/// Validates `payload` against the schema, then reads it with the local type.
fn read_valid<P: Payload>(payload: Value) -> P {
    assert_valid(P::EVENT_TYPE.name(), P::SCHEMA_VERSION, &payload);
    serde_json::from_value(payload)
        .unwrap_or_else(|e| panic!("a valid {} does not deserialize: {e}", P::EVENT_TYPE))
}

#[test]
fn payloads_valid_per_the_schemas_deserialize() {
    let order = Order::new(5);
    let placed: Value = serde_json::from_slice(&order.placed().payload).unwrap();
    let read: OrderPlaced = read_valid(placed.clone());
    assert_eq!(read.order_id.as_str(), order.id);
    assert_eq!(read.customer_id, order.customer_id);
    assert_eq!(read.shipping_address.name, order.recipient);
    assert_eq!(read.total.amount_minor, order.total_minor);
    assert_eq!(read.total.currency, "EUR");

    // What a version may gain without a new version number: optional fields, here and nested.
    let mut widened = placed;
    widened["gift_message"] = json!("Happy birthday");
    widened["shipping_address"]["line2"] = json!("Building B");
    widened["shipping_address"]["instructions"] = json!("Ring twice");
    widened["total"]["tax_minor"] = json!(167);
    let read: OrderPlaced = read_valid(widened);
    assert_eq!(read.shipping_address.name, order.recipient);

    let confirmed: Value = serde_json::from_slice(&order.confirmed().payload).unwrap();
    let read: OrderConfirmed = read_valid(confirmed);
    assert_eq!(read.order_id.as_str(), order.id);
    let shipped: Value = serde_json::from_slice(&order.shipped().payload).unwrap();
    let read: OrderShipped = read_valid(shipped);
    assert_eq!(read.order_id.as_str(), order.id);
}

/// The `required` list of a schema under `components.schemas` in the AsyncAPI document.
fn required_headers(document: &str, schema: &str) -> Vec<String> {
    let mut lines = document
        .lines()
        .skip_while(|l| *l != format!("    {schema}:"))
        .skip(1)
        .take_while(|l| l.starts_with("      "));
    let mut required = Vec::new();
    if lines.any(|l| l == "      required:") {
        required.extend(
            lines
                .map_while(|l| l.strip_prefix("      - "))
                .map(str::to_owned),
        );
    }
    required
}

#[test]
fn the_envelope_headers_read_are_required_by_the_contract() {
    let required = required_headers(&asyncapi(), "EventHeaders");
    assert!(
        required.len() > 5,
        "cannot find the required EventHeaders: {required:?}"
    );
    for header in HEADERS_READ {
        assert!(
            required.iter().any(|r| r == header),
            "{header} is read but not required ({required:?})"
        );
    }
}

#[test]
fn the_consumer_reads_published_channels_of_its_stream() {
    let document = asyncapi();
    let lines: Vec<&str> = document.lines().collect();
    for event_type in EventType::ALL {
        let address = format!(
            "    address: ordering.{}.{{aggregateId}}.{event_type}",
            contract::AGGREGATE_TYPE
        );
        let at = lines
            .iter()
            .position(|l| *l == address)
            .unwrap_or_else(|| panic!("no channel {address:?}"));
        let channel: Vec<&&str> = lines[at..]
            .iter()
            .take_while(|l| l.starts_with("    "))
            .collect();
        assert!(
            channel
                .iter()
                .any(|l| **l == format!("    x-chorus-stream: {}", contract::STREAM)),
            "{event_type} is not published on {}",
            contract::STREAM
        );
        let filter = address
            .trim()
            .trim_start_matches("address: ")
            .replace("{aggregateId}", "*");
        assert!(contract::filter_subjects().contains(&filter), "{filter}");
        // The version read is a published one.
        let version = format!("x-chorus-schema-version: {}", event_type.schema_version());
        let message = format!("    {event_type}:");
        let from = lines.iter().position(|l| *l == message).unwrap();
        assert!(
            lines[from..]
                .iter()
                .take_while(|l| **l == message || l.starts_with("      "))
                .any(|l| l.trim() == version),
            "{event_type} v{} is not the published version",
            event_type.schema_version()
        );
    }
}
