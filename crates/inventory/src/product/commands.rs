use events::values::{Money, Sku};

/// What an operator can do to the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductCommand {
    /// Add a product to the catalogue. The name is recorded without surrounding whitespace.
    Define {
        sku: Sku,
        name: String,
        price: Money,
    },
    /// Change the price of a product, in the same currency.
    Reprice { price: Money },
}
