//! Ordering's commands over NATS request/reply (see [`events::command`]):
//!
//! | command | request | accepted |
//! |---|---|---|
//! | `place-order` | [`PlaceOrderRequest`] | `OrderPlaced` appended and the payment deadline scheduled; the order id is the aggregate id |
//! | `cancel-order` | [`CancelOrderRequest`] | `OrderCancelled` appended, the payment deadline removed |
//!
//! A body that does not parse is rejected with code `invalid_request` and the path of the
//! field at fault (`lines[0].quantity`, or `body` when the JSON itself is malformed). A command
//! the order refuses is rejected with the [`OrderError::code`] (and the field, where the error
//! names one); a concurrency conflict the repository gave up on with `conflict`; a database
//! failure (the store or the catalogue replica) with `unavailable`. Nothing is written in any
//! of these cases.

use std::sync::Arc;

use events::Metadata;
use events::command::CommandReply;
use events::ordering::{Address, OrderEvent};
use events::values::{CustomerId, OrderId, Quantity, Sku};
use eventstore::{CommandError, Committed, Repository, UnitOfWork};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::place::{MAX_ATTEMPTS, PlaceError, PlaceOrder, place_order};
use crate::reactions::{Reactions, execute_order};
use crate::{Order, OrderCommand, OrderError, RequestedLine};

/// The name of the command that places an order.
pub const PLACE_ORDER: &str = "place-order";
/// The name of the command that cancels an order.
pub const CANCEL_ORDER: &str = "cancel-order";

/// The body of `place-order`. Prices are not part of it: they come from the replica.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    /// The client's id for the order, so that it can retry safely (a second `place-order` with
    /// the same id is refused with `already_placed`); a new v7 id when absent.
    #[serde(default)]
    pub order_id: Option<OrderId>,
    pub customer_id: CustomerId,
    pub lines: Vec<LineRequest>,
    pub shipping_address: AddressRequest,
    /// Opaque; passed on to payments.
    pub payment_token: String,
}

/// One requested line: a SKU and a quantity (at least 1).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    pub sku: Sku,
    pub quantity: Quantity,
}

/// The shipping address as requested; the order checks its fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressRequest {
    pub name: String,
    pub line1: String,
    #[serde(default)]
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
}

impl From<AddressRequest> for Address {
    fn from(a: AddressRequest) -> Self {
        Address {
            name: a.name,
            line1: a.line1,
            line2: a.line2,
            city: a.city,
            postal_code: a.postal_code,
            country: a.country,
        }
    }
}

