//! The JSON Schemas of every event payload, as committed under `events/schemas/`.
//!
//! One file per event type and version: `<context>/<EventType>.v<N>.json`. The generator
//! (`cargo run -p events --bin generate-schemas`) writes them; a test fails when the committed
//! files differ from what the code generates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::naming::BoundedContext;
use crate::{Event, inventory, ordering, payments, shipping};

/// One event type as this build publishes it.
#[derive(Debug, Clone)]
pub struct PublishedEvent {
    /// The context whose stream carries it.
    pub context: BoundedContext,
    pub aggregate_type: &'static str,
    pub event_type: &'static str,
    /// The schema version this build writes.
    pub version: u32,
    pub schema: schemars::Schema,
}

impl PublishedEvent {
    /// Its schema file, relative to the schema folder: `<context>/<EventType>.v<N>.json`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(self.context.name())
            .join(format!("{}.v{}.json", self.event_type, self.version))
    }

    /// The first line of the payload's documentation.
    pub fn summary(&self) -> Option<&str> {
        self.schema
            .get("description")
            .and_then(serde_json::Value::as_str)
            .and_then(|text| text.lines().next())
    }
}

/// Every event type of every context, in a stable order: the published contract.
pub fn published_events() -> Vec<PublishedEvent> {
    fn of<E: Event>(context: BoundedContext) -> impl Iterator<Item = PublishedEvent> {
        E::schemas()
            .into_iter()
            .map(move |(event_type, version, schema)| PublishedEvent {
                context,
                aggregate_type: E::AGGREGATE_TYPE,
                event_type,
                version,
                schema,
            })
    }
    let mut events = Vec::new();
    events.extend(of::<ordering::OrderEvent>(BoundedContext::Ordering));
    events.extend(of::<inventory::ProductEvent>(BoundedContext::Inventory));
    events.extend(of::<inventory::StockEvent>(BoundedContext::Inventory));
    events.extend(of::<inventory::AllocationEvent>(BoundedContext::Inventory));
    events.extend(of::<payments::PaymentEvent>(BoundedContext::Payments));
    events.extend(of::<shipping::ShipmentEvent>(BoundedContext::Shipping));
    events
}

/// Every schema file, keyed by its path relative to the schema folder, with its content.
pub fn generate() -> BTreeMap<PathBuf, String> {
    let mut files = BTreeMap::new();
    for event in published_events() {
        let path = event.path();
        let PublishedEvent {
            context,
            event_type,
            version,
            mut schema,
            ..
        } = event;
        schema.insert(
            "$id".into(),
            format!("chorus:events:{context}:{event_type}:v{version}").into(),
        );
        // A schema is a JSON object; serialising it cannot fail.
        let mut text = serde_json::to_string_pretty(&schema).expect("schemas serialize");
        text.push('\n');
        files.insert(path, text);
    }
    files
}

/// The committed schema folder of this crate.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

/// Paths (relative to `dir`) whose content differs from the generated one, is missing, or
/// is not generated at all.
pub fn stale(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let expected = generate();
    let mut stale = Vec::new();
    for (path, text) in &expected {
        match std::fs::read_to_string(dir.join(path)) {
            Ok(found) if &found == text => {}
            Ok(_) => stale.push(path.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => stale.push(path.clone()),
            Err(e) => return Err(e),
        }
    }
    for path in json_files(dir)? {
        if !expected.contains_key(&path) && !superseded(&path, &expected) {
            stale.push(path);
        }
    }
    Ok(stale)
}

/// Whether `path` is an older version of an event type the code still has: its file stays as
/// published, for consumers that read that version and for the events of it kept in the
/// streams; the code upcasts them when it reads them.
fn superseded(path: &Path, expected: &BTreeMap<PathBuf, String>) -> bool {
    let Some((event_type, version)) = type_and_version(path) else {
        return false;
    };
    expected.keys().any(|generated| {
        generated.parent() == path.parent()
            && type_and_version(generated)
                .is_some_and(|(t, current)| t == event_type && current > version)
    })
}

/// `OrderPlaced.v2.json` -> (`OrderPlaced`, 2).
fn type_and_version(path: &Path) -> Option<(&str, u32)> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".json")?;
    let (event_type, version) = stem.rsplit_once(".v")?;
    Some((event_type, version.parse().ok()?))
}

