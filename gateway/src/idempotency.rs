//! `Idempotency-Key`: a retried request replays the first one's response instead of running
//! again.
//!
//! Every POST must carry an `Idempotency-Key` (1 to 255 visible ASCII characters; missing:
//! 400 `idempotency_key_required`); a PUT may. The record of a key lives in the JetStream
//! key-value bucket [`BUCKET`], so that any instance of the gateway sees it and the gateway
//! itself keeps no state. Its key is a hash of (principal, method, path, Idempotency-Key): one
//! shopper's key never meets another's. Its value is the request's fingerprint (a hash of the
//! body as canonical JSON: the order of an object's fields does not matter) and the state:
//!
//! 1. The first request reserves the key atomically (`create`: only one request can) as *in
//!    progress*, runs, and stores its response as *completed*. It runs in a task of its own, so
//!    that a client that goes away does not leave the record in progress.
//! 2. A request that finds the key *completed* with the same fingerprint gets the stored
//!    response again, with `Idempotent-Replayed: true`; with another fingerprint it is refused
//!    with 422 `idempotency_key_reused`.
//! 3. A request that finds the key *in progress* (a concurrent retry) watches the key until
//!    the first one completes, then replays its response. If the first one's instance died
//!    mid-request, the record stays in progress: once its lease (twice the request timeout and
//!    5 s) has run out, the waiting request completes it as a 504 `timeout` (the outcome is
//!    unknown: the command may or may not have run) and replays that.
//!
//! Responses that say nothing was done are not kept: a 503 (no instance of a context was
//! answering, or the context could not reach its store) releases the key, so that a retry with
//! it runs again. Everything else is kept for `GATEWAY_IDEMPOTENCY_TTL_SECONDS` (the bucket's
//! `max_age`): a 504 too, since the command may have run; a client that gets one reads the
//! resource before it retries under a new key. Bad requests (401, 403, 413, 415, 400 and 422
//! of the gateway's own checks) are refused before a key is reserved, and keep nothing.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::problem::Problem;
use crate::protect::RequestContext;

/// The key-value bucket of idempotency records.
pub const BUCKET: &str = "idempotency";

/// The request header.
pub const KEY_HEADER: &str = "idempotency-key";

/// The header of a replayed response.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// The longest key accepted.
pub const MAX_KEY_CHARS: usize = 255;

/// How many times a request looks at a key that keeps changing under it before giving up.
const MAX_ROUNDS: usize = 8;

/// The response headers a record keeps (with the status and the body).
const KEPT_HEADERS: [HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::LOCATION,
    HeaderName::from_static(crate::consistency::CONSISTENCY_HEADER),
];

/// The largest response body a record keeps; larger ones are not replayable and are refused
/// as an internal error (no command response comes near it).
const MAX_KEPT_BODY: usize = 256 * 1024;

/// The records, in the bucket.
#[derive(Debug, Clone)]
pub struct Idempotency {
    kv: kv::Store,
    lease: Duration,
}

/// What a request is, as far as its key is concerned.
#[derive(Debug, Clone)]
pub struct Scope<'a> {
    /// The principal's rate-limit bucket name, e.g. `shopper:<uuid>`.
    pub principal: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub key: &'a str,
}