/// The body of `cancel-order`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelOrderRequest {
    pub order_id: OrderId,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Ordering's command endpoints. They run through the reactions' repository (one cache of
/// orders per process) and price orders from the reactions' catalogue replica.
#[derive(Debug, Clone)]
pub struct OrderingCommands {
    reactions: Arc<Reactions>,
}

impl OrderingCommands {
    pub fn new(reactions: Arc<Reactions>) -> Self {
        Self { reactions }
    }

    /// `place-order`: prices the lines from the replica and places the order.
    pub async fn place(&self, body: &[u8], metadata: &Metadata) -> CommandReply {
        let request: PlaceOrderRequest = match parse(body) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        let order_id = request.order_id.unwrap_or_default();
        let skus: Vec<Sku> = request.lines.iter().map(|l| l.sku.clone()).collect();
        let place = PlaceOrder {
            order_id,
            customer_id: request.customer_id,
            lines: request
                .lines
                .into_iter()
                .map(|l| RequestedLine {
                    sku: l.sku,
                    quantity: l.quantity,
                })
                .collect(),
            shipping_address: request.shipping_address.into(),
            payment_token: request.payment_token,
        };
        let result = place_order(
            self.reactions.orders(),
            self.reactions.catalogue(),
            place,
            self.reactions.payment_timeout(),
            metadata,
        )
        .await;
        match result {
            Ok(committed) => accepted(order_id, &committed),
            Err(PlaceError::Command(error)) => {
                command_failure(PLACE_ORDER, order_id, error, |e| place_field(e, &skus))
            }
            Err(PlaceError::Catalogue(error)) => {
                tracing::error!(
                    command = PLACE_ORDER,
                    %order_id,
                    error = %error,
                    "cannot read the catalogue replica"
                );
                unavailable()
            }
        }
    }

    /// `cancel-order`: cancels the order, if it has not been shipped (or ended) yet.
    pub async fn cancel(&self, body: &[u8], metadata: &Metadata) -> CommandReply {
        let request: CancelOrderRequest = match parse(body) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        let order_id = request.order_id;
        let command = OrderCommand::Cancel {
            reason: request.reason,
        };
        let result = cancel_order(self.reactions.orders(), order_id, command, metadata).await;
        match result {
            Ok(committed) => accepted(order_id, &committed),
            Err(error) => command_failure(CANCEL_ORDER, order_id, error, |e| match e {
                OrderError::InvalidReason => Some("reason".to_owned()),
                _ => None,
            }),
        }
    }
}

/// Runs `Cancel` and removes the order's payment deadline in one unit of work (see
/// [`execute_order`]), retrying on a concurrency conflict as [`Repository::handle`] does.
async fn cancel_order(
    orders: &Repository<Order>,
    order_id: OrderId,
    command: OrderCommand,
    metadata: &Metadata,
) -> Result<Committed<OrderEvent>, CommandError<OrderError>> {
    let id = order_id.to_string();
    for _ in 0..MAX_ATTEMPTS {
        let mut uow = UnitOfWork::new(orders.store());
        let events = execute_order(orders, &mut uow, order_id, command.clone(), metadata).await?;
        let (_, version) = orders.current(&uow, &id).await?;
        match uow.commit().await {
            Ok(position) => {
                return Ok(Committed {
                    position,
                    version,
                    events,
                });
            }
            Err(e) if e.is_conflict() => {
                tracing::debug!(order = %id, "concurrency conflict cancelling the order, retrying");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(CommandError::Conflict {
        attempts: MAX_ATTEMPTS,
    })
}

impl host::Commands for OrderingCommands {
    fn names(&self) -> &'static [&'static str] {
        &[PLACE_ORDER, CANCEL_ORDER]
    }

    async fn run(&self, name: &str, body: &[u8], metadata: Metadata) -> CommandReply {
        match name {
            PLACE_ORDER => self.place(body, &metadata).await,
            CANCEL_ORDER => self.cancel(body, &metadata).await,
            other => CommandReply::rejected(
                "unknown_command",
                format!("ordering has no command {other:?}"),
            ),
        }
    }
}

/// Parses a request body, refusing unknown fields and trailing data; a failure is answered
/// with `invalid_request` and the path of the field at fault (`body` for the JSON itself).
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, CommandReply> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        // Malformed JSON is the body's fault wherever it stops (the message says where); a
        // value that does not fit is its field's.
        let malformed = e.inner().is_syntax() || e.inner().is_eof();
        let path = e.path().to_string();
        let field = if malformed || path.is_empty() || path == "." || path.contains('?') {
            "body"
        } else {
            path.as_str()
        };
        CommandReply::invalid_field(field, e.inner().to_string())
    })?;
    deserializer
        .end()
        .map_err(|e| CommandReply::invalid_field("body", e.to_string()))?;
    Ok(value)
}

fn accepted(order_id: OrderId, committed: &Committed<OrderEvent>) -> CommandReply {
    CommandReply::Accepted {
        aggregate_id: order_id.to_string(),
        position: committed.position,
        version: committed.version,
    }
}

fn unavailable() -> CommandReply {
    CommandReply::rejected(
        "unavailable",
        "ordering cannot reach its database; try again later",
    )
}

/// The reply to a command that failed: `field` names the request field an order error is
/// about, if any.
fn command_failure(
    command: &str,
    order_id: OrderId,
    error: CommandError<OrderError>,
    field: impl FnOnce(&OrderError) -> Option<String>,
) -> CommandReply {
    match error {
        CommandError::Rejected(e) => CommandReply::Rejected {
            code: e.code().to_owned(),
            message: e.to_string(),
            field: field(&e),
        },
        // The order id is a UUID, always a valid token; kept for completeness.
        CommandError::InvalidId(e) => CommandReply::invalid_field("order_id", e.to_string()),
        CommandError::Conflict { .. } => {
            tracing::warn!(command, %order_id, error = %error, "gave up on a conflict");
            CommandReply::rejected("conflict", error.to_string())
        }
        CommandError::EventTooLarge { .. } => {
            CommandReply::rejected("too_large", error.to_string())
        }
        CommandError::Store(e) => {
            tracing::error!(command, %order_id, error = %e, "the event store failed");
            unavailable()
        }
    }
}

/// The field of a `place-order` request an order error is about. `skus` are the requested
/// lines' SKUs, in order.
fn place_field(error: &OrderError, skus: &[Sku]) -> Option<String> {
    let line = |index: usize| format!("lines[{index}].sku");
    match error {
        OrderError::InvalidAddress { field } => Some(format!("shipping_address.{field}")),
        OrderError::InvalidPaymentToken => Some("payment_token".to_owned()),
        OrderError::EmptyOrder | OrderError::TooManyLines { .. } => Some("lines".to_owned()),
        OrderError::UnknownSku(sku) => skus.iter().position(|s| s == sku).map(line),
        // The second line with the SKU is the one at fault.
        OrderError::DuplicateSku(sku) => skus
            .iter()
            .enumerate()
            .filter(|(_, s)| *s == sku)
            .nth(1)
            .map(|(index, _)| line(index)),
        _ => None,
    }
}
