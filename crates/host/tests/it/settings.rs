use std::future::Future;
use std::sync::Arc;

use events::command::CommandReply;
use events::{BoundedContext, Metadata};
use host::{Commands, Host, health_addr_var, parse_health_addr};

use crate::Infra;

#[test]
fn the_health_address_is_optional_and_an_ip_address_with_a_port() {
    let context = BoundedContext::Shipping;
    assert_eq!(health_addr_var(context), "SHIPPING_HEALTH_ADDR");
    for unset in [None, Some("")] {
        assert_eq!(parse_health_addr(context, unset).unwrap(), None);
    }
    assert_eq!(
        parse_health_addr(context, Some("127.0.0.1:8081")).unwrap(),
        Some("127.0.0.1:8081".parse().unwrap())
    );
    assert_eq!(
        parse_health_addr(context, Some("[::]:0")).unwrap(),
        Some("[::]:0".parse().unwrap())
    );
}

#[test]
fn a_bad_health_address_is_refused_naming_the_variable() {
    for bad in [
        "8081",
        "127.0.0.1",
        "localhost:8081",
        "127.0.0.1:99999",
        " 127.0.0.1:8081",
        "http://127.0.0.1:8081",
    ] {
        let error = match parse_health_addr(BoundedContext::Inventory, Some(bad)) {
            Ok(addr) => panic!("{bad:?} was taken as {addr:?}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(error.contains("INVENTORY_HEALTH_ADDR"), "{bad:?}: {error}");
    }
}

/// Commands of which one is named like the health endpoint.
struct Clashing;

impl Commands for Clashing {
    fn names(&self) -> &'static [&'static str] {
        &["health"]
    }

    fn run(&self, _: &str, _: &[u8], _: Metadata) -> impl Future<Output = CommandReply> + Send {
        std::future::ready(CommandReply::rejected("unreachable", "never runs"))
    }
}

#[tokio::test]
async fn an_address_in_use_is_refused_naming_the_variable_and_a_service_without_commands_has_its_health()
 {
    let infra = Infra::new().await;
    let mut host = Host::start(&infra.settings(BoundedContext::Payments))
        .await
        .unwrap();
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = host
        .listen_health(taken.local_addr().unwrap())
        .await
        .unwrap_err();
    let error = format!("{error:#}");
    assert!(error.contains("PAYMENTS_HEALTH_ADDR"), "{error}");

    let error = host.serve(Arc::new(Clashing)).await.unwrap_err();
    assert!(
        format!("{error:#}").contains("health endpoint"),
        "{error:#}"
    );

    // Payments serves no command, and answers for its health all the same.
    let client = infra.nats.connect().await.unwrap();
    let reply = client
        .request(host::health_subject(BoundedContext::Payments), "".into())
        .await
        .unwrap();
    let report: host::HealthReport = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(report.context, "payments");
    let own = host.health().await;
    assert_eq!(own.instance, report.instance);
    assert_eq!(own.checks.len(), 3, "database, stream and relay: {own:#?}");
    drop(host);
}
