//! Compatibility of event schemas: may a consumer written against the published schema of an
//! event version still read what the code now produces under that same version?
//!
//! A schema version, once published under `events/schemas/`, is a promise to every consumer,
//! and stored events of that version stay in the streams for good. Within a version the code
//! may only widen what it writes: add an optional field, add an enum value, accept another
//! type. Anything else breaks a reader: a field it reads is gone or renamed, a field it now
//! requires is missing from stored events, a value it was promised no longer validates. Such a
//! change comes as a new version (`= 2 (upcast with ...)` in `event_enum!`), and the old
//! version's file stays as it was.
//!
//! The check compares two JSON Schemas as schemars writes them (draft 2020-12: `type`,
//! `properties`, `required`, `items`, `$ref` into `$defs`, `enum`/`const`/`oneOf` for enums, and
//! the usual bounds). It is conservative: a change it cannot prove to be a widening is reported.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// One way in which a schema stopped accepting what its published version accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaking {
    /// Where in the payload, e.g. `lines[].sku` (empty for the payload itself).
    pub path: String,
    pub change: Change,
}

/// The kinds of breaking change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A field of the published schema is gone (removed or renamed).
    FieldRemoved(String),
    /// A field is required now and was not (an existing optional field, or a new field).
    FieldMadeRequired(String),
    /// The set of accepted values shrank: a type, a bound, a pattern or a format.
    Narrowed(String),
    /// An enum value of the published schema is no longer produced or accepted.
    EnumValueRemoved(String),
}

impl fmt::Display for Breaking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.path.is_empty() {
            "the payload".to_owned()
        } else {
            format!("`{}`", self.path)
        };
        match &self.change {
            Change::FieldRemoved(field) => write!(f, "{at}: field `{field}` was removed"),
            Change::FieldMadeRequired(field) => write!(f, "{at}: field `{field}` is now required"),
            Change::Narrowed(what) => write!(f, "{at}: narrowed: {what}"),
            Change::EnumValueRemoved(value) => write!(f, "{at}: enum value {value} was removed"),
        }
    }
}

/// Every breaking change from `published` to `current`; empty when `current` only widens.
pub fn breaking_changes(published: &Value, current: &Value) -> Vec<Breaking> {
    let mut compare = Comparison {
        old_root: published,
        new_root: current,
        seen: BTreeSet::new(),
        found: Vec::new(),
    };
    compare.node(published, current, "");
    compare.found
}

/// Compares what the code generates with the committed schema of the same path, for every
/// event version that has a committed file. Versions not committed yet have nothing to break.
pub fn check(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<Breaking>)>> {
    let mut broken = Vec::new();
    for (path, text) in crate::schema::generate() {
        let published = match std::fs::read_to_string(dir.join(&path)) {
            Ok(published) => published,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let published: Value = serde_json::from_str(&published).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?;
        let current: Value =
            serde_json::from_str(&text).map_err(|e| std::io::Error::other(e.to_string()))?;
        let changes = breaking_changes(&published, &current);
        if !changes.is_empty() {
            broken.push((path, changes));
        }
    }
    Ok(broken)
}

struct Comparison<'a> {
    old_root: &'a Value,
    new_root: &'a Value,
    /// Pairs of `$ref`s already compared, so that recursive definitions end.
    seen: BTreeSet<(String, String)>,
    found: Vec<Breaking>,
}

impl<'a> Comparison<'a> {
    fn report(&mut self, path: &str, change: Change) {
        self.found.push(Breaking {
            path: path.to_owned(),
            change,
        });
    }

