//! What the launcher tells the developer once everything is ready: where each part is, a
//! token per role, and a first order to place with `curl`.
//!
//! It goes to stdout (the logs go to stderr), all at once, and ends with the line
//! [`LAST_LINE`], so that a script can wait for it. The same settings go to
//! `<data dir>/dev.env` (readable by its owner only: it holds the token secret), so that
//! another shell can `source` it and use `curl`, `chorus token` or `chorus dlq` against the
//! running system.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use events::query::ProductView;
use events::values::{CustomerId, OrderId};
use gateway::Role;

use super::demo;
use super::postgres::Postgres;

/// The banner's last line.
pub const LAST_LINE: &str = "Ctrl-C (or SIGTERM) stops everything.";
/// How long the printed tokens are valid.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The subject of the printed operator token.
const OPERATOR: &str = "dev-operator";

/// A new token secret for the run: 32 random bytes, hex-encoded.
pub fn new_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .with_context(|| {
            format!(
                "cannot read /dev/urandom to make a token secret: set {}",
                gateway::settings::JWT_SECRET_VAR
            )
        })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Everything the banner shows.
#[derive(Debug)]
pub struct Banner<'a> {
    pub gateway: SocketAddr,
    pub nats_url: &'a str,
    /// The private nats-server's pid, when the launcher started one.
    pub nats_pid: Option<u32>,
    pub postgres: &'a Postgres,
    /// Where the private PostgreSQL cluster keeps its data, when the launcher started one.
    pub postgres_dir: Option<&'a Path>,
    pub database_prefix: &'a str,
    pub data_dir: &'a Path,
    pub secret: &'a str,
    pub catalogue: &'a [ProductView],
}

impl Banner<'_> {
    /// Mints the tokens, writes `dev.env` and prints the banner.
    pub fn print(&self) -> anyhow::Result<()> {
        let url = http_url(self.gateway);
        let customer = CustomerId::new().to_string();
        let shopper = gateway::mint(self.secret.as_bytes(), Role::Shopper, &customer, TOKEN_TTL)?;
        let operator = gateway::mint(self.secret.as_bytes(), Role::Operator, OPERATOR, TOKEN_TTL)?;
        let env_file = self.data_dir.join("dev.env");
        // The launcher's own pid: every service runs in it (`chorus bench saga` samples its
        // memory).
        let pid = std::process::id().to_string();
        let exports = [
            ("CHORUS_URL", url.as_str()),
            ("SHOPPER_TOKEN", shopper.as_str()),
            ("OPERATOR_TOKEN", operator.as_str()),
            ("NATS_URL", self.nats_url),
            (gateway::settings::JWT_SECRET_VAR, self.secret),
            ("CHORUS_PID", pid.as_str()),
        ];
        write_env_file(&env_file, &exports)?;

        let mut text = String::new();
        let mut line = |l: &str| {
            text.push_str(l);
            text.push('\n');
        };
        line("");
        line(
            "Chorus is running: ordering, inventory, payments, shipping, the projections, the \
             notifications and the gateway.",
        );
        line("");
        line(&format!("  Gateway     {url}"));
        line(&format!("  API docs    {url}/docs"));
        line(&format!("  OpenAPI     {url}/openapi.json"));
        let nats = match self.nats_pid {
            Some(pid) => format!(
                "  NATS        {} (nats-server pid {pid}, data in {})",
                self.nats_url,
                self.data_dir.join("nats").display()
            ),
            None => format!("  NATS        {}", self.nats_url),
        };
        line(&nats);
        let databases: Vec<String> = [
            "ordering",
            "inventory",
            "payments",
            "shipping",
            "projections",
        ]
        .iter()
        .map(|part| format!("{}_{part}", self.database_prefix))
        .collect();
        line(&match self.postgres_dir {
            Some(dir) => format!(
                "  PostgreSQL  {} (private cluster, data in {})",
                self.postgres.shown(),
                dir.display()
            ),
            None => format!("  PostgreSQL  {}", self.postgres.shown()),
        });
        line(&format!("              databases {}", databases.join(", ")));
        line(&format!(
            "  Messages    {} (to customers, from the notifications service)",
            self.data_dir.join(super::NOTIFICATIONS_FILE).display()
        ));
        for (i, product) in self.catalogue.iter().enumerate() {
            let label = if i == 0 {
                "  Catalogue   "
            } else {
                "              "
            };
            line(&format!(
                "{label}{:<13} {:<15} {:>10}  {} available",
                product.sku,
                product.name,
                product.price.to_string(),
                product.available
            ));
        }
        line("");
        line(&format!(
            "Tokens for this run (valid {} h; shopper = customer {customer}, operator = \
             {OPERATOR}); the same, with NATS_URL, {} and CHORUS_PID, in {}:",
            TOKEN_TTL.as_secs() / 3600,
            gateway::settings::JWT_SECRET_VAR,
            env_file.display()
        ));
        for (name, value) in &exports[..3] {
            line(&format!("  export {name}={value}"));
        }
        line("");
        line("Place an order (201; the answer's aggregate_id is the order's id):");
        line(&format!(
            "  curl -s -X POST \"$CHORUS_URL/orders\" -H \"Authorization: Bearer $SHOPPER_TOKEN\" \
             -H \"Idempotency-Key: {}\" -H \"Content-Type: application/json\" -d '{}'",
            OrderId::new(),
            first_order()
        ));
        line("Read it back (confirmed a moment later; GET /orders/<order id> has its timeline):");
        line("  curl -s \"$CHORUS_URL/orders\" -H \"Authorization: Bearer $SHOPPER_TOKEN\"");
        line("The same Idempotency-Key replays the first answer; a new one places another order.");
        line("");
        line(LAST_LINE);

        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .context("cannot print to stdout")
    }
}