impl Scope<'_> {
    /// The record's key in the bucket: a hash, so that any principal, path and key fit the
    /// bucket's key alphabet and one scope never reads another's record.
    pub fn storage_key(&self) -> String {
        let mut hash = Sha256::new();
        for part in [self.principal, self.method, self.path, self.key] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        hex(&hash.finalize())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Record {
    InProgress {
        fingerprint: String,
        started_at_ms: u64,
    },
    Completed {
        fingerprint: String,
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
}

impl Record {
    fn fingerprint(&self) -> &str {
        match self {
            Record::InProgress { fingerprint, .. } | Record::Completed { fingerprint, .. } => {
                fingerprint
            }
        }
    }
}

/// What reserving a key found.
enum Reservation {
    /// The key is this request's, at this revision.
    Reserved(u64),
    /// Another request has the key.
    Taken { revision: u64, record: Record },
    /// The key changed while it was looked at: look again.
    Changed,
}

impl Idempotency {
    /// Opens the bucket, creating it (or setting its TTL) when it is not as configured.
    pub async fn open(
        js: &jetstream::Context,
        ttl: Duration,
        request_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let kv = match js.get_key_value(BUCKET).await {
            Ok(store) if store_ttl(&store) == Some(ttl) => store,
            _ => js
                .create_or_update_key_value(kv::Config {
                    bucket: BUCKET.to_owned(),
                    description: "Idempotency-Key records of the HTTP gateway".to_owned(),
                    history: 1,
                    max_age: ttl,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("cannot create the key-value bucket {BUCKET:?}"))?,
        };
        Ok(Self {
            kv,
            lease: request_timeout * 2 + Duration::from_secs(5),
        })
    }

    /// The request's key, if it has one; a key that is not one is a 400.
    pub fn key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
        let Some(value) = headers.get(KEY_HEADER) else {
            return Ok(None);
        };
        let key = value.to_str().ok().filter(|k| {
            (1..=MAX_KEY_CHARS).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic())
        });
        match key {
            Some(key) => Ok(Some(key.to_owned())),
            None => Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                format!("an Idempotency-Key is 1 to {MAX_KEY_CHARS} visible ASCII characters"),
            )
            .field("Idempotency-Key")),
        }
    }

    /// The request's key, which it must have.
    pub fn required_key(headers: &HeaderMap) -> Result<String, Problem> {
        Self::key(headers)?.ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "idempotency_key_required",
                "a POST needs an Idempotency-Key header (e.g. a new UUID per operation), so \
                 that it can be retried safely",
            )
            .field("Idempotency-Key")
        })
    }

    /// Runs `work` once for `scope` and `body` (see the module docs), or replays what it
    /// answered.
    pub async fn run<F, Fut>(&self, scope: Scope<'_>, body: &[u8], work: F) -> Response
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let key = scope.storage_key();
        let fingerprint = fingerprint(body);
        let mut work = Some(work);
        for _ in 0..MAX_ROUNDS {
            let reservation = match self.reserve(&key, &fingerprint).await {
                Ok(reservation) => reservation,
                Err(problem) => return problem.into_response(),
            };
            match reservation {
                Reservation::Reserved(revision) => {
                    let Some(work) = work.take() else {
                        break;
                    };
                    return self.execute(key, fingerprint, revision, work).await;
                }
                Reservation::Changed => {}
                Reservation::Taken { record, .. } if record.fingerprint() != fingerprint => {
                    return reused().into_response();
                }
                Reservation::Taken {
                    record: record @ Record::Completed { .. },
                    ..
                } => return replay(record),
                Reservation::Taken {
                    revision,
                    record: Record::InProgress { started_at_ms, .. },
                } => {
                    if let Err(problem) = self
                        .await_change(&key, &fingerprint, revision, started_at_ms)
                        .await
                    {
                        return problem.into_response();
                    }
                }
            }
        }
        Problem::unavailable("the Idempotency-Key's record keeps changing; try again")
            .into_response()
    }

    /// Runs `work` in a task of its own and records its response.
    async fn execute<F, Fut>(
        &self,
        key: String,
        fingerprint: String,
        revision: u64,
        work: F,
    ) -> Response
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let kv = self.kv.clone();
        let context = RequestContext::current();
        let task = async move {
            let response = work().await;
            let (record, response) = capture(response, fingerprint).await;
            match &record {
                // Nothing was done: the key is free again.
                None => {
                    if let Err(e) = kv.delete_expect_revision(&key, Some(revision)).await {
                        tracing::warn!(error = %e, "cannot release an idempotency key");
                    }
                }
                Some(record) => {
                    let value = serde_json::to_vec(record).unwrap_or_default();
                    if let Err(e) = kv.update(&key, value.into(), revision).await {
                        tracing::warn!(
                            error = %e,
                            "cannot store the response of an idempotency key; a retry will \
                             find it interrupted"
                        );
                    }
                }
            }
            response
        };
        let handle = match context {
            Some(context) => tokio::spawn(context.scope(task)),
            None => tokio::spawn(task),
        };
        match handle.await {
            Ok(response) => response,
            Err(e) => Problem::internal(format!("the request failed: {e}")).into_response(),
        }
    }

    async fn reserve(&self, key: &str, fingerprint: &str) -> Result<Reservation, Problem> {
        let record = Record::InProgress {
            fingerprint: fingerprint.to_owned(),
            started_at_ms: now_ms(),
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        match self.kv.create(key, value.into()).await {
            Ok(revision) => return Ok(Reservation::Reserved(revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(store_down(e)),
        }
        match self.kv.entry(key).await.map_err(store_down)? {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let record = serde_json::from_slice(&entry.value).map_err(|e| {
                    Problem::internal(format!("an idempotency record does not parse: {e}"))
                })?;
                Ok(Reservation::Taken {
                    revision: entry.revision,
                    record,
                })
            }
            // Released or expired since `create` looked.
            _ => Ok(Reservation::Changed),
        }
    }

    /// Waits until the record at `revision` changes, or until its lease runs out; then it
    /// completes it as interrupted (unless it changed in the meantime).
    async fn await_change(
        &self,
        key: &str,
        fingerprint: &str,
        revision: u64,
        started_at_ms: u64,
    ) -> Result<(), Problem> {
        let lease_end = started_at_ms.saturating_add(self.lease.as_millis() as u64);
        let remaining = Duration::from_millis(lease_end.saturating_sub(now_ms())).min(self.lease);
        let mut watch = self
            .kv
            .watch_from_revision(key, revision + 1)
            .await
            .map_err(store_down)?;
        match tokio::time::timeout(remaining, watch.next()).await {
            Ok(Some(Ok(_))) => Ok(()),
            Ok(Some(Err(e))) => Err(store_down(e)),
            Ok(None) => Err(Problem::unavailable("the idempotency store went away")),
            Err(_) => {
                let interrupted = Problem::timeout(
                    "the first request with this Idempotency-Key did not finish (the gateway \
                     instance that ran it stopped): its outcome is unknown; read the resource \
                     before trying again with a new key",
                );
                let record = Record::Completed {
                    fingerprint: fingerprint.to_owned(),
                    status: interrupted.status.as_u16(),
                    headers: vec![(
                        header::CONTENT_TYPE.as_str().to_owned(),
                        crate::problem::PROBLEM_JSON.to_owned(),
                    )],
                    body: serde_json::to_string(&interrupted.body()).unwrap_or_default(),
                };
                let value = serde_json::to_vec(&record).unwrap_or_default();
                match self.kv.update(key, value.into(), revision).await {
                    // Either way the record is no longer in progress at that revision.
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(()),
                    Err(e) => Err(store_down(e)),
                }
            }
        }
    }
}

/// The record of `response` (none for a 503: nothing was done), and the response to send.
async fn capture(response: Response, fingerprint: String) -> (Option<Record>, Response) {
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        return (None, response);
    }
    let (parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_KEPT_BODY).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let problem = Problem::internal(format!("cannot keep the response: {e}"));
            return (None, problem.into_response());
        }
    };
    let record = Record::Completed {
        fingerprint,
        status: parts.status.as_u16(),
        headers: KEPT_HEADERS
            .iter()
            .filter_map(|name| {
                let value = parts.headers.get(name)?.to_str().ok()?;
                Some((name.as_str().to_owned(), value.to_owned()))
            })
            .collect(),
        body: String::from_utf8_lossy(&bytes).into_owned(),
    };
    let response = Response::from_parts(parts, axum::body::Body::from(bytes));
    (Some(record), response)
}

