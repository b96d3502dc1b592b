//! PostgreSQL for the launcher: the server the developer names, the local one, or a private
//! cluster under the data folder.
//!
//! `DATABASE_URL` names a server and is used alone: if it does not answer, the launcher says
//! so rather than quietly putting the data somewhere else. Without it, the local server at the
//! default URL is used when it answers; when nothing listens there, and PostgreSQL's own tools
//! (`initdb`, `pg_ctl`) are on the machine, a private cluster is created under
//! `<data dir>/postgres` and started on a free port for the run (`CHORUS_POSTGRES=private`
//! asks for it even when a local server runs). It keeps its data between runs.
//!
//! PostgreSQL refuses to run as root. When the launcher is root, the cluster belongs to, and
//! runs as, the `postgres` user (through `runuser`), which must be able to reach the data
//! folder; otherwise the launcher says what to do instead.

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection};

use super::{DATA_DIR_VAR, DATABASE_URL_VAR, POSTGRES_VAR, absolute};

/// How long a server has to answer the first connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `pg_ctl` may take to start or stop the private cluster.
const PG_CTL_SECONDS: &str = "60";
const INSTALL_HINT: &str = "install PostgreSQL (Debian/Ubuntu: apt-get install postgresql; \
     macOS: brew install postgresql) or set DATABASE_URL to a server you run";

/// Which PostgreSQL the developer asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostgresChoice {
    /// `DATABASE_URL`: that server, and no other.
    Url(String),
    /// Neither setting: the local server if it answers, else a private cluster.
    LocalOrPrivate,
    /// `CHORUS_POSTGRES=private`: a private cluster under the data folder.
    Private,
}

impl PostgresChoice {
    /// From `DATABASE_URL` and `CHORUS_POSTGRES` (`auto`, the default, or `private`).
    pub fn from_vars(database_url: Option<String>, mode: Option<String>) -> anyhow::Result<Self> {
        match (mode.as_deref().map(str::trim), database_url) {
            (None | Some("auto"), Some(url)) => Ok(Self::Url(url)),
            (None | Some("auto"), None) => Ok(Self::LocalOrPrivate),
            (Some("private"), None) => Ok(Self::Private),
            (Some("private"), Some(_)) => bail!(
                "{POSTGRES_VAR}=private and {DATABASE_URL_VAR} are both set: unset one of them"
            ),
            (Some(other), _) => bail!("{POSTGRES_VAR}={other:?} is not auto or private"),
        }
    }
}

/// The PostgreSQL server in use, by its administrative URL (a user that may create
/// databases, on its `postgres` database or the one the URL names).
#[derive(Debug, Clone)]
pub struct Postgres {
    admin_url: String,
    /// Where the URL came from, for messages.
    source: &'static str,
}

impl Postgres {
    /// The server of `choice`, started under `data_dir` if it is a private cluster; the
    /// cluster's guard comes with it, for the caller to stop.
    pub async fn find_or_start(
        choice: &PostgresChoice,
        data_dir: &Path,
    ) -> anyhow::Result<(Self, Option<PrivateCluster>)> {
        match choice {
            PostgresChoice::Url(url) => {
                let postgres = Self {
                    admin_url: url.clone(),
                    source: DATABASE_URL_VAR,
                };
                match postgres.probe().await? {
                    Probe::Answered => Ok((postgres, None)),
                    Probe::NotListening(e) => bail!(
                        "PostgreSQL is not reachable at {} ({DATABASE_URL_VAR}): {e}; start it, \
                         or unset {DATABASE_URL_VAR} to use the local server or a private one",
                        postgres.shown()
                    ),
                }
            }
            PostgresChoice::LocalOrPrivate => {
                let local = Self {
                    admin_url: harness::DEFAULT_DATABASE_URL.to_owned(),
                    source: "the local default",
                };
                match local.probe().await? {
                    Probe::Answered => Ok((local, None)),
                    Probe::NotListening(e) => {
                        tracing::info!(
                            url = %local.shown(),
                            error = %e,
                            "no PostgreSQL answers at the local default: starting a private cluster"
                        );
                        let cluster = PrivateCluster::start(data_dir).await.with_context(|| {
                            format!(
                                "PostgreSQL is not reachable at {} and no private cluster could \
                                 be started",
                                local.shown()
                            )
                        })?;
                        Ok((cluster.postgres(), Some(cluster)))
                    }
                }
            }
            PostgresChoice::Private => {
                let cluster = PrivateCluster::start(data_dir).await?;
                Ok((cluster.postgres(), Some(cluster)))
            }
        }
    }

    /// Connection options of the administrative URL.
    pub fn admin_options(&self) -> anyhow::Result<PgConnectOptions> {
        // The URL is not echoed: it may hold a password.
        self.admin_url.parse().with_context(|| {
            format!(
                "the PostgreSQL URL from {} is not a URL like postgres://user@host:5432/postgres",
                self.source
            )
        })
    }

