//! The `chorus-notifications` binary: configured from the environment, it notifies, and stops
//! cleanly on SIGTERM; a setting it cannot use stops it at start, named.

use std::process::Stdio;

use tokio::process::Command;

use crate::publish::{Order, publish};
use crate::server::wait_until;
use crate::support::{World, expected, keys_in};

const BINARY: &str = env!("CARGO_BIN_EXE_chorus-notifications");

#[tokio::test]
async fn the_binary_notifies_and_stops_on_sigterm() {
    let world = World::new().await;
    let path = world.path("notifications.jsonl");
    let a = Order::new(1);
    publish(&world.js, &a.placed()).await;
    publish(&world.js, &a.confirmed()).await;
    let mut child = Command::new(BINARY)
        .env("NATS_URL", world.server.url())
        .env("NOTIFICATIONS_SINK", format!("file:{}", path.display()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until("the confirmation is written", || async {
        keys_in(&path) == expected(&[("order-confirmed", &a)])
    })
    .await;
    publish(&world.js, &a.shipped()).await;
    wait_until("the shipping message is written", || async {
        keys_in(&path).len() == 2
    })
    .await;

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().await.unwrap();
    assert!(status.success(), "exited with {status} on SIGTERM");
    assert!(world.drained().await, "stopped with messages unacked");
    assert_eq!(
        keys_in(&path),
        expected(&[("order-confirmed", &a), ("order-shipped", &a)])
    );
}

/// Runs the binary with `env` and returns its stderr, checking that it failed.
async fn fails_with(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(BINARY);
    command
        .current_dir(dir.path())
        .env("RUST_LOG", "off")
        .env_remove("NATS_URL")
        .env_remove("NOTIFICATIONS_SINK");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().await.unwrap();
    assert!(!output.status.success(), "started with {env:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn a_setting_it_cannot_use_is_named() {
    let stderr = fails_with(&[("NOTIFICATIONS_SINK", "smtp://mail")]).await;
    assert!(stderr.contains("NOTIFICATIONS_SINK"), "{stderr}");

    // Nothing listens on port 1.
    let stderr = fails_with(&[
        ("NOTIFICATIONS_SINK", "log"),
        ("NATS_URL", "nats://127.0.0.1:1"),
    ])
    .await;
    assert!(stderr.contains("NATS_URL"), "{stderr}");

    let stderr = fails_with(&[("NOTIFICATIONS_SINK", "file:/nonexistent/dir/out.jsonl")]).await;
    assert!(stderr.contains("NOTIFICATIONS_SINK"), "{stderr}");
}
