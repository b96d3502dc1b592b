use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use events::ordering::Address;
use events::shipping::{
    ShipmentCancelled, ShipmentDelivered, ShipmentDispatched, ShipmentEvent, ShipmentScheduled,
};
use events::values::OrderId;
use serde::{Deserialize, Serialize};

use super::{ShipmentCommand, ShipmentError};

/// Where a shipment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShipmentStatus {
    /// Nothing scheduled yet (the order is not confirmed, or shipping has not heard of it).
    #[default]
    NotScheduled,
    Scheduled,
    Dispatched,
    Delivered,
    Cancelled,
}

/// The parcel of one order. Its aggregate id is the order id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Shipment {
    status: ShipmentStatus,
    /// Set by `ShipmentScheduled`; every later event names the same order.
    order_id: Option<OrderId>,
    address: Option<Address>,
}

impl Shipment {
    pub fn status(&self) -> ShipmentStatus {
        self.status
    }

    /// Where the parcel goes, once scheduled.
    pub fn address(&self) -> Option<&Address> {
        self.address.as_ref()
    }

    fn order_id(&self) -> Result<OrderId, ShipmentError> {
        self.order_id.ok_or(ShipmentError::NotScheduled)
    }
}

/// Tracking numbers are shown to shoppers and put in URLs: keep them to a safe, bounded alphabet.
fn is_valid_tracking_number(tracking_number: &str) -> bool {
    (1..=100).contains(&tracking_number.len())
        && tracking_number
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Aggregate for Shipment {
    const TYPE: &'static str = "shipment";
    type Command = ShipmentCommand;
    type Event = ShipmentEvent;
    type Error = ShipmentError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        use ShipmentStatus as S;
        match command {
            ShipmentCommand::Schedule { order_id, address } => {
                // A redelivered `OrderConfirmed`, or one that arrives after the shipment ended:
                // nothing more to plan.
                if self.status != S::NotScheduled {
                    return Ok(());
                }
                sink.write(ShipmentScheduled { order_id, address }.into(), self)
                    .await;
            }
            ShipmentCommand::Dispatch { tracking_number } => {
                match self.status {
                    S::NotScheduled => return Err(ShipmentError::NotScheduled),
                    S::Dispatched | S::Delivered => return Err(ShipmentError::AlreadyDispatched),
                    S::Cancelled => return Err(ShipmentError::Cancelled),
                    S::Scheduled => {}
                }
                if let Some(number) = &tracking_number
                    && !is_valid_tracking_number(number)
                {
                    return Err(ShipmentError::InvalidTrackingNumber);
                }
                let order_id = self.order_id()?;
                let event = ShipmentDispatched {
                    order_id,
                    tracking_number,
                };
                sink.write(event.into(), self).await;
            }
            ShipmentCommand::Deliver => {
                match self.status {
                    S::NotScheduled => return Err(ShipmentError::NotScheduled),
                    S::Scheduled => return Err(ShipmentError::NotDispatched),
                    S::Delivered => return Err(ShipmentError::AlreadyDelivered),
                    S::Cancelled => return Err(ShipmentError::Cancelled),
                    S::Dispatched => {}
                }
                let order_id = self.order_id()?;
                sink.write(ShipmentDelivered { order_id }.into(), self)
                    .await;
            }
            ShipmentCommand::Cancel => match self.status {
                // Nothing to cancel: the order never reached shipping, or it is already done.
                S::NotScheduled | S::Cancelled => {}
                // The parcel has left: a cancellation racing a dispatch must be visible.
                S::Dispatched | S::Delivered => return Err(ShipmentError::AlreadyDispatched),
                S::Scheduled => {
                    let order_id = self.order_id()?;
                    sink.write(ShipmentCancelled { order_id }.into(), self)
                        .await;
                }
            },
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ShipmentEvent::ShipmentScheduled(e) => {
                self.status = ShipmentStatus::Scheduled;
                self.order_id = Some(e.order_id);
                self.address = Some(e.address);
            }
            ShipmentEvent::ShipmentDispatched(_) => self.status = ShipmentStatus::Dispatched,
            ShipmentEvent::ShipmentDelivered(_) => self.status = ShipmentStatus::Delivered,
            ShipmentEvent::ShipmentCancelled(_) => self.status = ShipmentStatus::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;
    use uuid::Uuid;

    use super::*;

    fn order_id() -> OrderId {
        OrderId(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001))
    }

    fn address() -> Address {
        Address {
            name: "Ada Lovelace".to_owned(),
            line1: "12 St James's Square".to_owned(),
            line2: None,
            city: "London".to_owned(),
            postal_code: "SW1Y 4JH".to_owned(),
            country: "GB".to_owned(),
        }
    }

    fn scheduled() -> ShipmentEvent {
        ShipmentScheduled {
            order_id: order_id(),
            address: address(),
        }
        .into()
    }

    fn dispatched(tracking_number: Option<&str>) -> ShipmentEvent {
        ShipmentDispatched {
            order_id: order_id(),
            tracking_number: tracking_number.map(str::to_owned),
        }
        .into()
    }

    fn delivered() -> ShipmentEvent {
        ShipmentDelivered {
            order_id: order_id(),
        }
        .into()
    }

    fn cancelled() -> ShipmentEvent {
        ShipmentCancelled {
            order_id: order_id(),
        }
        .into()
    }

    /// The histories a shipment can have, by name (for table-driven cases).
    fn history(name: &str) -> Vec<ShipmentEvent> {
        match name {
            "none" => vec![],
            "scheduled" => vec![scheduled()],
            "dispatched" => vec![scheduled(), dispatched(Some("TRK-1"))],
            "delivered" => vec![scheduled(), dispatched(Some("TRK-1")), delivered()],
            "cancelled" => vec![scheduled(), cancelled()],
            other => panic!("unknown history {other}"),
        }
    }

    fn given(name: &str) -> cqrs_es::test::AggregateTestExecutor<Shipment> {
        TestFramework::<Shipment>::with(()).given(history(name))
    }

    fn schedule() -> ShipmentCommand {
        ShipmentCommand::Schedule {
            order_id: order_id(),
            address: address(),
        }
    }

    fn dispatch(tracking_number: Option<&str>) -> ShipmentCommand {
        ShipmentCommand::Dispatch {
            tracking_number: tracking_number.map(str::to_owned),
        }
    }

    #[test]
    fn schedule_plans_the_parcel_of_a_confirmed_order() {
        given("none")
            .when(schedule())
            .then_expect_events(vec![scheduled()]);
    }

    #[test]
    fn schedule_again_or_after_the_shipment_moved_on_changes_nothing() {
        for name in ["scheduled", "dispatched", "delivered", "cancelled"] {
            let events = given(name).when(schedule()).inspect_result();
            assert_eq!(events, Ok(vec![]), "schedule after {name}");
        }
    }

    #[test]
    fn dispatch_records_the_departure_with_or_without_a_tracking_number() {
        let hundred = "A".repeat(100);
        for tracking in [None, Some("1Z-999-aa"), Some("x"), Some(hundred.as_str())] {
            given("scheduled")
                .when(dispatch(tracking))
                .then_expect_events(vec![dispatched(tracking)]);
        }
    }

    #[test]
    fn dispatch_refuses_a_malformed_tracking_number() {
        let too_long = "A".repeat(101);
        for bad in ["", "ABC 123", "ABC_123", "ÄBC", "a/b", too_long.as_str()] {
            let result = given("scheduled")
                .when(dispatch(Some(bad)))
                .inspect_result();
            assert_eq!(
                result,
                Err(ShipmentError::InvalidTrackingNumber),
                "tracking number {bad:?}"
            );
        }
    }

    #[test]
    fn dispatch_is_refused_unless_the_shipment_is_scheduled() {
        for (name, expected) in [
            ("none", ShipmentError::NotScheduled),
            ("dispatched", ShipmentError::AlreadyDispatched),
            ("delivered", ShipmentError::AlreadyDispatched),
            ("cancelled", ShipmentError::Cancelled),
        ] {
            let result = given(name).when(dispatch(Some("TRK-2"))).inspect_result();
            assert_eq!(result, Err(expected), "dispatch after {name}");
        }
    }

    #[test]
    fn deliver_records_the_arrival_of_a_dispatched_parcel() {
        given("dispatched")
            .when(ShipmentCommand::Deliver)
            .then_expect_events(vec![delivered()]);
    }

    #[test]
    fn deliver_is_refused_unless_the_parcel_is_on_its_way() {
        for (name, expected) in [
            ("none", ShipmentError::NotScheduled),
            ("scheduled", ShipmentError::NotDispatched),
            ("delivered", ShipmentError::AlreadyDelivered),
            ("cancelled", ShipmentError::Cancelled),
        ] {
            let result = given(name).when(ShipmentCommand::Deliver).inspect_result();
            assert_eq!(result, Err(expected), "deliver after {name}");
        }
    }

    #[test]
    fn cancel_stops_a_scheduled_shipment() {
        given("scheduled")
            .when(ShipmentCommand::Cancel)
            .then_expect_events(vec![cancelled()]);
    }

    #[test]
    fn cancel_with_nothing_to_stop_changes_nothing() {
        for name in ["none", "cancelled"] {
            let events = given(name).when(ShipmentCommand::Cancel).inspect_result();
            assert_eq!(events, Ok(vec![]), "cancel after {name}");
        }
    }

    #[test]
    fn cancel_after_the_parcel_left_is_refused_not_ignored() {
        for name in ["dispatched", "delivered"] {
            let result = given(name).when(ShipmentCommand::Cancel).inspect_result();
            assert_eq!(
                result,
                Err(ShipmentError::AlreadyDispatched),
                "cancel after {name}"
            );
        }
    }

    #[test]
    fn state_follows_the_events_and_survives_serialisation() {
        for (name, status) in [
            ("none", ShipmentStatus::NotScheduled),
            ("scheduled", ShipmentStatus::Scheduled),
            ("dispatched", ShipmentStatus::Dispatched),
            ("delivered", ShipmentStatus::Delivered),
            ("cancelled", ShipmentStatus::Cancelled),
        ] {
            let mut shipment = Shipment::default();
            for event in history(name) {
                shipment.apply(event);
            }
            let json = serde_json::to_string(&shipment).unwrap();
            let shipment: Shipment = serde_json::from_str(&json).unwrap();
            assert_eq!(shipment.status(), status, "status after {name}");
            let expected_address = (name != "none").then(address);
            assert_eq!(
                shipment.address(),
                expected_address.as_ref(),
                "address after {name}"
            );
        }
    }

    #[test]
    fn error_codes_are_distinct_snake_case() {
        let errors = [
            ShipmentError::NotScheduled,
            ShipmentError::AlreadyDispatched,
            ShipmentError::AlreadyDelivered,
            ShipmentError::NotDispatched,
            ShipmentError::Cancelled,
            ShipmentError::InvalidTrackingNumber,
        ];
        let mut codes: Vec<_> = errors.iter().map(ShipmentError::code).collect();
        assert!(
            codes
                .iter()
                .all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')),
            "{codes:?}"
        );
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), errors.len(), "duplicate codes: {codes:?}");
    }
}
