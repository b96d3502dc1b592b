//! `compose.yaml` and what it points at (`Dockerfile`, `deploy/`), checked where Docker does
//! not run: nothing here starts a container.
//!
//! The file is validated against the Compose specification's JSON schema by
//! `check-jsonschema` (its built-in `vendor.compose-spec`), which refuses a misspelt key that
//! Compose itself would reject or, worse, ignore. The rest is what a schema cannot know:
//! that each service's command is a binary of this workspace that the image builds, that
//! every variable a service is given is one its code reads, that dependencies, volumes,
//! database roles and NATS users exist, that Prometheus scrapes the addresses the services
//! listen on, and that the Grafana dashboard asks for series the code exports.
//!
//! What a binary reads is taken from the code, in one place ([`Workspace::variables_read`]):
//! the string literals of the source files that read the environment (`env::var`), in the
//! binary's crate and the workspace crates it depends on (`cargo metadata`), with
//! `"{prefix}_NAME"` templates expanded for a context's binary, and `RUST_LOG` where the code
//! has tracing-subscriber's `EnvFilter` read it. Exported names check that the scan finds
//! what is known to be read, and the former `<CONTEXT>_HEALTH_ADDR` (read only to be refused)
//! is taken out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use events::BoundedContext;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

use crate::security::{USERS, password_var};

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml(relative: &str) -> Yaml {
    serde_norway::from_str(&read(relative))
        .unwrap_or_else(|e| panic!("{relative} is not YAML: {e}"))
}

// ---- the schema ------------------------------------------------------------------------------