    fn node(&mut self, old: &'a Value, new: &'a Value, path: &str) {
        let old_ref = reference(old);
        let new_ref = reference(new);
        if old_ref.is_some() || new_ref.is_some() {
            let key = (
                old_ref.unwrap_or_default().to_owned(),
                new_ref.unwrap_or_default().to_owned(),
            );
            if !self.seen.insert(key) {
                return;
            }
        }
        let (Some(old), Some(new)) = (resolve(self.old_root, old), resolve(self.new_root, new))
        else {
            self.report(path, Change::Narrowed("a `$ref` does not resolve".into()));
            return;
        };
        let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
            // `true`/`false` schemas: only `true` -> `false` narrows.
            if old.as_bool() != Some(false) && new.as_bool() == Some(false) {
                self.report(path, Change::Narrowed("accepts nothing any more".into()));
            }
            return;
        };
        self.types(old, new, path);
        self.bounds(old, new, path);
        self.values(old, new, path);
        self.object(old, new, path);
        if let (Some(old_items), Some(new_items)) = (old.get("items"), new.get("items")) {
            self.node(old_items, new_items, &format!("{path}[]"));
        }
        self.variants(old, new, path);
    }

    fn types(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, path: &str) {
        let Some(new_types) = types(new) else { return };
        let Some(old_types) = types(old) else {
            if unconstrained(old) {
                self.report(path, Change::Narrowed(format!("now only {new_types:?}")));
            }
            return;
        };
        for t in &old_types {
            let kept = new_types.contains(t) || (t == "integer" && new_types.contains("number"));
            if !kept {
                self.report(
                    path,
                    Change::Narrowed(format!("type `{t}` is no longer accepted")),
                );
            }
        }
    }

    fn bounds(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, path: &str) {
        const LOWER: [&str; 5] = [
            "minimum",
            "exclusiveMinimum",
            "minLength",
            "minItems",
            "minProperties",
        ];
        const UPPER: [&str; 5] = [
            "maximum",
            "exclusiveMaximum",
            "maxLength",
            "maxItems",
            "maxProperties",
        ];
        for key in LOWER {
            let narrowed = match (number(old, key), number(new, key)) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(o), Some(n)) => n > o,
            };
            if narrowed {
                self.report(path, Change::Narrowed(format!("`{key}` raised or added")));
            }
        }
        for key in UPPER {
            let narrowed = match (number(old, key), number(new, key)) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(o), Some(n)) => n < o,
            };
            if narrowed {
                self.report(path, Change::Narrowed(format!("`{key}` lowered or added")));
            }
        }
        if let Some(pattern) = new.get("pattern")
            && old.get("pattern") != Some(pattern)
        {
            self.report(path, Change::Narrowed(format!("pattern is now {pattern}")));
        }
        if let Some(format) = new.get("format").and_then(Value::as_str) {
            let old_format = old.get("format").and_then(Value::as_str);
            if old_format != Some(format) && !widens_format(old_format, format) {
                self.report(path, Change::Narrowed(format!("format is now `{format}`")));
            }
        }
    }

    /// Fixed value sets: `enum`, `const`, and `oneOf`/`anyOf` whose branches are all constants
    /// (how schemars writes a unit-only enum).
    fn values(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, path: &str) {
        let Some(new_values) = constants(new) else {
            return;
        };
        match constants(old) {
            Some(old_values) => {
                for value in old_values.difference(&new_values) {
                    self.report(path, Change::EnumValueRemoved(value.clone()));
                }
            }
            None => self.report(path, Change::Narrowed("now a fixed set of values".into())),
        }
    }

    fn object(&mut self, old: &'a Map<String, Value>, new: &'a Map<String, Value>, path: &str) {
        let properties =
            |schema: &'a Map<String, Value>| schema.get("properties").and_then(Value::as_object);
        let new_properties = properties(new);
        for (name, old_property) in properties(old).into_iter().flatten() {
            let at = join(path, name);
            match new_properties.and_then(|p| p.get(name)) {
                Some(new_property) => self.node(old_property, new_property, &at),
                None => self.report(path, Change::FieldRemoved(name.clone())),
            }
        }
        let old_required = required(old);
        for name in required(new).difference(&old_required) {
            self.report(path, Change::FieldMadeRequired(name.clone()));
        }
        let closed = |schema: &Map<String, Value>| {
            schema.get("additionalProperties") == Some(&Value::Bool(false))
        };
        if closed(new) && !closed(old) && properties(old).is_some_and(|p| !p.is_empty()) {
            self.report(
                path,
                Change::Narrowed("unknown fields are refused now".into()),
            );
        }
    }

    /// `oneOf`/`anyOf` of schemas that are not all constants (tagged enums with data): every
    /// published branch must still be accepted by some current branch.
    fn variants(&mut self, old: &'a Map<String, Value>, new: &'a Map<String, Value>, path: &str) {
        if constants(old).is_some() {
            return;
        }
        let Some(old_branches) = branches(old) else {
            return;
        };
        let new_branches = branches(new).map_or(&[][..], Vec::as_slice);
        for (i, old_branch) in old_branches.iter().enumerate() {
            let accepted = new_branches.iter().any(|new_branch| {
                let mut trial = Comparison {
                    old_root: self.old_root,
                    new_root: self.new_root,
                    seen: self.seen.clone(),
                    found: Vec::new(),
                };
                trial.node(old_branch, new_branch, path);
                trial.found.is_empty()
            });
            if !accepted {
                let name = old_branch
                    .get("title")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("#{i}"), str::to_owned);
                self.report(
                    path,
                    Change::Narrowed(format!("variant {name} is no longer accepted")),
                );
            }
        }
    }
}

