//! Request bodies and query strings, parsed at the edge into the API's own types.
//!
//! A body is read only up to `GATEWAY_MAX_BODY_BYTES` (a larger `Content-Length` is refused
//! before a byte is read): 413 `body_too_large`. It must be `application/json` (415
//! `unsupported_media_type`), JSON (400 `malformed_json`), an object, and fit the request's
//! type exactly (422 `invalid_request`): unknown fields, wrong types, missing fields and values
//! out of range are refused naming the field as a path into the body (`lines[0].quantity`).
//! Query strings are parsed the same way; a parameter that does not fit is 400
//! `invalid_parameter` naming it.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// A body as it was read, and what it parsed into.
#[derive(Debug)]
pub struct Parsed<T> {
    pub value: T,
    /// The body as received: what the idempotency record fingerprints.
    pub raw: bytes::Bytes,
}

/// Reads `body` (at most `limit` bytes) and parses it into `T`. With `optional`, an empty
/// body is `T::default()`-like: the caller's `empty` value.
pub async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    empty: Option<T>,
) -> Result<Parsed<T>, Problem> {
    let raw = read(headers, body, limit).await?;
    if raw.iter().all(u8::is_ascii_whitespace) {
        return match empty {
            Some(value) => Ok(Parsed { value, raw }),
            None => Err(Problem::malformed_json("the request needs a JSON body")),
        };
    }
    check_json_type(headers)?;
    let value = parse_json(&raw)?;
    Ok(Parsed { value, raw })
}

/// Reads the body, refusing one larger than `limit` (by its `Content-Length` before reading
/// anything, or as soon as it grows past the limit).
pub async fn read(headers: &HeaderMap, body: Body, limit: usize) -> Result<bytes::Bytes, Problem> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let over_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit exceeded");
        if over_limit {
            too_large(limit)
        } else {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body could not be read: {e}"),
            )
            .field("body")
        }
    })
}

fn too_large(limit: usize) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the body is larger than {limit} bytes"),
    )
    .field("body")
}

/// Refuses a body that does not say it is JSON.
fn check_json_type(headers: &HeaderMap) -> Result<(), Problem> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "the body must be sent as application/json, not {}",
                if content_type.is_empty() {
                    "without a Content-Type"
                } else {
                    content_type
                }
            ),
        )
        .field("body"))
    }
}

/// Parses a JSON object into `T`, naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(raw: &[u8]) -> Result<T, Problem> {
    // serde would take a struct from an array of its fields, in order: a request is an object.
    if raw.trim_ascii_start().first() != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(raw) {
            Err(e) => Problem::malformed_json(format!("the body is not JSON: {e}")),
            Ok(_) => Problem::invalid_request("body", "the body must be a JSON object"),
        });
    }
    let mut deserializer = serde_json::Deserializer::from_slice(raw);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        if e.inner().is_syntax() || e.inner().is_eof() {
            return Problem::malformed_json(format!("the body is not JSON: {}", e.inner()));
        }
        let message = e.inner().to_string();
        let field = field_of(&e.path().to_string(), &message);
        Problem::invalid_request(field, message)
    })?;
    deserializer.end().map_err(|e| {
        Problem::malformed_json(format!("the body has more than one JSON value: {e}"))
    })?;
    Ok(value)
}

/// Parses a query string into `T`; a parameter that does not fit is named.
pub fn parse_query<T: DeserializeOwned>(query: Option<&str>) -> Result<T, Problem> {
    let query = query.unwrap_or("");
    let deserializer =
        serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let message = e.inner().to_string();
        let field = field_of(&e.path().to_string(), &message);
        let field = if field == "body" {
            "query".to_owned()
        } else {
            field
        };
        Problem::invalid_parameter(&field, message)
    })
}

/// The field a deserialisation error is about: its path, the missing or unknown field serde
/// names, or `body` for the body as a whole.
fn field_of(path: &str, message: &str) -> String {
    let path = if path == "." || path.contains('?') {
        ""
    } else {
        path
    };
    let named =
        named_field(message, "missing field `").or_else(|| named_field(message, "unknown field `"));
    match (named, path) {
        // An unknown field's path already ends with its name.
        (Some(name), "") => name.to_owned(),
        (Some(name), parent) if message.starts_with("missing field") => format!("{parent}.{name}"),
        (_, "") => "body".to_owned(),
        (_, path) => path.to_owned(),
    }
}

/// The field serde's message names after `prefix`.
fn named_field<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    message
        .strip_prefix(prefix)?
        .split_once('`')
        .map(|(field, _)| field)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Line {
        sku: String,
        quantity: events::values::Quantity,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Order {
        lines: Vec<Line>,
        note: Option<String>,
    }

    fn field(raw: &str) -> (u16, String, Option<String>) {
        let problem = parse_json::<Order>(raw.as_bytes()).unwrap_err();
        (
            problem.status.as_u16(),
            problem.code.to_string(),
            problem.field,
        )
    }

    #[test]
    fn a_bad_body_names_the_field_at_fault() {
        assert_eq!(
            field("{"),
            (400, "malformed_json".into(), Some("body".into()))
        );
        assert_eq!(
            field("[1]"),
            (422, "invalid_request".into(), Some("body".into()))
        );
        assert_eq!(
            field("nonsense"),
            (400, "malformed_json".into(), Some("body".into()))
        );
        assert_eq!(
            field("{}"),
            (422, "invalid_request".into(), Some("lines".into()))
        );
        assert_eq!(
            field(r#"{"lines":[{"sku":"A","quantity":0}]}"#),
            (
                422,
                "invalid_request".into(),
                Some("lines[0].quantity".into())
            )
        );
        assert_eq!(
            field(r#"{"lines":[{"sku":"A","quantity":-1}]}"#),
            (
                422,
                "invalid_request".into(),
                Some("lines[0].quantity".into())
            )
        );
        assert_eq!(
            field(r#"{"lines":[{"sku":"A"}]}"#),
            (
                422,
                "invalid_request".into(),
                Some("lines[0].quantity".into())
            )
        );
        assert_eq!(
            field(r#"{"lines":[],"colour":"red"}"#),
            (422, "invalid_request".into(), Some("colour".into()))
        );
        assert_eq!(
            field(r#"{"lines":"many"}"#),
            (422, "invalid_request".into(), Some("lines".into()))
        );
        assert_eq!(
            field(r#"{"lines":[]} {}"#),
            (400, "malformed_json".into(), Some("body".into()))
        );
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Page {
        limit: Option<u32>,
        cursor: Option<String>,
    }

    #[test]
    fn a_bad_query_names_the_parameter() {
        let page: Page = parse_query(Some("limit=5&cursor=abc")).unwrap();
        assert_eq!(
            page,
            Page {
                limit: Some(5),
                cursor: Some("abc".into())
            }
        );
        let bad = parse_query::<Page>(Some("limit=-5")).unwrap_err();
        assert_eq!(
            (bad.status.as_u16(), bad.field.as_deref()),
            (400, Some("limit"))
        );
        let unknown = parse_query::<Page>(Some("colour=red")).unwrap_err();
        assert_eq!(unknown.field.as_deref(), Some("colour"));
    }
}
