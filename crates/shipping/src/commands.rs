//! Shipping's commands over NATS (`chorus.shipping.<name>`), for operators through the gateway.
//!
//! | command | request | on success |
//! |---|---|---|
//! | `dispatch-shipment` | `{ "order_id": uuid, "tracking_number"?: string }` | `ShipmentDispatched` |
//! | `deliver-shipment` | `{ "order_id": uuid }` | `ShipmentDelivered` |
//!
//! A body that does not parse (not JSON, an unknown field, a wrong type, a bad uuid) is
//! answered `invalid_request` naming the field; a refusal by the shipment with its
//! [`ShipmentError::code`]. Either way nothing is appended.

use events::Metadata;
use events::command::CommandReply;
use events::shipping::ShipmentEvent;
use events::values::OrderId;
use eventstore::{CommandError, Committed, Repository, Store};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::operations::{deliver, dispatch};
use crate::{Shipment, ShipmentError};

/// `dispatch-shipment`: the order's parcel left the warehouse.
pub const DISPATCH_SHIPMENT: &str = "dispatch-shipment";
/// `deliver-shipment`: the order's parcel reached the customer.
pub const DELIVER_SHIPMENT: &str = "deliver-shipment";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DispatchShipment {
    order_id: OrderId,
    #[serde(default)]
    tracking_number: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliverShipment {
    order_id: OrderId,
}

/// Shipping's command endpoints.
#[derive(Debug)]
pub struct Commands {
    shipments: Repository<Shipment>,
}

impl Commands {
    /// The reactions (another repository, or another instance) schedule and cancel shipments
    /// behind this repository's back; a refusal is checked against the store before it is
    /// given, so a stale cached shipment cannot refuse a dispatch.
    pub fn new(store: &Store) -> Self {
        Self {
            shipments: Repository::new(store.clone(), ()),
        }
    }

    async fn dispatch(&self, body: &[u8], metadata: Metadata) -> CommandReply {
        let request: DispatchShipment = match parse(body) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        let order_id = request.order_id;
        let result = dispatch(
            &self.shipments,
            order_id,
            request.tracking_number,
            &metadata,
        )
        .await;
        reply(DISPATCH_SHIPMENT, order_id, result)
    }

    async fn deliver(&self, body: &[u8], metadata: Metadata) -> CommandReply {
        let request: DeliverShipment = match parse(body) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        let order_id = request.order_id;
        let result = deliver(&self.shipments, order_id, &metadata).await;
        reply(DELIVER_SHIPMENT, order_id, result)
    }
}

impl host::Commands for Commands {
    fn names(&self) -> &'static [&'static str] {
        &[DISPATCH_SHIPMENT, DELIVER_SHIPMENT]
    }

    async fn run(&self, name: &str, body: &[u8], metadata: Metadata) -> CommandReply {
        match name {
            DISPATCH_SHIPMENT => self.dispatch(body, metadata).await,
            DELIVER_SHIPMENT => self.deliver(body, metadata).await,
            other => CommandReply::rejected(
                "unknown_command",
                format!("shipping has no command {other:?}"),
            ),
        }
    }
}

/// Parses a request body, or answers `invalid_request` with the field at fault: its path
/// (`tracking_number`, an unknown field's name), the missing field's, or `body` when the fault
/// is the body as a whole (not JSON, not an object).
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, CommandReply> {
    // serde would take a JSON array for a struct, its fields by position: refuse it.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(CommandReply::invalid_field(
            "body",
            "the body must be a JSON object",
        ));
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let message = error.inner().to_string();
        let path = error.path().to_string();
        let path = if path == "." { "" } else { path.as_str() };
        let field = match (missing_field(&message), path) {
            (Some(missing), "") => missing.to_owned(),
            (Some(missing), parent) => format!("{parent}.{missing}"),
            (None, "") => "body".to_owned(),
            (None, path) => path.to_owned(),
        };
        CommandReply::invalid_field(&field, message)
    })
}

/// The field named by serde's "missing field `x`" error.
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")?
        .split_once('`')
        .map(|(field, _)| field)
}

/// The reply to a command on the order's shipment.
fn reply(
    command: &str,
    order_id: OrderId,
    result: Result<Committed<ShipmentEvent>, CommandError<ShipmentError>>,
) -> CommandReply {
    match result {
        Ok(committed) => CommandReply::Accepted {
            aggregate_id: order_id.to_string(),
            position: committed.position,
            version: committed.version,
        },
        Err(CommandError::Rejected(error)) => {
            let mut reply = CommandReply::rejected(error.code(), error.to_string());
            if let CommandReply::Rejected { field, .. } = &mut reply {
                *field = error_field(&error).map(str::to_owned);
            }
            reply
        }
        Err(CommandError::InvalidId(error)) => {
            CommandReply::invalid_field("order_id", error.to_string())
        }
        Err(error @ CommandError::Conflict { .. }) => {
            tracing::warn!(command, %order_id, error = %error, "command gave up on conflicts");
            CommandReply::rejected("conflict", error.to_string())
        }
        Err(error @ CommandError::EventTooLarge { .. }) => {
            CommandReply::rejected("too_large", error.to_string())
        }
        Err(CommandError::Store(error)) => {
            tracing::error!(command, %order_id, error = %error, "command failed in the store");
            CommandReply::rejected("unavailable", "shipping cannot reach its store; try again")
        }
    }
}

/// The request field a refusal is about, if it is about one.
fn error_field(error: &ShipmentError) -> Option<&'static str> {
    match error {
        ShipmentError::InvalidTrackingNumber => Some("tracking_number"),
        ShipmentError::NotScheduled
        | ShipmentError::AlreadyDispatched
        | ShipmentError::AlreadyDelivered
        | ShipmentError::NotDispatched
        | ShipmentError::Cancelled => None,
    }
}
