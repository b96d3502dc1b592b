//! Waiting for a context's service to report itself ready, as an operator's probe would.

use std::cell::RefCell;
use std::time::Duration;

use events::BoundedContext;
use events::health::{HealthReport, health_subject};

use crate::wait_until;

/// Asks `chorus.<context>.health` until the service reports itself ready, and returns that
/// report. Panics, with the last report, when it is not ready within 30 s.
pub async fn ready_report(client: &async_nats::Client, context: BoundedContext) -> HealthReport {
    let subject = health_subject(context);
    let last = RefCell::new(None);
    let ready = wait_until(
        &format!("{context} ready"),
        Duration::from_secs(30),
        || async {
            let Ok(reply) = client.request(subject.clone(), "".into()).await else {
                return false;
            };
            let Ok(report) = serde_json::from_slice::<HealthReport>(&reply.payload) else {
                return false;
            };
            let ready = report.ready;
            *last.borrow_mut() = Some(report);
            ready
        },
    )
    .await;
    let last = last.into_inner();
    match (ready, last) {
        (Ok(()), Some(report)) => report,
        (outcome, last) => panic!("{context} is not ready: {outcome:?}; last report: {last:#?}"),
    }
}
