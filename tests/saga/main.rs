//! End-to-end tests of the fulfilment saga: the four context services (ordering, inventory,
//! payments, shipping) run together, each on its own PostgreSQL database, around a private
//! nats-server, as their `service::start` builds them. Each scenario starts its own system,
//! drives it through the commands a client would send, waits for the saga to reach its end,
//! and then checks the invariants that span the contexts (see `invariants`). `security` runs
//! the accounts and users of `nats/` on a private server: what each user is refused, and the
//! saga under them. `compose` checks `compose.yaml` and what it points at without Docker.

// A test fails by panicking; helpers unwrap like the tests do.
#![allow(clippy::unwrap_used)]

mod compose;
mod invariants;
mod scenarios;
mod security;
mod system;
