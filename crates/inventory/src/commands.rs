//! Inventory's operator commands, answered over NATS (`chorus.inventory.<command>`).
//!
//! - `define-product` `{ sku, name, price: { amount_minor, currency } }`: adds a product to
//!   the catalogue (aggregate `product`, id = the SKU).
//! - `reprice-product` `{ sku, price }`: changes a product's price, in the same currency.
//! - `receive-stock` `{ sku, quantity }`: units of a SKU arrived (aggregate `stock`, id = the
//!   SKU).
//!
//! A body is parsed once, into the `events::values` types: a SKU that is not a SKU, a zero
//! quantity, a bad currency or an unknown field is refused as `invalid_request` naming the
//! field, before anything is loaded. The aggregates' refusals keep their own codes.

use events::Metadata;
use events::command::CommandReply;
use events::values::{Money, Quantity, Sku};
use eventstore::{CommandError, Committed, Repository, Store};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::{Product, ProductCommand, ProductError, StockCommand, StockError, StockItem};

/// The command names, each an endpoint `chorus.inventory.<name>`.
pub const NAMES: &[&str] = &["define-product", "reprice-product", "receive-stock"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefineProduct {
    sku: Sku,
    name: String,
    price: Money,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepriceProduct {
    sku: Sku,
    price: Money,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiveStock {
    sku: Sku,
    quantity: Quantity,
}

/// Inventory's command endpoints: the catalogue and deliveries of stock.
#[derive(Debug)]
pub struct Commands {
    products: Repository<Product>,
    stock: Repository<StockItem>,
}

impl Commands {
    pub fn new(store: &Store) -> Self {
        Self {
            products: Repository::new(store.clone(), ()),
            stock: Repository::new(store.clone(), ()),
        }
    }

    async fn define_product(&self, body: &[u8], metadata: &Metadata) -> CommandReply {
        let request: DefineProduct = match parse(body) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        let id = request.sku.to_string();
        let command = ProductCommand::Define {
            sku: request.sku,
            name: request.name,
            price: request.price,
        };
        let result = self.products.handle(&id, command, metadata).await;
        reply(&id, result)
    }

    async fn reprice_product(&self, body: &[u8], metadata: &Metadata) -> CommandReply {
        let request: RepriceProduct = match parse(body) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        let id = request.sku.to_string();
        let command = ProductCommand::Reprice {
            price: request.price,
        };
        let result = self.products.handle(&id, command, metadata).await;
        reply(&id, result)
    }

    async fn receive_stock(&self, body: &[u8], metadata: &Metadata) -> CommandReply {
        let request: ReceiveStock = match parse(body) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        let id = request.sku.to_string();
        let command = StockCommand::Receive {
            sku: request.sku,
            quantity: request.quantity,
        };
        let result = self.stock.handle(&id, command, metadata).await;
        reply(&id, result)
    }
}

impl host::Commands for Commands {
    fn names(&self) -> &'static [&'static str] {
        NAMES
    }

    async fn run(&self, name: &str, body: &[u8], metadata: Metadata) -> CommandReply {
        match name {
            "define-product" => self.define_product(body, &metadata).await,
            "reprice-product" => self.reprice_product(body, &metadata).await,
            "receive-stock" => self.receive_stock(body, &metadata).await,
            other => CommandReply::rejected(
                "unknown_command",
                format!("inventory has no command {other:?}"),
            ),
        }
    }
}

/// Parses a request; a body that does not parse is refused naming the field at fault (`body`
/// when the fault is the body as a whole: not JSON, not an object, a field missing).
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, CommandReply> {
    // serde would take a struct from an array of its fields in order: a request is an object.
    if body.trim_ascii_start().first() != Some(&b'{') {
        let message = match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Err(e) => e.to_string(),
            Ok(_) => "a command is a JSON object".to_owned(),
        };
        return Err(CommandReply::invalid_field("body", message));
    }
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body)).map_err(|e| {
        let path = e.path().to_string();
        // Not JSON at all is the body's fault, wherever the parser stopped.
        let field = if !e.inner().is_data() || path.is_empty() || path == "." || path.contains('?')
        {
            "body"
        } else {
            path.as_str()
        };
        CommandReply::invalid_field(field, e.into_inner().to_string())
    })
}

/// The reply to a command that ran: accepted with its position and version, or refused.
fn reply<Ev, E: Refusal>(id: &str, result: Result<Committed<Ev>, CommandError<E>>) -> CommandReply {
    match result {
        Ok(committed) => CommandReply::Accepted {
            aggregate_id: id.to_owned(),
            position: committed.position,
            version: committed.version,
        },
        Err(CommandError::Rejected(e)) => CommandReply::Rejected {
            code: e.code().to_owned(),
            message: e.to_string(),
            field: e.field().map(str::to_owned),
        },
        // A SKU is always a valid subject token; kept so that no error goes unanswered.
        Err(CommandError::InvalidId(e)) => CommandReply::invalid_field("sku", e.to_string()),
        Err(e @ CommandError::Conflict { .. }) => {
            tracing::warn!(aggregate_id = id, error = %e, "command gave up on a conflict");
            CommandReply::rejected("conflict", e.to_string())
        }
        Err(e @ CommandError::EventTooLarge { .. }) => {
            CommandReply::rejected("too_large", e.to_string())
        }
        Err(CommandError::Store(e)) => {
            tracing::error!(aggregate_id = id, error = %e, "command failed on the event store");
            CommandReply::rejected("unavailable", "the inventory event store is unavailable")
        }
    }
}

/// An aggregate's refusal as a reply describes it: its stable code and the field at fault.
trait Refusal: std::error::Error {
    fn code(&self) -> &'static str;
    fn field(&self) -> Option<&'static str>;
}

impl Refusal for ProductError {
    fn code(&self) -> &'static str {
        ProductError::code(self)
    }

    fn field(&self) -> Option<&'static str> {
        match self {
            Self::AlreadyDefined | Self::NotDefined => Some("sku"),
            Self::InvalidName => Some("name"),
            Self::InvalidPrice { .. } => Some("price.amount_minor"),
            Self::CurrencyChange { .. } => Some("price.currency"),
        }
    }
}

impl Refusal for StockError {
    fn code(&self) -> &'static str {
        StockError::code(self)
    }

    fn field(&self) -> Option<&'static str> {
        match self {
            Self::TooMuchStock { .. } => Some("quantity"),
            Self::WrongSku { .. } => Some("sku"),
            Self::InsufficientStock { .. } => None,
        }
    }
}
