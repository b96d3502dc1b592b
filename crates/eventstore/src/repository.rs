//! Runs commands against cqrs-es aggregates, with a cache of loaded aggregates.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use events::naming::{InvalidToken, check_token};
use events::{Event, Metadata};
use uuid::Uuid;

use crate::store::{Store, StoreError};
use crate::unit_of_work::{NewEvent, Staged, UnitOfWork};

/// Why a command did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate refused the command; nothing was appended.
    #[error(transparent)]
    Rejected(E),
    #[error(transparent)]
    InvalidId(#[from] InvalidToken),
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
            let version = self.staged_version(&uow, id);
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
        check_token("aggregate id", id)?;
        let staged = uow.staged(A::TYPE, id).is_some();
        let (mut state, mut version) = self.current(uow, id).await?;

        let mut decided = state.clone();
        let mut outcome = self.decide(&mut decided, command.clone()).await;
        if let Err(refusal) = outcome {
            // A refusal decided on a cached aggregate may be stale: another writer (another
            // repository, another instance) may have moved it on, and a refusal writes nothing
            // that a conflict could correct. Catch up from the store and decide again.
            let newer = match staged {
                true => Vec::new(),
                false => {
                    self.store
                        .aggregate_events(A::TYPE, id, version as i64)
                        .await?
                }
            };
            if newer.is_empty() {
                return Err(CommandError::Rejected(refusal));
            }
            for stored in newer {
                let envelope = stored.decode::<A::Event>()?;
                version = envelope.sequence;
                state.apply(envelope.payload);
            }
            self.cache.put(id, state.clone(), version);
            decided = state;
            outcome = self.decide(&mut decided, command).await;
        }
        let events = outcome.map_err(CommandError::Rejected)?;
        let state = decided;
        if events.is_empty() {
            return Ok(events);
        }

        let metadata = serde_json::to_string(metadata).unwrap_or_else(|_| "{}".to_owned());
        let rows = events
            .iter()
            .zip(version + 1..)
            .map(|(event, sequence)| NewEvent {
                event_id: Uuid::now_v7(),
                aggregate_type: A::TYPE,
                aggregate_id: id.to_owned(),
                sequence: i64::try_from(sequence).unwrap_or(i64::MAX),
                event_type: event.event_type(),
                schema_version: i32::try_from(event.schema_version()).unwrap_or(i32::MAX),
                payload: event.to_payload().to_string(),
                metadata: metadata.clone(),
            })
            .collect();
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

    fn staged_version(&self, uow: &UnitOfWork, id: &str) -> u64 {
        uow.staged(A::TYPE, id)
            .and_then(|s| s.downcast_ref::<StagedAggregate<A>>())
            .map_or(0, |s| s.version)
    }
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

/// Loaded aggregates by id, bounded; the oldest entries go first.
struct Cache<A> {
    capacity: usize,
    inner: Mutex<CacheInner<A>>,
}

struct CacheInner<A> {
    entries: HashMap<String, (A, u64)>,
    /// Insertion order, for eviction; may hold ids already evicted.
    order: VecDeque<String>,
}

impl<A: Clone> Cache<A> {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(CacheInner {
                entries: HashMap::new(),
                order: VecDeque::new(),
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
        self.lock().entries.get(id).cloned()
    }

    /// Stores `state` unless the cache already holds a newer version.
    fn put(&self, id: &str, state: A, version: u64) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        match inner.entries.get_mut(id) {
            Some(entry) if entry.1 >= version => {}
            Some(entry) => *entry = (state, version),
            None => {
                inner.entries.insert(id.to_owned(), (state, version));
                inner.order.push_back(id.to_owned());
            }
        }
        while inner.entries.len() > self.capacity {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            inner.entries.remove(&oldest);
        }
        if inner.order.len() > 2 * self.capacity {
            let CacheInner { entries, order } = &mut *inner;
            order.retain(|id| entries.contains_key(id));
        }
    }

    fn evict(&self, id: &str) {
        self.lock().entries.remove(id);
    }
}
