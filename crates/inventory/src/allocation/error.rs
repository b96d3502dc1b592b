use events::values::Sku;

/// Why an allocation refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    #[error("stock was already reserved or rejected for this order")]
    AlreadyDecided,
    #[error("a reservation needs at least one line")]
    EmptyAllocation,
    #[error("a reservation has one line per SKU, and {sku} appears more than once")]
    DuplicateSku { sku: Sku },
    #[error("a rejection needs at least one shortage")]
    EmptyShortages,
    #[error("the reservation was committed to a shipment and cannot be released")]
    AlreadyCommitted,
    #[error("the reservation was released and cannot be committed")]
    AlreadyReleased,
    #[error("no stock is reserved for this order")]
    NotReserved,
}

impl AllocationError {
    /// A stable code for API errors: the variant's name in snake_case.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyDecided => "already_decided",
            Self::EmptyAllocation => "empty_allocation",
            Self::DuplicateSku { .. } => "duplicate_sku",
            Self::EmptyShortages => "empty_shortages",
            Self::AlreadyCommitted => "already_committed",
            Self::AlreadyReleased => "already_released",
            Self::NotReserved => "not_reserved",
        }
    }
}
