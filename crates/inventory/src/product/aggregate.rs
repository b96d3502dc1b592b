use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use events::inventory::{ProductDefined, ProductEvent, ProductRepriced};
use events::values::{Money, Sku};
use serde::{Deserialize, Serialize};

use super::{ProductCommand, ProductError};

/// The longest product name, in characters (not bytes).
pub const MAX_NAME_CHARS: usize = 200;

/// A product of the catalogue (aggregate id: its SKU).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Product {
    /// `None` until the product is defined.
    definition: Option<Definition>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Definition {
    sku: Sku,
    name: String,
    price: Money,
}

impl Product {
    pub fn is_defined(&self) -> bool {
        self.definition.is_some()
    }

    pub fn sku(&self) -> Option<&Sku> {
        self.definition.as_ref().map(|d| &d.sku)
    }

    pub fn name(&self) -> Option<&str> {
        self.definition.as_ref().map(|d| d.name.as_str())
    }

    pub fn price(&self) -> Option<Money> {
        self.definition.as_ref().map(|d| d.price)
    }
}

fn check_price(price: Money) -> Result<(), ProductError> {
    if price.amount_minor <= 0 {
        return Err(ProductError::InvalidPrice { price });
    }
    Ok(())
}

impl Aggregate for Product {
    const TYPE: &'static str = "product";
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            ProductCommand::Define { sku, name, price } => {
                if self.definition.is_some() {
                    return Err(ProductError::AlreadyDefined);
                }
                // Surrounding whitespace is never meant: record the name without it.
                let name = name.trim();
                if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
                    return Err(ProductError::InvalidName);
                }
                check_price(price)?;
                let name = name.to_owned();
                sink.write(ProductDefined { sku, name, price }.into(), self)
                    .await;
            }
            ProductCommand::Reprice { price } => {
                let Some(current) = &self.definition else {
                    return Err(ProductError::NotDefined);
                };
                check_price(price)?;
                // Orders placed before and after a repricing must stay comparable, and
                // ordering's replica holds one price per product: the currency is fixed.
                if price.currency != current.price.currency {
                    return Err(ProductError::CurrencyChange {
                        current: current.price.currency,
                        requested: price.currency,
                    });
                }
                if price == current.price {
                    return Ok(());
                }
                let sku = current.sku.clone();
                sink.write(ProductRepriced { sku, price }.into(), self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ProductEvent::ProductDefined(e) => {
                self.definition = Some(Definition {
                    sku: e.sku,
                    name: e.name,
                    price: e.price,
                });
            }
            ProductEvent::ProductRepriced(e) => {
                if let Some(definition) = &mut self.definition {
                    definition.price = e.price;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;
    use events::values::Currency;

    use super::*;

    type Given = TestFramework<Product>;

    fn sku() -> Sku {
        "MUG-1".parse().unwrap()
    }

    fn eur(amount_minor: i64) -> Money {
        Money::new(amount_minor, "EUR".parse::<Currency>().unwrap())
    }

    fn usd(amount_minor: i64) -> Money {
        Money::new(amount_minor, "USD".parse::<Currency>().unwrap())
    }

    fn define(name: &str, price: Money) -> ProductCommand {
        ProductCommand::Define {
            sku: sku(),
            name: name.to_owned(),
            price,
        }
    }

    fn defined(name: &str, price: Money) -> ProductEvent {
        ProductDefined {
            sku: sku(),
            name: name.to_owned(),
            price,
        }
        .into()
    }

    fn repriced(price: Money) -> ProductEvent {
        ProductRepriced { sku: sku(), price }.into()
    }

    #[test]
    fn define_adds_the_product_to_the_catalogue() {
        let long_name = "é".repeat(MAX_NAME_CHARS); // 200 characters, 400 bytes
        let cases = [
            ("Mug", "Mug", eur(1299)),
            ("  Mug \n", "Mug", eur(1299)),
            ("Cheap mug", "Cheap mug", eur(1)),
            (long_name.as_str(), long_name.as_str(), usd(500)),
        ];
        for (name, recorded, price) in cases {
            Given::with(())
                .given_no_previous_events()
                .when(define(name, price))
                .then_expect_events(vec![defined(recorded, price)]);
        }
    }

    #[test]
    fn define_refuses_a_product_already_defined() {
        Given::with(())
            .given(vec![defined("Mug", eur(1299))])
            .when(define("Mug", eur(1299)))
            .then_expect_error(ProductError::AlreadyDefined);
    }

    #[test]
    fn define_refuses_a_bad_name_or_price() {
        let too_long = "x".repeat(MAX_NAME_CHARS + 1);
        let cases = [
            ("", eur(1299), ProductError::InvalidName),
            ("   \t", eur(1299), ProductError::InvalidName),
            (too_long.as_str(), eur(1299), ProductError::InvalidName),
            ("Mug", eur(0), ProductError::InvalidPrice { price: eur(0) }),
            (
                "Mug",
                eur(-5),
                ProductError::InvalidPrice { price: eur(-5) },
            ),
        ];
        for (name, price, error) in cases {
            Given::with(())
                .given_no_previous_events()
                .when(define(name, price))
                .then_expect_error(error);
        }
    }

    #[test]
    fn reprice_changes_the_price() {
        Given::with(())
            .given(vec![defined("Mug", eur(1299))])
            .when(ProductCommand::Reprice { price: eur(999) })
            .then_expect_events(vec![repriced(eur(999))]);
        // The latest price counts, not the first one.
        Given::with(())
            .given(vec![defined("Mug", eur(1299)), repriced(eur(999))])
            .when(ProductCommand::Reprice { price: eur(1299) })
            .then_expect_events(vec![repriced(eur(1299))]);
    }

    #[test]
    fn reprice_to_the_current_price_changes_nothing() {
        Given::with(())
            .given(vec![defined("Mug", eur(1299)), repriced(eur(999))])
            .when(ProductCommand::Reprice { price: eur(999) })
            .then_expect_events(vec![]);
    }

    #[test]
    fn reprice_refuses_what_makes_no_sense() {
        let cases = [
            (vec![], eur(999), ProductError::NotDefined),
            (
                vec![defined("Mug", eur(1299))],
                eur(0),
                ProductError::InvalidPrice { price: eur(0) },
            ),
            (
                vec![defined("Mug", eur(1299))],
                eur(-1),
                ProductError::InvalidPrice { price: eur(-1) },
            ),
            (
                vec![defined("Mug", eur(1299))],
                usd(1299),
                ProductError::CurrencyChange {
                    current: "EUR".parse().unwrap(),
                    requested: "USD".parse().unwrap(),
                },
            ),
        ];
        for (given, price, error) in cases {
            Given::with(())
                .given(given)
                .when(ProductCommand::Reprice { price })
                .then_expect_error(error);
        }
    }

    #[test]
    fn the_state_shows_the_latest_definition() {
        let mut product = Product::default();
        assert!(!product.is_defined());
        assert_eq!(product.price(), None);
        product.apply(defined("Mug", eur(1299)));
        product.apply(repriced(eur(999)));
        assert!(product.is_defined());
        assert_eq!(product.sku(), Some(&sku()));
        assert_eq!(product.name(), Some("Mug"));
        assert_eq!(product.price(), Some(eur(999)));
    }

    #[test]
    fn error_codes_are_stable() {
        let cases = [
            (ProductError::AlreadyDefined, "already_defined"),
            (ProductError::NotDefined, "not_defined"),
            (ProductError::InvalidName, "invalid_name"),
            (
                ProductError::InvalidPrice { price: eur(0) },
                "invalid_price",
            ),
            (
                ProductError::CurrencyChange {
                    current: "EUR".parse().unwrap(),
                    requested: "USD".parse().unwrap(),
                },
                "currency_change",
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "code of {error:?}");
        }
    }
}
