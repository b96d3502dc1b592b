//! Provisioning under least privilege: a consumer waits for a stream another context creates;
//! the dead-letter stream is created once and then left to the operator.

use async_nats::jetstream::{self, stream};
use bus::ConsumerSpec;
use events::naming::{DEAD_LETTER_STREAM, StreamName};
use harness::NatsServer;

use crate::PATIENCE;

async fn js(nats: &NatsServer) -> jetstream::Context {
    jetstream::new(bus::connect(&nats.url(), "test").await.unwrap())
}

#[tokio::test]
async fn a_consumer_waits_for_its_stream_and_is_created_once_the_stream_exists() {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let js = js(&nats).await;
    let ledger = StreamName::for_context("ledger");
    let spec = ConsumerSpec::new("audit", ledger.clone());

    let (told, mut reasons) = tokio::sync::mpsc::unbounded_channel();
    let waiting = tokio::spawn({
        let (js, spec) = (js.clone(), spec.clone());
        async move {
            bus::provision::consumer_when_stream_exists(&js, &spec, move |why| {
                told.send(why).ok();
            })
            .await
        }
    });
    // Told twice: it tried again after the first wait, and still waits.
    for _ in 0..2 {
        let why = reasons.recv().await.expect("told why it waits");
        assert!(
            why.contains("LEDGER") && why.contains("the ledger context"),
            "{why}"
        );
    }
    assert!(!waiting.is_finished(), "it stopped waiting with no stream");

    bus::provision::streams(&js, std::slice::from_ref(&ledger), 1)
        .await
        .expect("the ledger context provisions its stream");
    let mut consumer = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the consumer is created once its stream exists")
        .expect("the task does not panic")
        .expect("the consumer is created");
    assert_eq!(
        consumer.info().await.expect("consumer info").name,
        spec.name
    );
}

#[tokio::test]
async fn a_consumer_stops_waiting_on_any_other_failure() {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let js = js(&nats).await;
    let mut spec = ConsumerSpec::new("audit", StreamName::for_context("ledger"));
    spec.name = "not a valid name".to_owned();
    let mut told = Vec::new();
    let err = bus::provision::consumer_when_stream_exists(&js, &spec, |why| told.push(why))
        .await
        .expect_err("an invalid consumer name is refused");
    assert!(format!("{err:#}").contains("not a valid name"), "{err:#}");
    assert!(told.is_empty(), "{told:?}");
}

#[tokio::test]
async fn the_dead_letter_stream_is_created_once_and_then_left_to_the_operator() {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let js = js(&nats).await;
    bus::provision::dead_letters(&js, 1)
        .await
        .expect("the dead-letter stream is created");
    bus::provision::dead_letters(&js, 1)
        .await
        .expect("creating it again with the same configuration changes nothing");

    // The operator changes it; a context that starts afterwards leaves it so.
    let changed = stream::Config {
        max_messages: 1_000_000,
        ..bus::provision::dead_letter_stream(1)
    };
    js.update_stream(changed)
        .await
        .expect("the operator updates the stream");
    bus::provision::dead_letters(&js, 1)
        .await
        .expect("a stream with another configuration is left as it is");
    let mut stream = js.get_stream(DEAD_LETTER_STREAM).await.expect("stream");
    assert_eq!(
        stream.info().await.expect("info").config.max_messages,
        1_000_000
    );
}
