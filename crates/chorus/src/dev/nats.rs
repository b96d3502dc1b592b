//! The launcher's private nats-server: JetStream data kept under the data folder between runs,
//! stopped at the end with SIGTERM and waited for, so that JetStream closes its files.
//!
//! The binary is the one `harness` finds (`NATS_SERVER_BIN`, else `PATH` or `~/.local/bin`,
//! 2.12 or newer, with what to install when there is none). The server runs with the
//! repository's `nats/single.conf`, in a process group of its own (a terminal's Ctrl-C
//! reaches only the launcher, which stops the server once nothing uses it), writes its pid to
//! `<data dir>/nats/nats-server.pid` and its log next to it. SIGTERM is sent with the server's
//! own `--signal term=<pid>`, so the launcher needs no other tool; a server that has not
//! exited 15 s later is killed, and the log says so.

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::{DATA_DIR_VAR, NATS_PORT_VAR, absolute};

/// How long the server has to bind its port.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the server has to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(20);

/// A nats-server process of the launcher's own.
#[derive(Debug)]
pub struct PrivateNats {
    bin: PathBuf,
    port: u16,
    /// `<data dir>/nats`: the JetStream store, the log, the pid file.
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateNats {
    /// Starts the server on `port` with its data in `<data_dir>/nats`, and waits until it
    /// listens.
    pub async fn start(data_dir: &Path, port: u16) -> anyhow::Result<Self> {
        let bin = harness::find_nats_server()?;
        let dir = absolute(&data_dir.join("nats"))?;
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {} ({DATA_DIR_VAR})", dir.display()))?;
        let conf = dir.join("nats.conf");
        fs::write(&conf, include_str!("../../../../nats/single.conf"))
            .with_context(|| format!("cannot write {}", conf.display()))?;
        let ports = dir.join("ports");
        // A ports file left by an earlier server must not be taken for this one's.
        let _ = fs::remove_dir_all(&ports);
        fs::create_dir_all(&ports).with_context(|| format!("cannot create {}", ports.display()))?;
        let log_path = dir.join("nats-server.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let mut command = Command::new(&bin);
        command
            .arg("-c")
            .arg(&conf)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .arg("--ports_file_dir")
            .arg(&ports)
            .arg("-P")
            .arg(dir.join("nats-server.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cannot share the log file")?)
            .stderr(log)
            .process_group(0);
        // One thread running Go code: on a machine it shares with PostgreSQL and the services,
        // nats-server hands each message between fewer threads (docs/performance.md, eighth
        // round). A GOMAXPROCS of the caller's own is kept.
        if std::env::var_os("GOMAXPROCS").is_none() {
            command.env("GOMAXPROCS", "1");
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut server = Self {
            bin,
            port,
            dir,
            child: Some(child),
        };
        if let Err(e) = server.wait_ready(&ports).await {
            server.terminate_blocking();
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            let hint = if tail.contains("address already in use") {
                format!(
                    "\nport {port} is taken: is another chorus dev running? Set {NATS_PORT_VAR} \
                     to another port"
                )
            } else {
                String::new()
            };
            return Err(e.context(format!(
                "the private nats-server did not start; last lines of {}:\n{tail}{hint}",
                log_path.display()
            )));
        }
        let pid = server.pid();
        tracing::info!(pid, port, dir = %server.dir.display(), "nats-server started");
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id (0 once it is stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGTERM and waits for the server to exit.
    pub async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        self.signal_term(pid);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    tracing::info!(pid, %status, "nats-server stopped");
                    return;
                }
                Ok(None) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(pid, error = %e, "cannot wait for nats-server");
                    break;
                }
            }
        }
        tracing::warn!(
            pid,
            "nats-server did not stop within {STOP_TIMEOUT:?} of SIGTERM: killing it"
        );
        child.kill().ok();
        child.wait().ok();
    }

    /// The server's ports file appears once its listeners are bound (a TCP connect alone could
    /// reach another process holding the port).
    async fn wait_ready(&mut self, ports: &Path) -> anyhow::Result<()> {
        let suffix = format!("_{}.ports", self.pid());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("nats-server exited with {status}");
            }
            let written = fs::read_dir(ports)?
                .flatten()
                .any(|entry| entry.file_name().to_string_lossy().ends_with(&suffix));
            if written {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("nats-server was not listening within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `nats-server --signal term=<pid>`: SIGTERM, sent by the server's own binary.
    fn signal_term(&self, pid: u32) {
        let sent = Command::new(&self.bin)
            .arg("--signal")
            .arg(format!("term={pid}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !sent.as_ref().is_ok_and(|s| s.success()) {
            tracing::warn!(pid, outcome = ?sent, "cannot send SIGTERM to nats-server");
        }
    }

    /// The stop of a start-up that failed or was interrupted, where nothing can be awaited.
    fn terminate_blocking(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        self.signal_term(child.id());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(POLL);
        }
        child.kill().ok();
        child.wait().ok();
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.terminate_blocking();
    }
}