/// Writes every generated schema into `dir`, and removes schema files that are no longer
/// generated. Returns the paths written or removed.
pub fn write(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let changed = stale(dir)?;
    let expected = generate();
    for path in &changed {
        let full = dir.join(path);
        match expected.get(path) {
            Some(text) => {
                if let Some(parent) = full.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&full, text)?;
            }
            None => std::fs::remove_file(&full)?,
        }
    }
    Ok(changed)
}

/// `*.json` files below `dir`, relative to it (none if `dir` does not exist).
fn json_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                // `path` was found below `dir`, so the prefix is always there.
                found.push(path.strip_prefix(dir).unwrap_or(&path).to_path_buf());
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_schemas_match_the_code() {
        let stale = stale(&default_dir()).unwrap();
        assert!(
            stale.is_empty(),
            "events/schemas is stale for {stale:?}: run `cargo run -p events --bin generate-schemas` and commit the result"
        );
    }

    #[test]
    fn a_changed_or_extra_schema_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path()).unwrap();
        assert!(stale(dir.path()).unwrap().is_empty());

        let placed = PathBuf::from("ordering/OrderPlaced.v1.json");
        std::fs::write(dir.path().join(&placed), "{}\n").unwrap();
        let extra = PathBuf::from("ordering/Gone.v1.json");
        std::fs::write(dir.path().join(&extra), "{}\n").unwrap();
        let future = PathBuf::from("ordering/OrderPlaced.v9.json");
        std::fs::write(dir.path().join(&future), "{}\n").unwrap();
        let mut found = stale(dir.path()).unwrap();
        found.sort();
        assert_eq!(found, vec![extra, placed, future]);
    }

    #[test]
    fn an_older_version_of_a_current_event_stays_published() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path()).unwrap();
        let current = PathBuf::from("ordering/OrderPlaced.v1.json");
        let older = PathBuf::from("ordering/OrderPlaced.v0.json");
        std::fs::copy(dir.path().join(&current), dir.path().join(&older)).unwrap();
        assert_eq!(stale(dir.path()).unwrap(), Vec::<PathBuf>::new());
        write(dir.path()).unwrap();
        assert!(
            dir.path().join(&older).exists(),
            "write kept the older version"
        );
    }

    #[test]
    fn every_event_round_trips_through_its_wire_form() {
        use crate::values::*;
        let eur: Currency = "EUR".parse().unwrap();
        let event = ordering::OrderEvent::from(ordering::OrderPlaced {
            order_id: OrderId::new(),
            customer_id: CustomerId::new(),
            lines: vec![ordering::OrderLine {
                sku: "SKU-1".parse().unwrap(),
                quantity: Quantity::try_from(2).unwrap(),
                unit_price: Money::new(500, eur),
            }],
            total: Money::new(1000, eur),
            shipping_address: ordering::Address {
                name: "A".into(),
                line1: "1 Street".into(),
                line2: None,
                city: "Town".into(),
                postal_code: "123".into(),
                country: "NL".into(),
            },
            payment_token: "tok_success".into(),
        });
        let payload = event.to_payload();
        assert_eq!(event.event_type(), "OrderPlaced");
        let back = ordering::OrderEvent::from_payload("OrderPlaced", 1, payload.clone()).unwrap();
        assert_eq!(back, event);

        let err = ordering::OrderEvent::from_payload("OrderPlaced", 2, payload).unwrap_err();
        assert!(
            matches!(err, crate::DecodeError::UnsupportedVersion { .. }),
            "{err}"
        );
        let err = ordering::OrderEvent::from_payload("Nope", 1, serde_json::json!({})).unwrap_err();
        assert!(
            matches!(err, crate::DecodeError::UnknownType { .. }),
            "{err}"
        );
        let err = ordering::OrderEvent::from_payload("OrderShipped", 1, serde_json::json!({}))
            .unwrap_err();
        assert!(matches!(err, crate::DecodeError::Invalid { .. }), "{err}");
    }
}
