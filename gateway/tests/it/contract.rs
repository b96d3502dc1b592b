//! The OpenAPI document as a test oracle: every answer a test receives must be one the
//! document promises.

use std::collections::BTreeSet;
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::Answer;

/// The document, and which (operation, status) pairs the tests have seen.
#[derive(Debug)]
pub struct Contract {
    document: Value,
    seen: Mutex<BTreeSet<(String, u16)>>,
}

impl Contract {
    pub fn new() -> Self {
        let document = gateway::openapi::document(&gateway::api::operations());
        Self {
            document,
            seen: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn document(&self) -> &Value {
        &self.document
    }

    /// Every (method, path template, operation id) of the document.
    pub fn operations(&self) -> Vec<(String, String, String)> {
        let mut all = Vec::new();
        for (path, item) in self.document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let id = operation["operationId"].as_str().unwrap().to_owned();
                all.push((method.to_uppercase(), path.clone(), id));
            }
        }
        all
    }

    /// The operation ids the tests have called so far.
    pub fn called(&self) -> BTreeSet<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Fails the test unless `answer` is what the document says `method path` answers.
    pub fn check(&self, method: &str, path: &str, answer: &Answer) {
        let path_only = path.split('?').next().unwrap_or(path);
        let Some((template, operation)) = self.operation(method, path_only) else {
            // No route: the fallbacks answer with problems.
            assert!(
                matches!(answer.status, 404 | 405),
                "{method} {path} is not in the document, yet answered {}",
                answer.status
            );
            self.check_problem(method, path, answer);
            return;
        };
        let id = operation["operationId"].as_str().unwrap().to_owned();
        let status = answer.status.to_string();
        let Some(declared) = operation["responses"].get(&status) else {
            panic!(
                "{method} {path} ({template}) answered {status}, which the document does not \
                 declare: {answer:#?}"
            );
        };
        self.seen.lock().unwrap().insert((id, answer.status));

        for (name, _) in declared["headers"].as_object().into_iter().flatten() {
            if name == "Idempotent-Replayed" {
                if let Some(value) = answer.header(name) {
                    assert_eq!(value, "true", "{method} {path}: Idempotent-Replayed");
                }
                continue;
            }
            assert!(
                answer.header(name).is_some(),
                "{method} {path} answered {status} without its documented header {name}: \
                 {answer:#?}"
            );
        }

        let Some(content) = declared["content"].as_object() else {
            assert!(
                answer.text.is_empty(),
                "{method} {path} answered {status} with a body the document does not declare"
            );
            return;
        };
        let content_type = answer.header("content-type").unwrap_or("");
        let media = content_type.split(';').next().unwrap_or("").trim();
        let Some(entry) = content.get(media) else {
            panic!(
                "{method} {path} answered {status} as {content_type:?}; the document declares \
                 {:?}",
                content.keys().collect::<Vec<_>>()
            );
        };
        if media.ends_with("json") {
            self.validate(
                &entry["schema"],
                &answer.json,
                &format!("{method} {path} {status}"),
            );
            if media == "application/problem+json" {
                assert_eq!(answer.json["status"], answer.status, "{answer:#?}");
            }
        }
    }

    fn check_problem(&self, method: &str, path: &str, answer: &Answer) {
        assert_eq!(
            answer.header("content-type"),
            Some("application/problem+json"),
            "{method} {path}: {answer:#?}"
        );
        let schema = json!({ "$ref": "#/components/schemas/ProblemBody" });
        self.validate(&schema, &answer.json, &format!("{method} {path}"));
    }

    /// Validates `instance` against `schema`, whose references point into the document.
    fn validate(&self, schema: &Value, instance: &Value, what: &str) {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.document["components"],
            "allOf": [schema],
        });
        let validator = jsonschema::draft202012::new(&root)
            .unwrap_or_else(|e| panic!("{what}: the documented schema does not compile: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: the body does not fit the documented schema: {errors:#?}\nbody: {instance:#}"
        );
    }

    /// The operation of `method` on a concrete path, and its template.
    fn operation(&self, method: &str, path: &str) -> Option<(String, &Value)> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut best: Option<(usize, String, &Value)> = None;
        for (template, item) in self.document["paths"].as_object()? {
            let parts: Vec<&str> = template.trim_start_matches('/').split('/').collect();
            if parts.len() != segments.len() {
                continue;
            }
            let mut literal = 0;
            let matches = parts.iter().zip(&segments).all(|(part, segment)| {
                if part.starts_with('{') {
                    !segment.is_empty()
                } else {
                    literal += 1;
                    part == segment
                }
            });
            let Some(operation) = item.get(method.to_lowercase()) else {
                continue;
            };
            if matches && best.as_ref().is_none_or(|(l, _, _)| literal > *l) {
                best = Some((literal, template.clone(), operation));
            }
        }
        best.map(|(_, template, operation)| (template, operation))
    }
}

/// The oracle itself: it refuses what the document does not say.
#[test]
fn the_contract_refuses_answers_the_document_does_not_promise() {
    let contract = Contract::new();
    let answer = |status: u16, content_type: &str, json: Value| {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("content-type", content_type.parse().unwrap());
        headers.insert("x-correlation-id", "c".parse().unwrap());
        Answer {
            status,
            headers,
            text: json.to_string(),
            json,
        }
    };
    let refused = |method: &str, path: &str, answer: Answer| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            contract.check(method, path, &answer);
        }))
        .is_err()
    };
    // As documented: passes.
    contract.check(
        "GET",
        "/healthz",
        &answer(200, "application/json", json!({ "status": "alive" })),
    );
    // A status the route does not declare, a body that does not fit, a wrong media type, a
    // missing documented header.
    assert!(refused(
        "GET",
        "/healthz",
        answer(418, "application/json", json!({}))
    ));
    assert!(refused(
        "GET",
        "/healthz",
        answer(200, "application/json", json!({ "status": 1 }))
    ));
    assert!(refused(
        "GET",
        "/healthz",
        answer(200, "text/plain", json!({ "status": "alive" }))
    ));
    let problem = json!({
        "type": "tag:chorus,2025:problem:rate_limited", "title": "t", "status": 429,
        "detail": "d", "code": "rate_limited",
    });
    assert!(refused(
        "GET",
        "/orders",
        answer(429, "application/problem+json", problem)
    ));
}
