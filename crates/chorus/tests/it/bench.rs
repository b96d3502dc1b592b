//! `chorus bench` as a user runs it: against a `chorus dev` of its own, found through the
//! `dev.env` it writes, with runs short enough for a test. Every order is counted once, as
//! confirmed or as an error of its kind, the histograms hold one latency per confirmed order,
//! and the JSON has the documented fields; bad arguments and an unreachable system are
//! refused with one clear line.

use std::path::Path;

use harness::NatsServer;
use serde_json::Value;

use crate::dev::{DevWorld, Launcher};
use crate::{Run, chorus, closed_port};

/// The environment of a run against `world`'s system, nothing else from the test's.
fn against(world: &DevWorld) -> Vec<(&'static str, String)> {
    isolated(&world.data_dir())
}

/// The environment of a run with `data_dir` as CHORUS_DATA_DIR, and none of the test's own
/// settings of a system.
fn isolated(data_dir: &Path) -> Vec<(&'static str, String)> {
    let mut env = vec![("CHORUS_DATA_DIR", data_dir.to_string_lossy().into_owned())];
    for unset in [
        "CHORUS_URL",
        "GATEWAY_JWT_SECRET",
        "SHOPPER_TOKEN",
        "OPERATOR_TOKEN",
    ] {
        env.push((unset, String::new()));
    }
    env
}

