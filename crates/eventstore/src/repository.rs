//! Runs commands against cqrs-es aggregates, with a cache of loaded aggregates.

use std::any::Any;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use events::naming::{InvalidToken, check_token};
use events::{Event, Metadata};
use uuid::Uuid;

use crate::store::{Store, StoreError};
use crate::unit_of_work::{NewEvent, Staged, UnitOfWork};

/// The largest event (payload and metadata) a command may append: well under NATS's default
/// 1 MiB `max_payload`, leaving room for the headers.
pub const MAX_EVENT_BYTES: usize = 512 * 1024;

/// Why a command did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate refused the command; nothing was appended.
    #[error(transparent)]
    Rejected(E),
    #[error(transparent)]
    InvalidId(#[from] InvalidToken),
    /// An event too large to publish (NATS refuses messages over its `max_payload`).
    #[error("a {event_type} event of {bytes} bytes is over the {max}-byte limit")]
    EventTooLarge {
        event_type: &'static str,
        bytes: usize,
        max: usize,
    },
    /// Other writers kept appending to the aggregate; gave up after this many attempts.
    #[error("the aggregate kept changing under the command: gave up after {attempts} attempts")]
    Conflict { attempts: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The result of a committed command.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed<E> {
    /// The highest event-store position the command wrote (0 if it appended nothing).
    pub position: i64,
    /// The aggregate's version (its last sequence) after the command.
    pub version: u64,
    pub events: Vec<E>,
}

/// Loads, caches and changes aggregates of one type in one context's store.
pub struct Repository<A: Aggregate> {
    store: Store,
    services: A::Services,
    cache: Arc<Cache<A>>,
    max_attempts: u32,
}

impl<A: Aggregate> std::fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::TYPE)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

impl<A> Repository<A>
where
    A: Aggregate + Clone + 'static,
    A::Command: Clone,
    A::Event: Event,
{
    /// Keeps up to 10,000 aggregates in memory and tries a conflicting command 5 times.
    pub fn new(store: Store, services: A::Services) -> Self {
        Self {
            store,
            services,
            cache: Arc::new(Cache::new(10_000)),
            max_attempts: 5,
        }
    }

    pub fn with_cache_capacity(mut self, capacity: usize) -> Self {
        self.cache = Arc::new(Cache::new(capacity));
        self
    }

    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn services(&self) -> &A::Services {
        &self.services
    }

    /// Runs one command in its own unit of work and commits it; on a concurrency conflict,
    /// reloads the aggregate and runs the command again, up to the attempt limit.
    pub async fn handle(
        &self,
        id: &str,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<Committed<A::Event>, CommandError<A::Error>> {
        for _ in 0..self.max_attempts {
            let mut uow = UnitOfWork::new(&self.store);
            let events = self
                .execute(&mut uow, id, command.clone(), metadata)
                .await?;
            let version = match self.staged_version(&uow, id) {
                // Nothing staged: the command changed nothing; report the current version.
                None => self.load(id).await?.1,
                Some(version) => version,
            };
            match uow.commit().await {
                Ok(position) => {
                    return Ok(Committed {
                        position,
                        version,
                        events,
                    });
                }
                Err(e) if e.is_conflict() => {
                    tracing::debug!(aggregate = A::TYPE, id, "concurrency conflict, retrying");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommandError::Conflict {
            attempts: self.max_attempts,
        })
    }

    /// Runs one command inside `uow`: the events it decides are staged there and written when
    /// the unit commits. A rejected command stages nothing.
    pub async fn execute(
        &self,
        uow: &mut UnitOfWork,
        id: &str,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<Vec<A::Event>, CommandError<A::Error>> {
        self.run(uow, id, command, metadata, Expect::Any).await
    }

    /// Runs a command that begins the aggregate's life (placing an order, requesting a
    /// payment), as [`Self::execute`] does, but without reading the store for an aggregate
    /// it does not hold: the command is decided on the empty aggregate. Were the aggregate
    /// there after all (a command sent twice), the first event decided collides at commit
    /// with the one stored, the unit fails with a conflict, and the next attempt (a retry of
    /// [`Self::handle`], a consumer's rerun of its batch) reads the store. A decision on the
    /// empty aggregate that appends nothing is checked against the store at once, as every
    /// refusal is. So a new aggregate costs no read, and an existing one a conflict.
    pub async fn execute_new(
        &self,
        uow: &mut UnitOfWork,
        id: &str,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<Vec<A::Event>, CommandError<A::Error>> {
        self.run(uow, id, command, metadata, Expect::New).await
    }

    async fn run(
        &self,
        uow: &mut UnitOfWork,
        id: &str,
        command: A::Command,
        metadata: &Metadata,
        expect: Expect,
    ) -> Result<Vec<A::Event>, CommandError<A::Error>> {
        check_token("aggregate id", id)?;
        check_token("aggregate type", A::TYPE)?;
        let staged = uow.staged(A::TYPE, id).is_some();
        let (mut state, mut version) = match expect {
            Expect::New if !staged => self.cached_or_new(id).await?,
            _ => self.current(uow, id).await?,
        };

        let mut decided = state.clone();
        let mut outcome = self.decide(&mut decided, command.clone()).await;
        // A refusal, or a "nothing to do", decided on a cached aggregate may be stale: another
        // writer (another repository, another instance) may have moved it on, and neither
        // writes anything that a conflict could correct. Catch up from the store and decide
        // again. (A unit's staged state is its own, never stale.)
        let wrote_nothing = outcome.as_ref().map_or(true, Vec::is_empty);
        if wrote_nothing && !staged {
            let newer = self
                .store
                .aggregate_events(A::TYPE, id, i64::try_from(version).unwrap_or(i64::MAX))
                .await?;
            if !newer.is_empty() {
                for stored in newer {
                    let envelope = stored.decode::<A::Event>()?;
                    version = envelope.sequence;
                    state.apply(envelope.payload);
                }
                self.cache.put(id, state.clone(), version);
                decided = state;
                outcome = self.decide(&mut decided, command).await;
            }
        }
        let events = outcome.map_err(CommandError::Rejected)?;
        let state = decided;
        if events.is_empty() {
            return Ok(events);
        }

        let metadata = serde_json::to_string(metadata).unwrap_or_else(|_| "{}".to_owned());
        let mut rows = Vec::with_capacity(events.len());
        for (event, sequence) in events.iter().zip(version + 1..) {
            let payload = event.to_payload().to_string();
            // Refused here, before anything is written, rather than blocking the relay later.
            if payload.len() + metadata.len() > MAX_EVENT_BYTES {
                return Err(CommandError::EventTooLarge {
                    event_type: event.event_type(),
                    bytes: payload.len() + metadata.len(),
                    max: MAX_EVENT_BYTES,
                });
            }
            rows.push(NewEvent {
                event_id: Uuid::now_v7(),
                aggregate_type: A::TYPE,
                aggregate_id: id.to_owned(),
                sequence: i64::try_from(sequence).unwrap_or(i64::MAX),
                event_type: event.event_type(),
                schema_version: i32::try_from(event.schema_version()).unwrap_or(i32::MAX),
                payload,
                metadata: metadata.clone(),
            });
        }
        let staged = StagedAggregate {
            cache: Arc::clone(&self.cache),
            id: id.to_owned(),
            state,
            version: version + events.len() as u64,
        };
        uow.stage(A::TYPE, id, rows, Box::new(staged));
        Ok(events)
    }

    /// Runs the aggregate's `handle` on `state` (which it changes as it emits).
    async fn decide(&self, state: &mut A, command: A::Command) -> Result<Vec<A::Event>, A::Error> {
        let sink = EventSink::default();
        state.handle(command, &self.services, &sink).await?;
        Ok(sink.collect().await)
    }

    /// The aggregate as `uow` would leave it (its staged state), or else as committed.
    pub async fn current(&self, uow: &UnitOfWork, id: &str) -> Result<(A, u64), StoreError> {
        match uow.staged(A::TYPE, id) {
            Some(staged) => {
                let staged = staged
                    .downcast_ref::<StagedAggregate<A>>()
                    .ok_or(StoreError::Conflict)?;
                Ok((staged.state.clone(), staged.version))
            }
            None => self.load(id).await,
        }
    }

    /// The aggregate as committed, with its version: from the cache, or from the store (and
    /// then cached).
    pub async fn load(&self, id: &str) -> Result<(A, u64), StoreError> {
        if let Some(found) = self.cache.get(id) {
            return Ok(found);
        }
        let mut state = A::default();
        let mut version = 0;
        for stored in self.store.aggregate_events(A::TYPE, id, 0).await? {
            let envelope = stored.decode::<A::Event>()?;
            version = envelope.sequence;
            state.apply(envelope.payload);
        }
        self.cache.put(id, state.clone(), version);
        Ok((state, version))
    }

    /// The aggregate from the cache; else, unless an attempt to create it failed since it was
    /// last cached (then from the store), the empty aggregate, not cached.
    async fn cached_or_new(&self, id: &str) -> Result<(A, u64), StoreError> {
        if let Some(found) = self.cache.get(id) {
            return Ok(found);
        }
        if self.cache.doubted(id) {
            return self.load(id).await;
        }
        Ok((A::default(), 0))
    }

    fn staged_version(&self, uow: &UnitOfWork, id: &str) -> Option<u64> {
        uow.staged(A::TYPE, id)
            .and_then(|s| s.downcast_ref::<StagedAggregate<A>>())
            .map(|s| s.version)
    }
}

/// What a command expects of the aggregate it runs on.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Anything: read it from the store unless cached.
    Any,
    /// That it does not exist yet (see [`Repository::execute_new`]).
    New,
}

struct StagedAggregate<A: Aggregate> {
    cache: Arc<Cache<A>>,
    id: String,
    state: A,
    version: u64,
}

impl<A: Aggregate + Clone + 'static> Staged for StagedAggregate<A> {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn settle(self: Box<Self>, committed: bool) {
        if committed {
            self.cache.put(&self.id, self.state, self.version);
        } else {
            self.cache.evict(&self.id);
        }
    }
}

/// Loaded aggregates by id, bounded; the oldest entries go first. It also remembers which
/// aggregates a unit of work failed to commit (evicted), so that a command expecting a new
/// aggregate reads those from the store rather than assume them new again.
struct Cache<A> {
    capacity: usize,
    inner: Mutex<CacheInner<A>>,
}

/// Evicted aggregates remembered at most; beyond, the memory is cleared (an aggregate then
/// assumed new again conflicts once more, and is remembered again).
const DOUBTED: usize = 10_000;

struct CacheInner<A> {
    /// Aggregates evicted because a unit of work that changed them did not commit, and not
    /// cached since.
    doubted: HashSet<String>,
    /// State, version, and the generation of the entry (when it was inserted).
    entries: HashMap<String, (A, u64, u64)>,
    /// Insertion order, for eviction: (id, generation). An item whose generation is no longer
    /// the entry's (evicted, maybe inserted again since) is skipped and, in bulk, dropped.
    order: VecDeque<(String, u64)>,
    next_generation: u64,
}

impl<A: Clone> Cache<A> {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(CacheInner {
                doubted: HashSet::new(),
                entries: HashMap::new(),
                order: VecDeque::new(),
                next_generation: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner<A>> {
        // A panic while holding the lock cannot leave an entry half-written (inserts and
        // removals are single calls), so a poisoned cache is still a valid cache.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, id: &str) -> Option<(A, u64)> {
        self.lock()
            .entries
            .get(id)
            .map(|(state, version, _)| (state.clone(), *version))
    }

    /// Whether `id` was evicted and not cached since.
    fn doubted(&self, id: &str) -> bool {
        self.lock().doubted.contains(id)
    }

    /// Stores `state` unless the cache already holds a newer version; evicts the oldest
    /// entries beyond the capacity.
    fn put(&self, id: &str, state: A, version: u64) {
        let mut inner = self.lock();
        inner.doubted.remove(id);
        if self.capacity == 0 {
            return;
        }
        let CacheInner {
            doubted: _,
            entries,
            order,
            next_generation,
        } = &mut *inner;
        match entries.get_mut(id) {
            Some(entry) if entry.1 >= version => {}
            Some(entry) => {
                entry.0 = state;
                entry.1 = version;
            }
            None => {
                *next_generation += 1;
                entries.insert(id.to_owned(), (state, version, *next_generation));
                order.push_back((id.to_owned(), *next_generation));
            }
        }
        let current = |entries: &HashMap<String, (A, u64, u64)>,
                       (id, generation): &(String, u64)| {
            entries.get(id).is_some_and(|e| e.2 == *generation)
        };
        while entries.len() > self.capacity {
            let Some(oldest) = order.pop_front() else {
                break;
            };
            if current(entries, &oldest) {
                entries.remove(&oldest.0);
            }
        }
        // Evictions leave stale items behind; dropping them once the queue has doubled keeps
        // it bounded at an amortised constant cost per insert.
        if order.len() > 2 * self.capacity {
            order.retain(|item| current(entries, item));
        }
    }

    fn evict(&self, id: &str) {
        let mut inner = self.lock();
        inner.entries.remove(id);
        if inner.doubted.len() >= DOUBTED {
            inner.doubted.clear();
        }
        inner.doubted.insert(id.to_owned());
    }
}