/// The stored response of a completed record, marked as replayed.
fn replay(record: Record) -> Response {
    let Record::Completed {
        status,
        headers,
        body,
        ..
    } = record
    else {
        return Problem::internal("replaying a record in progress").into_response();
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            map.insert(name, value);
        }
    }
    map.insert(
        HeaderName::from_static(REPLAYED_HEADER),
        HeaderValue::from_static("true"),
    );
    (status, map, body).into_response()
}

fn reused() -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "this Idempotency-Key was used with a different request body: use a new key for a \
         new request",
    )
    .field("Idempotency-Key")
}

fn store_down(error: impl std::fmt::Display) -> Problem {
    Problem::unavailable(format!("the idempotency store is unavailable: {error}"))
}

fn store_ttl(store: &kv::Store) -> Option<Duration> {
    Some(store.stream.cached_info().config.max_age)
}

/// A hash of `body` as canonical JSON (object fields sorted, no insignificant whitespace), or
/// of its bytes when it is not JSON (an empty body).
pub fn fingerprint(body: &[u8]) -> String {
    let mut hash = Sha256::new();
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => {
            let mut canonical = String::new();
            write_canonical(&value, &mut canonical);
            hash.update(b"json:");
            hash.update(canonical.as_bytes());
        }
        Err(_) => {
            hash.update(b"raw:");
            hash.update(body);
        }
    }
    hex(&hash.finalize())
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut fields: Vec<_> = map.iter().collect();
            fields.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (name, value)) in fields.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(name.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_ignores_field_order_and_whitespace_only() {
        let a = fingerprint(br#"{"b": 1, "a": {"y": [1, 2], "x": null}}"#);
        let b = fingerprint(br#"{"a":{"x":null,"y":[1,2]},"b":1}"#);
        assert_eq!(a, b);
        assert_ne!(a, fingerprint(br#"{"a":{"x":null,"y":[2,1]},"b":1}"#));
        assert_ne!(fingerprint(b""), fingerprint(b"{}"));
    }

    #[test]
    fn scopes_with_different_parts_have_different_keys() {
        let scope = |principal, key| Scope {
            principal,
            method: "POST",
            path: "/orders",
            key,
        };
        let a = scope("shopper:a", "k1").storage_key();
        assert_eq!(a.len(), 64);
        assert_ne!(a, scope("shopper:b", "k1").storage_key());
        assert_ne!(a, scope("shopper:a", "k2").storage_key());
        // The parts are length-prefixed: moving a boundary changes the key.
        assert_ne!(
            scope("shopper:ab", "c").storage_key(),
            scope("shopper:a", "bc").storage_key()
        );
    }

    #[test]
    fn keys_are_checked() {
        let mut headers = HeaderMap::new();
        assert!(matches!(Idempotency::key(&headers), Ok(None)));
        assert_eq!(
            Idempotency::required_key(&headers).unwrap_err().code,
            "idempotency_key_required"
        );
        headers.insert(KEY_HEADER, HeaderValue::from_static("two words"));
        assert_eq!(
            Idempotency::key(&headers).unwrap_err().code,
            "invalid_idempotency_key"
        );
        headers.insert(KEY_HEADER, HeaderValue::from_static("0195f3c4-key"));
        assert_eq!(
            Idempotency::key(&headers).unwrap(),
            Some("0195f3c4-key".into())
        );
    }
}