/// The gateway's URL; an address that listens everywhere is reached on the loopback.
fn http_url(addr: SocketAddr) -> String {
    let mut shown = addr;
    if addr.ip().is_unspecified() {
        shown.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{shown}")
}

/// The body of the first order: two of the first demo product, paid with the simulator's
/// token that succeeds.
fn first_order() -> serde_json::Value {
    serde_json::json!({
        "lines": [{ "sku": demo::PRODUCTS[0].sku, "quantity": 2 }],
        "shipping_address": demo::shipping_address(),
        "payment_token": "tok_success"
    })
}

/// Writes `export NAME='value'` lines (quoted for a POSIX shell), readable by the owner only.
fn write_env_file(path: &Path, exports: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut text = String::from("# Written by chorus dev for its current run: . this file\n");
    for (name, value) in exports {
        let quoted = value.replace('\'', "'\\''");
        text.push_str(&format!("export {name}='{quoted}'\n"));
    }
    // Replaced, not rewritten in place: a file left by an older run may have other rights.
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_of_an_address_listening_everywhere_is_the_loopback() {
        assert_eq!(
            http_url(SocketAddr::from(([0, 0, 0, 0], 8080))),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            http_url(SocketAddr::from(([127, 0, 0, 1], 9000))),
            "http://127.0.0.1:9000"
        );
        assert_eq!(http_url("[::]:8080".parse().unwrap()), "http://[::1]:8080");
    }

    #[test]
    fn a_secret_is_long_enough_and_new_each_time() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert!(a.len() >= gateway::settings::MIN_SECRET_BYTES);
        assert_ne!(a, b);
    }

    #[test]
    fn the_first_order_is_one_the_gateway_accepts() {
        let body = serde_json::to_vec(&first_order()).unwrap();
        // It is printed between single quotes, for a shell.
        assert!(!body.contains(&b'\''));
        let order: gateway::api::types::PlaceOrder = serde_json::from_slice(&body).unwrap();
        assert_eq!(order.lines[0].sku.as_str(), demo::PRODUCTS[0].sku);
    }
}
