//! The ordering context of Chorus: it owns orders (their lines, totals and status) and prices
//! them from its own replica of the catalogue, never from the client.
//!
//! It reacts to the other contexts' events through policies that send commands to the
//! [`Order`] aggregate: stock rejected, payment captured or declined, a reservation expired,
//! shipment dispatched and delivered (see [`OrderCommand`] for which command each one sends).
//!
//! This crate holds the domain only: pure `handle` and `apply`, no I/O. Reading the catalogue
//! is a port ([`Catalogue`]); storing events, consuming and publishing them belong elsewhere.

pub mod order;

pub use order::{
    Catalogue, MAX_ADDRESS_FIELD_CHARS, MAX_CANCEL_REASON_CHARS, MAX_LINES,
    MAX_PAYMENT_TOKEN_CHARS, Order, OrderCommand, OrderError, OrderServices, OrderStatus,
    RequestedLine,
};
