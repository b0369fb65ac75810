//! A value that readers on many threads use and one writer replaces whole: the link peers and
//! their network KEKs, which `joinserver peers add` at any instance changes while the server
//! runs. A read costs an uncontended read lock and an `Arc` clone; readers never see a half
//! update. (std's `RwLock<Arc<T>>` is all this needs, so no crate for it.)

use std::sync::{Arc, RwLock};

/// A shared, replaceable value; clones share it.
pub struct Live<T>(Arc<RwLock<Arc<T>>>);

impl<T> Live<T> {
    /// A value that readers share from now on.
    pub fn new(value: T) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(value))))
    }

    /// The current value (a later [`Live::replace`] does not change it).
    pub fn load(&self) -> Arc<T> {
        Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the value for every later [`Live::load`].
    pub fn replace(&self, value: T) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
    }
}

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: Default> Default for Live<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.load().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_reaches_every_clone_and_spares_loaded_values() {
        let a = Live::new(1);
        let b = a.clone();
        let before = b.load();
        a.replace(2);
        assert_eq!((*before, *a.load(), *b.load()), (1, 2, 2));
    }
}
