//! The run: orders sent on a timetable (open loop) or by workers (closed loop), and each one
//! matched to the event that ends it.
//!
//! A [`Tracker`] holds the orders sent and not yet ended, by order id. The listener, subscribed
//! to ordering's `OrderConfirmed` and `OrderRejected` before anything is sent, ends them as the
//! events arrive. Through the gateway the order id is known only from the answer to the POST,
//! and an order can be confirmed before that answer is read: an event for an id not (yet)
//! expected is kept a while ([`EARLY_KEPT`]) for the answer that names it. Over NATS the bench
//! chooses the id and expects it before it sends.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use events::BoundedContext;
use events::command::{CommandReply, command_subject};
use events::headers;
use events::ordering::OrderRejected;
use events::values::{CustomerId, OrderId, Sku};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use ordering::commands::PLACE_ORDER;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinSet;

use super::setup::Prepared;
use super::target::{MAX_IN_FLIGHT, System};

/// How long an event for an order not (yet) expected is kept for the answer that names it.
const EARLY_KEPT: Duration = Duration::from_secs(60);
/// Early events kept before the old ones are dropped.
const EARLY_SWEEP_AT: usize = 10_000;
/// The highest latency the histograms hold: an hour, in microseconds.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// How the orders go in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Gateway,
    Nats,
}

/// Open or closed loop.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    Open { rate: u32 },
    Closed { workers: u32 },
}

/// When the measured part ends.
#[derive(Debug, Clone, Copy)]
pub enum End {
    After(Duration),
    Count(u64),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub via: Via,
    pub shape: Shape,
    pub end: End,
    pub warmup: Duration,
    pub settle: Duration,
    pub skus: u32,
}

impl Plan {
    /// Orders sent in all, warm-up included, when that is known ahead (an open loop, or a
    /// closed loop of a count without warm-up).
    fn orders(&self) -> Option<u64> {
        match (self.shape, self.end) {
            (Shape::Open { rate }, end) => {
                let timetable = Timetable::new(rate, self.warmup, end);
                Some(timetable.warmup_orders + timetable.measured_orders)
            }
            (Shape::Closed { .. }, End::Count(count)) if self.warmup.is_zero() => Some(count),
            (Shape::Closed { .. }, _) => None,
        }
    }

    /// Stock per SKU for every order of the run (orders take the SKUs in turn).
    pub fn stock_per_sku(&self) -> u32 {
        self.orders().map_or(1_000_000, |orders| {
            u32::try_from(orders.div_ceil(u64::from(self.skus)).max(1)).unwrap_or(u32::MAX - 1)
        })
    }
}

/// An open loop's slots: order `k` is due `k / rate` seconds after the start.
#[derive(Debug, Clone, Copy)]
struct Timetable {
    rate: u32,
    warmup_orders: u64,
    measured_orders: u64,
}

impl Timetable {
    fn new(rate: u32, warmup: Duration, end: End) -> Self {
        let orders_in = |d: Duration| (f64::from(rate) * d.as_secs_f64()).ceil() as u64;
        Self {
            rate,
            warmup_orders: orders_in(warmup),
            measured_orders: match end {
                End::After(duration) => orders_in(duration),
                End::Count(count) => count,
            },
        }
    }

    fn due(&self, start: Instant, k: u64) -> Instant {
        start + Duration::from_secs_f64(k as f64 / f64::from(self.rate))
    }
}

/// The body of an order for one unit of `sku`, paid with the simulator's token that succeeds;
/// over NATS with the order's id and customer (through the gateway they come from the gateway
/// and the token).
pub fn order_body(sku: &Sku, nats: Option<(OrderId, CustomerId)>) -> Value {
    let mut body = json!({
        "lines": [{ "sku": sku, "quantity": 1 }],
        "shipping_address": crate::dev::demo::shipping_address(),
        "payment_token": "tok_success"
    });
    if let Some((order_id, customer_id)) = nats {
        body["order_id"] = json!(order_id);
        body["customer_id"] = json!(customer_id);
    }
    body
}

