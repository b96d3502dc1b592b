//! The file sink drops a resumed delivery whose key is in its file, also after reopening and
//! when several are handed to it at once, and survives a line cut short by a crash.

use std::io::Write;

use notifications::contract::{Money, OrderId};
use notifications::notification::OrderFacts;
use notifications::{Attempt, FileSink, Kind, Notification, Sink};

use crate::support::keys_in;

fn notification(kind: Kind, n: u64) -> Notification {
    let order = OrderId::parse(&format!("0190f5c2-7d3e-7c1a-9a57-{n:012x}")).unwrap();
    let facts = OrderFacts {
        customer_id: "0190f5c2-aaaa-7aaa-8aaa-000000000001".to_owned(),
        recipient: "Ada Lovelace".to_owned(),
        total: Money {
            amount_minor: 1999,
            currency: "EUR".to_owned(),
        },
    };
    Notification::compose(kind, &order, &facts, "0190f5c2-0000-7000-8000-000000000001")
}

#[tokio::test]
async fn a_resumed_delivery_is_written_only_when_its_key_is_not_in_the_file_also_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    let sink = FileSink::open(&path).unwrap();
    let confirmed = notification(Kind::OrderConfirmed, 1);
    let shipped = notification(Kind::OrderShipped, 1);
    sink.deliver(&confirmed, Attempt::First).await.unwrap();
    sink.deliver(&confirmed, Attempt::Resumed).await.unwrap();
    sink.deliver(&shipped, Attempt::First).await.unwrap();
    drop(sink);

    let reopened = FileSink::open(&path).unwrap();
    reopened
        .deliver(&confirmed, Attempt::Resumed)
        .await
        .unwrap();
    reopened
        .deliver(&notification(Kind::OrderConfirmed, 2), Attempt::First)
        .await
        .unwrap();
    // Resumed, but the sink never took it (the service stopped between its intent and the sink).
    reopened
        .deliver(&notification(Kind::OrderConfirmed, 3), Attempt::Resumed)
        .await
        .unwrap();
    let keys = keys_in(&path);
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert!(keys.values().all(|n| *n == 1), "{keys:?}");
    let text = std::fs::read_to_string(&path).unwrap();
    let first: Notification = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first, confirmed, "a line is the notification as JSON");
}

#[tokio::test]
async fn notifications_handed_over_together_are_each_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    let sink = FileSink::open(&path).unwrap();
    let resumed = notification(Kind::OrderShipped, 0);
    let firsts = (1..=200).map(|n| (notification(Kind::OrderConfirmed, n), Attempt::First));
    let resumes = std::iter::repeat_n((resumed.clone(), Attempt::Resumed), 20);
    let handed: Vec<_> = firsts.chain(resumes).collect();
    let taken = futures::future::join_all(
        handed
            .iter()
            .map(|(notification, attempt)| sink.deliver(notification, *attempt)),
    )
    .await;
    assert!(taken.iter().all(Result::is_ok), "{taken:?}");
    let keys = keys_in(&path);
    assert_eq!(keys.len(), 201, "{keys:?}");
    assert!(
        keys.values().all(|n| *n == 1),
        "a key handed over several times at once is written once: {keys:?}"
    );
    assert_eq!(keys.get(&resumed.key), Some(&1));
}

#[tokio::test]
async fn a_line_cut_short_by_a_crash_is_written_again_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    let kept = notification(Kind::OrderConfirmed, 1);
    let cut = notification(Kind::OrderShipped, 1);
    {
        let sink = FileSink::open(&path).unwrap();
        sink.deliver(&kept, Attempt::First).await.unwrap();
    }
    let whole = serde_json::to_string(&cut).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&whole.as_bytes()[..whole.len() / 2])
        .unwrap();

    let sink = FileSink::open(&path).unwrap();
    sink.deliver(&cut, Attempt::Resumed).await.unwrap();
    sink.deliver(&kept, Attempt::Resumed).await.unwrap();
    let keys = keys_in(&path);
    assert_eq!(keys.get(&kept.key), Some(&1));
    assert_eq!(keys.get(&cut.key), Some(&1));
}

#[test]
fn a_file_that_is_not_notifications_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    std::fs::write(&path, "{\"key\":\"a\"}\nnot json\n").unwrap();
    let err = FileSink::open(&path).unwrap_err().to_string();
    assert!(err.contains("out.jsonl:2"), "{err}");
}
