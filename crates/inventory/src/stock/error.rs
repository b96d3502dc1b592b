use events::values::{Quantity, Sku};

/// Why a stock item refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StockError {
    #[error("cannot reserve {} units: {available} available", .requested.get())]
    InsufficientStock { requested: Quantity, available: u32 },
    #[error("cannot receive {} units: {on_hand} already on hand, more cannot be counted", .quantity.get())]
    TooMuchStock { on_hand: u32, quantity: Quantity },
    #[error("this stock item holds {expected}, not {given}")]
    WrongSku { expected: Sku, given: Sku },
}

impl StockError {
    /// A stable code for API errors: the variant's name in snake_case.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InsufficientStock { .. } => "insufficient_stock",
            Self::TooMuchStock { .. } => "too_much_stock",
            Self::WrongSku { .. } => "wrong_sku",
        }
    }
}
