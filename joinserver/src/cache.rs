//! The (sender, TransactionID) answer cache that makes retries and replays idempotent.
//!
//! A network server retries an unanswered JoinReq with the same TransactionID; an attacker may
//! replay a captured datagram inside the freshness window. Both must get the *identical* JoinAns
//! and must not consume a DevNonce twice, so every answer is kept here for a while, keyed by the
//! authenticated sender and the TransactionID, along with the request's PHYPayload: a request
//! reusing a TransactionID for a different PHYPayload is not a retry.
//!
//! An answer is cached as soon as it is made, before the nonces it depends on are committed, so a
//! retry arriving meanwhile is answered identically; each entry therefore carries its
//! [`Durability`], which the store writer sets after the commit, and a cached answer is sent
//! only once it is durable ([`crate::link`]).
//!
//! Pure: time is an input. Entries leave after `ttl_ms` or, when `max_entries` is reached,
//! oldest first. An entry that left early is harmless: the replayed JoinReq then meets the
//! DevNonce rule and is refused.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// Cache key: the sender id and the TransactionID.
pub type Key = (u64, u32);

/// Whether the nonce update an answer depends on is committed: pending until its batch's
/// commit, then committed or failed for good. An answer without a nonce update (a refusal) is
/// committed along with its batch.
#[derive(Debug)]
pub struct Durability(AtomicU8);

impl Default for Durability {
    /// Pending.
    fn default() -> Self {
        Self(AtomicU8::new(PENDING))
    }
}

const PENDING: u8 = 0;
const COMMITTED: u8 = 1;
const FAILED: u8 = 2;

impl Durability {
    /// Records the outcome of the commit.
    pub fn settle(&self, committed: bool) {
        self.0.store(
            if committed { COMMITTED } else { FAILED },
            Ordering::Release,
        );
    }

    /// Whether the answer may leave: its commit succeeded.
    pub fn is_committed(&self) -> bool {
        self.0.load(Ordering::Acquire) == COMMITTED
    }

    /// Whether its commit failed.
    pub fn has_failed(&self) -> bool {
        self.0.load(Ordering::Acquire) == FAILED
    }
}

struct Entry {
    created_ms: u64,
    request: Box<[u8]>,
    answer: Arc<[u8]>,
    durability: Arc<Durability>,
}

/// The result of a lookup.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A retry or replay: send this answer again, once its commit is durable.
    Hit(Arc<[u8]>, Arc<Durability>),
    /// The TransactionID was used for a different request.
    Conflict,
    /// Not seen (or expired): process the request.
    Miss,
}

/// Bounded, time-limited answer cache.
pub struct AnswerCache {
    map: HashMap<Key, Entry, foldhash::fast::RandomState>,
    order: VecDeque<(u64, Key)>,
    ttl_ms: u64,
    max_entries: usize,
}

impl std::fmt::Debug for AnswerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerCache")
            .field("len", &self.map.len())
            .field("ttl_ms", &self.ttl_ms)
            .field("max_entries", &self.max_entries)
            .finish()
    }
}

impl AnswerCache {
    /// An empty cache.
    pub fn new(ttl_ms: u64, max_entries: usize) -> Self {
        Self {
            map: HashMap::default(),
            order: VecDeque::new(),
            ttl_ms,
            max_entries: max_entries.max(1),
        }
    }

    /// Number of cached answers.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn evict(&mut self, now_ms: u64, room_for: usize) {
        while let Some(&(created, key)) = self.order.front() {
            let expired = now_ms.saturating_sub(created) > self.ttl_ms;
            let full = self.map.len() + room_for > self.max_entries;
            if !expired && !full {
                break;
            }
            self.order.pop_front();
            if self.map.get(&key).is_some_and(|e| e.created_ms == created) {
                self.map.remove(&key);
            }
        }
    }

    /// Looks up `key` for a request whose PHYPayload is `request`.
    pub fn lookup(&mut self, now_ms: u64, key: Key, request: &[u8]) -> Lookup {
        self.evict(now_ms, 0);
        match self.map.get(&key) {
            None => Lookup::Miss,
            Some(e) if *e.request == *request => {
                Lookup::Hit(e.answer.clone(), e.durability.clone())
            }
            Some(_) => Lookup::Conflict,
        }
    }

    /// Remembers the answer to a request, with the durability of the commit it depends on.
    pub fn insert(
        &mut self,
        now_ms: u64,
        key: Key,
        request: &[u8],
        answer: Arc<[u8]>,
        durability: Arc<Durability>,
    ) {
        self.evict(now_ms, 1);
        self.order.push_back((now_ms, key));
        self.map.insert(
            key,
            Entry {
                created_ms: now_ms,
                request: request.into(),
                answer,
                durability,
            },
        );
    }

    /// Forgets an answer (its commit failed, so it must not be served).
    pub fn remove(&mut self, key: Key) {
        self.map.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Arc<[u8]> {
        Arc::from(s.as_bytes())
    }

    fn hit(l: Lookup) -> Option<Arc<[u8]>> {
        match l {
            Lookup::Hit(answer, _) => Some(answer),
            _ => None,
        }
    }

    fn is(l: &Lookup, want: &str) -> bool {
        matches!(
            (l, want),
            (Lookup::Miss, "miss") | (Lookup::Conflict, "conflict")
        )
    }

    #[test]
    fn hit_conflict_expiry_and_capacity() {
        let mut c = AnswerCache::new(1000, 2);
        assert!(is(&c.lookup(0, (1, 7), b"req"), "miss"));
        let d = Arc::new(Durability::default());
        c.insert(0, (1, 7), b"req", a("ans"), d.clone());
        assert_eq!(hit(c.lookup(500, (1, 7), b"req")), Some(a("ans")));
        assert!(is(&c.lookup(500, (1, 7), b"other"), "conflict"));
        assert!(is(&c.lookup(500, (2, 7), b"req"), "miss"), "per sender");
        assert_eq!(hit(c.lookup(1000, (1, 7), b"req")), Some(a("ans")));
        assert!(is(&c.lookup(1001, (1, 7), b"req"), "miss"), "expired");
        c.insert(2000, (1, 1), b"r1", a("1"), d.clone());
        c.insert(2001, (1, 2), b"r2", a("2"), d.clone());
        c.insert(2002, (1, 3), b"r3", a("3"), d.clone());
        assert_eq!(c.len(), 2);
        assert!(is(&c.lookup(2003, (1, 1), b"r1"), "miss"), "oldest evicted");
        assert_eq!(hit(c.lookup(2003, (1, 3), b"r3")), Some(a("3")));
        c.remove((1, 3));
        assert!(is(&c.lookup(2003, (1, 3), b"r3"), "miss"));
    }

    #[test]
    fn a_hit_carries_the_durability_of_its_commit() {
        let mut c = AnswerCache::new(1000, 10);
        let d = Arc::new(Durability::default());
        c.insert(0, (1, 7), b"req", a("ans"), d.clone());
        let Lookup::Hit(_, seen) = c.lookup(1, (1, 7), b"req") else {
            panic!("a hit")
        };
        assert!(!seen.is_committed() && !seen.has_failed(), "pending");
        d.settle(false);
        assert!(seen.has_failed() && !seen.is_committed());
        let d2 = Arc::new(Durability::default());
        c.insert(2, (1, 8), b"req", a("ans"), d2.clone());
        d2.settle(true);
        let Lookup::Hit(_, seen) = c.lookup(3, (1, 8), b"req") else {
            panic!("a hit")
        };
        assert!(seen.is_committed());
    }
}
