//! A governor state store for client keys that knows its size.
//!
//! Governor's own DashMap store cannot be asked whether a key is present, and its `len` walks
//! every shard. This wrapper shares the map (so the budget can ask `contains` before deciding
//! whether a new key may be tracked) and counts inserts as they happen, so checking the cap on
//! the request path is one atomic load.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};

/// Client-key GCRA states. Keys are 64-bit keyed hashes of the client identity, never the
/// identity itself, so memory per key is fixed (~40 bytes with map overhead).
#[derive(Clone, Default)]
pub struct KeyStore(Arc<Inner>);

#[derive(Default)]
struct Inner {
    map: DashMap<u64, InMemoryState>,
    len: AtomicUsize,
}

impl KeyStore {
    pub fn len(&self) -> usize {
        self.0.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, key: u64) -> bool {
        self.0.map.contains_key(&key)
    }

    /// Re-reads the exact size after an eviction pass.
    pub(super) fn recount(&self) -> usize {
        let n = self.0.map.len();
        self.0.len.store(n, Ordering::Relaxed);
        n
    }
}

impl StateStore for KeyStore {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(state) = self.0.map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let state = match self.0.map.entry(*key) {
            Entry::Occupied(e) => e.into_ref(),
            Entry::Vacant(e) => {
                self.0.len.fetch_add(1, Ordering::Relaxed);
                e.insert(InMemoryState::default())
            }
        };
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl ShrinkableKeyedStateStore<u64> for KeyStore {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.0.map, drop_below);
    }

    fn shrink_to_fit(&self) {
        self.0.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        KeyStore::len(self)
    }

    fn is_empty(&self) -> bool {
        KeyStore::is_empty(self)
    }
}
