//! The gateway's one error type, [`Problem`], rendered as RFC 9457 `application/problem+json`.
//!
//! Every refusal the gateway gives, its own (a bad token, a body that does not parse, a rate
//! limit) or a context's (`CommandReply::Rejected`), becomes a `Problem` with an HTTP status, a
//! stable snake_case `code`, a human `detail`, and the request `field` at fault when there is
//! one. The body's `type` is a tag URI made from the code, so a client can branch on either.
//! The detail is logged once, here, when the response is rendered: at `warn` for the
//! gateway's and upstream failures (5xx), at `debug` for the client's mistakes (4xx).

use std::borrow::Cow;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::protect::RequestContext;

/// The media type of a problem body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The prefix of every problem `type`: `tag:chorus,2025:problem:<code>`.
pub const TYPE_PREFIX: &str = "tag:chorus,2025:problem:";

/// A problem body (RFC 9457), with the Chorus extensions `code`, `field` and `correlation_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProblemBody {
    /// `tag:chorus,2025:problem:<code>`: identifies the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status, repeated.
    pub status: u16,
    /// What went wrong this time, for a human.
    pub detail: String,
    /// The request this occurrence is about: its path (or the resource it concerns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// A stable snake_case code, e.g. `invalid_request`, `unknown_sku`, `rate_limited`.
    pub code: String,
    /// The request field at fault, as a path into the body (`lines[0].quantity`), or the name
    /// of the path or query parameter, or `body` for the body as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The correlation id of the request (also in the `X-Correlation-Id` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// A request the gateway answers with an error.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub detail: String,
    pub field: Option<String>,
    /// What few problems have (kept apart so that a `Result<_, Problem>` stays small).
    extra: Option<Box<Extra>>,
}

