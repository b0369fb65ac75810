//! Tests of one file that run side by side, except those that must have the machine to
//! themselves: a real-time simulator storm through the real binaries in a debug build, on two
//! cores, misses its receive windows when another test's servers share them.

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The lock a test file's tests share: each holds it for reading ([`Alone::beside_others`]),
/// except the ones that run alone ([`Alone::alone`]). A failed test does not stop the rest.
pub struct Alone(RwLock<()>);

impl Alone {
    /// A lock for one test file (`static ALONE: Alone = Alone::new();`).
    pub const fn new() -> Self {
        Self(RwLock::new(()))
    }

    /// Waits for the tests that must run alone.
    pub fn beside_others(&self) -> RwLockReadGuard<'_, ()> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for every other test of the file to finish.
    pub fn alone(&self) -> RwLockWriteGuard<'_, ()> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Alone {
    fn default() -> Self {
        Self::new()
    }
}