fn reference(schema: &Value) -> Option<&str> {
    schema.get("$ref").and_then(Value::as_str)
}

/// Follows a local `$ref` (`#/$defs/Name`), keeping a sibling-free reference simple.
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> Option<&'a Value> {
    let mut current = schema;
    for _ in 0..32 {
        let Some(pointer) = reference(current) else {
            return Some(current);
        };
        current = root.pointer(pointer.strip_prefix('#')?)?;
    }
    None
}

fn types(schema: &Map<String, Value>) -> Option<BTreeSet<String>> {
    match schema.get("type")? {
        Value::String(t) => Some(BTreeSet::from([t.clone()])),
        Value::Array(ts) => Some(
            ts.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        ),
        _ => None,
    }
}

/// A schema that says nothing about the value's type or values.
fn unconstrained(schema: &Map<String, Value>) -> bool {
    ["type", "enum", "const", "oneOf", "anyOf", "allOf", "$ref"]
        .iter()
        .all(|key| !schema.contains_key(*key))
}

fn number(schema: &Map<String, Value>, key: &str) -> Option<f64> {
    schema.get(key).and_then(Value::as_f64)
}

/// Integer formats schemars writes, in order of width per signedness.
fn widens_format(old: Option<&str>, new: &str) -> bool {
    let rank = |format: &str| match format {
        "uint8" => Some((false, 8)),
        "uint16" => Some((false, 16)),
        "uint32" | "uint" => Some((false, 32)),
        "uint64" => Some((false, 64)),
        "int8" => Some((true, 8)),
        "int16" => Some((true, 16)),
        "int32" | "int" => Some((true, 32)),
        "int64" => Some((true, 64)),
        _ => None,
    };
    match (old.and_then(rank), rank(new)) {
        (Some((old_signed, old_bits)), Some((new_signed, new_bits))) => {
            // Unsigned into signed needs one more bit.
            (old_signed == new_signed && new_bits >= old_bits)
                || (!old_signed && new_signed && new_bits > old_bits)
        }
        _ => false,
    }
}

fn constants(schema: &Map<String, Value>) -> Option<BTreeSet<String>> {
    if let Some(value) = schema.get("const") {
        return Some(BTreeSet::from([value.to_string()]));
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return Some(values.iter().map(Value::to_string).collect());
    }
    let branches = branches(schema)?;
    let mut values = BTreeSet::new();
    for branch in branches {
        values.extend(constants(branch.as_object()?)?);
    }
    Some(values)
}

fn branches(schema: &Map<String, Value>) -> Option<&Vec<Value>> {
    schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array)
}

