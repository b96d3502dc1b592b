//! A rebuild whose batch fails in the middle (its connection terminated inside the batch's
//! transaction) starts a new session from its checkpoints and still gives exactly the live
//! model: what it keeps in memory of the batches it applied holds committed batches only.

use harness::NatsServer;
use projections::Projection;
use projections::rebuild::{self, Phase, Progress, RebuildOptions};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio_util::sync::CancellationToken;

use crate::support::{Projections, Publisher, assert_same, terminate_when_waiting};
use crate::writers::publish_orders;

/// Tells when the rebuild has committed batches.
struct Committed(UnboundedSender<u64>);

impl Progress for Committed {
    fn phase(&self, _: Projection, _: Phase) {}
    fn add_total(&self, _: u64) {}
    fn advance(&self, events: u64) {
        let _ = self.0.send(events);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_whose_batch_fails_midway_goes_on_and_gives_the_live_model() {
    let nats = NatsServer::start().await.unwrap();
    let projections = Projections::start(&nats).await;
    let publisher = Publisher::new(projections.js.clone());
    publish_orders(&publisher, 0..1_000).await;
    projections.caught_up().await;
    let live = projections.snapshot(Projection::Orders).await;

    let (committed, mut batches) = unbounded_channel();
    let rebuilding = tokio::spawn({
        let (pool, js) = (projections.pool.clone(), projections.js.clone());
        async move {
            let options = RebuildOptions {
                batch_size: 20,
                ..RebuildOptions::default()
            };
            rebuild::rebuild_with(
                &pool,
                &js,
                Projection::Orders,
                &options,
                &Committed(committed),
                &CancellationToken::new(),
            )
            .await
        }
    });
    // Once the load is under way, its next batch waits inside its transaction for a lock on
    // the rebuilt orders table, and its connection is terminated there.
    if batches.recv().await.is_none() {
        panic!("the rebuild ended before a batch: {:?}", rebuilding.await);
    }
    let mut blocker = projections.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE orders_rebuild.orders IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    const WAITING: &str = "SELECT pid FROM pg_stat_activity \
        WHERE application_name = 'projection orders_rebuild' AND wait_event_type = 'Lock'";
    terminate_when_waiting(
        &projections.pool,
        WAITING,
        "a rebuild batch to wait inside its transaction",
    )
    .await;
    blocker.rollback().await.unwrap();

    let report = rebuilding.await.unwrap().unwrap();
    assert_eq!(report.messages, 4_000, "each message read once in the end");
    assert_same(
        &projections.snapshot(Projection::Orders).await,
        &live,
        "orders rebuilt across a failed batch",
    );
}
