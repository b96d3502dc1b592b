//! Logs and traces of a Chorus process: `tracing` to stderr, and OpenTelemetry traces over OTLP
//! when there is somewhere to send them.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `info,sqlx=warn`), as text or, with
//! `CHORUS_LOG_FORMAT=json`, as JSON lines.
//!
//! Traces are exported only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (OTLP over HTTP with
//! protobuf, e.g. `http://127.0.0.1:4318`; the exporter adds `/v1/traces`, and reads the other
//! `OTEL_EXPORTER_OTLP_*` variables itself). The service is named by `OTEL_SERVICE_NAME`, or
//! else after the binary. Without the variable there is no OpenTelemetry layer at all: spans
//! are `tracing`'s alone, and the trace context a process receives is handed on unchanged
//! (see `bus::follow_trace`). The spans exported are those at `info` and above whatever
//! `RUST_LOG` says, since `RUST_LOG` chooses what is logged, not what is traced.
//!
//! What is traced: the gateway's HTTP requests and the NATS requests they make, each command a
//! context handles, each message a consumer handles, each message a projection applies and
//! each query it answers; each a child of the previous hop, so one order's saga is one trace
//! across the services. Each deadline firing is the root of a trace of its own. `chorus dev`
//! sets up the same way, so the services it runs in one process export like the binaries do.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Where traces go: `OTEL_EXPORTER_OTLP_ENDPOINT`.
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The service's name in its traces: `OTEL_SERVICE_NAME`.
pub const SERVICE_NAME_VAR: &str = "OTEL_SERVICE_NAME";
/// The OTLP protocol: only `http/protobuf` (the default) is built in.
pub const PROTOCOL_VAR: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// The log format: `text` (the default) or `json`.
pub const LOG_FORMAT_VAR: &str = "CHORUS_LOG_FORMAT";

/// What [`init`] read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetrySettings {
    pub json_logs: bool,
    /// The OTLP endpoint and the service's name, when traces are exported.
    pub export: Option<Export>,
}

/// Where and as whom traces are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub endpoint: String,
    pub service_name: String,
}

impl TelemetrySettings {
    /// Reads the variables through `var` (the environment, or a test's map); `binary` names
    /// the service when `OTEL_SERVICE_NAME` does not.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>, binary: &str) -> anyhow::Result<Self> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let json_logs = match var(LOG_FORMAT_VAR).as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => anyhow::bail!("{LOG_FORMAT_VAR}={other:?} is not text or json"),
        };
        let Some(endpoint) = var(ENDPOINT_VAR) else {
            return Ok(Self {
                json_logs,
                export: None,
            });
        };
        if let Some(protocol) = var(PROTOCOL_VAR)
            && protocol != "http/protobuf"
        {
            anyhow::bail!(
                "{PROTOCOL_VAR}={protocol:?} is not supported: traces are exported as http/protobuf"
            );
        }
        if endpoint.starts_with("https://") {
            anyhow::bail!(
                "{ENDPOINT_VAR}={endpoint:?}: traces are exported over plain http (a collector \
                 beside the service); https is not built in"
            );
        }
        if !endpoint.starts_with("http://") || endpoint.len() == "http://".len() {
            anyhow::bail!("{ENDPOINT_VAR}={endpoint:?} is not an http:// URL");
        }
        let service_name = var(SERVICE_NAME_VAR).unwrap_or_else(|| binary.to_owned());
        Ok(Self {
            json_logs,
            export: Some(Export {
                endpoint,
                service_name,
            }),
        })
    }
}

/// The installed telemetry; [`Telemetry::shutdown`] sends the spans not yet exported.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is left (the batch in hand) and stops the exporter. Call it outside the
    /// async runtime: the exporter blocks while it sends.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("cannot export the last spans: {e}");
        }
    }
}

/// Installs the process's subscriber: the log layer and, with `OTEL_EXPORTER_OTLP_ENDPOINT`
/// set, the OpenTelemetry layer with a batching OTLP exporter. Call it before the async
/// runtime starts. `binary` names the service when `OTEL_SERVICE_NAME` does not.
pub fn init(binary: &str) -> anyhow::Result<Telemetry> {
    init_with_filter(binary, "info,sqlx=warn")
}

/// [`init`], logging what `default_filter` lets through when `RUST_LOG` is not set (the
/// `chorus` CLI logs less than a service).
pub fn init_with_filter(binary: &str, default_filter: &str) -> anyhow::Result<Telemetry> {
    let settings = TelemetrySettings::from_vars(|name| std::env::var(name).ok(), binary)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if settings.json_logs {
        logs.json().with_filter(filter).boxed()
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed()
    };
    let provider = match &settings.export {
        None => None,
        Some(export) => Some(provider(export)?),
    };
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("chorus"))
            .with_filter(LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .context("cannot install the logger")?;
    if let Some(export) = &settings.export {
        tracing::info!(endpoint = %export.endpoint, service = %export.service_name, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

/// A tracer provider that batches spans to the OTLP endpoint.
fn provider(export: &Export) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .with_context(|| {
            format!(
                "cannot export traces to {} ({ENDPOINT_VAR})",
                export.endpoint
            )
        })?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(export.service_name.clone())
                .build(),
        )
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> anyhow::Result<TelemetrySettings> {
        let vars: std::collections::HashMap<_, _> = vars.iter().copied().collect();
        TelemetrySettings::from_vars(|name| vars.get(name).map(|v| (*v).to_owned()), "chorus-x")
    }

    #[test]
    fn no_endpoint_no_export() {
        let settings = read(&[(SERVICE_NAME_VAR, "orders")]).unwrap();
        assert_eq!(settings.export, None);
        assert!(!settings.json_logs);
        assert_eq!(read(&[(ENDPOINT_VAR, " ")]).unwrap().export, None);
    }

    #[test]
    fn the_service_is_named_by_its_variable_or_its_binary() {
        let export = read(&[(ENDPOINT_VAR, "http://collector:4318")])
            .unwrap()
            .export
            .unwrap();
        assert_eq!(export.service_name, "chorus-x");
        assert_eq!(export.endpoint, "http://collector:4318");
        let export = read(&[
            (ENDPOINT_VAR, "http://collector:4318"),
            (SERVICE_NAME_VAR, "ordering-eu"),
            (PROTOCOL_VAR, "http/protobuf"),
            (LOG_FORMAT_VAR, "json"),
        ])
        .unwrap();
        assert!(export.json_logs);
        assert_eq!(export.export.unwrap().service_name, "ordering-eu");
    }

    #[test]
    fn bad_settings_name_their_variable() {
        for (vars, variable) in [
            (vec![(LOG_FORMAT_VAR, "yaml")], LOG_FORMAT_VAR),
            (vec![(ENDPOINT_VAR, "collector:4318")], ENDPOINT_VAR),
            (vec![(ENDPOINT_VAR, "https://collector:4318")], ENDPOINT_VAR),
            (
                vec![
                    (ENDPOINT_VAR, "http://collector:4317"),
                    (PROTOCOL_VAR, "grpc"),
                ],
                PROTOCOL_VAR,
            ),
        ] {
            let error = read(&vars).unwrap_err().to_string();
            assert!(error.contains(variable), "{error}");
        }
    }
}
