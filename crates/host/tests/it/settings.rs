use std::future::Future;
use std::sync::Arc;

use events::command::CommandReply;
use events::{BoundedContext, Metadata};
use host::{Commands, Host, http_addr_from_vars, http_addr_var, parse_http_addr};

use crate::Infra;

#[test]
fn the_http_address_is_optional_and_an_ip_address_with_a_port() {
    let context = BoundedContext::Shipping;
    assert_eq!(http_addr_var(context), "SHIPPING_HTTP_ADDR");
    // A service that is not a context is named by its name.
    assert_eq!(http_addr_var("projections"), "PROJECTIONS_HTTP_ADDR");
    for unset in [None, Some("")] {
        assert_eq!(parse_http_addr(context, unset).unwrap(), None);
    }
    assert_eq!(
        parse_http_addr(context, Some("127.0.0.1:8081")).unwrap(),
        Some("127.0.0.1:8081".parse().unwrap())
    );
    assert_eq!(
        parse_http_addr(context, Some("[::]:0")).unwrap(),
        Some("[::]:0".parse().unwrap())
    );
}

/// The variables `vars` holds, read as `std::env::var` reads the environment.
fn reading(vars: &[(&str, &str)]) -> impl Fn(&str) -> Result<String, std::env::VarError> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| {
        vars.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .ok_or(std::env::VarError::NotPresent)
    }
}

#[test]
fn the_address_is_read_from_the_http_variable_and_the_former_name_is_refused() {
    let context = BoundedContext::Ordering;
    let read = |vars: &[(&str, &str)]| http_addr_from_vars(context, reading(vars));
    assert_eq!(read(&[]).unwrap(), None);
    assert_eq!(
        read(&[("ORDERING_HTTP_ADDR", "127.0.0.1:8081")]).unwrap(),
        Some("127.0.0.1:8081".parse().unwrap())
    );
    // Set but empty is unset, under either name.
    assert_eq!(
        read(&[("ORDERING_HEALTH_ADDR", ""), ("ORDERING_HTTP_ADDR", "")]).unwrap(),
        None
    );
    for vars in [
        &[("ORDERING_HEALTH_ADDR", "127.0.0.1:8081")][..],
        &[
            ("ORDERING_HEALTH_ADDR", "127.0.0.1:8081"),
            ("ORDERING_HTTP_ADDR", "127.0.0.1:8081"),
        ],
    ] {
        let error = format!("{:#}", read(vars).unwrap_err());
        assert!(
            error.contains("ORDERING_HEALTH_ADDR") && error.contains("ORDERING_HTTP_ADDR"),
            "{vars:?}: {error}"
        );
    }
    let error = format!("{:#}", read(&[("ORDERING_HTTP_ADDR", "8081")]).unwrap_err());
    assert!(error.contains("ORDERING_HTTP_ADDR"), "{error}");
    // Another context's variables are not this one's.
    assert_eq!(
        read(&[("SHIPPING_HEALTH_ADDR", "127.0.0.1:1")]).unwrap(),
        None
    );
}

#[test]
fn a_bad_http_address_is_refused_naming_the_variable() {
    for bad in [
        "8081",
        "127.0.0.1",
        "localhost:8081",
        "127.0.0.1:99999",
        " 127.0.0.1:8081",
        "http://127.0.0.1:8081",
    ] {
        let error = match parse_http_addr(BoundedContext::Inventory, Some(bad)) {
            Ok(addr) => panic!("{bad:?} was taken as {addr:?}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(error.contains("INVENTORY_HTTP_ADDR"), "{bad:?}: {error}");
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
        .listen_http(taken.local_addr().unwrap())
        .await
        .unwrap_err();
    let error = format!("{error:#}");
    assert!(error.contains("PAYMENTS_HTTP_ADDR"), "{error}");

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

#[tokio::test]
async fn every_session_of_the_store_plans_its_statements_generically() {
    let infra = Infra::new().await;
    let host = Host::start(&infra.settings(BoundedContext::Shipping))
        .await
        .unwrap();
    // Every connection of the pool: hold them all at once.
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(host.store().pool().acquire().await.unwrap());
    }
    for session in &mut sessions {
        let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
            .fetch_one(&mut **session)
            .await
            .unwrap();
        assert_eq!(mode, "force_generic_plan");
    }
}
