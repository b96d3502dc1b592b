//! TLS to a private nats-server whose certificates come from a CA made here: a client that
//! trusts the CA connects and round-trips a message, one that does not is refused, and a
//! server that verifies clients needs a client certificate from that CA.

use std::path::{Path, PathBuf};

use bus::Tls;
use futures::StreamExt;
use harness::NatsServer;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, each as
/// PEM files; and a second CA that signed nothing of these.
struct Pki {
    dir: TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let (ca_pem, issuer) = ca("Chorus test CA");
        let (other_pem, _) = ca("Another CA");
        let (server_cert, server_key) = leaf(
            &issuer,
            "nats-server",
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            &issuer,
            "ordering",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Self {
            ca: write("ca.pem", ca_pem),
            other_ca: write("other-ca.pem", other_pem),
            server: (
                write("server.pem", server_cert),
                write("server-key.pem", server_key),
            ),
            client: (
                write("client.pem", client_cert),
                write("client-key.pem", client_key),
            ),
            dir,
        }
    }

    /// A server config with TLS on, verifying client certificates when `verify`.
    fn server_config(&self, verify: bool) -> PathBuf {
        let (cert, key) = &self.server;
        let config = format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: {verify}\n  timeout: 2\n}}\n",
            quoted(cert),
            quoted(key),
            quoted(&self.ca),
        );
        let path = self.dir.path().join(format!("tls-verify-{verify}.conf"));
        std::fs::write(&path, config).unwrap();
        path
    }

    fn trusting(&self, ca: &Path) -> Tls {
        Tls {
            ca: Some(ca.to_owned()),
            client: None,
        }
    }
}

fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    name: &str,
    names: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// `tls://` URL of `server`.
fn tls_url(server: &NatsServer) -> String {
    format!("tls://127.0.0.1:{}", server.port())
}

/// Sends a message to itself through the server.
async fn round_trip(client: &async_nats::Client) {
    let mut subscription = client.subscribe("tls.probe").await.unwrap();
    client
        .publish("tls.probe", "over TLS".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let message = subscription.next().await.expect("the message comes back");
    assert_eq!(message.payload.as_ref(), b"over TLS");
}

#[tokio::test]
async fn a_client_trusting_the_private_ca_connects_and_one_that_does_not_is_refused() {
    let pki = Pki::new();
    let server = NatsServer::start_with_config(&pki.server_config(false))
        .await
        .expect("nats-server starts with TLS");

    // By tls:// and by nats:// (the server requires TLS: the client upgrades).
    for url in [tls_url(&server), server.url()] {
        let client = bus::connect_with(&url, "test", &pki.trusting(&pki.ca))
            .await
            .unwrap_or_else(|e| panic!("{url}: {e:#}"));
        assert!(client.server_info().tls_required, "{url}");
        round_trip(&client).await;
    }

    for tls in [Tls::default(), pki.trusting(&pki.other_ca)] {
        let err = bus::connect_with(&tls_url(&server), "test", &tls)
            .await
            .expect_err("a server certificate from an unknown CA is refused");
        let err = format!("{err:#}");
        assert!(
            err.contains("certificate") && err.contains(bus::TLS_CA_VAR),
            "{tls:?}: {err}"
        );
    }
}

#[tokio::test]
async fn a_client_that_requires_tls_refuses_a_server_without_it() {
    let pki = Pki::new();
    let server = NatsServer::start().await.expect("nats-server starts");
    let err = bus::connect_with(&server.url(), "test", &pki.trusting(&pki.ca))
        .await
        .expect_err("no TLS, no connection");
    assert!(format!("{err:#}").contains("must be TLS"), "{err:#}");
}

#[tokio::test]
async fn a_server_that_verifies_clients_needs_a_client_certificate_from_its_ca() {
    let pki = Pki::new();
    let server = NatsServer::start_with_config(&pki.server_config(true))
        .await
        .expect("nats-server starts with TLS and verify");

    let without = bus::connect_with(&tls_url(&server), "test", &pki.trusting(&pki.ca)).await;
    assert!(without.is_err(), "connected without a client certificate");

    let with = Tls {
        client: Some(pki.client.clone()),
        ..pki.trusting(&pki.ca)
    };
    let client = bus::connect_with(&tls_url(&server), "test", &with)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    round_trip(&client).await;
}
