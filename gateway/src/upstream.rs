//! The gateway's side of NATS request/reply: commands to the contexts, queries to the read
//! models, health questions to both.
//!
//! Every request carries the request's correlation id (`Chorus-Correlation-Id`) and its
//! `traceparent`, and is bounded by `GATEWAY_REQUEST_TIMEOUT_MS`. The failures map to HTTP
//! once, here: no responders (no instance of the service is subscribed: NATS says so at once)
//! is a 503 with `Retry-After`, no answer in time a 504, an answer that does not parse a 500.
//!
//! Each request is sent from a span of its own (`nats.request`), a child of the HTTP request's
//! span as the request context names it (a request may be answered from a task of its own,
//! outside that span), and carries the span's trace context.

use std::time::Duration;

use async_nats::{HeaderMap, RequestErrorKind};
use events::command::{CommandReply, command_subject};
use events::health::{HealthReport, health_subject};
use events::query::{QueryReply, query_subject};
use events::{BoundedContext, headers};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument as _;

use crate::problem::Problem;
use crate::protect::RequestContext;

/// What the contexts answered a command with, when they accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub aggregate_id: String,
    pub position: i64,
    pub version: u64,
}

/// NATS, as the gateway uses it.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: async_nats::Client,
    timeout: Duration,
}

impl Upstream {
    pub fn new(client: async_nats::Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `command` to `context` and returns what it accepted; a refusal is a [`Problem`]
    /// (see [`crate::problem::rejection_status`]).
    pub async fn command(
        &self,
        context: BoundedContext,
        command: &str,
        body: &impl Serialize,
    ) -> Result<Accepted, Problem> {
        let subject = command_subject(context.name(), command);
        let payload = serde_json::to_vec(body)
            .map_err(|e| Problem::internal(format!("cannot encode {subject}: {e}")))?;
        let reply = self
            .request(&subject, payload, self.timeout, context.name())
            .await?;
        match serde_json::from_slice::<CommandReply>(&reply) {
            Ok(CommandReply::Accepted {
                aggregate_id,
                position,
                version,
            }) => Ok(Accepted {
                aggregate_id,
                position,
                version,
            }),
            Ok(CommandReply::Rejected {
                code,
                message,
                field,
            }) => Err(Problem::rejected(&code, message, field)),
            Err(e) => Err(Problem::internal(format!(
                "{subject} answered something that is not a command reply: {e}"
            ))),
        }
    }

    /// Asks the query service's `endpoint`. A query that waits for its read model is given
    /// the wait on top of the usual timeout.
    pub async fn query<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        request: &impl Serialize,
        waits: Option<Duration>,
    ) -> Result<QueryReply<T>, Problem> {
        let subject = query_subject(endpoint);
        let payload = serde_json::to_vec(request)
            .map_err(|e| Problem::internal(format!("cannot encode {subject}: {e}")))?;
        let timeout = self.timeout + waits.unwrap_or_default();
        let reply = self.request(&subject, payload, timeout, "query").await?;
        serde_json::from_slice(&reply).map_err(|e| {
            Problem::internal(format!(
                "{subject} answered something that is not a query reply: {e}"
            ))
        })
    }

    /// The health report of `context`, within `timeout`.
    pub async fn health(
        &self,
        context: BoundedContext,
        timeout: Duration,
    ) -> Result<HealthReport, Problem> {
        let subject = health_subject(context);
        let reply = self
            .request(&subject, b"{}".to_vec(), timeout, context.name())
            .await?;
        serde_json::from_slice(&reply).map_err(|e| {
            Problem::internal(format!(
                "{subject} answered something that is not a health report: {e}"
            ))
        })
    }

    /// One request/reply; the reply's payload.
    pub async fn request(
        &self,
        subject: &str,
        payload: Vec<u8>,
        timeout: Duration,
        service: &str,
    ) -> Result<bytes::Bytes, Problem> {
        let span = tracing::info_span!(
            "nats.request",
            otel.name = %subject,
            otel.kind = "client",
            service = "gateway",
            messaging.destination.name = %subject,
        );
        let mut map = HeaderMap::new();
        let context = RequestContext::current();
        let received = context.as_ref().and_then(|c| c.traceparent.as_deref());
        if let Some(context) = &context {
            map.insert(headers::CORRELATION_ID, context.correlation_id.as_str());
        }
        match bus::follow_trace(&span, received, None) {
            Some(trace) => {
                map.insert(headers::TRACEPARENT, trace.traceparent.as_str());
                if let Some(tracestate) = &trace.tracestate {
                    map.insert(headers::TRACESTATE, tracestate.as_str());
                }
            }
            None => {
                if let Some(traceparent) = received {
                    map.insert(headers::TRACEPARENT, traceparent);
                }
            }
        }
        let request = async_nats::Request::new()
            .payload(payload.into())
            .headers(map)
            .timeout(Some(timeout));
        let sent = self
            .client
            .send_request(subject.to_owned(), request)
            .instrument(span)
            .await;
        match sent {
            Ok(message) => Ok(message.payload),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::NoResponders => Problem::unavailable(format!(
                    "no instance of the {service} service is answering; try again shortly"
                )),
                RequestErrorKind::TimedOut => Problem::timeout(format!(
                    "the {service} service did not answer within {} ms",
                    timeout.as_millis()
                )),
                _ => Problem::unavailable(format!("cannot reach the {service} service: {e}")),
            }),
        }
    }
}
