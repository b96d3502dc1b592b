//! The `Order` aggregate: its state, its decisions (`handle`) and how events change it (`apply`).

use std::collections::{HashMap, HashSet};

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use events::ordering::{
    Address, OrderCancelled, OrderConfirmed, OrderDelivered, OrderEvent, OrderLine, OrderPlaced,
    OrderRejected, OrderShipped, RejectionReason,
};
use events::values::{CustomerId, Money, OrderId, Sku};
use serde::{Deserialize, Serialize};

use super::commands::{OrderCommand, RequestedLine};
use super::error::OrderError;

/// Most lines one order may have.
pub const MAX_LINES: usize = 50;
/// Longest a shipping address field may be, in characters.
pub const MAX_ADDRESS_FIELD_CHARS: usize = 200;
/// Longest a payment token may be, in characters.
pub const MAX_PAYMENT_TOKEN_CHARS: usize = 200;
/// Longest a customer's cancellation reason may be, in characters.
pub const MAX_CANCEL_REASON_CHARS: usize = 500;

/// Where an order stands. An order that has not been placed has no status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Waiting for stock and payment.
    Placed,
    /// Stock reserved and payment captured: it will ship.
    Confirmed,
    /// Stock or payment failed, or payment came too late. Terminal.
    Rejected,
    /// The customer cancelled before dispatch. Terminal.
    Cancelled,
    /// The shipment left the warehouse.
    Shipped,
    /// The shipment reached the customer.
    Delivered,
}

/// One shopper's order. `Default` is an order that has not been placed yet.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Order {
    placed: Option<PlacedOrder>,
}

/// What later steps need from `OrderPlaced`. The payment token is deliberately absent: once
/// published for payments, ordering has no use for it and should not keep it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PlacedOrder {
    order_id: OrderId,
    customer_id: CustomerId,
    lines: Vec<OrderLine>,
    total: Money,
    shipping_address: Address,
    status: OrderStatus,
}

impl Order {
    /// The order's id; `None` if it has not been placed.
    pub fn id(&self) -> Option<OrderId> {
        self.placed.as_ref().map(|p| p.order_id)
    }

    /// The order's status; `None` if it has not been placed.
    pub fn status(&self) -> Option<OrderStatus> {
        self.placed.as_ref().map(|p| p.status)
    }

    /// The sum of the lines; `None` if the order has not been placed.
    pub fn total(&self) -> Option<Money> {
        self.placed.as_ref().map(|p| p.total)
    }

    /// Who placed the order; `None` if it has not been placed.
    pub fn customer_id(&self) -> Option<CustomerId> {
        self.placed.as_ref().map(|p| p.customer_id)
    }

    /// The priced lines; empty if the order has not been placed.
    pub fn lines(&self) -> &[OrderLine] {
        self.placed.as_ref().map_or(&[], |p| &p.lines)
    }

    /// Where the order ships to; `None` if it has not been placed.
    pub fn shipping_address(&self) -> Option<&Address> {
        self.placed.as_ref().map(|p| &p.shipping_address)
    }

    fn placed(&self) -> Result<&PlacedOrder, OrderError> {
        self.placed.as_ref().ok_or(OrderError::NotPlaced)
    }

    fn place(
        &self,
        order_id: OrderId,
        customer_id: CustomerId,
        lines: Vec<RequestedLine>,
        shipping_address: Address,
        payment_token: String,
        prices: &HashMap<Sku, Money>,
    ) -> Result<OrderEvent, OrderError> {
        if self.placed.is_some() {
            return Err(OrderError::AlreadyPlaced);
        }
        check_lines(&lines)?;
        check_address(&shipping_address)?;
        check_payment_token(&payment_token)?;
        let (lines, total) = price_lines(prices, lines)?;
        Ok(OrderPlaced {
            order_id,
            customer_id,
            lines,
            total,
            shipping_address,
            payment_token,
        }
        .into())
    }

    fn confirm(&self) -> Result<Option<OrderEvent>, OrderError> {
        let order = self.placed()?;
        match order.status {
            OrderStatus::Placed => Ok(Some(
                OrderConfirmed {
                    order_id: order.order_id,
                    shipping_address: order.shipping_address.clone(),
                }
                .into(),
            )),
            // A redelivered `PaymentCaptured`: already done.
            OrderStatus::Confirmed | OrderStatus::Shipped | OrderStatus::Delivered => Ok(None),
            // A capture that lost the race with a rejection or a cancellation. The order stays
            // as it is; the money is refunded by payments, which reacts to the cancellation or
            // rejection itself. Failing here would only dead-letter a message nobody can fix.
            OrderStatus::Rejected | OrderStatus::Cancelled => Ok(None),
        }
    }

