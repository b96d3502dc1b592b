/// Why a shipment refused a command.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ShipmentError {
    #[error("no shipment is scheduled for this order")]
    NotScheduled,
    #[error("the shipment has already been dispatched")]
    AlreadyDispatched,
    #[error("the shipment has already been delivered")]
    AlreadyDelivered,
    #[error("the shipment has not been dispatched yet")]
    NotDispatched,
    #[error("the shipment was cancelled")]
    Cancelled,
    #[error("a tracking number must be 1 to 100 of A-Z, a-z, 0-9 and '-'")]
    InvalidTrackingNumber,
}

impl ShipmentError {
    /// A stable snake_case code for API errors (the messages may change, the codes do not).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotScheduled => "not_scheduled",
            Self::AlreadyDispatched => "already_dispatched",
            Self::AlreadyDelivered => "already_delivered",
            Self::NotDispatched => "not_dispatched",
            Self::Cancelled => "cancelled",
            Self::InvalidTrackingNumber => "invalid_tracking_number",
        }
    }
}
