use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use harness::wait_until;

#[tokio::test]
async fn returns_once_the_condition_holds() {
    let calls = Arc::new(AtomicU32::new(0));
    wait_until("three calls", Duration::from_secs(5), || {
        let calls = calls.clone();
        async move { calls.fetch_add(1, Ordering::SeqCst) >= 2 }
    })
    .await
    .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn times_out_with_a_description() {
    let err = wait_until("never", Duration::from_millis(100), || async { false })
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "timed out after 100ms waiting for never");
}
