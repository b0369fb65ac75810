//! The machine's cores, shared by the tests of one file that run side by side.
//!
//! A real-time scenario through the real servers in a debug build mostly waits: on receive
//! windows, duty cycles, report intervals. A storm's servers, though, need their share of the
//! cores, or their Join-accepts miss the receive windows. So such a file runs all its tests at
//! once, each holding the share of the cores it uses ([`Cores::hold`]): a test starts when its
//! share is free, and the file takes about as long as its longest test instead of the sum of its
//! tests halved.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How much of the machine a test uses, in hundredths of a core: `peak` for its first
/// `peak_for` (a storm's join phase), `then` after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    peak: u32,
    peak_for: Duration,
    then: u32,
}

impl Share {
    /// `hundredths` of a core for the whole test.
    pub const fn of(hundredths: u32) -> Self {
        Self {
            peak: hundredths,
            peak_for: Duration::ZERO,
            then: hundredths,
        }
    }

    /// `peak` hundredths of a core for the first `peak_for` of the test, `then` after.
    pub const fn peak(peak: u32, peak_for: Duration, then: u32) -> Self {
        Self {
            peak,
            peak_for,
            then,
        }
    }

    /// The share `running` into the test.
    fn at(&self, running: Duration) -> u32 {
        if running < self.peak_for {
            self.peak
        } else {
            self.then
        }
    }

    /// The most the test ever holds.
    fn most(&self) -> u32 {
        self.peak.max(self.then)
    }
}

/// One test holding its share.
#[derive(Debug)]
struct Holder {
    id: u64,
    since: Instant,
    share: Share,
}

/// One test waiting for its share.
#[derive(Debug)]
struct Waiter {
    id: u64,
    turn: usize,
    wanted: u32,
}

#[derive(Debug)]
struct State {
    next_id: u64,
    holders: Vec<Holder>,
    waiters: Vec<Waiter>,
    /// How many tests [`Cores::hold`] waits for before it lets the first start.
    expected: usize,
    arrived: usize,
    first_arrival: Option<Instant>,
}

impl State {
    /// Whether waiter `id` starts now: the waiters, in turn, each take what it wants of what is
    /// free, if it fits (one that does not fit does not hold back the turns after it).
    fn starts(&self, id: u64, now: Instant, total: u32) -> bool {
        let used: u32 = self.holders.iter().map(|h| h.share.at(now - h.since)).sum();
        let mut free = total.saturating_sub(used);
        let mut waiters: Vec<&Waiter> = self.waiters.iter().collect();
        waiters.sort_by_key(|w| w.turn);
        for w in waiters {
            if w.wanted <= free {
                free -= w.wanted;
                if w.id == id {
                    return true;
                }
            }
        }
        false
    }

    /// When a holder's peak ends next, after `now`.
    fn next_peak_end(&self, now: Instant) -> Option<Instant> {
        self.holders
            .iter()
            .map(|h| h.since + h.share.peak_for)
            .filter(|&end| end > now)
            .min()
    }
}

/// How long [`Cores::hold`] waits for the tests it expects after the first arrived.
const ARRIVALS: Duration = Duration::from_secs(1);

/// The cores one test file shares (`static CORES: Cores = Cores::new();`).
#[derive(Debug)]
pub struct Cores {
    state: Mutex<State>,
    changed: Condvar,
}

impl Cores {
    /// A gate over all of the machine's cores, none held.
    pub const fn new() -> Self {
        Self {
            state: Mutex::new(State {
                next_id: 0,
                holders: Vec::new(),
                waiters: Vec::new(),
                expected: 0,
                arrived: 0,
                first_arrival: None,
            }),
            changed: Condvar::new(),
        }
    }

    /// Lets no test start until `tests` have asked for their shares (or a second after the
    /// first asked), so that the turns decide who starts first, not which thread came first.
    pub fn expect(&self, tests: usize) {
        self.lock().expected = tests;
    }

