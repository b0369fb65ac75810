//! KEKLabel interning: a server knows a handful of KEKs, so every live session shares one
//! `Arc<str>` per label.

use std::sync::{Arc, Mutex, PoisonError};

/// The KEKLabels of the live sessions, interned: one shared `Arc<str>` per label.
#[derive(Debug, Default)]
pub struct KekLabels(Mutex<Vec<Arc<str>>>);

impl KekLabels {
    /// The shared copy of `label` (added on first use). Labels come from the authenticated
    /// join server and the store, and a deployment has a few, so a scan is enough.
    pub fn intern(&self, label: &str) -> Arc<str> {
        let mut v = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(l) = v.iter().find(|l| ***l == *label) {
            return Arc::clone(l);
        }
        let l: Arc<str> = Arc::from(label);
        v.push(Arc::clone(&l));
        l
    }
}
