//! The payments context's domain: one `Payment` per order, which owns the amount owed, its
//! capture through the payment provider, and its refund or void when the order ends early.
//!
//! Payments reacts to `OrderPlaced` (record what will be owed), `StockReserved` (capture) and
//! `OrderCancelled` or the order's rejection (refund or void). The provider is a port
//! ([`PaymentProvider`]); [`Simulator`] is its built-in, deterministic adapter, keyed by test
//! tokens. This crate holds the domain only: no I/O (no database, no NATS, no network, no
//! clock). Timeouts, retries and the circuit breaker around real provider calls live elsewhere.

pub mod payment;
pub mod provider;
pub mod simulator;

pub use payment::{Payment, PaymentCommand, PaymentError, PaymentStatus};
pub use provider::{CaptureOutcome, PaymentProvider, ProviderError, ProviderFuture};
pub use simulator::Simulator;