fn required(schema: &Map<String, Value>) -> BTreeSet<String> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn published(name: &str) -> Value {
        let text = std::fs::read_to_string(crate::schema::default_dir().join(name)).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// A copy of a published schema with one edit applied.
    fn edited(name: &str, edit: impl FnOnce(&mut Value)) -> (Value, Value) {
        let old = published(name);
        let mut new = old.clone();
        edit(&mut new);
        (old, new)
    }

    fn changes(name: &str, edit: impl FnOnce(&mut Value)) -> Vec<Change> {
        let (old, new) = edited(name, edit);
        breaking_changes(&old, &new)
            .into_iter()
            .map(|b| b.change)
            .collect()
    }

    const PLACED: &str = "ordering/OrderPlaced.v1.json";
    const REJECTED: &str = "ordering/OrderRejected.v1.json";

    #[test]
    fn the_code_keeps_every_published_version_compatible() {
        let broken = check(&crate::schema::default_dir()).unwrap();
        let report: Vec<String> = broken
            .iter()
            .flat_map(|(path, changes)| {
                changes
                    .iter()
                    .map(move |c| format!("{}: {c}", path.display()))
            })
            .collect();
        assert!(
            report.is_empty(),
            "breaking changes to published event schemas; publish a new schema version instead:\n{}",
            report.join("\n")
        );
    }

    #[test]
    fn an_unchanged_schema_is_compatible() {
        assert_eq!(changes(PLACED, |_| {}), vec![]);
    }

    #[test]
    fn an_added_optional_field_and_enum_value_are_compatible() {
        let found = changes(PLACED, |s| {
            s["properties"]["gift_note"] = json!({ "type": ["string", "null"] });
            s["$defs"]["Address"]["properties"]["region"] = json!({ "type": "string" });
        });
        assert_eq!(found, vec![]);
        let found = changes(REJECTED, |s| {
            s["$defs"]["RejectionReason"]["oneOf"]
                .as_array_mut()
                .unwrap()
                .push(json!({ "type": "string", "const": "fraud_suspected" }));
        });
        assert_eq!(found, vec![]);
    }

    #[test]
    fn a_removed_field_is_breaking() {
        let found = changes(PLACED, |s| {
            s["properties"]
                .as_object_mut()
                .unwrap()
                .remove("payment_token");
            let required = s["required"].as_array_mut().unwrap();
            required.retain(|name| name != "payment_token");
        });
        assert_eq!(found, vec![Change::FieldRemoved("payment_token".into())]);
    }

    #[test]
    fn a_renamed_field_is_breaking() {
        let found = changes(PLACED, |s| {
            let properties = s["properties"].as_object_mut().unwrap();
            let token = properties.remove("payment_token").unwrap();
            properties.insert("payment_reference".into(), token);
            for name in s["required"].as_array_mut().unwrap() {
                if name == "payment_token" {
                    *name = json!("payment_reference");
                }
            }
        });
        assert_eq!(
            found,
            vec![
                Change::FieldRemoved("payment_token".into()),
                Change::FieldMadeRequired("payment_reference".into()),
            ]
        );
    }

    #[test]
    fn a_field_made_required_is_breaking_also_deep_inside() {
        let found = changes(PLACED, |s| {
            s["$defs"]["Address"]["required"]
                .as_array_mut()
                .unwrap()
                .push(json!("line2"));
        });
        assert_eq!(found, vec![Change::FieldMadeRequired("line2".into())]);
        let (old, new) = edited(PLACED, |s| {
            s["$defs"]["Address"]["required"]
                .as_array_mut()
                .unwrap()
                .push(json!("line2"));
        });
        assert_eq!(breaking_changes(&old, &new)[0].path, "shipping_address");
    }

    #[test]
    fn a_narrowed_type_is_breaking() {
        let found = changes(PLACED, |s| {
            s["$defs"]["Address"]["properties"]["line2"] = json!({ "type": "string" });
        });
        assert_eq!(
            found,
            vec![Change::Narrowed("type `null` is no longer accepted".into())]
        );
        let found = changes(PLACED, |s| {
            s["$defs"]["Currency"]["pattern"] = json!("^(EUR|USD)$");
        });
        assert_eq!(
            found,
            vec![Change::Narrowed("pattern is now \"^(EUR|USD)$\"".into())]
        );
        let found = changes(PLACED, |s| {
            s["properties"]["lines"]["maxItems"] = json!(10);
        });
        assert_eq!(
            found,
            vec![Change::Narrowed("`maxItems` lowered or added".into())]
        );
    }

    #[test]
    fn a_widened_type_is_compatible() {
        let found = changes(PLACED, |s| {
            s["properties"]["payment_token"]["type"] = json!(["string", "null"]);
        });
        assert_eq!(found, vec![]);
    }

    #[test]
    fn a_removed_enum_value_is_breaking() {
        let found = changes(REJECTED, |s| {
            s["$defs"]["RejectionReason"]["oneOf"]
                .as_array_mut()
                .unwrap()
                .retain(|branch| branch["const"] != "payment_timed_out");
        });
        assert_eq!(
            found,
            vec![Change::EnumValueRemoved("\"payment_timed_out\"".into())]
        );
    }

    #[test]
    fn integer_formats_may_only_widen() {
        let old = json!({ "type": "integer", "format": "uint32", "minimum": 0 });
        let wider = json!({ "type": "integer", "format": "uint64", "minimum": 0 });
        let signed = json!({ "type": "integer", "format": "int64", "minimum": 0 });
        let narrower = json!({ "type": "integer", "format": "uint16", "minimum": 0 });
        assert_eq!(breaking_changes(&old, &wider), vec![]);
        assert_eq!(breaking_changes(&old, &signed), vec![]);
        assert_eq!(breaking_changes(&old, &narrower).len(), 1);
    }

    #[test]
    fn a_breaking_change_reads_as_a_sentence() {
        let (old, new) = edited(PLACED, |s| {
            s["$defs"]["Address"]["properties"]
                .as_object_mut()
                .unwrap()
                .remove("city");
        });
        let text: Vec<String> = breaking_changes(&old, &new)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            text,
            vec!["`shipping_address`: field `city` was removed".to_owned()]
        );
    }
}