    fn reject(
        &self,
        reason: RejectionReason,
        detail: String,
    ) -> Result<Option<OrderEvent>, OrderError> {
        let order = self.placed()?;
        match order.status {
            OrderStatus::Placed => Ok(Some(
                OrderRejected {
                    order_id: order.order_id,
                    reason,
                    detail,
                }
                .into(),
            )),
            // Redelivered, or a second failure (e.g. a second decline after the first): the
            // order is already over.
            OrderStatus::Rejected | OrderStatus::Cancelled => Ok(None),
            // Stock and payment both succeeded, so nothing should reject the order now: this is
            // a saga bug, and it must be visible rather than silently ignored.
            OrderStatus::Confirmed | OrderStatus::Shipped | OrderStatus::Delivered => {
                Err(OrderError::AlreadyConfirmed)
            }
        }
    }

    fn cancel(&self, reason: Option<String>) -> Result<Option<OrderEvent>, OrderError> {
        let order = self.placed()?;
        match order.status {
            OrderStatus::Placed | OrderStatus::Confirmed => {}
            // The customer asked twice: tell them, it is not a policy that needs idempotence.
            OrderStatus::Cancelled => return Err(OrderError::AlreadyCancelled),
            OrderStatus::Rejected => return Err(OrderError::AlreadyRejected),
            OrderStatus::Shipped | OrderStatus::Delivered => {
                return Err(OrderError::AlreadyShipped);
            }
        }
        if reason
            .as_deref()
            .is_some_and(|r| r.chars().count() > MAX_CANCEL_REASON_CHARS)
        {
            return Err(OrderError::InvalidReason);
        }
        Ok(Some(
            OrderCancelled {
                order_id: order.order_id,
                reason,
            }
            .into(),
        ))
    }

    fn mark_shipped(&self) -> Result<Option<OrderEvent>, OrderError> {
        let order = self.placed()?;
        match order.status {
            OrderStatus::Confirmed => Ok(Some(
                OrderShipped {
                    order_id: order.order_id,
                }
                .into(),
            )),
            // A redelivered `ShipmentDispatched`.
            OrderStatus::Shipped | OrderStatus::Delivered => Ok(None),
            // A dispatch that raced a cancellation: a real conflict that someone must see.
            OrderStatus::Cancelled => Err(OrderError::AlreadyCancelled),
            OrderStatus::Rejected => Err(OrderError::AlreadyRejected),
            OrderStatus::Placed => Err(OrderError::NotConfirmed),
        }
    }

    fn mark_delivered(&self) -> Result<Option<OrderEvent>, OrderError> {
        let order = self.placed()?;
        match order.status {
            OrderStatus::Shipped => Ok(Some(
                OrderDelivered {
                    order_id: order.order_id,
                }
                .into(),
            )),
            // A redelivered `ShipmentDelivered`.
            OrderStatus::Delivered => Ok(None),
            OrderStatus::Placed
            | OrderStatus::Confirmed
            | OrderStatus::Rejected
            | OrderStatus::Cancelled => Err(OrderError::NotShipped),
        }
    }
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;
    /// None: prices arrive in `OrderCommand::Place`, read by the application layer from
    /// ordering's catalogue replica, so that `handle` stays pure.
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        // Decide everything first, then write: a refused command leaves no event behind.
        let event = match command {
            OrderCommand::Place {
                order_id,
                customer_id,
                lines,
                shipping_address,
                payment_token,
                prices,
            } => Some(self.place(
                order_id,
                customer_id,
                lines,
                shipping_address,
                payment_token,
                &prices,
            )?),
            OrderCommand::Confirm => self.confirm()?,
            OrderCommand::Reject { reason, detail } => self.reject(reason, detail)?,
            OrderCommand::Cancel { reason } => self.cancel(reason)?,
            OrderCommand::MarkShipped => self.mark_shipped()?,
            OrderCommand::MarkDelivered => self.mark_delivered()?,
        };
        if let Some(event) = event {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let status = match event {
            OrderEvent::OrderPlaced(placed) => {
                self.placed = Some(PlacedOrder {
                    order_id: placed.order_id,
                    customer_id: placed.customer_id,
                    lines: placed.lines,
                    total: placed.total,
                    shipping_address: placed.shipping_address,
                    status: OrderStatus::Placed,
                });
                return;
            }
            OrderEvent::OrderConfirmed(_) => OrderStatus::Confirmed,
            OrderEvent::OrderRejected(_) => OrderStatus::Rejected,
            OrderEvent::OrderCancelled(_) => OrderStatus::Cancelled,
            OrderEvent::OrderShipped(_) => OrderStatus::Shipped,
            OrderEvent::OrderDelivered(_) => OrderStatus::Delivered,
        };
        // Every other event follows `OrderPlaced` in a stream; `apply` must not panic, so a
        // stream that breaks this is left as it is rather than invented into an order.
        if let Some(order) = &mut self.placed {
            order.status = status;
        }
    }
}

