//! Integration tests of the notifications service, on private nats-servers.
#![allow(clippy::unwrap_used)]

mod contract;
mod delivery;
mod observe;
mod process;
mod publish;
mod server;
mod sink;
mod support;
