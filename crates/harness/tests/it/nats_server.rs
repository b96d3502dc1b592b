use std::time::Duration;

use harness::{MIN_NATS_SERVER, NatsServer};
use tokio::net::TcpStream;

fn parse_version(version: &str) -> Vec<u32> {
    version
        .split('.')
        .map(|part| part.parse().expect("numeric version part"))
        .collect()
}

async fn create_stream(client: async_nats::Client, name: &str) -> async_nats::jetstream::Context {
    let jetstream = async_nats::jetstream::new(client);
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{name}.>")],
            ..Default::default()
        })
        .await
        .expect("create stream");
    jetstream
}

#[tokio::test]
async fn starts_a_private_jetstream_server_and_cleans_up() {
    let server = NatsServer::start().await.unwrap();
    let client = server.connect().await.unwrap();
    let version = client.server_info().version;
    assert!(version.starts_with("2.1"), "{version}");
    let (major, minor, patch) = MIN_NATS_SERVER;
    assert!(
        parse_version(&version) >= vec![major, minor, patch],
        "{version}"
    );

    let jetstream = create_stream(client, "orders").await;
    let ack = jetstream
        .publish("orders.created", "hello".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, "orders");
    assert_eq!(ack.sequence, 1);

    let port = server.port();
    let store_dir = server.store_dir().to_path_buf();
    assert!(store_dir.join("jetstream").is_dir());
    drop(server);
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
    assert!(!store_dir.exists());
}

#[tokio::test]
async fn restart_keeps_jetstream_data() {
    let mut server = NatsServer::start().await.unwrap();
    let port = server.port();
    let jetstream = create_stream(server.connect().await.unwrap(), "kept").await;
    jetstream
        .publish("kept.one", "1".into())
        .await
        .unwrap()
        .await
        .unwrap();

    server.stop().await;
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
    assert!(server.store_dir().is_dir());

    server.restart().await.unwrap();
    assert_eq!(server.port(), port);
    let jetstream = async_nats::jetstream::new(server.connect().await.unwrap());
    let mut stream = jetstream.get_stream("kept").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.subjects, ["kept.>"]);
    assert_eq!(info.state.messages, 1);
}

#[tokio::test]
async fn start_with_config_applies_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nats.conf");
    std::fs::write(&config, "server_name: chorus_test\nmax_payload: 4096\n").unwrap();
    let server = NatsServer::start_with_config(&config).await.unwrap();
    let info = server.connect().await.unwrap().server_info();
    assert_eq!(info.server_name, "chorus_test");
    assert_eq!(info.max_payload, 4096);
    assert_eq!(info.port, server.port());
}

#[tokio::test]
async fn start_in_keeps_the_callers_store_dir() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("nats");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = NatsServer::start_in(store_dir.clone(), port, None)
        .await
        .unwrap();
    assert_eq!(server.url(), format!("nats://127.0.0.1:{port}"));
    create_stream(server.connect().await.unwrap(), "dev").await;
    drop(server);
    assert!(store_dir.join("jetstream").is_dir());
    assert!(store_dir.join("nats-server.log").is_file());
}

#[tokio::test]
async fn a_taken_port_is_reported_with_the_log() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let started = tokio::time::timeout(
        Duration::from_secs(15),
        NatsServer::start_in(dir.path().to_path_buf(), port, None),
    )
    .await
    .unwrap();
    let message = format!("{:#}", started.unwrap_err());
    assert!(message.contains("address already in use"), "{message}");
}
