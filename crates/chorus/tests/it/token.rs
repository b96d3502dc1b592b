//! `chorus token`: a token the gateway accepts, printed alone on stdout; mistakes named.

use gateway::Role;
use gateway::auth::Verifier;

use crate::chorus;

const SECRET: &str = "a-secret-for-the-token-command-tests";

#[tokio::test]
async fn a_minted_token_is_printed_alone_and_the_gateway_accepts_it() {
    let customer = uuid::Uuid::now_v7().to_string();
    let run = chorus(
        &[
            "token",
            "--role",
            "shopper",
            "--subject",
            &customer,
            "--ttl",
            "30m",
        ],
        &[("GATEWAY_JWT_SECRET", SECRET)],
    )
    .await
    .success();
    assert_eq!(run.stdout.lines().count(), 1, "{run:#?}");
    let principal = Verifier::hs256(SECRET.as_bytes())
        .verify(run.stdout.trim())
        .unwrap();
    assert_eq!(principal.role, Role::Shopper);
    assert_eq!(principal.subject, customer);

    let run = chorus(
        &["token", "--role", "operator", "--subject", "ops@chorus"],
        &[("GATEWAY_JWT_SECRET", SECRET)],
    )
    .await
    .success();
    let principal = Verifier::hs256(SECRET.as_bytes())
        .verify(run.stdout.trim())
        .unwrap();
    assert_eq!(principal.role, Role::Operator);
    // Signed with another secret, it is refused.
    assert!(
        Verifier::hs256(b"another-secret-of-thirty-two-bytes!!")
            .verify(run.stdout.trim())
            .is_err()
    );
}

#[tokio::test]
async fn mistakes_are_named() {
    // A shopper's subject must be a customer id; a role must be one; a duration must parse.
    for args in [
        &["token", "--role", "shopper", "--subject", "alice"][..],
        &["token", "--role", "admin", "--subject", "ops"],
        &[
            "token",
            "--role",
            "operator",
            "--subject",
            "ops",
            "--ttl",
            "forever",
        ],
        &["token", "--role", "operator"],
    ] {
        let run = chorus(args, &[("GATEWAY_JWT_SECRET", SECRET)]).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:#?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:#?}");
    }
    // No secret, or one too short to be safe: named, never echoed.
    let run = chorus(
        &["token", "--role", "operator", "--subject", "ops"],
        &[("GATEWAY_JWT_SECRET", "")],
    )
    .await
    .failure(1);
    assert!(run.stderr.contains("GATEWAY_JWT_SECRET"), "{run:#?}");
    let run = chorus(
        &["token", "--role", "operator", "--subject", "ops"],
        &[("GATEWAY_JWT_SECRET", "hunter2")],
    )
    .await
    .failure(1);
    assert!(
        run.stderr.contains("GATEWAY_JWT_SECRET") && !run.stderr.contains("hunter2"),
        "{run:#?}"
    );
}