/// At least one line, at most `MAX_LINES`, each SKU once (so that a SKU's quantity is in one
/// place for inventory and for the shopper).
fn check_lines(lines: &[RequestedLine]) -> Result<(), OrderError> {
    if lines.is_empty() {
        return Err(OrderError::EmptyOrder);
    }
    if lines.len() > MAX_LINES {
        return Err(OrderError::TooManyLines { max: MAX_LINES });
    }
    let mut seen = HashSet::with_capacity(lines.len());
    for line in lines {
        if !seen.insert(&line.sku) {
            return Err(OrderError::DuplicateSku(line.sku.clone()));
        }
    }
    Ok(())
}

/// Required fields are not blank, no field is longer than `MAX_ADDRESS_FIELD_CHARS`, and the
/// country is an ISO 3166-1 alpha-2 code (two upper-case ASCII letters).
fn check_address(address: &Address) -> Result<(), OrderError> {
    let required = [
        ("name", &address.name),
        ("line1", &address.line1),
        ("city", &address.city),
        ("postal_code", &address.postal_code),
    ];
    for (field, value) in required {
        if value.trim().is_empty() || longer_than(value, MAX_ADDRESS_FIELD_CHARS) {
            return Err(OrderError::InvalidAddress { field });
        }
    }
    // `line2` is optional, but bounded like the others.
    if address
        .line2
        .as_deref()
        .is_some_and(|line2| longer_than(line2, MAX_ADDRESS_FIELD_CHARS))
    {
        return Err(OrderError::InvalidAddress { field: "line2" });
    }
    let country = address.country.as_bytes();
    if country.len() != 2 || !country.iter().all(u8::is_ascii_uppercase) {
        return Err(OrderError::InvalidAddress { field: "country" });
    }
    Ok(())
}

/// Opaque to ordering, but it must name something and stay a reasonable size.
fn check_payment_token(token: &str) -> Result<(), OrderError> {
    if token.trim().is_empty() || longer_than(token, MAX_PAYMENT_TOKEN_CHARS) {
        return Err(OrderError::InvalidPaymentToken);
    }
    Ok(())
}

fn longer_than(value: &str, max_chars: usize) -> bool {
    value.chars().count() > max_chars
}

