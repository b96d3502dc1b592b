//! The payments context: one `Payment` per order, which owns the amount owed, its capture
//! through the payment provider, and its refund or void when the order ends early.
//!
//! Payments reacts to `OrderPlaced` (record what will be owed and the token to pay with),
//! `StockReserved` (capture) and `OrderCancelled` or `OrderRejected` (refund or void). The
//! provider is a port ([`PaymentProvider`]); [`Simulator`] is its built-in, deterministic
//! adapter, keyed by test tokens. [`Resilient`] wraps any adapter so that calls through the port
//! have a timeout, retries with backoff and a circuit breaker, as set by a
//! [`ResiliencePolicy`].
//!
//! The aggregate holds the domain only: no database, no NATS, no clock; it reaches the money
//! only through the provider port, its services. The [`reactions`] module is the application
//! layer around it: it turns ordering's and inventory's events into commands, in units of work
//! of payments' store. The only clock read here is tokio's, in [`Resilient`], for timeouts and
//! backoff. [`service`] runs the reactions as a process on a `host::Host` (payments has no
//! commands of its own); the `payments` binary runs it with the simulator behind [`Resilient`].

pub mod payment;
pub mod provider;
pub mod reactions;
pub mod resilient;
pub mod service;
pub mod simulator;

pub use payment::{MAX_PAYMENT_TOKEN_CHARS, Payment, PaymentCommand, PaymentError, PaymentStatus};
pub use provider::{CancelOutcome, CaptureOutcome, PaymentProvider, ProviderError, ProviderFuture};
pub use resilient::{ResiliencePolicy, Resilient};
pub use simulator::Simulator;
