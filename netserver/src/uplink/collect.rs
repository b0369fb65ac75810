//! The collection window: a data frame's first copy is held until every gateway's copy is in
//! its de-duplication entry, then handed to the uplink path ([`crate::uplink::path`]).

use std::collections::VecDeque;
use std::time::{Instant, SystemTime};

use crate::core::reception::Reception;
use crate::state::State;
use crate::uplink::path::process;

/// A data frame waiting for its collection window.
#[derive(Debug)]
pub struct PendingUplink {
    /// The PHYPayload.
    pub phy: Vec<u8>,
    /// Its first reception.
    pub first: Reception,
    /// Wall-clock arrival of the first copy.
    pub wall: SystemTime,
    /// When to handle it.
    pub due: Instant,
}

/// The frames one GWMP socket loop is holding for their collection window, in arrival order.
///
/// Each socket loop owns one and handles its frames when their windows end, on its own thread:
/// the data path runs on every loop, never on one shared collector thread (a single collector
/// capped the server at what one core can authenticate, and starved the join server link's
/// receive loop beside it). Every frame waits the same window, so the front is always due
/// first. The copies another loop receives still reach the frame through the shared
/// de-duplication table.
#[derive(Debug, Default)]
pub struct Collecting {
    queue: VecDeque<PendingUplink>,
}

impl Collecting {
    /// When the oldest frame's window ends.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|p| p.due)
    }

    /// Handles every frame whose window has ended by `now`.
    pub fn handle_due(&mut self, state: &State, now: Instant) {
        while self.queue.front().is_some_and(|p| p.due <= now) {
            if let Some(p) = self.queue.pop_front() {
                process(state, &p.phy, &p.first, p.wall, Instant::now());
            }
        }
    }

    /// At shutdown: handles every frame still waiting, without waiting for its window.
    pub fn drain(&mut self, state: &State) {
        for p in self.queue.drain(..) {
            process(state, &p.phy, &p.first, p.wall, Instant::now());
        }
    }
}

/// Entry point from a socket loop for the first copy of a data frame: handled inline with no
/// collection window, else held in the loop's [`Collecting`] until the window ends.
pub fn on_first_copy(
    state: &State,
    collecting: &mut Collecting,
    phy: Vec<u8>,
    first: Reception,
    now: Instant,
) {
    let plane = &state.data;
    let wall = SystemTime::now();
    let window = plane.collect_window();
    if window.is_zero() {
        process(state, &phy, &first, wall, now);
        return;
    }
    collecting.queue.push_back(PendingUplink {
        phy,
        first,
        wall,
        due: now + window,
    });
}
