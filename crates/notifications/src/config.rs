//! Settings, read once from the environment at start-up. A value that cannot be used stops the
//! start with an error naming its variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;

use crate::sink::{ConfiguredSink, FileSink, LogSink};

/// `NATS_URL` when unset: the nats-server of `compose.yaml`, as for the Chorus services.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// `NOTIFICATIONS_SINK` when unset.
pub const DEFAULT_SINK: &str = "file:notifications.jsonl";

/// Which sink adapter notifications go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkConfig {
    /// `file:<path>`: JSON lines appended to `<path>`.
    File(PathBuf),
    /// `log`: the log.
    Log,
}

impl SinkConfig {
    /// Parses a `NOTIFICATIONS_SINK` value.
    pub fn parse(value: &str) -> anyhow::Result<Self> {
        match value.split_once(':') {
            _ if value == "log" => Ok(SinkConfig::Log),
            Some(("file", path)) if !path.is_empty() => Ok(SinkConfig::File(PathBuf::from(path))),
            _ => bail!("NOTIFICATIONS_SINK={value:?} is neither file:<path> nor log"),
        }
    }

    /// Opens the adapter.
    pub fn open(&self) -> anyhow::Result<ConfiguredSink> {
        Ok(match self {
            SinkConfig::File(path) => ConfiguredSink::File(
                FileSink::open(path)
                    .map_err(|e| e.context("NOTIFICATIONS_SINK: cannot open the file sink"))?,
            ),
            SinkConfig::Log => ConfiguredSink::Log(LogSink::default()),
        })
    }
}

/// The service's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `NATS_URL`, default [`DEFAULT_NATS_URL`].
    pub nats_url: String,
    /// `NOTIFICATIONS_SINK`: `file:<path>` or `log`, default [`DEFAULT_SINK`].
    pub sink: SinkConfig,
    /// `NOTIFICATIONS_HTTP_ADDR`: where to serve `/healthz`, `/readyz` and `/metrics`, an IP
    /// address with a port (e.g. `127.0.0.1:8086`); unset: no HTTP listener.
    pub http_addr: Option<SocketAddr>,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (the environment, or a table in tests). An empty
    /// value counts as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let var = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let nats_url = var("NATS_URL").unwrap_or_else(|| DEFAULT_NATS_URL.to_owned());
        let sink = SinkConfig::parse(
            &var("NOTIFICATIONS_SINK").unwrap_or_else(|| DEFAULT_SINK.to_owned()),
        )?;
        let http_addr = match var("NOTIFICATIONS_HTTP_ADDR") {
            None => None,
            Some(value) => Some(value.parse().map_err(|_| {
                anyhow::anyhow!(
                    "NOTIFICATIONS_HTTP_ADDR={value:?} is not an address to listen on, like \
                     127.0.0.1:8086"
                )
            })?),
        };
        Ok(Self {
            nats_url,
            sink,
            http_addr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> anyhow::Result<Config> {
        Config::from_lookup(|name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn defaults_serve_local_use() {
        let config = config(&[]).unwrap();
        assert_eq!(config.nats_url, DEFAULT_NATS_URL);
        assert_eq!(
            config.sink,
            SinkConfig::File(PathBuf::from("notifications.jsonl"))
        );
        assert_eq!(config.sink, config_sink_of(&[("NOTIFICATIONS_SINK", "")]));
    }

    fn config_sink_of(pairs: &[(&str, &str)]) -> SinkConfig {
        config(pairs).unwrap().sink
    }

    #[test]
    fn reads_both_sinks() {
        assert_eq!(
            config_sink_of(&[("NOTIFICATIONS_SINK", "file:/var/lib/n/out.jsonl")]),
            SinkConfig::File(PathBuf::from("/var/lib/n/out.jsonl"))
        );
        assert_eq!(
            config_sink_of(&[("NOTIFICATIONS_SINK", "log")]),
            SinkConfig::Log
        );
        assert_eq!(
            config(&[("NATS_URL", "nats://n:4300")]).unwrap().nats_url,
            "nats://n:4300"
        );
    }

    #[test]
    fn the_http_listener_is_optional_and_a_bad_address_is_named() {
        assert_eq!(config(&[]).unwrap().http_addr, None);
        assert_eq!(
            config(&[("NOTIFICATIONS_HTTP_ADDR", "127.0.0.1:8086")])
                .unwrap()
                .http_addr,
            Some("127.0.0.1:8086".parse().unwrap())
        );
        let err = config(&[("NOTIFICATIONS_HTTP_ADDR", "localhost")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("NOTIFICATIONS_HTTP_ADDR"), "{err}");
    }

    #[test]
    fn a_bad_sink_names_the_variable() {
        for bad in ["smtp://mail", "file:", "logs", "File:x"] {
            let err = config(&[("NOTIFICATIONS_SINK", bad)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("NOTIFICATIONS_SINK"), "{bad}: {err}");
        }
    }
}