/// Prices each line from the catalogue's prices and sums them. Errors come in a fixed
/// precedence (unknown SKU, then mixed currencies, then overflow), whatever the order of the
/// lines.
fn price_lines(
    prices: &HashMap<Sku, Money>,
    requested: Vec<RequestedLine>,
) -> Result<(Vec<OrderLine>, Money), OrderError> {
    let lines = requested
        .into_iter()
        .map(
            |RequestedLine { sku, quantity }| match prices.get(&sku).copied() {
                Some(unit_price) => Ok(OrderLine {
                    sku,
                    quantity,
                    unit_price,
                }),
                None => Err(OrderError::UnknownSku(sku)),
            },
        )
        .collect::<Result<Vec<_>, _>>()?;

    let Some(first) = lines.first() else {
        return Err(OrderError::EmptyOrder);
    };
    let currency = first.unit_price.currency;
    if lines.iter().any(|l| l.unit_price.currency != currency) {
        return Err(OrderError::MixedCurrencies);
    }

    let mut total = Money::new(0, currency);
    for line in &lines {
        total = line
            .unit_price
            .checked_mul(line.quantity)
            .and_then(|line_total| total.checked_add(line_total))
            .ok_or(OrderError::TotalTooLarge)?;
    }
    Ok((lines, total))
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;
    use events::values::{Currency, Quantity};

    use super::*;

    fn eur(amount_minor: i64) -> Money {
        Money::new(amount_minor, "EUR".parse::<Currency>().unwrap())
    }

    fn usd(amount_minor: i64) -> Money {
        Money::new(amount_minor, "USD".parse::<Currency>().unwrap())
    }

    fn sku(s: &str) -> Sku {
        s.parse().unwrap()
    }

    fn line(s: &str, quantity: u32) -> RequestedLine {
        RequestedLine {
            sku: sku(s),
            quantity: Quantity::try_from(quantity).unwrap(),
        }
    }

    /// The prices the application layer would read from the replica: MUG and BOOK in EUR, CAP
    /// in USD, GOLD at the largest price there is, and SKU-00 to SKU-49 at 1.00 EUR each
    /// (enough for a full order). More than any one order asks for: extra entries are ignored.
    fn catalogue() -> HashMap<Sku, Money> {
        let mut prices = HashMap::from([
            (sku("MUG"), eur(250)),
            (sku("BOOK"), eur(1000)),
            (sku("CAP"), usd(500)),
            (sku("GOLD"), eur(i64::MAX)),
        ]);
        for i in 0..MAX_LINES {
            prices.insert(sku(&format!("SKU-{i:02}")), eur(100));
        }
        prices
    }

    fn order_id() -> OrderId {
        "01900000-0000-7000-8000-000000000001".parse().unwrap()
    }

    fn customer_id() -> CustomerId {
        "01900000-0000-7000-8000-000000000002".parse().unwrap()
    }

    fn address() -> Address {
        Address {
            name: "Ada Lovelace".into(),
            line1: "12 St James's Square".into(),
            line2: None,
            city: "London".into(),
            postal_code: "SW1Y 4JH".into(),
            country: "GB".into(),
        }
    }

    fn place(lines: Vec<RequestedLine>) -> OrderCommand {
        place_with(lines, address(), "tok_success")
    }

    fn place_with(lines: Vec<RequestedLine>, address: Address, token: &str) -> OrderCommand {
        place_priced(lines, address, token, catalogue())
    }

    fn place_priced(
        lines: Vec<RequestedLine>,
        address: Address,
        token: &str,
        prices: HashMap<Sku, Money>,
    ) -> OrderCommand {
        OrderCommand::Place {
            order_id: order_id(),
            customer_id: customer_id(),
            lines,
            shipping_address: address,
            payment_token: token.into(),
            prices,
        }
    }

    fn priced(s: &str, quantity: u32, unit_price: Money) -> OrderLine {
        OrderLine {
            sku: sku(s),
            quantity: Quantity::try_from(quantity).unwrap(),
            unit_price,
        }
    }

    /// The event of placing 2 × MUG and 1 × BOOK.
    fn placed() -> OrderEvent {
        OrderPlaced {
            order_id: order_id(),
            customer_id: customer_id(),
            lines: vec![priced("MUG", 2, eur(250)), priced("BOOK", 1, eur(1000))],
            total: eur(1500),
            shipping_address: address(),
            payment_token: "tok_success".into(),
        }
        .into()
    }

    fn confirmed() -> OrderEvent {
        OrderConfirmed {
            order_id: order_id(),
            shipping_address: address(),
        }
        .into()
    }

    fn rejected() -> OrderEvent {
        OrderRejected {
            order_id: order_id(),
            reason: RejectionReason::OutOfStock,
            detail: "MUG: 1 of 2 available".into(),
        }
        .into()
    }

    fn cancelled(reason: Option<&str>) -> OrderEvent {
        OrderCancelled {
            order_id: order_id(),
            reason: reason.map(str::to_owned),
        }
        .into()
    }

    fn shipped() -> OrderEvent {
        OrderShipped {
            order_id: order_id(),
        }
        .into()
    }

    fn delivered() -> OrderEvent {
        OrderDelivered {
            order_id: order_id(),
        }
        .into()
    }

    /// Every state an order can be in (`None`: not placed), with a history that leads there.
    fn every_state() -> Vec<(Option<OrderStatus>, Vec<OrderEvent>)> {
        vec![
            (None, vec![]),
            (Some(OrderStatus::Placed), vec![placed()]),
            (Some(OrderStatus::Confirmed), vec![placed(), confirmed()]),
            (Some(OrderStatus::Rejected), vec![placed(), rejected()]),
            (
                Some(OrderStatus::Cancelled),
                vec![placed(), cancelled(None)],
            ),
            (
                Some(OrderStatus::Shipped),
                vec![placed(), confirmed(), shipped()],
            ),
            (
                Some(OrderStatus::Delivered),
                vec![placed(), confirmed(), shipped(), delivered()],
            ),
        ]
    }

    fn run(given: Vec<OrderEvent>, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        TestFramework::<Order>::with(())
            .given(given)
            .when(command)
            .inspect_result()
    }

    /// Runs `command` in every state and compares with `expected(state)`.
    fn check_in_every_state(
        command: OrderCommand,
        expected: impl Fn(Option<OrderStatus>) -> Result<Vec<OrderEvent>, OrderError>,
    ) {
        for (state, history) in every_state() {
            assert_eq!(
                run(history, command.clone()),
                expected(state),
                "{command:?} on an order in state {state:?}"
            );
        }
    }

    fn state_after(events: Vec<OrderEvent>) -> Order {
        let mut order = Order::default();
        for event in events {
            order.apply(event);
        }
        order
    }

    // --- Place ---

    #[test]
    fn placing_prices_each_line_from_the_catalogue_and_sums_the_total() {
        // 2 × 2.50 + 1 × 10.00 = 15.00 EUR; the lines carry no price at all.
        TestFramework::<Order>::with(())
            .given_no_previous_events()
            .when(place(vec![line("MUG", 2), line("BOOK", 1)]))
            .then_expect_events(vec![placed()]);
    }

    #[test]
    fn placing_uses_exactly_the_prices_it_is_given() {
        // The catalogue repriced MUG: the same request is priced anew.
        let prices = HashMap::from([(sku("MUG"), eur(300)), (sku("BOOK"), eur(1000))]);
        let events = run(
            vec![],
            place_priced(
                vec![line("MUG", 2), line("BOOK", 1)],
                address(),
                "tok_success",
                prices,
            ),
        )
        .unwrap();
        let [OrderEvent::OrderPlaced(placed)] = events.as_slice() else {
            panic!("expected one OrderPlaced, got {events:?}");
        };
        assert_eq!(
            placed.lines,
            [priced("MUG", 2, eur(300)), priced("BOOK", 1, eur(1000))]
        );
        assert_eq!(placed.total, eur(1600));

        // No prices at all: the first line's SKU is unknown.
        let events = run(
            vec![],
            place_priced(
                vec![line("MUG", 1), line("BOOK", 1)],
                address(),
                "tok_success",
                HashMap::new(),
            ),
        );
        assert_eq!(events, Err(OrderError::UnknownSku(sku("MUG"))));
    }

    #[test]
    fn placing_accepts_the_limits_themselves() {
        let full: Vec<_> = (0..MAX_LINES)
            .map(|i| line(&format!("SKU-{i:02}"), 1))
            .collect();
        let events = run(vec![], place(full)).expect("50 lines are allowed");
        let [OrderEvent::OrderPlaced(placed)] = events.as_slice() else {
            panic!("expected one OrderPlaced, got {events:?}");
        };
        assert_eq!(placed.lines.len(), MAX_LINES);
        assert_eq!(placed.total, eur(100 * MAX_LINES as i64));

        // Lengths are counted in characters, not bytes: 200 × 'é' is 400 bytes.
        let longest = "é".repeat(MAX_ADDRESS_FIELD_CHARS);
        let address = Address {
            name: longest.clone(),
            line1: longest.clone(),
            line2: Some(longest.clone()),
            city: longest.clone(),
            postal_code: longest,
            country: "FR".into(),
        };
        let token = "t".repeat(MAX_PAYMENT_TOKEN_CHARS);
        let events = run(vec![], place_with(vec![line("MUG", 1)], address, &token));
        assert!(
            matches!(events.as_deref(), Ok([OrderEvent::OrderPlaced(_)])),
            "fields at their longest should be accepted, got {events:?}"
        );
    }

    #[test]
    fn placing_refuses_invalid_orders() {
        /// One character over the limit of an address field.
        fn long() -> String {
            "x".repeat(MAX_ADDRESS_FIELD_CHARS + 1)
        }
        // A valid address with one change.
        let changed = |change: fn(&mut Address)| {
            let mut a = address();
            change(&mut a);
            a
        };
        let one_mug = || vec![line("MUG", 1)];
        let invalid_address = |field| OrderError::InvalidAddress { field };

        let cases: Vec<(&str, Vec<OrderEvent>, OrderCommand, OrderError)> = vec![
            (
                "already placed",
                vec![placed()],
                place(one_mug()),
                OrderError::AlreadyPlaced,
            ),
            ("no lines", vec![], place(vec![]), OrderError::EmptyOrder),
            (
                "51 lines",
                vec![],
                place(
                    (0..=MAX_LINES)
                        .map(|i| line(&format!("SKU-{i:02}"), 1))
                        .collect(),
                ),
                OrderError::TooManyLines { max: 50 },
            ),
            (
                "the same SKU twice",
                vec![],
                place(vec![line("MUG", 1), line("BOOK", 1), line("MUG", 3)]),
                OrderError::DuplicateSku(sku("MUG")),
            ),
            (
                "an unknown SKU",
                vec![],
                place(vec![line("MUG", 1), line("NOPE", 1)]),
                OrderError::UnknownSku(sku("NOPE")),
            ),
            (
                "an unknown SKU, even after a line in another currency",
                vec![],
                place(vec![line("MUG", 1), line("CAP", 1), line("NOPE", 1)]),
                OrderError::UnknownSku(sku("NOPE")),
            ),
            (
                "EUR and USD lines",
                vec![],
                place(vec![line("MUG", 1), line("CAP", 1)]),
                OrderError::MixedCurrencies,
            ),
            (
                "a line total that overflows",
                vec![],
                place(vec![line("GOLD", 2)]),
                OrderError::TotalTooLarge,
            ),
            (
                "a sum of lines that overflows",
                vec![],
                place(vec![line("GOLD", 1), line("MUG", 1)]),
                OrderError::TotalTooLarge,
            ),
            (
                "an empty name",
                vec![],
                place_with(one_mug(), changed(|a| a.name = String::new()), "tok"),
                invalid_address("name"),
            ),
            (
                "a blank name",
                vec![],
                place_with(one_mug(), changed(|a| a.name = " \t ".into()), "tok"),
                invalid_address("name"),
            ),
            (
                "a name too long",
                vec![],
                place_with(one_mug(), changed(|a| a.name = long()), "tok"),
                invalid_address("name"),
            ),
            (
                "an empty line1",
                vec![],
                place_with(one_mug(), changed(|a| a.line1 = String::new()), "tok"),
                invalid_address("line1"),
            ),
            (
                "a line1 too long",
                vec![],
                place_with(one_mug(), changed(|a| a.line1 = long()), "tok"),
                invalid_address("line1"),
            ),
            (
                "a line2 too long",
                vec![],
                place_with(one_mug(), changed(|a| a.line2 = Some(long())), "tok"),
                invalid_address("line2"),
            ),
            (
                "an empty city",
                vec![],
                place_with(one_mug(), changed(|a| a.city = String::new()), "tok"),
                invalid_address("city"),
            ),
            (
                "a city too long",
                vec![],
                place_with(one_mug(), changed(|a| a.city = long()), "tok"),
                invalid_address("city"),
            ),
            (
                "an empty postal code",
                vec![],
                place_with(one_mug(), changed(|a| a.postal_code = String::new()), "tok"),
                invalid_address("postal_code"),
            ),
            (
                "a postal code too long",
                vec![],
                place_with(one_mug(), changed(|a| a.postal_code = long()), "tok"),
                invalid_address("postal_code"),
            ),
            (
                "an empty country",
                vec![],
                place_with(one_mug(), changed(|a| a.country = "".into()), "tok"),
                invalid_address("country"),
            ),
            (
                "a lower-case country",
                vec![],
                place_with(one_mug(), changed(|a| a.country = "gb".into()), "tok"),
                invalid_address("country"),
            ),
            (
                "a three-letter country",
                vec![],
                place_with(one_mug(), changed(|a| a.country = "GBR".into()), "tok"),
                invalid_address("country"),
            ),
            (
                "a country with a digit",
                vec![],
                place_with(one_mug(), changed(|a| a.country = "G1".into()), "tok"),
                invalid_address("country"),
            ),
            (
                "a country with a non-ASCII letter",
                vec![],
                place_with(one_mug(), changed(|a| a.country = "É".into()), "tok"),
                invalid_address("country"),
            ),
            (
                "an empty payment token",
                vec![],
                place_with(one_mug(), address(), ""),
                OrderError::InvalidPaymentToken,
            ),
            (
                "a blank payment token",
                vec![],
                place_with(one_mug(), address(), "   "),
                OrderError::InvalidPaymentToken,
            ),
            (
                "a payment token too long",
                vec![],
                place_with(
                    one_mug(),
                    address(),
                    &"t".repeat(MAX_PAYMENT_TOKEN_CHARS + 1),
                ),
                OrderError::InvalidPaymentToken,
            ),
        ];

        for (case, given, command, expected) in cases {
            assert_eq!(run(given, command), Err(expected), "placing {case}");
        }
    }

    #[test]
    fn a_placed_order_keeps_what_later_steps_need_but_not_the_payment_token() {
        let order = state_after(vec![placed()]);
        assert_eq!(order.id(), Some(order_id()));
        assert_eq!(order.status(), Some(OrderStatus::Placed));
        assert_eq!(order.customer_id(), Some(customer_id()));
        assert_eq!(order.total(), Some(eur(1500)));
        assert_eq!(
            order.lines(),
            [priced("MUG", 2, eur(250)), priced("BOOK", 1, eur(1000))]
        );
        assert_eq!(order.shipping_address(), Some(&address()));

        let json = serde_json::to_string(&order).unwrap();
        assert!(
            !json.contains("tok_success"),
            "the payment token must not be kept in the state: {json}"
        );
        let restored: Order = serde_json::from_str(&json).unwrap();
        assert_eq!(restored.status(), order.status());
        assert_eq!(restored.lines(), order.lines());
    }

    #[test]
    fn an_order_not_placed_has_no_status_and_no_lines() {
        let order = Order::default();
        assert_eq!(order.status(), None);
        assert_eq!(order.total(), None);
        assert_eq!(order.customer_id(), None);
        assert!(order.lines().is_empty());

        // `apply` never panics, even on a stream that does not start with `OrderPlaced`.
        let order = state_after(vec![confirmed()]);
        assert_eq!(order.status(), None);
    }

    #[test]
    fn events_move_the_order_through_its_states() {
        for (state, history) in every_state() {
            assert_eq!(state_after(history).status(), state);
        }
        let order = state_after(vec![placed(), confirmed(), cancelled(Some("changed mind"))]);
        assert_eq!(order.status(), Some(OrderStatus::Cancelled));
    }

    // --- Confirm ---

    #[test]
    fn confirming_a_placed_order() {
        TestFramework::<Order>::with(())
            .given(vec![placed()])
            .when(OrderCommand::Confirm)
            .then_expect_events(vec![confirmed()]);
    }

    #[test]
    fn confirming_in_every_state() {
        // A late capture on a rejected or cancelled order is ignored: payments refunds it.
        check_in_every_state(OrderCommand::Confirm, |state| match state {
            None => Err(OrderError::NotPlaced),
            Some(OrderStatus::Placed) => Ok(vec![confirmed()]),
            Some(
                OrderStatus::Confirmed
                | OrderStatus::Shipped
                | OrderStatus::Delivered
                | OrderStatus::Rejected
                | OrderStatus::Cancelled,
            ) => Ok(vec![]),
        });
    }

    // --- Reject ---

    #[test]
    fn rejecting_a_placed_order_keeps_the_reason() {
        TestFramework::<Order>::with(())
            .given(vec![placed()])
            .when(OrderCommand::Reject {
                reason: RejectionReason::PaymentTimedOut,
                detail: "not paid within 15 minutes".into(),
            })
            .then_expect_events(vec![
                OrderRejected {
                    order_id: order_id(),
                    reason: RejectionReason::PaymentTimedOut,
                    detail: "not paid within 15 minutes".into(),
                }
                .into(),
            ]);
    }

    #[test]
    fn rejecting_in_every_state() {
        let reject = OrderCommand::Reject {
            reason: RejectionReason::OutOfStock,
            detail: "MUG: 1 of 2 available".into(),
        };
        check_in_every_state(reject, |state| match state {
            None => Err(OrderError::NotPlaced),
            Some(OrderStatus::Placed) => Ok(vec![rejected()]),
            Some(OrderStatus::Rejected | OrderStatus::Cancelled) => Ok(vec![]),
            Some(OrderStatus::Confirmed | OrderStatus::Shipped | OrderStatus::Delivered) => {
                Err(OrderError::AlreadyConfirmed)
            }
        });
    }

    // --- Cancel ---

    #[test]
    fn cancelling_in_every_state() {
        let cancel = OrderCommand::Cancel {
            reason: Some("changed mind".into()),
        };
        check_in_every_state(cancel, |state| match state {
            None => Err(OrderError::NotPlaced),
            Some(OrderStatus::Placed | OrderStatus::Confirmed) => {
                Ok(vec![cancelled(Some("changed mind"))])
            }
            Some(OrderStatus::Cancelled) => Err(OrderError::AlreadyCancelled),
            Some(OrderStatus::Rejected) => Err(OrderError::AlreadyRejected),
            Some(OrderStatus::Shipped | OrderStatus::Delivered) => Err(OrderError::AlreadyShipped),
        });
    }

    #[test]
    fn cancelling_without_a_reason_or_with_the_longest_one() {
        TestFramework::<Order>::with(())
            .given(vec![placed()])
            .when(OrderCommand::Cancel { reason: None })
            .then_expect_events(vec![cancelled(None)]);

        let longest = "é".repeat(MAX_CANCEL_REASON_CHARS);
        TestFramework::<Order>::with(())
            .given(vec![placed(), confirmed()])
            .when(OrderCommand::Cancel {
                reason: Some(longest.clone()),
            })
            .then_expect_events(vec![cancelled(Some(&longest))]);
    }

    #[test]
    fn cancelling_with_a_reason_too_long_is_refused() {
        TestFramework::<Order>::with(())
            .given(vec![placed()])
            .when(OrderCommand::Cancel {
                reason: Some("x".repeat(MAX_CANCEL_REASON_CHARS + 1)),
            })
            .then_expect_error(OrderError::InvalidReason);
    }

    // --- MarkShipped ---

    #[test]
    fn marking_shipped_in_every_state() {
        check_in_every_state(OrderCommand::MarkShipped, |state| match state {
            None => Err(OrderError::NotPlaced),
            Some(OrderStatus::Confirmed) => Ok(vec![shipped()]),
            Some(OrderStatus::Shipped | OrderStatus::Delivered) => Ok(vec![]),
            Some(OrderStatus::Placed) => Err(OrderError::NotConfirmed),
            Some(OrderStatus::Cancelled) => Err(OrderError::AlreadyCancelled),
            Some(OrderStatus::Rejected) => Err(OrderError::AlreadyRejected),
        });
    }

    #[test]
    fn a_dispatch_racing_a_cancellation_is_a_visible_conflict() {
        TestFramework::<Order>::with(())
            .given(vec![placed(), confirmed(), cancelled(None)])
            .when(OrderCommand::MarkShipped)
            .then_expect_error(OrderError::AlreadyCancelled);
    }

    // --- MarkDelivered ---

    #[test]
    fn marking_delivered_in_every_state() {
        check_in_every_state(OrderCommand::MarkDelivered, |state| match state {
            None => Err(OrderError::NotPlaced),
            Some(OrderStatus::Shipped) => Ok(vec![delivered()]),
            Some(OrderStatus::Delivered) => Ok(vec![]),
            Some(
                OrderStatus::Placed
                | OrderStatus::Confirmed
                | OrderStatus::Rejected
                | OrderStatus::Cancelled,
            ) => Err(OrderError::NotShipped),
        });
    }

    // --- Contract details ---

    #[test]
    fn error_codes_are_the_snake_case_variant_names() {
        let cases = [
            (OrderError::AlreadyPlaced, "already_placed"),
            (OrderError::EmptyOrder, "empty_order"),
            (OrderError::TooManyLines { max: 50 }, "too_many_lines"),
            (OrderError::DuplicateSku(sku("MUG")), "duplicate_sku"),
            (OrderError::UnknownSku(sku("MUG")), "unknown_sku"),
            (OrderError::MixedCurrencies, "mixed_currencies"),
            (OrderError::TotalTooLarge, "total_too_large"),
            (
                OrderError::InvalidAddress { field: "city" },
                "invalid_address",
            ),
            (OrderError::InvalidPaymentToken, "invalid_payment_token"),
            (OrderError::NotPlaced, "not_placed"),
            (OrderError::AlreadyConfirmed, "already_confirmed"),
            (OrderError::AlreadyCancelled, "already_cancelled"),
            (OrderError::AlreadyRejected, "already_rejected"),
            (OrderError::AlreadyShipped, "already_shipped"),
            (OrderError::NotConfirmed, "not_confirmed"),
            (OrderError::NotShipped, "not_shipped"),
            (OrderError::InvalidReason, "invalid_reason"),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "code of {error:?}");
        }
        assert_eq!(
            OrderError::TooManyLines { max: 50 }.to_string(),
            "an order has at most 50 lines"
        );
        assert_eq!(
            OrderError::InvalidReason.to_string(),
            "the cancellation reason must be at most 500 characters"
        );
    }

    #[test]
    fn statuses_serialise_in_snake_case() {
        let cases = [
            (OrderStatus::Placed, "\"placed\""),
            (OrderStatus::Confirmed, "\"confirmed\""),
            (OrderStatus::Rejected, "\"rejected\""),
            (OrderStatus::Cancelled, "\"cancelled\""),
            (OrderStatus::Shipped, "\"shipped\""),
            (OrderStatus::Delivered, "\"delivered\""),
        ];
        for (status, json) in cases {
            assert_eq!(serde_json::to_string(&status).unwrap(), json);
            assert_eq!(serde_json::from_str::<OrderStatus>(json).unwrap(), status);
        }
    }

    #[test]
    fn the_aggregate_type_matches_the_published_events() {
        assert_eq!(Order::TYPE, <OrderEvent as events::Event>::AGGREGATE_TYPE);
    }
}