    /// The URL of database `name` on this server: the administrative URL with its database
    /// replaced (its query parameters kept).
    pub fn database_url(&self, name: &str) -> String {
        let (base, query) = match self.admin_url.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (self.admin_url.as_str(), None),
        };
        let authority_end = base.find("://").map_or(0, |i| i + 3);
        let server = match base[authority_end..].find('/') {
            Some(slash) => &base[..authority_end + slash],
            None => base,
        };
        match query {
            Some(query) => format!("{server}/{name}?{query}"),
            None => format!("{server}/{name}"),
        }
    }

    /// The administrative URL without its password, for messages and the banner.
    pub fn shown(&self) -> String {
        redact(&self.admin_url)
    }

    async fn probe(&self) -> anyhow::Result<Probe> {
        let options = self.admin_options()?;
        match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
            Err(_) => Ok(Probe::NotListening(format!(
                "no answer within {CONNECT_TIMEOUT:?}"
            ))),
            Ok(Err(sqlx::Error::Io(e))) => Ok(Probe::NotListening(e.to_string())),
            // It answered, and refused: that is for the developer to fix, not to work around.
            Ok(Err(e)) => Err(e).with_context(|| {
                format!(
                    "PostgreSQL at {} (from {}) refused the connection",
                    self.shown(),
                    self.source
                )
            }),
            Ok(Ok(conn)) => {
                conn.close().await.ok();
                Ok(Probe::Answered)
            }
        }
    }
}

enum Probe {
    Answered,
    NotListening(String),
}