/// Runs `check-jsonschema --builtin-schema vendor.compose-spec <file>`: the command on `PATH`,
/// else the Python module. Absent both, the test fails: CI installs it (`pip install
/// check-jsonschema`).
fn check_compose_schema(file: &Path) -> Output {
    let ways: [(&str, &[&str]); 2] = [
        ("check-jsonschema", &[]),
        ("python3", &["-m", "check_jsonschema"]),
    ];
    for (program, prefix) in ways {
        let Ok(output) = Command::new(program)
            .args(prefix)
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg(file)
            .output()
        else {
            continue;
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        // A shim without the package behind it, or Python without the module.
        let missing = output.status.code() == Some(127)
            || stderr.contains("No module named check_jsonschema");
        if !missing {
            return output;
        }
    }
    panic!("check-jsonschema is not installed (pip install check-jsonschema)");
}

fn text_of(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn compose_file_follows_the_compose_specification() {
    let output = check_compose_schema(&root().join("compose.yaml"));
    assert!(
        output.status.success(),
        "compose.yaml fails the Compose specification's schema:\n{}",
        text_of(&output)
    );
}

#[test]
fn compose_schema_check_refuses_a_misspelt_key() {
    let original = read("compose.yaml");
    let misspelt = original.replacen("    depends_on:\n", "    depend_on:\n", 1);
    assert_ne!(
        misspelt, original,
        "compose.yaml has no depends_on to misspell"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("compose.yaml");
    std::fs::write(&file, misspelt).unwrap();
    let output = check_compose_schema(&file);
    let text = text_of(&output);
    assert!(!output.status.success(), "a misspelt key passed:\n{text}");
    assert!(
        text.contains("depend_on"),
        "the failure does not name the key:\n{text}"
    );
}

// ---- the services ----------------------------------------------------------------------------

/// A service of `compose.yaml`, as far as these tests look at it.
#[derive(Debug)]
struct Service {
    name: String,
    /// Built from the repository's Dockerfile (rather than a published image).
    built: bool,
    /// The program its command runs.
    program: Option<String>,
    environment: BTreeMap<String, String>,
    depends_on: BTreeMap<String, String>,
    healthcheck: Option<String>,
    volumes: Vec<String>,
}

impl Service {
    /// The address it listens on for HTTP: the value of its `*_ADDR` variable
    /// (`<CONTEXT>_HTTP_ADDR`, `GATEWAY_ADDR`).
    fn listen_addr(&self) -> Option<(&str, SocketAddr)> {
        let mut addrs = self
            .environment
            .iter()
            .filter(|(k, _)| k.ends_with("_ADDR"));
        let (var, value) = addrs.next()?;
        assert!(
            addrs.next().is_none(),
            "{}: more than one *_ADDR",
            self.name
        );
        let addr = value
            .parse()
            .unwrap_or_else(|e| panic!("{}: {var}={value:?}: {e}", self.name));
        Some((var, addr))
    }
}

fn string(value: &Yaml) -> String {
    match value {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn compose() -> Yaml {
    yaml("compose.yaml")
}

fn services(compose: &Yaml) -> Vec<Service> {
    let services = compose["services"]
        .as_mapping()
        .expect("compose.yaml has services");
    services
        .iter()
        .map(|(name, body)| {
            let name = string(name);
            let program = match &body["command"] {
                Yaml::Null => None,
                Yaml::String(s) => s.split_whitespace().next().map(str::to_owned),
                Yaml::Sequence(words) => words.first().map(string),
                other => panic!("{name}: command {other:?}"),
            };
            let environment = match &body["environment"] {
                Yaml::Null => BTreeMap::new(),
                Yaml::Mapping(m) => m.iter().map(|(k, v)| (string(k), string(v))).collect(),
                Yaml::Sequence(items) => items
                    .iter()
                    .map(|item| {
                        let item = string(item);
                        let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                        (k.to_owned(), v.to_owned())
                    })
                    .collect(),
                other => panic!("{name}: environment {other:?}"),
            };
            let depends_on = match &body["depends_on"] {
                Yaml::Null => BTreeMap::new(),
                Yaml::Sequence(names) => names
                    .iter()
                    .map(|n| (string(n), "service_started".to_owned()))
                    .collect(),
                Yaml::Mapping(m) => m
                    .iter()
                    .map(|(k, v)| {
                        let condition = match &v["condition"] {
                            Yaml::Null => "service_started".to_owned(),
                            c => string(c),
                        };
                        (string(k), condition)
                    })
                    .collect(),
                other => panic!("{name}: depends_on {other:?}"),
            };
            let healthcheck = match &body["healthcheck"]["test"] {
                Yaml::Null => None,
                Yaml::Sequence(words) => {
                    Some(words.iter().map(string).collect::<Vec<_>>().join(" "))
                }
                test => Some(string(test)),
            };
            let volumes = body["volumes"]
                .as_sequence()
                .map(|v| v.iter().map(string).collect())
                .unwrap_or_default();
            Service {
                built: !body["build"].is_null(),
                name,
                program,
                environment,
                depends_on,
                healthcheck,
                volumes,
            }
        })
        .collect()
}

fn service<'a>(services: &'a [Service], name: &str) -> &'a Service {
    services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("compose.yaml has no service {name}"))
}

// ---- the workspace, from cargo metadata ----------------------------------------------------

#[derive(Debug)]
struct Package {
    dir: PathBuf,
    bins: Vec<String>,
    /// The workspace crates it depends on (not for tests).
    workspace_deps: Vec<String>,
}

#[derive(Debug)]
struct Workspace {
    packages: BTreeMap<String, Package>,
}

impl Workspace {
    fn load() -> Self {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let output = Command::new(cargo)
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--offline",
            ])
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "cargo metadata: {}",
            text_of(&output)
        );
        let metadata: Json = serde_json::from_slice(&output.stdout).unwrap();
        let packages = metadata["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let manifest = PathBuf::from(p["manifest_path"].as_str().unwrap());
                let bins = p["targets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
                    .map(|t| t["name"].as_str().unwrap().to_owned())
                    .collect();
                let package = Package {
                    dir: manifest.parent().unwrap().to_owned(),
                    bins,
                    workspace_deps: p["dependencies"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|d| d["kind"].is_null() && d["path"].is_string())
                        .map(|d| d["name"].as_str().unwrap().to_owned())
                        .collect(),
                };
                (p["name"].as_str().unwrap().to_owned(), package)
            })
            .collect();
        Self { packages }
    }

    /// The package whose binary `bin` is.
    fn package_of(&self, bin: &str) -> Option<&str> {
        self.packages
            .iter()
            .find(|(_, p)| p.bins.iter().any(|b| b == bin))
            .map(|(name, _)| name.as_str())
    }

    /// `package` and the workspace crates it depends on, directly or not.
    fn graph(&self, package: &str) -> Vec<&Package> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![package.to_owned()];
        let mut found = Vec::new();
        while let Some(name) = todo.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            let p = &self.packages[&name];
            todo.extend(p.workspace_deps.iter().cloned());
            found.push(p);
        }
        found
    }

    /// The environment variables binary `bin` reads (see the module's documentation).
    fn variables_read(&self, bin: &str) -> BTreeSet<String> {
        let package = self.package_of(bin).unwrap();
        let context = BoundedContext::parse(package);
        let graph = self.graph(package);
        let mut read = BTreeSet::new();
        for p in &graph {
            for file in rust_files(&p.dir.join("src")) {
                let source = std::fs::read_to_string(&file).unwrap();
                if !source.contains("env::var") {
                    continue;
                }
                if source.contains("from_default_env") {
                    read.insert(tracing_subscriber::EnvFilter::DEFAULT_ENV.to_owned());
                }
                for literal in string_literals(&source) {
                    // `env!("CARGO_PKG_VERSION")` is read by the compiler, not the process.
                    if source.contains(&format!("env!(\"{literal}\")")) {
                        continue;
                    }
                    if is_variable_name(&literal) {
                        read.insert(literal);
                    } else if let (Some(suffix), Some(context)) =
                        (template_suffix(&literal), context)
                    {
                        read.insert(format!("{}{suffix}", context.name().to_uppercase()));
                    }
                }
            }
        }
        if let Some(context) = context {
            // Read only to refuse to start: never to be set.
            read.remove(&host::former_http_addr_var(context));
        }
        read
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The string literals of Rust `source`, comments and character literals skipped.
fn string_literals(source: &str) -> Vec<String> {
    let chars: Vec<char> = source.chars().collect();
    let mut literals = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            // A raw string: r"..." or r#"..."#.
            'r' if matches!(chars.get(i + 1), Some('"' | '#'))
                && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while chars.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if chars.get(j) != Some(&'"') {
                    i += 1;
                    continue;
                }
                let start = j + 1;
                let mut k = start;
                loop {
                    if k >= chars.len() {
                        return literals;
                    }
                    if chars[k] == '"' && (1..=hashes).all(|h| chars.get(k + h) == Some(&'#')) {
                        break;
                    }
                    k += 1;
                }
                literals.push(chars[start..k].iter().collect());
                i = k + 1 + hashes;
            }
            '"' => {
                let mut literal = String::new();
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    if let Some(c) = chars.get(i) {
                        literal.push(*c);
                    }
                    i += 1;
                }
                literals.push(literal);
                i += 1;
            }
            // A character literal ('"', '\n'); a lifetime ('a) is left alone.
            '\'' => {
                if chars.get(i + 2) == Some(&'\'') {
                    i += 3;
                } else if chars.get(i + 1) == Some(&'\\') {
                    i += 2;
                    while i < chars.len() && chars[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    literals
}

/// `NATS_URL`, `GATEWAY_ADDR`: upper case words joined by underscores.
fn is_variable_name(s: &str) -> bool {
    s.contains('_')
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && !s.ends_with('_')
        && !s.contains("__")
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// `_DATABASE_URL` of `"{prefix}_DATABASE_URL"`: a variable named after the context.
fn template_suffix(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('{')?;
    let (_, suffix) = rest.split_once('}')?;
    (suffix.starts_with('_') && is_variable_name(&format!("X{suffix}"))).then_some(suffix)
}

#[test]
fn compose_services_run_binaries_the_image_builds() {
    let workspace = Workspace::load();
    let dockerfile = read("Dockerfile");
    let services = services(&compose());
    let built: Vec<&Service> = services.iter().filter(|s| s.built).collect();
    assert!(!built.is_empty(), "no service is built from the Dockerfile");
    for s in built {
        let program = s
            .program
            .as_deref()
            .unwrap_or_else(|| panic!("{}: built from the Dockerfile but names no binary", s.name));
        assert!(
            workspace.package_of(program).is_some(),
            "{}: {program} is not a binary of the workspace",
            s.name
        );
        assert!(
            dockerfile.contains(&format!("--bin {program} "))
                || dockerfile.contains(&format!("--bin {program}\n")),
            "{}: the Dockerfile does not build {program}",
            s.name
        );
        assert!(
            dockerfile.contains(&format!("/src/target/release/{program}\n"))
                || dockerfile.contains(&format!("/src/target/release/{program} ")),
            "{}: the Dockerfile does not copy {program} into the image",
            s.name
        );
    }
    // Every service binary of the workspace runs somewhere.
    for bin in [
        "ordering",
        "inventory",
        "payments",
        "shipping",
        "chorus-projections",
        "chorus-gateway",
        "chorus-notifications",
    ] {
        assert!(
            workspace.package_of(bin).is_some(),
            "{bin} is no longer a binary"
        );
        assert!(
            services.iter().any(|s| s.program.as_deref() == Some(bin)),
            "no service runs {bin}"
        );
    }
}

#[test]
fn compose_sets_only_variables_the_services_read() {
    let workspace = Workspace::load();
    let services = services(&compose());
    for s in services.iter().filter(|s| s.built) {
        let program = s.program.as_deref().unwrap();
        let read = workspace.variables_read(program);
        // The scan finds what is known to be read: a scan that finds nothing proves nothing.
        for known in ["NATS_URL", "CHORUS_LOG_FORMAT", "RUST_LOG"] {
            assert!(
                read.contains(known),
                "{program}: the scan misses {known}: {read:?}"
            );
        }
        if let Some(context) = BoundedContext::parse(program) {
            let http = host::http_addr_var(context);
            let database = format!("{}_DATABASE_URL", context.name().to_uppercase());
            for known in [&http, &database] {
                assert!(read.contains(known), "{program}: the scan misses {known}");
            }
            assert!(!read.contains(&host::former_http_addr_var(context)));
        }
        if program == "ordering" {
            assert!(read.contains(ordering::service::PAYMENT_TIMEOUT_VAR));
        }
        // The services that are not contexts listen on their own <SERVICE>_HTTP_ADDR.
        for (service, name) in [
            ("chorus-projections", "projections"),
            ("chorus-notifications", "notifications"),
        ] {
            if program == service {
                let http = host::http_addr_var(name);
                assert!(read.contains(&http), "{program}: the scan misses {http}");
            }
        }
        for var in s.environment.keys() {
            assert!(
                read.contains(var),
                "{}: {var} is set but {program} does not read it (it reads {read:?})",
                s.name
            );
        }
    }
}

#[test]
fn compose_gives_nats_every_password_its_configuration_reads() {
    let auth = read("nats/auth.conf");
    let referenced: BTreeSet<String> = auth
        .split('$')
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| name.ends_with("_NATS_PASSWORD"))
        .collect();
    let expected: BTreeSet<String> = USERS.iter().map(|u| password_var(u)).collect();
    assert_eq!(
        referenced, expected,
        "nats/auth.conf and security::USERS differ"
    );
    let services = services(&compose());
    let nats = service(&services, "nats");
    let set: BTreeSet<String> = nats.environment.keys().cloned().collect();
    assert_eq!(set, expected, "the nats service's variables");
    assert!(
        nats.volumes
            .iter()
            .any(|v| v.starts_with("./nats/secure.conf:")),
        "nats runs without nats/secure.conf"
    );
}

#[test]
fn compose_connects_each_service_as_its_own_user() {
    let compose = compose();
    let services = services(&compose);
    let init = string(&compose["configs"]["create-databases"]["content"]);
    for s in services.iter().filter(|s| s.built) {
        let url = s
            .environment
            .get("NATS_URL")
            .unwrap_or_else(|| panic!("{}: no NATS_URL", s.name));
        let rest = url.strip_prefix("nats://").unwrap();
        let (user, after) = rest.split_once(':').unwrap();
        assert!(
            USERS.contains(&user),
            "{}: NATS user {user} is not in auth.conf",
            s.name
        );
        assert!(
            after.starts_with(&format!("${{{}", password_var(user))),
            "{}: NATS_URL does not carry {}",
            s.name,
            password_var(user)
        );
        assert!(after.ends_with("@nats:4222"), "{}: NATS_URL {url}", s.name);
        for (var, url) in s
            .environment
            .iter()
            .filter(|(k, _)| k.ends_with("_DATABASE_URL"))
        {
            let rest = url.strip_prefix("postgres://").unwrap();
            let (role, after) = rest.split_once(':').unwrap();
            let (host, database) = after.rsplit_once('@').unwrap().1.split_once('/').unwrap();
            assert_eq!(host, "postgres:5432", "{}: {var}", s.name);
            assert!(
                init.contains(&format!("CREATE ROLE {role} LOGIN PASSWORD")),
                "{}: {var}: role {role} is not created",
                s.name
            );
            assert!(
                init.contains(&format!("CREATE DATABASE {database} OWNER {role};")),
                "{}: {var}: database {database} owned by {role} is not created",
                s.name
            );
        }
    }
}

#[test]
fn compose_dependencies_volumes_and_health_checks_hold_together() {
    let services = services(&compose());
    let names: BTreeSet<&str> = services.iter().map(|s| s.name.as_str()).collect();
    for s in &services {
        for (target, condition) in &s.depends_on {
            assert!(
                names.contains(target.as_str()),
                "{}: depends on {target}, not a service",
                s.name
            );
            if condition == "service_healthy" {
                assert!(
                    service(&services, target).healthcheck.is_some(),
                    "{}: waits for {target} to be healthy, which has no health check",
                    s.name
                );
            }
        }
        for volume in &s.volumes {
            if let Some(source) = volume.split(':').next().filter(|v| v.starts_with("./")) {
                assert!(
                    root().join(source).exists(),
                    "{}: mounts {source}, which does not exist",
                    s.name
                );
            }
        }
        if !s.built {
            continue;
        }
        // A health check probes the service's own listener; one without a listener has none.
        match (s.listen_addr(), &s.healthcheck) {
            (Some((var, addr)), Some(test)) => {
                let probe = |path| format!("http://127.0.0.1:{}{path}", addr.port());
                assert!(
                    test.contains(&probe("/readyz")) || test.contains(&probe("/healthz")),
                    "{}: the health check {test:?} does not probe {var}",
                    s.name
                );
            }
            (None, Some(test)) => panic!("{}: a health check {test:?} without a listener", s.name),
            (Some((var, _)), None) => {
                panic!("{}: listens on {var} but has no health check", s.name)
            }
            (None, None) => {}
        }
    }
}

#[test]
fn compose_services_send_traces_to_the_collector() {
    let services = services(&compose());
    let collector = yaml("deploy/otel-collector.yaml");
    let http = string(&collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]);
    let port = http.rsplit_once(':').unwrap().1;
    let endpoint = format!("http://otel-collector:{port}");
    let tracing: Vec<&Service> = services
        .iter()
        .filter(|s| s.environment.contains_key("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .collect();
    assert!(!tracing.is_empty(), "no service exports traces");
    for s in tracing {
        assert_eq!(
            s.environment["OTEL_EXPORTER_OTLP_ENDPOINT"], endpoint,
            "{}",
            s.name
        );
        assert_eq!(
            s.environment.get("OTEL_SERVICE_NAME"),
            Some(&s.name),
            "{}: traces under another name",
            s.name
        );
        assert!(s.depends_on.contains_key("otel-collector"), "{}", s.name);
    }
    // The collector passes them on to a service of the file.
    let collector_service = service(&services, "otel-collector");
    for exporter in collector["exporters"].as_mapping().unwrap().values() {
        let target = string(&exporter["endpoint"]);
        let host = target
            .trim_start_matches("http://")
            .split(':')
            .next()
            .unwrap();
        service(&services, host);
        assert!(
            collector_service.depends_on.contains_key(host),
            "the collector does not wait for {host}"
        );
    }
}

// ---- Prometheus and Grafana -------------------------------------------------------------------

#[test]
fn prometheus_scrapes_every_listener_and_nothing_else() {
    let services = services(&compose());
    let listeners: BTreeMap<&str, SocketAddr> = services
        .iter()
        .filter_map(|s| s.listen_addr().map(|(_, addr)| (s.name.as_str(), addr)))
        .collect();
    let prometheus = yaml("deploy/prometheus.yml");
    let mut scraped = BTreeSet::new();
    for job in prometheus["scrape_configs"].as_sequence().unwrap() {
        let path = match &job["metrics_path"] {
            Yaml::Null => "/metrics".to_owned(),
            p => string(p),
        };
        assert_eq!(path, "/metrics", "job {:?}", job["job_name"]);
        for config in job["static_configs"].as_sequence().unwrap() {
            for target in config["targets"].as_sequence().unwrap() {
                let target = string(target);
                let (host, port) = target.rsplit_once(':').unwrap();
                let addr = listeners
                    .get(host)
                    .unwrap_or_else(|| panic!("{target}: {host} is no service with a listener"));
                assert_eq!(
                    port,
                    addr.port().to_string(),
                    "{target}: {host} listens on {addr}"
                );
                scraped.insert(host.to_owned());
            }
        }
    }
    let expected: BTreeSet<String> = listeners.keys().map(|s| (*s).to_owned()).collect();
    assert_eq!(scraped, expected, "services scraped");
    let prom = service(&services, "prometheus");
    assert!(
        prom.volumes
            .iter()
            .any(|v| v.starts_with("./deploy/prometheus.yml:"))
    );
}

/// The series a file of metrics registers, each with whether it is a histogram (which
/// Prometheus exposes as `_bucket`, `_sum` and `_count`).
fn registered_series(relative: &str) -> BTreeMap<String, bool> {
    let source = read(relative);
    // The unit tests below the code name series too; only what the code registers counts.
    let code = source.split("#[cfg(test)]").next().unwrap();
    let mut series = BTreeMap::new();
    let mut rest = code;
    while let Some(at) = rest.find("\"chorus_") {
        let before = &rest[..at];
        let name: String = rest[at + 1..].chars().take_while(|c| *c != '"').collect();
        // The call the name is the first argument of: `histogram(`, `HistogramOpts::new(`.
        let call = before.trim_end().strip_suffix('(').unwrap_or("");
        let callee = call
            .rsplit(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .next()
            .unwrap_or("");
        series.insert(name.clone(), callee.to_lowercase().contains("histogram"));
        rest = &rest[at + name.len() + 2..];
    }
    series
}

fn queries(value: &Json, found: &mut Vec<String>) {
    match value {
        Json::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Json::String(expr)) => found.push(expr.clone()),
                    _ => queries(value, found),
                }
            }
        }
        Json::Array(items) => items.iter().for_each(|item| queries(item, found)),
        _ => {}
    }
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("chorus_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

#[test]
fn grafana_dashboard_queries_series_the_code_exports() {
    let mut series = registered_series("crates/host/src/metrics.rs");
    series.extend(registered_series("gateway/src/metrics.rs"));
    assert!(
        series.get("chorus_command_duration_seconds") == Some(&true)
            && series.get("chorus_events_appended_total") == Some(&false),
        "the scan of the metrics code is wrong: {series:?}"
    );
    let exposed: BTreeSet<String> = series
        .iter()
        .flat_map(|(name, histogram)| {
            let suffixes: &[&str] = if *histogram {
                &["_bucket", "_sum", "_count"]
            } else {
                &[""]
            };
            suffixes.iter().map(move |s| format!("{name}{s}"))
        })
        .collect();

    let dashboard: Json =
        serde_json::from_str(&read("deploy/grafana/dashboards/chorus.json")).unwrap();
    let mut exprs = Vec::new();
    queries(&dashboard, &mut exprs);
    assert!(!exprs.is_empty(), "the dashboard has no queries");
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{expr}: queries no chorus series");
        for name in names {
            assert!(
                exposed.contains(&name),
                "{expr}: {name} is not a series the code exports"
            );
        }
    }
    let all = exprs.join("\n");
    for wanted in [
        "rate(chorus_events_appended_total",
        "rate(chorus_commands_handled_total",
        "rate(chorus_command_duration_seconds_bucket",
        "rate(chorus_gateway_http_request_duration_seconds_bucket",
        "chorus_consumer_pending_messages",
        "chorus_outbox_backlog_events",
        "chorus_consumer_messages_total{outcome=\"dead_lettered\"}",
    ] {
        assert!(all.contains(wanted), "the dashboard does not show {wanted}");
    }

    // Every panel reads the provisioned data source.
    let datasources = yaml("deploy/grafana/provisioning/datasources/prometheus.yaml");
    let uids: BTreeSet<String> = datasources["datasources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|d| string(&d["uid"]))
        .collect();
    let mut used = Vec::new();
    datasource_uids(&dashboard, &mut used);
    assert!(!used.is_empty());
    for uid in used {
        assert!(
            uids.contains(&uid),
            "the dashboard uses data source {uid}, not provisioned"
        );
    }
}

fn datasource_uids(value: &Json, found: &mut Vec<String>) {
    match value {
        Json::Object(map) => {
            if let Some(Json::String(uid)) = map.get("datasource").and_then(|d| d.get("uid")) {
                found.push(uid.clone());
            }
            map.values().for_each(|v| datasource_uids(v, found));
        }
        Json::Array(items) => items.iter().for_each(|v| datasource_uids(v, found)),
        _ => {}
    }
}
