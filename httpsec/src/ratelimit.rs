//! Failed-attempt limits against brute force: at most `max` failures per key (a source address,
//! a DevEUI, an API key) in a fixed window; once reached, further attempts are refused until the
//! window ends, without even checking the secret. Both servers use it: the join server for owner
//! tokens and API keys, the network server for its downlink input's bearer token.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures per key in a window.
#[derive(Debug)]
pub struct FailureLimiter<K> {
    max: u32,
    window: Duration,
    entries: Mutex<HashMap<K, (Instant, u32)>>,
}

/// How many entries are kept before expired ones are pruned.
const PRUNE_AT: usize = 100_000;

impl<K: Hash + Eq + Clone> FailureLimiter<K> {
    /// At most `max` failures per `window`.
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max: max.max(1),
            window,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` while `key` has used up its failures.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(key) {
            Some(&(start, n)) if n >= self.max && now < start + self.window => {
                Err(start + self.window - now)
            }
            _ => Ok(()),
        }
    }

    /// Records a failure.
    pub fn fail(&self, key: &K, now: Instant) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= PRUNE_AT {
            let w = self.window;
            map.retain(|_, (start, _)| now < *start + w);
        }
        let e = map.entry(key.clone()).or_insert((now, 0));
        if now >= e.0 + self.window {
            *e = (now, 0);
        }
        e.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key_within_the_window() {
        let l = FailureLimiter::new(3, Duration::from_secs(60));
        let t = Instant::now();
        for _ in 0..3 {
            assert!(l.check(&1, t).is_ok());
            l.fail(&1, t);
        }
        assert_eq!(
            l.check(&1, t + Duration::from_secs(10)),
            Err(Duration::from_secs(50))
        );
        assert!(l.check(&2, t).is_ok(), "other keys are not affected");
        assert!(
            l.check(&1, t + Duration::from_secs(60)).is_ok(),
            "the window ends"
        );
        l.fail(&1, t + Duration::from_secs(61));
        assert!(
            l.check(&1, t + Duration::from_secs(61)).is_ok(),
            "a new window"
        );
    }
}
