//! What an operator sees when something is wrong: one line naming what failed and what to
//! check, exit status 2 for a mistake in the command line and 1 for anything else.

use harness::{NatsServer, TestDatabase};

use crate::{World, chorus, closed_port};

/// The message is one line (clap adds its usage hints below its own first line).
fn first_line(stderr: &str) -> &str {
    stderr.lines().next().unwrap_or("")
}

#[tokio::test]
async fn an_unknown_context_is_a_usage_error_naming_the_known_ones() {
    let run = chorus(&["republish", "--context", "billing"], &[])
        .await
        .failure(2);
    let line = first_line(&run.stderr);
    assert!(
        line.contains("billing")
            && line.contains("--context")
            && line.contains("ordering, inventory, payments, shipping"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn bad_arguments_are_usage_errors() {
    for args in [
        &["dlq", "retry", "abc"][..],
        &["dlq", "retry"],
        &["dlq", "purge", "3", "--all"],
        &["dlq", "show", "0"],
        &["dlq", "list", "--consumer", "two words"],
        &["dlq", "retry", "--consumer", "auditor-from-ordering"],
        &["republish", "--context", "ordering", "--from", "0"],
        &["republish", "--context", "ordering", "--from", "first"],
        &["republish"],
    ] {
        let run = chorus(args, &[]).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:#?}");
        assert!(
            first_line(&run.stderr).starts_with("error: "),
            "{args:?}: {}",
            run.stderr
        );
    }
    let run = chorus(&["dlq", "retry", "abc"], &[]).await;
    assert!(first_line(&run.stderr).contains("'abc'"), "{}", run.stderr);

    // A database URL that is no URL: named by its option, not echoed (it may hold a password).
    let url = format!("nats://127.0.0.1:{}", closed_port());
    let run = chorus(
        &[
            "republish",
            "--context",
            "ordering",
            "--database-url",
            "secret-pw@nowhere",
            "--nats-url",
            &url,
        ],
        &[],
    )
    .await
    .failure(2);
    assert!(
        run.stderr
            .contains("--database-url is not a PostgreSQL URL"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("secret-pw"), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}

#[tokio::test]
async fn unreachable_nats_fails_fast_naming_the_url_and_the_setting() {
    let url = format!("nats://127.0.0.1:{}", closed_port());
    for run in [
        chorus(&["dlq", "list", "--nats-url", &url], &[]).await,
        chorus(&["dlq", "list"], &[("NATS_URL", &url)]).await,
    ] {
        let run = run.failure(1);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(
            run.stderr
                .starts_with(&format!("chorus: cannot connect to NATS at {url}"))
                && run.stderr.contains("NATS_URL"),
            "{}",
            run.stderr
        );
    }

    // Republish reaches its store first, then NATS.
    let world = World::new().await;
    let run = chorus(
        &[
            "republish",
            "--context",
            "ordering",
            "--database-url",
            &world.db.url(),
            "--nats-url",
            &url,
        ],
        &[],
    )
    .await
    .failure(1);
    assert!(
        run.stderr
            .contains(&format!("cannot connect to NATS at {url}")),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn unreachable_or_wrong_databases_are_named_with_their_setting() {
    let nats = NatsServer::start().await.unwrap();
    let port = closed_port();
    let url = format!("postgres://postgres:secret-pw@127.0.0.1:{port}/chorus_ordering");
    for run in [
        chorus(
            &[
                "republish",
                "--context",
                "ordering",
                "--database-url",
                &url,
                "--nats-url",
                &nats.url(),
            ],
            &[],
        )
        .await,
        chorus(
            &[
                "republish",
                "--context",
                "ordering",
                "--nats-url",
                &nats.url(),
            ],
            &[("ORDERING_DATABASE_URL", &url)],
        )
        .await,
    ] {
        let run = run.failure(1);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(
            run.stderr.contains(&format!(
                "cannot reach the ordering event store at 127.0.0.1:{port}/chorus_ordering"
            )) && run.stderr.contains("ORDERING_DATABASE_URL"),
            "{}",
            run.stderr
        );
        assert!(!run.stderr.contains("secret-pw"), "{}", run.stderr);
    }

    // A database without an event store: refused, and left as it was.
    let empty = TestDatabase::create().await.unwrap();
    let run = chorus(
        &[
            "republish",
            "--context",
            "payments",
            "--database-url",
            &empty.url(),
            "--nats-url",
            &nats.url(),
        ],
        &[],
    )
    .await
    .failure(1);
    assert!(
        run.stderr
            .contains("holds no event store (no events table)")
            && run.stderr.contains("PAYMENTS_DATABASE_URL"),
        "{}",
        run.stderr
    );
    let pool = empty.pool(1).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 0, "nothing was created");
}

#[tokio::test]
async fn a_server_without_chorus_streams_is_named() {
    let nats = NatsServer::start().await.unwrap();
    let run = chorus(&["dlq", "list", "--nats-url", &nats.url()], &[])
        .await
        .failure(1);
    assert!(
        run.stderr.contains("cannot open stream DEAD_LETTERS") && run.stderr.contains(&nats.url()),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn each_command_explains_itself() {
    let run = chorus(&["dlq", "retry", "--help"], &[]).await.success();
    assert!(
        run.stdout.contains("inbox") && run.stdout.contains(":retry:"),
        "{}",
        run.stdout
    );
    let run = chorus(&["republish", "--help"], &[]).await.success();
    for needle in [
        "inbox",
        "duplicate window",
        "--from",
        "ORDERING_DATABASE_URL",
        "NATS_URL",
        "4300",
    ] {
        assert!(
            run.stdout.contains(needle),
            "republish --help lacks {needle:?}:\n{}",
            run.stdout
        );
    }
}