async fn bench(args: &[&str], env: &[(&'static str, String)]) -> Run {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut all = vec!["bench"];
    all.extend(args);
    chorus(&all, &env).await
}

/// Runs `chorus bench saga <args> --json <dir>/<name>.json` and returns the JSON.
async fn saga(world: &DevWorld, name: &str, args: &[&str]) -> Value {
    let json = world.data_dir().join(format!("{name}.json"));
    let mut all = vec!["saga"];
    all.extend(args);
    all.extend(["--json", json.to_str().unwrap()]);
    let run = bench(&all, &against(world)).await.success();
    let result: Value = serde_json::from_slice(&std::fs::read(&json).unwrap())
        .unwrap_or_else(|e| panic!("{name}: the JSON does not parse: {e}\n{run:#?}"));
    // What was printed is what was written.
    let confirmed = format!("confirmed {}", result["confirmed"]);
    assert!(run.stdout.contains(&confirmed), "{name}: {}", run.stdout);
    result
}

/// Every measured order confirmed, none in error, one latency per order.
fn assert_all_confirmed(name: &str, result: &Value, orders: u64) {
    assert_eq!(result["sent"], orders, "{name}: {result:#}");
    assert_eq!(result["confirmed"], orders, "{name}: {result:#}");
    assert_eq!(result["error_total"], 0, "{name}: {result:#}");
    assert_eq!(
        result["errors"],
        serde_json::json!({}),
        "{name}: {result:#}"
    );
    assert_eq!(
        result["end_to_end_ms"]["count"], orders,
        "{name}: {result:#}"
    );
    assert_eq!(result["request_ms"]["count"], orders, "{name}: {result:#}");
    let latency = &result["end_to_end_ms"];
    for field in ["p50", "p90", "p99", "p999", "max", "mean"] {
        assert!(
            latency[field].as_f64().is_some_and(|ms| ms > 0.0),
            "{name}: end_to_end_ms.{field} in {result:#}"
        );
    }
    assert!(
        latency["p50"].as_f64() <= latency["p99"].as_f64()
            && latency["p99"].as_f64() <= latency["max"].as_f64(),
        "{name}: {result:#}"
    );
    assert!(
        result["confirmed_per_second"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "{name}: {result:#}"
    );
}

#[tokio::test]
async fn runs_against_chorus_dev_count_every_order_once() {
    let world = DevWorld::new("bench");
    let system = Launcher::start(&world, &[]).await;
    let dev_env = std::fs::read_to_string(world.data_dir().join("dev.env")).unwrap();
    let dev_pid = dev_env
        .lines()
        .find_map(|l| l.strip_prefix("export CHORUS_PID='")?.strip_suffix('\''))
        .unwrap_or_else(|| panic!("no CHORUS_PID in dev.env: {dev_env}"))
        .parse::<u64>()
        .unwrap();

    // A closed loop through the gateway, everything from dev.env (tokens minted from its
    // secret, its CHORUS_PID sampled).
    let gateway = saga(
        &world,
        "gateway",
        &[
            "--concurrency",
            "4",
            "--count",
            "24",
            "--warmup",
            "0s",
            "--skus",
            "3",
        ],
    )
    .await;
    assert_all_confirmed("gateway", &gateway, 24);
    let settings = &gateway["settings"];
    assert_eq!(
        (
            &settings["via"],
            &settings["loop"],
            &settings["concurrency"]
        ),
        (
            &Value::from("gateway"),
            &Value::from("closed"),
            &Value::from(4)
        ),
        "{gateway:#}"
    );
    let memory = &gateway["memory"][0];
    assert_eq!(memory["name"], "chorus-dev", "{gateway:#}");
    assert_eq!(memory["pid"], dev_pid, "{gateway:#}");
    assert!(
        memory["samples"].as_u64() >= Some(1)
            && memory["max_mib"].as_f64() >= memory["first_mib"].as_f64()
            && memory["growth_mib_per_minute"].is_number(),
        "{gateway:#}"
    );

    // The same over NATS, ordering's place-order command.
    let nats = saga(
        &world,
        "nats",
        &[
            "--via",
            "nats",
            "--concurrency",
            "4",
            "--count",
            "16",
            "--warmup",
            "0s",
        ],
    )
    .await;
    assert_all_confirmed("nats", &nats, 16);
    assert_eq!(nats["settings"]["via"], "nats", "{nats:#}");

    // An open loop with a warm-up: the warm-up's orders are left out of the figures.
    let open = saga(
        &world,
        "open",
        &["--rate", "40", "--count", "12", "--warmup", "100ms"],
    )
    .await;
    assert_all_confirmed("open", &open, 12);
    assert_eq!(open["warmup_sent"], 4, "{open:#}");
    assert_eq!(open["settings"]["loop"], "open", "{open:#}");

    // Stock for five orders of eight: three are rejected out of stock, and counted so.
    let short = saga(
        &world,
        "short",
        &[
            "--concurrency",
            "3",
            "--count",
            "8",
            "--warmup",
            "0s",
            "--skus",
            "1",
            "--stock",
            "5",
        ],
    )
    .await;
    assert_eq!(
        (&short["sent"], &short["confirmed"], &short["error_total"]),
        (&Value::from(8), &Value::from(5), &Value::from(3)),
        "{short:#}"
    );
    assert_eq!(
        short["errors"],
        serde_json::json!({ "rejected_out_of_stock": 3 }),
        "{short:#}"
    );
    assert_eq!(short["end_to_end_ms"]["count"], 5, "{short:#}");

    // The runs' latency against throughput, drawn.
    let svg = world.data_dir().join("plot.svg");
    let paths: Vec<String> = ["gateway", "nats", "open"]
        .iter()
        .map(|n| path_str(&world.data_dir().join(format!("{n}.json"))))
        .collect();
    let mut args = vec!["plot", "--out", svg.to_str().unwrap()];
    args.extend(paths.iter().map(String::as_str));
    bench(&args, &against(&world)).await.success();
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(
        drawn.contains("<svg") && drawn.contains("p99"),
        "{}",
        &drawn[..drawn.len().min(500)]
    );

    // A token secret that is not the gateway's: the set-up is refused, exit 1.
    let mut env = against(&world);
    env.push(("GATEWAY_JWT_SECRET", "x".repeat(40)));
    let refused = bench(&["saga", "--concurrency", "1", "--count", "1"], &env)
        .await
        .failure(1);
    let line = refused.stderr.lines().last().unwrap_or("");
    assert!(
        line.contains("401") && line.contains("token secret"),
        "{}",
        refused.stderr
    );

    let status = system.stop().await;
    assert_eq!(status.code(), Some(0), "{}", world.stderr("run"));
}

fn path_str(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_unreachable_system_is_named_with_what_to_check() {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let gateway = format!("http://127.0.0.1:{}", closed_port());
    let secret = "s".repeat(32);
    let common = [
        "saga",
        "--concurrency",
        "1",
        "--count",
        "1",
        "--jwt-secret",
        &secret,
        "--gateway-url",
        &gateway,
    ];
    let nats_url = nats.url();
    let mut args = common.to_vec();
    args.extend(["--nats-url", &nats_url]);
    let env = isolated(Path::new("/nonexistent"));
    let run = bench(&args, &env).await.failure(1);
    assert!(
        run.stderr.contains("cannot reach the gateway") && run.stderr.contains(&gateway),
        "{}",
        run.stderr
    );

    let nowhere = format!("nats://127.0.0.1:{}", closed_port());
    let mut args = common.to_vec();
    args.extend(["--nats-url", &nowhere]);
    let run = bench(&args, &env).await.failure(1);
    assert!(
        run.stderr.contains("cannot connect to NATS"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn bad_arguments_are_usage_errors() {
    let empty = tempfile_dir();
    let env = isolated(&empty);
    for args in [
        &["saga", "--count", "5"][..],
        &["saga", "--rate", "0", "--count", "5"],
        &["saga", "--rate", "10", "--concurrency", "2", "--count", "5"],
        &["saga", "--rate", "10", "--count", "5", "--duration", "5s"],
        &["saga", "--rate", "10"],
        &["saga", "--rate", "10", "--duration", "1x"],
        &["saga", "--rate", "10", "--count", "5", "--via", "smoke"],
        &["saga", "--rate", "10", "--count", "5", "--rss-pid", "dev="],
        &["saga", "--rate", "10", "--count", "5", "--settle", "0s"],
        &["saga", "--rate", "10", "--count", "5"],
        &["plot", "only-one.json"],
    ] {
        let run = bench(args, &env).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:#?}");
    }
    // No system named and no dev.env: says where the URL would come from.
    let run = bench(&["saga", "--rate", "10", "--count", "5"], &env)
        .await
        .failure(2);
    assert!(
        run.stderr.contains("no gateway URL") && run.stderr.contains("chorus dev"),
        "{}",
        run.stderr
    );
    let _ = std::fs::remove_dir_all(&empty);
}

/// An empty folder of this test's own.
fn tempfile_dir() -> std::path::PathBuf {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let dir = std::env::temp_dir().join(format!("chorus-bench-{}", &id[id.len() - 12..]));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