/// `url` with its password, if any, shown as `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((credentials, host)) if credentials.contains(':') => {
            let user = credentials.split_once(':').map_or(credentials, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

/// A PostgreSQL cluster of the launcher's own, under `<data dir>/postgres`, running until
/// [`stop`](Self::stop) (or the guard's drop) stops it with `pg_ctl stop -m fast`.
#[derive(Debug)]
pub struct PrivateCluster {
    bin: PathBuf,
    /// `<data dir>/postgres`: the cluster (`data/`) and its log.
    dir: PathBuf,
    port: u16,
    /// The account the cluster runs as when the launcher is root.
    run_as: Option<&'static str>,
    running: bool,
}

/// The account a private cluster runs as when the launcher runs as root.
const POSTGRES_ACCOUNT: &str = "postgres";

impl PrivateCluster {
    /// Creates the cluster if it does not exist, and starts it on a free port.
    pub async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        let bin = find_pg_bin(pg_search_dirs())?;
        let dir = absolute(&data_dir.join("postgres"))?;
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {} ({DATA_DIR_VAR})", dir.display()))?;
        let run_as = if running_as_root() {
            prepare_for_postgres_account(&dir)?;
            Some(POSTGRES_ACCOUNT)
        } else {
            None
        };
        let mut cluster = Self {
            bin,
            dir,
            port: 0,
            run_as,
            running: false,
        };
        if !cluster.data().join("PG_VERSION").is_file() {
            cluster.init().await?;
        }
        cluster.refuse_if_running().await?;
        cluster.port = free_port()?;
        let log = cluster.log();
        let output = cluster
            .pg_ctl()
            .arg("start")
            .arg("-D")
            .arg(cluster.data())
            .arg("-l")
            .arg(&log)
            .args(["-o", &format!("-p {}", cluster.port)])
            .args(["-w", "-t", PG_CTL_SECONDS, "-s"])
            .output()
            .await
            .with_context(|| format!("cannot run {}", cluster.bin.join("pg_ctl").display()))?;
        if !output.status.success() {
            bail!(
                "the private PostgreSQL cluster in {} did not start: {}\nlast lines of {}:\n{}",
                cluster.dir.display(),
                String::from_utf8_lossy(&output.stderr).trim(),
                log.display(),
                tail(&log)
            );
        }
        cluster.running = true;
        tracing::info!(
            dir = %cluster.dir.display(),
            port = cluster.port,
            "private PostgreSQL cluster started"
        );
        Ok(cluster)
    }

    /// The server, as the launcher uses it.
    pub fn postgres(&self) -> Postgres {
        Postgres {
            admin_url: format!("postgres://postgres@127.0.0.1:{}/postgres", self.port),
            source: "the private cluster",
        }
    }

    /// Where its data and its log are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the cluster (fast: open sessions are ended, everything committed is kept) and
    /// waits for it.
    pub async fn stop(mut self) {
        let command = self.stop_command();
        let postmaster = self.postmaster();
        self.running = false;
        match tokio::process::Command::from(command).output().await {
            Ok(output) if output.status.success() => {
                if let Some(pid) = postmaster {
                    tokio::task::spawn_blocking(move || wait_for_exit(pid))
                        .await
                        .ok();
                }
                tracing::info!("private PostgreSQL cluster stopped");
            }
            Ok(output) => tracing::warn!(
                error = %String::from_utf8_lossy(&output.stderr).trim(),
                "cannot stop the private PostgreSQL cluster"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot run pg_ctl stop"),
        }
    }

    /// The postmaster's pid, from the first line of its `postmaster.pid`.
    fn postmaster(&self) -> Option<u32> {
        std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// One of PostgreSQL's tools, run as the cluster's account, in a process group of its own
    /// (the server it starts must not get the terminal's Ctrl-C: the launcher stops it last).
    fn tool(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        let mut command = match self.run_as {
            Some(account) => {
                let mut command = Command::new("runuser");
                command.args(["-u", account, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        command.stdin(Stdio::null()).process_group(0);
        command
    }

    fn pg_ctl(&self) -> tokio::process::Command {
        tokio::process::Command::from(self.tool("pg_ctl"))
    }

    fn stop_command(&self) -> Command {
        let mut command = self.tool("pg_ctl");
        command.arg("stop").arg("-D").arg(self.data()).args([
            "-m",
            "fast",
            "-w",
            "-t",
            PG_CTL_SECONDS,
            "-s",
        ]);
        command
    }

    /// Creates the cluster in a folder of its own, moved into place once complete: an
    /// initdb cut short leaves no cluster that looks whole.
    async fn init(&self) -> anyhow::Result<()> {
        let fresh = self.dir.join("data.new");
        if fresh.exists() {
            std::fs::remove_dir_all(&fresh)
                .with_context(|| format!("cannot remove {}", fresh.display()))?;
        }
        tracing::info!(dir = %self.data().display(), "creating a private PostgreSQL cluster");
        let output = tokio::process::Command::from(self.tool("initdb"))
            .arg("-D")
            .arg(&fresh)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale"])
            .output()
            .await
            .with_context(|| format!("cannot run {}", self.bin.join("initdb").display()))?;
        if !output.status.success() {
            bail!(
                "initdb could not create a cluster in {}: {}",
                fresh.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        // Local connections over TCP only: no socket file to place, nothing open to others.
        let conf = fresh.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)
            .with_context(|| format!("cannot read {}", conf.display()))?;
        text.push_str(
            "\n# chorus dev: a private cluster, reached over TCP on 127.0.0.1 only\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = ''\n",
        );
        std::fs::write(&conf, text).with_context(|| format!("cannot write {}", conf.display()))?;
        std::fs::rename(&fresh, self.data()).with_context(|| {
            format!(
                "cannot move {} to {}",
                fresh.display(),
                self.data().display()
            )
        })
    }

    /// A cluster already running on the data folder belongs to someone else (another
    /// `chorus dev`, or one that was killed): it is named, not taken over or stopped.
    async fn refuse_if_running(&self) -> anyhow::Result<()> {
        let status = self
            .pg_ctl()
            .arg("status")
            .arg("-D")
            .arg(self.data())
            .output()
            .await
            .with_context(|| format!("cannot run {}", self.bin.join("pg_ctl").display()))?;
        if status.status.success() {
            let pid_file =
                std::fs::read_to_string(self.data().join("postmaster.pid")).unwrap_or_default();
            let mut lines = pid_file.lines();
            let pid = lines.next().unwrap_or("?");
            let port = lines.nth(2).unwrap_or("?");
            bail!(
                "a PostgreSQL server already runs on {} (pid {pid}, port {port}): another \
                 chorus dev, or one that was killed. Stop it ({}pg_ctl stop -D {}), or use it \
                 with {DATABASE_URL_VAR}=postgres://postgres@127.0.0.1:{port}/postgres",
                self.data().display(),
                self.run_as
                    .map_or_else(String::new, |a| format!("runuser -u {a} -- ")),
                self.data().display(),
            );
        }
        Ok(())
    }
}

impl Drop for PrivateCluster {
    /// The path of a start-up that failed or was interrupted: blocking, but `pg_ctl stop -m
    /// fast` takes a moment.
    fn drop(&mut self) {
        if self.running {
            self.running = false;
            let postmaster = self.postmaster();
            match self.stop_command().output() {
                Ok(output) if output.status.success() => {
                    if let Some(pid) = postmaster {
                        wait_for_exit(pid);
                    }
                }
                Ok(_) => tracing::warn!("cannot stop the private PostgreSQL cluster"),
                Err(e) => tracing::warn!(error = %e, "cannot stop the private PostgreSQL cluster"),
            }
        }
    }
}

/// Waits (up to ten seconds) until process `pid` has exited. `pg_ctl stop -w` returns once the
/// postmaster has removed its pid file, which it does on its way out, a moment before it
/// exits: the launcher must not end with the server still going. A zombie has exited. Where
/// there is no `/proc`, it does not wait.
fn wait_for_exit(pid: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let exited = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                == Some("Z")
        }
        Err(_) => true,
    };
    while !exited() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Where PostgreSQL's tools may be: `PATH`, then Debian's `/usr/lib/postgresql/<version>/bin`,
/// newest version first.
fn pg_search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    dirs.extend(versions.into_iter().map(|(_, dir)| dir));
    dirs
}

/// The first of `dirs` holding both `initdb` and `pg_ctl`.
fn find_pg_bin(dirs: impl IntoIterator<Item = PathBuf>) -> anyhow::Result<PathBuf> {
    dirs.into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        .with_context(|| {
            format!(
                "no initdb and pg_ctl found (on PATH or in /usr/lib/postgresql/*/bin) to start \
                 a private PostgreSQL cluster: {INSTALL_HINT}"
            )
        })
}

/// `/proc/self` belongs to the process's effective user.
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Hands `dir` to the `postgres` account and checks that the account can reach it.
fn prepare_for_postgres_account(dir: &Path) -> anyhow::Result<()> {
    let refuse = |why: String| {
        anyhow::anyhow!(
            "chorus dev runs as root, and PostgreSQL will not: {why}. Run chorus dev as an \
             ordinary user, or set {DATABASE_URL_VAR} to a server you run"
        )
    };
    let id = |flag: &str| -> Option<u32> {
        let output = Command::new("id")
            .args([flag, POSTGRES_ACCOUNT])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    };
    let (Some(uid), Some(gid)) = (id("-u"), id("-g")) else {
        return Err(refuse(format!(
            "there is no {POSTGRES_ACCOUNT} user to run the private cluster as"
        )));
    };
    let runuser = Command::new("runuser")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !runuser.is_ok_and(|s| s.success()) {
        return Err(refuse(format!(
            "runuser (util-linux), needed to run it as the {POSTGRES_ACCOUNT} user, is missing"
        )));
    }
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).with_context(|| {
        format!(
            "cannot give {} to the {POSTGRES_ACCOUNT} user",
            dir.display()
        )
    })?;
    let reachable = Command::new("runuser")
        .args(["-u", POSTGRES_ACCOUNT, "--", "test", "-w"])
        .arg(dir)
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !reachable {
        bail!(
            "the {POSTGRES_ACCOUNT} user cannot reach {} (a parent folder is closed to it), and \
             PostgreSQL runs as that user when chorus dev runs as root: set {DATA_DIR_VAR} to a \
             folder it can reach (e.g. /tmp/chorus-dev), or set {DATABASE_URL_VAR}",
            dir.display()
        );
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The last lines of a log, for a message.
fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        file.read_to_string(&mut text).ok();
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_keeps_the_server_and_the_parameters() {
        let at = |url: &str| Postgres {
            admin_url: url.to_owned(),
            source: "test",
        };
        assert_eq!(
            at("postgres://postgres@127.0.0.1:5432/postgres").database_url("chorus_ordering"),
            "postgres://postgres@127.0.0.1:5432/chorus_ordering"
        );
        assert_eq!(
            at("postgres://u:pw@db:5433/admin?sslmode=disable").database_url("x"),
            "postgres://u:pw@db:5433/x?sslmode=disable"
        );
        assert_eq!(
            at("postgres://u@db:5433").database_url("x"),
            "postgres://u@db:5433/x"
        );
        assert_eq!(
            at("postgres://u:pw@db:5433/admin").shown(),
            "postgres://u:***@db:5433/admin"
        );
    }

    #[test]
    fn missing_tools_say_what_to_install() {
        let empty = std::env::temp_dir();
        let error = format!(
            "{:#}",
            find_pg_bin([empty.join("no-such-dir")]).unwrap_err()
        );
        assert!(
            error.contains("initdb") && error.contains("apt-get install postgresql"),
            "{error}"
        );
        assert!(error.contains(DATABASE_URL_VAR), "{error}");
    }

    #[test]
    fn the_choice_follows_the_settings() {
        let url = || Some("postgres://postgres@db/postgres".to_owned());
        assert_eq!(
            PostgresChoice::from_vars(url(), None).unwrap(),
            PostgresChoice::Url("postgres://postgres@db/postgres".to_owned())
        );
        assert_eq!(
            PostgresChoice::from_vars(None, Some("auto".to_owned())).unwrap(),
            PostgresChoice::LocalOrPrivate
        );
        assert_eq!(
            PostgresChoice::from_vars(None, Some("private".to_owned())).unwrap(),
            PostgresChoice::Private
        );
        assert!(PostgresChoice::from_vars(url(), Some("private".to_owned())).is_err());
        assert!(PostgresChoice::from_vars(None, Some("docker".to_owned())).is_err());
    }
}
