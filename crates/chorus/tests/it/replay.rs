//! `chorus replay` and `chorus projections status` against a private nats-server whose
//! inventory stream the real inventory service filled, and a projections database of their own.

use events::BoundedContext;
use events::command::{CommandReply, command_subject};
use harness::{NatsServer, TestDatabase, wait_until};

use crate::{PATIENCE, chorus};

/// The inventory service on a private server, with two products and their stock published.
struct Catalogue {
    nats: NatsServer,
    _inventory: TestDatabase,
    projections: TestDatabase,
    stop: tokio_util::sync::CancellationToken,
}

impl Catalogue {
    async fn start() -> Self {
        let nats = NatsServer::start().await.expect("nats-server starts");
        let inventory = TestDatabase::create().await.expect("database");
        let projections = TestDatabase::create().await.expect("database");
        let settings = host::Settings {
            context: BoundedContext::Inventory,
            database_url: inventory.url(),
            nats_url: nats.url(),
            database_connections: 4,
        };
        let service = inventory::service::start(&settings)
            .await
            .expect("inventory starts");
        let stop = service.shutdown_token();
        tokio::spawn(service.run(std::future::pending()));
        let client = bus::connect(&nats.url(), "test").await.unwrap();
        // The other contexts' streams: each service provisions only its own, and the
        // projections read all four.
        nats.provision_event_streams().await.unwrap();
        let command = |name: &str, body: serde_json::Value| {
            let client = client.clone();
            let subject = command_subject("inventory", name);
            async move {
                let reply = client
                    .request(subject, serde_json::to_vec(&body).unwrap().into())
                    .await
                    .unwrap();
                let reply: CommandReply = serde_json::from_slice(&reply.payload).unwrap();
                assert!(matches!(reply, CommandReply::Accepted { .. }), "{reply:?}");
            }
        };
        for (sku, price, units) in [("SKU-1", 1_250, 7), ("SKU-2", 900, 3)] {
            command(
                "define-product",
                serde_json::json!({
                    "sku": sku,
                    "name": format!("Product {sku}"),
                    "price": { "amount_minor": price, "currency": "EUR" },
                }),
            )
            .await;
            command(
                "receive-stock",
                serde_json::json!({ "sku": sku, "quantity": units }),
            )
            .await;
        }
        let js = async_nats::jetstream::new(client);
        wait_until("inventory's relay to publish", PATIENCE, || async {
            let mut stream = js.get_stream("INVENTORY").await.unwrap();
            stream.info().await.unwrap().state.messages == 4
        })
        .await
        .unwrap();
        Self {
            nats,
            _inventory: inventory,
            projections,
            stop,
        }
    }

    async fn chorus(&self, args: &[&str]) -> crate::Run {
        let url = self.nats.url();
        let db = self.projections.url();
        let mut all = args.to_vec();
        all.extend(["--nats-url", url.as_str(), "--database-url", db.as_str()]);
        chorus(&all, &[]).await
    }

    async fn products(&self) -> Vec<(String, i64, i64)> {
        let pool = sqlx::PgPool::connect(&self.projections.url())
            .await
            .unwrap();
        let rows =
            sqlx::query_as("SELECT sku, price_minor, on_hand FROM catalogue.products ORDER BY sku")
                .fetch_all(&pool)
                .await
                .unwrap();
        pool.close().await;
        rows
    }
}

impl Drop for Catalogue {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_builds_the_catalogue_verify_agrees_and_status_shows_no_lag() {
    let world = Catalogue::start().await;

    let run = world.chorus(&["replay", "catalogue"]).await.success();
    assert!(
        run.stdout
            .contains("catalogue: rebuilt and swapped in: 4 messages read"),
        "{}",
        run.stdout
    );
    assert_eq!(
        world.products().await,
        vec![("SKU-1".to_owned(), 1_250, 7), ("SKU-2".to_owned(), 900, 3)]
    );

    // Running it again is safe and gives the same model.
    world.chorus(&["replay", "catalogue"]).await.success();
    assert_eq!(world.products().await.len(), 2);

    let run = world
        .chorus(&["replay", "--verify", "catalogue"])
        .await
        .success();
    assert!(
        run.stdout
            .contains("catalogue: the live read model matches a fresh build"),
        "{}",
        run.stdout
    );

    let run = world.chorus(&["projections", "status"]).await.success();
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("catalogue") && l.contains("INVENTORY"))
        .unwrap_or_else(|| panic!("no catalogue line: {}", run.stdout))
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(line, ["catalogue", "INVENTORY", "4", "4", "0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_a_live_model_that_drifted() {
    let world = Catalogue::start().await;
    world.chorus(&["replay", "catalogue"]).await.success();
    let pool = sqlx::PgPool::connect(&world.projections.url())
        .await
        .unwrap();
    sqlx::query("UPDATE catalogue.products SET on_hand = 99 WHERE sku = 'SKU-2'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let run = world
        .chorus(&["replay", "--verify", "catalogue"])
        .await
        .failure(1);
    assert!(
        run.stdout.contains("catalogue: 1 row differs") && run.stdout.contains("SKU-2"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("1 row differs"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_refuses_what_it_cannot_do_with_a_clear_message() {
    let run = chorus(&["replay", "inventory"], &[]).await.failure(2);
    assert!(
        run.stderr.contains("unknown projection \"inventory\"")
            && run.stderr.contains("orders, catalogue, sales"),
        "{}",
        run.stderr
    );
    chorus(&["replay"], &[]).await.failure(2);
    chorus(&["replay", "orders", "--all"], &[]).await.failure(2);
    let run = chorus(&["replay", "--all", "--from", "yesterday"], &[])
        .await
        .failure(2);
    assert!(run.stderr.contains("RFC 3339"), "{}", run.stderr);

    let nats = NatsServer::start().await.expect("nats-server starts");
    let closed = format!(
        "postgres://postgres@127.0.0.1:{}/nowhere",
        crate::closed_port()
    );
    let run = chorus(
        &[
            "replay",
            "orders",
            "--nats-url",
            &nats.url(),
            "--database-url",
            &closed,
        ],
        &[],
    )
    .await
    .failure(1);
    assert!(
        run.stderr.contains("cannot reach the projections database")
            && run.stderr.contains("PROJECTIONS_DATABASE_URL"),
        "{}",
        run.stderr
    );

    let nowhere = format!("nats://127.0.0.1:{}", crate::closed_port());
    let run = chorus(&["projections", "status", "--nats-url", &nowhere], &[])
        .await
        .failure(1);
    assert!(
        run.stderr.contains("cannot connect to NATS"),
        "{}",
        run.stderr
    );
}