    /// Waits until `share` is free and holds it until the returned guard is dropped. Of the
    /// tests waiting, the earlier `turn` starts first; a later one starts before it only with
    /// what the earlier leaves free. A share of more than the machine has waits for every other
    /// test to finish (the test runs alone).
    pub fn hold(&self, turn: usize, share: Share) -> Held<'_> {
        let total = std::thread::available_parallelism().map_or(1, |n| n.get() as u32) * 100;
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.arrived += 1;
        let first_arrival = *state.first_arrival.get_or_insert_with(Instant::now);
        state.waiters.push(Waiter {
            id,
            turn,
            wanted: share.most().min(total),
        });
        self.changed.notify_all();
        loop {
            let now = Instant::now();
            let all_arrived = state.arrived >= state.expected || now >= first_arrival + ARRIVALS;
            if all_arrived && state.starts(id, now, total) {
                state.waiters.retain(|w| w.id != id);
                state.holders.push(Holder {
                    id,
                    since: now,
                    share,
                });
                self.changed.notify_all();
                return Held { cores: self, id };
            }
            // Until the arrivals are in, a holder's peak ends, or a test arrives or leaves.
            let wake = if all_arrived {
                state.next_peak_end(now)
            } else {
                Some(first_arrival + ARRIVALS)
            };
            state = match wake {
                Some(at) => {
                    self.changed
                        .wait_timeout(state, at - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }

    /// The state; a test that panicked while holding the lock does not stop the rest.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Cores {
    fn default() -> Self {
        Self::new()
    }
}

/// A test's share of the cores, given back when dropped (also when the test panics).
#[derive(Debug)]
pub struct Held<'a> {
    cores: &'a Cores,
    id: u64,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.cores.lock().holders.retain(|h| h.id != self.id);
        self.cores.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex as StdMutex};

    fn total() -> u32 {
        std::thread::available_parallelism().map_or(1, |n| n.get() as u32) * 100
    }

    #[test]
    fn shares_that_fit_are_held_together_and_one_that_does_not_waits_for_a_release() {
        let cores = Arc::new(Cores::new());
        let half = total() / 2;
        let a = cores.hold(0, Share::of(half));
        let _b = cores.hold(1, Share::of(half));
        let started = Arc::new(AtomicU32::new(0));
        let waiter = {
            let (cores, started) = (Arc::clone(&cores), Arc::clone(&started));
            std::thread::spawn(move || {
                let _c = cores.hold(2, Share::of(1));
                started.store(1, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(started.load(Ordering::SeqCst), 0, "all cores are held");
        drop(a);
        waiter.join().unwrap();
        assert_eq!(started.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_share_above_the_machine_runs_alone_and_a_peak_ends_on_time() {
        let cores = Cores::new();
        // More than the machine: held when nothing else is.
        let alone = cores.hold(0, Share::of(total() * 4));
        drop(alone);
        // All cores for 300 ms, then none: the next test starts after the peak.
        let started = Instant::now();
        let _storm = cores.hold(0, Share::peak(total(), Duration::from_millis(300), 0));
        let _next = cores.hold(1, Share::of(total()));
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    /// Three tests that each want the whole machine arrive in the reverse of their turns: they
    /// run in turn, and a small one after them starts at once beside a half-machine holder.
    #[test]
    fn turns_decide_who_starts_and_a_later_turn_takes_what_an_earlier_one_leaves() {
        let cores = Arc::new(Cores::new());
        cores.expect(3);
        let order = Arc::new(StdMutex::new(Vec::new()));
        let threads: Vec<_> = (0..3)
            .rev()
            .map(|turn| {
                let (cores, order) = (Arc::clone(&cores), Arc::clone(&order));
                let t = std::thread::spawn(move || {
                    let _all = cores.hold(turn, Share::of(total()));
                    order.lock().unwrap().push(turn);
                    std::thread::sleep(Duration::from_millis(50));
                });
                std::thread::sleep(Duration::from_millis(50));
                t
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);

        let cores = Arc::new(Cores::new());
        let half = cores.hold(0, Share::of(total() / 2));
        let big = {
            let cores = Arc::clone(&cores);
            std::thread::spawn(move || drop(cores.hold(1, Share::of(total()))))
        };
        std::thread::sleep(Duration::from_millis(100));
        // Turn 1 waits for the whole machine; turn 2 fits in what is free and starts.
        let started = Instant::now();
        let small = cores.hold(2, Share::of(total() / 4));
        assert!(started.elapsed() < Duration::from_millis(500));
        drop(small);
        drop(half);
        big.join().unwrap();
    }

    #[test]
    fn a_panicking_holder_gives_its_share_back() {
        let cores = Arc::new(Cores::new());
        let c = Arc::clone(&cores);
        let r = std::thread::spawn(move || {
            let _all = c.hold(0, Share::of(total()));
            panic!("the test failed");
        })
        .join();
        assert!(r.is_err());
        let _all = cores.hold(1, Share::of(total()));
    }
}
