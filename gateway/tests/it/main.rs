//! The gateway as its clients use it: real HTTP against a gateway started in-process on
//! 127.0.0.1:0, in front of the four contexts and the projections service on a private
//! nats-server and private databases ([`system`]).
//!
//! Every response any test receives is checked against the OpenAPI document the gateway
//! serves ([`contract::Contract`]): its status must be one the route documents, its body must
//! validate against the documented schema, and the documented headers must be there. So
//! each test is also a test of the document.

// A test fails by panicking; helpers unwrap like the tests do.
#![allow(clippy::unwrap_used)]

mod auth;
mod bad_requests;
mod contract;
mod idempotency;
mod protection;
mod routes;
mod saga;
mod system;

use std::sync::Arc;

use reqwest::Method;
use serde_json::Value;

use crate::contract::Contract;

/// The HMAC secret of the test gateways.
pub const SECRET: &[u8] = b"the-test-secret-of-the-gateway-0123456789";

/// A client of one gateway.
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    http: reqwest::Client,
    contract: Arc<Contract>,
}

/// What a request got back.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    /// The body as JSON (`Value::Null` when it is empty or not JSON).
    pub json: Value,
    pub text: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The problem's `code` (fails the test if the body is not a problem).
    pub fn code(&self) -> &str {
        self.json["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not a problem: {self:#?}"))
    }

    /// Fails the test unless the status is `status`.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(self.status, status, "unexpected answer: {self:#?}");
        self
    }

    /// The consistency token of an accepted command.
    pub fn token(&self) -> String {
        self.json["consistency_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no consistency token: {self:#?}"))
            .to_owned()
    }
}

/// A request to send.
#[derive(Debug, Clone, Default)]
pub struct Call {
    pub token: Option<String>,
    pub key: Option<String>,
    pub json: Option<Value>,
    /// A body sent as it is, with its content type (for the malformed ones).
    pub raw: Option<(Vec<u8>, Option<String>)>,
    pub headers: Vec<(String, String)>,
}

impl Call {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    pub fn key(mut self, key: &str) -> Self {
        self.key = Some(key.to_owned());
        self
    }

    /// A new random Idempotency-Key.
    pub fn fresh_key(self) -> Self {
        self.key(&uuid::Uuid::now_v7().to_string())
    }

    pub fn json(mut self, json: Value) -> Self {
        self.json = Some(json);
        self
    }

    pub fn raw(mut self, body: &[u8], content_type: Option<&str>) -> Self {
        self.raw = Some((body.to_vec(), content_type.map(str::to_owned)));
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

impl Api {
    pub fn new(base: String) -> Self {
        Self {
            base,
            http: reqwest::Client::new(),
            contract: Arc::new(Contract::new()),
        }
    }

    pub fn contract(&self) -> &Contract {
        &self.contract
    }

    /// Sends `call` and checks the answer against the OpenAPI document.
    pub async fn send(&self, method: Method, path: &str, call: Call) -> Answer {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(token) = &call.token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = &call.key {
            request = request.header("Idempotency-Key", key);
        }
        for (name, value) in &call.headers {
            request = request.header(name, value);
        }
        if let Some(json) = &call.json {
            request = request.json(json);
        }
        if let Some((body, content_type)) = call.raw {
            if let Some(content_type) = content_type {
                request = request.header("Content-Type", content_type);
            }
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        let answer = Answer {
            status,
            headers,
            json,
            text,
        };
        self.contract.check(method.as_str(), path, &answer);
        answer
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let mut call = Call::new();
        if let Some(token) = token {
            call = call.token(token);
        }
        self.send(Method::GET, path, call).await
    }

    /// A POST with a new Idempotency-Key; `Value::Null` sends no body.
    pub async fn post(&self, path: &str, token: &str, json: Value) -> Answer {
        let mut call = Call::new().token(token).fresh_key();
        if !json.is_null() {
            call = call.json(json);
        }
        self.send(Method::POST, path, call).await
    }

    pub async fn put(&self, path: &str, token: &str, json: Value) -> Answer {
        self.send(Method::PUT, path, Call::new().token(token).json(json))
            .await
    }
}

/// A token for a new shopper, and the shopper's customer id.
pub fn shopper() -> (String, String) {
    let customer = uuid::Uuid::now_v7().to_string();
    let token = gateway::mint(
        SECRET,
        gateway::Role::Shopper,
        &customer,
        std::time::Duration::from_secs(3_600),
    )
    .unwrap();
    (token, customer)
}

/// An operator's token.
pub fn operator() -> String {
    gateway::mint(
        SECRET,
        gateway::Role::Operator,
        "ops@chorus",
        std::time::Duration::from_secs(3_600),
    )
    .unwrap()
}

/// The body of `POST /orders` for `lines`, paid with `payment_token`.
pub fn order_body(lines: &[(&str, u32)], payment_token: &str) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(sku, quantity)| serde_json::json!({ "sku": sku, "quantity": quantity }))
        .collect();
    serde_json::json!({
        "lines": lines,
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "12 St James's Square",
            "city": "London",
            "postal_code": "SW1Y 4JH",
            "country": "GB",
        },
        "payment_token": payment_token,
    })
}