/// What the measured orders did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub sent: u64,
    pub warmup_sent: u64,
    pub confirmed: u64,
    pub errors: BTreeMap<String, u64>,
    /// From send to `OrderConfirmed`, in microseconds.
    pub end_to_end: Histogram<u64>,
    /// From send to the answer of the POST (or of the NATS request), accepted ones only.
    pub request: Histogram<u64>,
    /// From the end of the warm-up to the last confirmation.
    pub window: Duration,
}

/// How an order ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Terminal {
    Confirmed,
    Rejected(String),
}

#[derive(Debug)]
struct Pending {
    sent: Instant,
    measured: bool,
    /// Told when the order ends (a closed loop's worker waits on it).
    done: oneshot::Sender<()>,
}

#[derive(Debug)]
struct State {
    pending: HashMap<String, Pending>,
    early: HashMap<String, (Instant, Terminal)>,
    outcome: Outcome,
    measure_start: Instant,
    last_confirmed: Option<Instant>,
}

/// The orders in flight and the results so far.
#[derive(Debug)]
struct Tracker {
    state: Mutex<State>,
    /// Measured orders sent and not yet ended.
    open: watch::Sender<u64>,
}

impl Tracker {
    fn new(measure_start: Instant) -> anyhow::Result<Self> {
        let histogram =
            || Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("cannot make a histogram");
        Ok(Self {
            state: Mutex::new(State {
                pending: HashMap::new(),
                early: HashMap::new(),
                outcome: Outcome {
                    sent: 0,
                    warmup_sent: 0,
                    confirmed: 0,
                    errors: BTreeMap::new(),
                    end_to_end: histogram()?,
                    request: histogram()?,
                    window: Duration::ZERO,
                },
                measure_start,
                last_confirmed: None,
            }),
            open: watch::Sender::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-changed in a way that
        // matters more than the panic itself, which ends the run anyway.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn count_sent(&self, measured: bool) {
        let mut state = self.lock();
        if measured {
            state.outcome.sent += 1;
            self.open.send_modify(|open| *open += 1);
        } else {
            state.outcome.warmup_sent += 1;
        }
    }

    /// The order `id` is in flight; its event may have come already.
    fn expect(&self, id: String, pending: Pending) {
        let mut state = self.lock();
        match state.early.remove(&id) {
            Some((at, terminal)) => self.end(&mut state, pending, at, &terminal),
            None => {
                state.pending.insert(id, pending);
            }
        }
    }

    /// The terminal event of order `id` arrived at `at`.
    fn observe(&self, id: String, at: Instant, terminal: Terminal) {
        let mut state = self.lock();
        match state.pending.remove(&id) {
            Some(pending) => self.end(&mut state, pending, at, &terminal),
            None => {
                if state.early.len() >= EARLY_SWEEP_AT {
                    state.early.retain(|_, (seen, _)| at - *seen < EARLY_KEPT);
                }
                state.early.insert(id, (at, terminal));
            }
        }
    }

    fn end(&self, state: &mut State, pending: Pending, at: Instant, terminal: &Terminal) {
        if pending.measured {
            match terminal {
                Terminal::Confirmed => {
                    record(&mut state.outcome.end_to_end, at - pending.sent);
                    state.outcome.confirmed += 1;
                    state.last_confirmed = state.last_confirmed.max(Some(at));
                }
                Terminal::Rejected(reason) => {
                    *state
                        .outcome
                        .errors
                        .entry(format!("rejected_{reason}"))
                        .or_default() += 1;
                }
            }
            self.open.send_modify(|open| *open -= 1);
        }
        // Nobody waits in an open loop, nor a worker that gave up: nothing to tell then.
        let _ = pending.done.send(());
    }

    /// The command was answered (accepted) at `at`.
    fn answered(&self, measured: bool, sent: Instant, at: Instant) {
        if measured {
            record(&mut self.lock().outcome.request, at - sent);
        }
    }

    /// The order ended in error `kind` before any event: forget it if it was expected.
    fn failed(&self, id: Option<&str>, measured: bool, kind: String) {
        let mut state = self.lock();
        if let Some(id) = id {
            state.pending.remove(id);
        }
        if measured {
            *state.outcome.errors.entry(kind).or_default() += 1;
            self.open.send_modify(|open| *open -= 1);
        }
    }

    /// A worker waited long enough for order `id`.
    fn give_up(&self, id: &str) {
        let mut state = self.lock();
        if let Some(pending) = state.pending.remove(id)
            && pending.measured
        {
            *state
                .outcome
                .errors
                .entry("not_terminal".to_owned())
                .or_default() += 1;
            self.open.send_modify(|open| *open -= 1);
        }
    }

    /// Ends the run: the measured orders still open are errors `not_terminal`.
    fn close(&self) -> Outcome {
        let state = self.lock();
        let open: Vec<String> = state
            .pending
            .iter()
            .filter(|(_, p)| p.measured)
            .map(|(id, _)| id.clone())
            .collect();
        drop(state);
        for id in open {
            self.give_up(&id);
        }
        let mut state = self.lock();
        state.outcome.window = state
            .last_confirmed
            .map_or(Duration::ZERO, |last| last - state.measure_start);
        state.outcome.clone()
    }
}

fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

/// Sends orders as the plan says, waits for them to end, and returns the figures.
pub async fn drive(system: &System, prepared: &Prepared, plan: &Plan) -> anyhow::Result<Outcome> {
    // An open loop starts a little ahead, so that its first slots are not late already.
    let start = Instant::now() + Duration::from_millis(20);
    let (measure_start, timetable) = match plan.shape {
        Shape::Open { rate } => {
            let timetable = Timetable::new(rate, plan.warmup, plan.end);
            (
                timetable.due(start, timetable.warmup_orders),
                Some(timetable),
            )
        }
        Shape::Closed { .. } => (Instant::now() + plan.warmup, None),
    };
    let sender = Arc::new(Sender {
        via: plan.via,
        http: system.http.clone(),
        orders_url: format!("{}/orders", system.gateway_url),
        nats: system.nats.clone(),
        subject: command_subject("ordering", PLACE_ORDER),
        shopper_tokens: system.shopper_tokens.clone(),
        customers: system.customers.clone(),
        skus: prepared.skus.clone(),
        settle: plan.settle,
        tracker: Tracker::new(measure_start)?,
    });
    let listener = listen(&system.nats, sender.clone()).await?;

    match (plan.shape, timetable) {
        (Shape::Open { .. }, Some(timetable)) => open_loop(&sender, start, timetable).await,
        (Shape::Closed { workers }, _) => {
            closed_loop(&sender, measure_start, workers, plan).await;
        }
        (Shape::Open { .. }, None) => unreachable!("an open loop has a timetable"),
    }
    // The orders still open after --settle are counted `not_terminal` by `close`.
    let _ = tokio::time::timeout(
        plan.settle,
        sender.tracker.open.subscribe().wait_for(|open| *open == 0),
    )
    .await;
    listener.abort();
    Ok(sender.tracker.close())
}

/// Sends order `k` at its slot, each in a task of its own, at most [`MAX_IN_FLIGHT`] at a time.
async fn open_loop(sender: &Arc<Sender>, start: Instant, timetable: Timetable) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    for k in 0..timetable.warmup_orders + timetable.measured_orders {
        let due = timetable.due(start, k);
        tokio::time::sleep_until(due.into()).await;
        let (sender, slots) = (sender.clone(), slots.clone());
        tasks.spawn(async move {
            // The semaphore is never closed.
            let _slot = slots.acquire_owned().await;
            sender.send(k, due, k >= timetable.warmup_orders).await;
        });
        while tasks.try_join_next().is_some() {}
    }
    // Each request ends within --settle (the HTTP client's timeout, NATS's request timeout).
    while tasks.join_next().await.is_some() {}
}

/// `workers` workers, each sending an order and waiting for it to end (or for --settle).
async fn closed_loop(sender: &Arc<Sender>, measure_start: Instant, workers: u32, plan: &Plan) {
    let next = Arc::new(AtomicU64::new(0));
    let measured = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let (sender, next, measured) = (sender.clone(), next.clone(), measured.clone());
        let (end, settle) = (plan.end, plan.settle);
        tasks.spawn(async move {
            loop {
                let now = Instant::now();
                let is_measured = now >= measure_start;
                if is_measured {
                    let over = match end {
                        End::After(duration) => now >= measure_start + duration,
                        End::Count(count) => measured.fetch_add(1, Ordering::Relaxed) >= count,
                    };
                    if over {
                        return;
                    }
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                if let Some((id, done)) = sender.send(k, now, is_measured).await
                    && tokio::time::timeout(settle, done).await.is_err()
                {
                    sender.tracker.give_up(&id);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Subscribes to ordering's terminal events (before anything is sent) and ends the orders
/// they name, until aborted.
async fn listen(
    nats: &async_nats::Client,
    sender: Arc<Sender>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let stream = BoundedContext::Ordering.stream();
    let subscribe = |event: &str| nats.subscribe(stream.event_type_filter("order", event));
    let confirmed = subscribe("OrderConfirmed")
        .await
        .context("cannot subscribe to OrderConfirmed")?;
    let rejected = subscribe("OrderRejected")
        .await
        .context("cannot subscribe to OrderRejected")?;
    // The server has the subscriptions once it has answered a flush.
    nats.flush()
        .await
        .context("NATS did not confirm the subscriptions")?;
    let mut events = futures::stream::select(confirmed, rejected);
    Ok(tokio::spawn(async move {
        while let Some(message) = events.next().await {
            let at = Instant::now();
            let Some(id) = message
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::AGGREGATE_ID))
                .map(|id| id.as_str().to_owned())
            else {
                continue;
            };
            let terminal = if message.subject.ends_with(".OrderConfirmed") {
                Terminal::Confirmed
            } else {
                let reason = serde_json::from_slice::<OrderRejected>(&message.payload)
                    .ok()
                    .and_then(|rejected| serde_json::to_value(rejected.reason).ok())
                    .and_then(|reason| reason.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "unreadable".to_owned());
                Terminal::Rejected(reason)
            };
            sender.tracker.observe(id, at, terminal);
        }
    }))
}

/// What sends one order, shared by the tasks.
#[derive(Debug)]
struct Sender {
    via: Via,
    http: reqwest::Client,
    orders_url: String,
    nats: async_nats::Client,
    subject: String,
    shopper_tokens: Vec<String>,
    customers: Vec<CustomerId>,
    skus: Vec<Sku>,
    /// How long a request may take.
    settle: Duration,
    tracker: Tracker,
}

impl Sender {
    /// Sends order `k`, due at `sent`; when it was accepted, its id and what tells that it
    /// ended. Errors go to the tracker.
    async fn send(
        &self,
        k: u64,
        sent: Instant,
        measured: bool,
    ) -> Option<(String, oneshot::Receiver<()>)> {
        let pick = |len: usize| (k % len as u64) as usize;
        let sku = &self.skus[pick(self.skus.len())];
        self.tracker.count_sent(measured);
        let (done, ended) = oneshot::channel();
        let pending = Pending {
            sent,
            measured,
            done,
        };
        match self.via {
            Via::Nats => {
                let order_id = OrderId::new();
                let id = order_id.to_string();
                let customer = self.customers[pick(self.customers.len())];
                let body = order_body(sku, Some((order_id, customer)));
                self.tracker.expect(id.clone(), pending);
                let request = self
                    .nats
                    .request(self.subject.clone(), body.to_string().into());
                let reply = tokio::time::timeout(self.settle, request).await;
                let at = Instant::now();
                let kind = match reply {
                    Err(_) => "nats_timeout".to_owned(),
                    Ok(Ok(reply)) => match serde_json::from_slice::<CommandReply>(&reply.payload) {
                        Ok(CommandReply::Accepted { .. }) => {
                            self.tracker.answered(measured, sent, at);
                            return Some((id, ended));
                        }
                        Ok(CommandReply::Rejected { code, .. }) => format!("nats_{code}"),
                        Err(_) => "nats_unreadable_reply".to_owned(),
                    },
                    Ok(Err(e)) => match e.kind() {
                        async_nats::RequestErrorKind::NoResponders => "nats_no_responders",
                        async_nats::RequestErrorKind::TimedOut => "nats_timeout",
                        _ => "nats_request_failed",
                    }
                    .to_owned(),
                };
                self.tracker.failed(Some(&id), measured, kind);
                None
            }
            Via::Gateway => {
                let answer = self
                    .http
                    .post(&self.orders_url)
                    .bearer_auth(&self.shopper_tokens[pick(self.shopper_tokens.len())])
                    .header("Idempotency-Key", uuid::Uuid::now_v7().to_string())
                    .json(&order_body(sku, None))
                    .send()
                    .await;
                let at = Instant::now();
                let kind = match answer {
                    Ok(answer) => {
                        let status = answer.status().as_u16();
                        let body: Value = answer.json().await.unwrap_or(Value::Null);
                        match (status, body["aggregate_id"].as_str()) {
                            (201, Some(id)) => {
                                self.tracker.answered(measured, sent, at);
                                self.tracker.expect(id.to_owned(), pending);
                                return Some((id.to_owned(), ended));
                            }
                            _ => format!(
                                "http_{status}_{}",
                                body["code"].as_str().unwrap_or("no_problem_code")
                            ),
                        }
                    }
                    Err(e) if e.is_timeout() => "http_timeout".to_owned(),
                    Err(_) => "http_transport".to_owned(),
                };
                self.tracker.failed(None, measured, kind);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(shape: Shape, end: End, warmup: Duration) -> Plan {
        Plan {
            via: Via::Gateway,
            shape,
            end,
            warmup,
            settle: Duration::from_secs(30),
            skus: 4,
        }
    }

    #[test]
    fn there_is_stock_for_every_order_of_an_open_loop() {
        let open = Shape::Open { rate: 100 };
        let minute = plan(
            open,
            End::After(Duration::from_secs(60)),
            Duration::from_secs(5),
        );
        assert_eq!(minute.orders(), Some(6_500));
        assert_eq!(minute.stock_per_sku(), 1_625);
        let counted = plan(open, End::Count(10), Duration::from_millis(15));
        assert_eq!(counted.orders(), Some(12));
        assert_eq!(counted.stock_per_sku(), 3);
        let closed = Shape::Closed { workers: 8 };
        assert_eq!(
            plan(closed, End::Count(9), Duration::ZERO).stock_per_sku(),
            3
        );
        let unknown = plan(closed, End::Count(9), Duration::from_secs(1));
        assert_eq!(unknown.stock_per_sku(), 1_000_000);
    }

    #[test]
    fn an_event_that_comes_before_the_answer_still_ends_its_order() {
        let start = Instant::now();
        let tracker = Tracker::new(start).unwrap();
        tracker.count_sent(true);
        tracker.observe(
            "early".into(),
            start + Duration::from_millis(5),
            Terminal::Confirmed,
        );
        let (done, mut ended) = oneshot::channel();
        let pending = Pending {
            sent: start,
            measured: true,
            done,
        };
        tracker.expect("early".into(), pending);
        assert_eq!(ended.try_recv(), Ok(()));
        assert_eq!(*tracker.open.borrow(), 0);
        let outcome = tracker.close();
        assert_eq!((outcome.sent, outcome.confirmed), (1, 1));
        assert_eq!(outcome.end_to_end.len(), 1);
        assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    }
}
