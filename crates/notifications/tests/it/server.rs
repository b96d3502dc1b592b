//! A private nats-server per test: its own port and its own JetStream directory, killed when
//! the test drops it. Written here rather than borrowed, as a team outside Chorus would.

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where nats-server is found when neither `NATS_SERVER` nor `PATH` names one.
const FALLBACK: &str = "/root/.pyenv/versions/3.11.7/bin/nats-server";

/// A running nats-server with JetStream.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server on a free port and waits until it takes connections.
    pub async fn start() -> Self {
        let binary = find_nats_server();
        check_version(&binary);
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path().join("jetstream"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let server = Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        };
        let url = server.url.clone();
        wait_until("the nats-server takes connections", || {
            let url = url.clone();
            async move { async_nats::connect(url).await.is_ok() }
        })
        .await;
        server
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// `NATS_SERVER`, else `nats-server` on `PATH`, else the pinned install.
fn find_nats_server() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("nats-server"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| PathBuf::from(FALLBACK))
}

/// Refuses a server older than 2.12: older ones ignore several filter subjects.
fn check_version(binary: &PathBuf) {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (install nats-server 2.15.1 or set NATS_SERVER)",
                binary.display()
            )
        });
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.trim().rsplit('v').next().unwrap_or_default();
    notifications::service::check_server_version(version)
        .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
}

/// Waits until `condition` holds, checking it every 50 ms; fails the test after a minute.
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if condition().await {
            return;
        }
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