#[derive(Debug, Clone, Default)]
struct Extra {
    instance: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code: code.into(),
            detail: detail.into(),
            field: None,
            extra: None,
        }
    }

    /// The request field at fault.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The resource the problem is about, instead of the request's path.
    pub fn instance(mut self, instance: impl Into<String>) -> Self {
        self.extra.get_or_insert_default().instance = Some(instance.into());
        self
    }

    /// `Retry-After: <seconds>` (at least 1).
    pub fn retry_after(self, seconds: u64) -> Self {
        self.header(header::RETRY_AFTER, &seconds.max(1).to_string())
    }

    pub fn header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.extra
                .get_or_insert_default()
                .headers
                .push((name, value));
        }
        self
    }

    // ---- the gateway's own problems ------------------------------------------------------

    /// 400: the body is not JSON (or not only JSON).
    pub fn malformed_json(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_json", detail).field("body")
    }

    /// 400: a path or query parameter that does not parse.
    pub fn invalid_parameter(name: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_parameter", detail).field(name)
    }

    /// 422: a body that is JSON but does not fit the request's schema.
    pub fn invalid_request(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", detail).field(field)
    }

    /// 401, with the `WWW-Authenticate` challenge.
    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail).header(
            header::WWW_AUTHENTICATE,
            r#"Bearer realm="chorus", error="invalid_token""#,
        )
    }

    /// 403: the principal may not do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// 503 with `Retry-After: 1`: something the gateway needs is not answering.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail).retry_after(1)
    }

    /// 504: an upstream did not answer in time.
    pub fn timeout(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", detail)
    }

    /// 500: the gateway's own fault (an answer it cannot read, a bug).
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    /// A context's refusal (`CommandReply::Rejected`) as HTTP: see [`rejection_status`].
    pub fn rejected(code: &str, message: String, field: Option<String>) -> Self {
        let mut problem = Self::new(rejection_status(code), code.to_owned(), message);
        problem.field = field;
        if problem.status == StatusCode::SERVICE_UNAVAILABLE {
            problem = problem.retry_after(1);
        }
        problem
    }

    /// The body, as it is sent.
    pub fn body(&self) -> ProblemBody {
        let context = RequestContext::current();
        ProblemBody {
            kind: format!("{TYPE_PREFIX}{}", self.code),
            title: title(&self.code, self.status).to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            instance: self
                .extra
                .as_ref()
                .and_then(|e| e.instance.clone())
                .or_else(|| context.as_ref().map(|c| c.path.clone())),
            code: self.code.to_string(),
            field: self.field.clone(),
            correlation_id: context.map(|c| c.correlation_id),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl std::error::Error for Problem {}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = self.body();
        if self.status.is_server_error() {
            tracing::warn!(
                status = body.status,
                code = %body.code,
                field = body.field.as_deref(),
                correlation_id = body.correlation_id.as_deref(),
                "{}",
                body.detail
            );
        } else {
            tracing::debug!(
                status = body.status,
                code = %body.code,
                field = body.field.as_deref(),
                correlation_id = body.correlation_id.as_deref(),
                "{}",
                body.detail
            );
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        for (name, value) in self.extra.map(|e| e.headers).unwrap_or_default() {
            headers.insert(name, value);
        }
        // A problem body is plain data with string keys: serialising it cannot fail.
        let json = serde_json::to_vec(&body).unwrap_or_default();
        (self.status, headers, json).into_response()
    }
}

/// The HTTP status of a context's refusal code. The codes are the contexts' own (their
/// aggregates' error codes and the command endpoints' `invalid_request`, `conflict`,
/// `too_large`, `unavailable`): a request the domain refuses as it stands is 422, one that
/// names something that does not exist 404, one the current state does not allow 409.
pub fn rejection_status(code: &str) -> StatusCode {
    match code {
        // The request itself is wrong.
        "invalid_request"
        | "unknown_sku"
        | "empty_order"
        | "too_many_lines"
        | "duplicate_sku"
        | "mixed_currencies"
        | "total_too_large"
        | "invalid_address"
        | "invalid_payment_token"
        | "invalid_reason"
        | "invalid_name"
        | "invalid_price"
        | "currency_change"
        | "too_much_stock"
        | "wrong_sku"
        | "insufficient_stock"
        | "invalid_tracking_number"
        | "too_large" => StatusCode::UNPROCESSABLE_ENTITY,
        // What it is about does not exist.
        "not_placed" | "not_defined" => StatusCode::NOT_FOUND,
        // The state does not allow it (now, or any more).
        "already_placed" | "already_confirmed" | "already_cancelled" | "already_rejected"
        | "already_shipped" | "not_confirmed" | "not_shipped" | "already_defined"
        | "not_scheduled" | "already_dispatched" | "already_delivered" | "not_dispatched"
        | "cancelled" | "conflict" => StatusCode::CONFLICT,
        "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        // A command the context does not know: the gateway asked for it, so the fault is ours.
        "unknown_command" => StatusCode::INTERNAL_SERVER_ERROR,
        other => {
            tracing::warn!(
                code = other,
                "a refusal code the gateway does not know; answered 422"
            );
            StatusCode::UNPROCESSABLE_ENTITY
        }
    }
}

/// Every refusal code a context may give, with its status (for the documentation).
pub const REJECTION_CODES: &[&str] = &[
    "invalid_request",
    "unknown_sku",
    "empty_order",
    "too_many_lines",
    "duplicate_sku",
    "mixed_currencies",
    "total_too_large",
    "invalid_address",
    "invalid_payment_token",
    "invalid_reason",
    "invalid_name",
    "invalid_price",
    "currency_change",
    "too_much_stock",
    "wrong_sku",
    "insufficient_stock",
    "invalid_tracking_number",
    "too_large",
    "not_placed",
    "not_defined",
    "already_placed",
    "already_confirmed",
    "already_cancelled",
    "already_rejected",
    "already_shipped",
    "not_confirmed",
    "not_shipped",
    "already_defined",
    "not_scheduled",
    "already_dispatched",
    "already_delivered",
    "not_dispatched",
    "cancelled",
    "conflict",
    "unavailable",
];

/// The title of a problem: the gateway's own codes have theirs, a context's refusal the
/// status's reason phrase.
fn title(code: &str, status: StatusCode) -> &'static str {
    match code {
        "malformed_json" => "The body is not JSON",
        "invalid_parameter" => "A parameter is invalid",
        "invalid_request" => "The request does not fit its schema",
        "unauthenticated" => "Authentication required",
        "forbidden" => "Not allowed",
        "not_found" => "Not found",
        "method_not_allowed" => "Method not allowed",
        "unsupported_media_type" => "The body must be JSON",
        "body_too_large" => "The body is too large",
        "idempotency_key_required" => "An Idempotency-Key is required",
        "invalid_idempotency_key" => "The Idempotency-Key is invalid",
        "idempotency_key_reused" => "The Idempotency-Key was used with another request",
        "rate_limited" => "Too many requests",
        "not_yet" => "The read model has not caught up yet",
        "unavailable" => "Service unavailable",
        "timeout" => "No answer in time",
        "internal" => "Internal error",
        _ => status.canonical_reason().unwrap_or("Error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_refusal_has_a_client_status_except_unavailability() {
        for code in REJECTION_CODES {
            let status = rejection_status(code);
            if *code == "unavailable" {
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            } else {
                assert!(status.is_client_error(), "{code}: {status}");
            }
        }
    }

    #[test]
    fn a_problem_body_names_its_type_by_code() {
        let body = Problem::invalid_request("lines[0].quantity", "must be at least 1").body();
        assert_eq!(body.kind, "tag:chorus,2025:problem:invalid_request");
        assert_eq!(body.status, 422);
        assert_eq!(body.field.as_deref(), Some("lines[0].quantity"));
        let json = serde_json::to_value(&body).unwrap_or_default();
        assert_eq!(json["type"], "tag:chorus,2025:problem:invalid_request");
    }
}
