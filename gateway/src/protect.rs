//! What protects the gateway and its upstreams, and what ties a request to its logs.
//!
//! - **Correlation.** Every request runs inside a [`RequestContext`] (a task-local): its
//!   correlation id, taken from `X-Correlation-Id` when the client sent a usable one and
//!   created (a UUIDv7) otherwise, its path, and its W3C `traceparent`. The id goes back in the
//!   response's `X-Correlation-Id`, into every problem body, and on to NATS as
//!   `Chorus-Correlation-Id`, so one id follows the request through the contexts' events.
//! - **Rate limits.** A token bucket per principal (a shopper or operator by their token's
//!   subject, an anonymous client by its address), in memory: each instance of the gateway
//!   limits what reaches it, so N instances behind a balancer let through up to N times the
//!   rate. An empty bucket answers 429 with `Retry-After`. Buckets that have been full for a
//!   while are forgotten.
//! - **CORS**, from `GATEWAY_CORS_ORIGINS`: none by default (browsers keep other origins out),
//!   `*` for any origin, or a list of origins.
//!
//! Body size limits are enforced where bodies are read ([`crate::body`]); timeouts where
//! upstreams are asked ([`crate::upstream`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::settings::{CorsOrigins, RateLimit};

/// The header carrying the correlation id, in and out.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// The W3C trace context header, passed on to NATS.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The longest correlation id taken from a client; a longer one is replaced.
pub const MAX_CORRELATION_ID_CHARS: usize = 128;

tokio::task_local! {
    static CONTEXT: RequestContext;
}

/// The request being answered, as the code answering it needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    pub correlation_id: String,
    /// The request's path (without the query).
    pub path: String,
    pub traceparent: Option<String>,
}

impl RequestContext {
    /// The context of the request the current task answers, if any.
    pub fn current() -> Option<RequestContext> {
        CONTEXT.try_with(Clone::clone).ok()
    }

    /// Runs `future` inside this context (e.g. a task spawned for the request).
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CONTEXT.scope(self, future)
    }
}

/// A correlation id a client may choose: 1 to 128 of `A-Z a-z 0-9 - _ . :`. Anything else
/// could not travel safely in headers and logs, and is replaced by a new id.
pub fn usable_correlation_id(value: &str) -> bool {
    (1..=MAX_CORRELATION_ID_CHARS).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Middleware: runs the request inside its [`RequestContext`] and returns the correlation id.
pub async fn correlate(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let correlation_id = headers
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| usable_correlation_id(v))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    let traceparent = headers
        .get(TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 512)
        .map(str::to_owned);
    let context = RequestContext {
        correlation_id: correlation_id.clone(),
        path: request.uri().path().to_owned(),
        traceparent,
    };
    let mut response = context.scope(next.run(request)).await;
    if let Ok(value) = HeaderValue::from_str(&correlation_id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(CORRELATION_HEADER), value);
    }
    response
}

/// Token buckets, one per principal: `per_second` tokens a second, up to `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            per_second: f64::from(limit.per_second.get()),
            burst: f64::from(limit.burst.get()),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token from `key`'s bucket, or says how long until one is there.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        // A poisoned lock means a panic while updating a bucket: the buckets are still usable
        // numbers, at worst one request's worth off.
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }

    /// Forgets the buckets that are full again: they are what a new bucket would be.
    pub fn forget_idle(&self) {
        let now = Instant::now();
        let refill = Duration::from_secs_f64(self.burst / self.per_second);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets.retain(|_, b| now.saturating_duration_since(b.updated) < refill);
    }
}

/// The CORS layer for `origins`, or none.
pub fn cors(origins: &CorsOrigins) -> Option<CorsLayer> {
    let allow = match origins {
        CorsOrigins::None => return None,
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(list.iter().cloned()),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PUT])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static(CORRELATION_HEADER),
                HeaderName::from_static(TRACEPARENT_HEADER),
            ])
            .expose_headers([
                header::LOCATION,
                header::RETRY_AFTER,
                HeaderName::from_static(CORRELATION_HEADER),
                HeaderName::from_static(crate::consistency::CONSISTENCY_HEADER),
                HeaderName::from_static(crate::idempotency::REPLAYED_HEADER),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn limiter(per_second: u32, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimit {
            per_second: NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
        })
    }

    #[test]
    fn a_bucket_lets_a_burst_through_then_refills_at_the_rate() {
        let limiter = limiter(2, 3);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check_at("alice", start), Ok(()));
        }
        let wait = limiter
            .check_at("alice", start)
            .expect_err("the bucket is empty");
        assert_eq!(wait, Duration::from_millis(500));
        // Another principal has a bucket of its own.
        assert_eq!(limiter.check_at("bob", start), Ok(()));
        // Half a second later, one token is back.
        let later = start + Duration::from_millis(500);
        assert_eq!(limiter.check_at("alice", later), Ok(()));
        assert!(limiter.check_at("alice", later).is_err());
    }

    #[test]
    fn correlation_ids_from_clients_are_checked() {
        assert!(usable_correlation_id("req-1.a_b:c"));
        assert!(!usable_correlation_id(""));
        assert!(!usable_correlation_id("two words"));
        assert!(!usable_correlation_id(&"x".repeat(129)));
    }
}
