//! KEKLabel and owner interning: a server knows a handful of KEKs and, per deployment, a
//! bounded set of tenants, so every live session shares one `Arc` per label and per owner.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

/// The KEKLabels and owners (tenants) of the live sessions, interned: one shared copy each.
#[derive(Debug, Default)]
pub struct KekLabels {
    labels: Mutex<Vec<Arc<str>>>,
    owners: Mutex<HashSet<Arc<String>>>,
}

impl KekLabels {
    /// The shared copy of `label` (added on first use). Labels come from the authenticated
    /// join server and the store, and a deployment has a few, so a scan is enough.
    pub fn intern(&self, label: &str) -> Arc<str> {
        let mut v = self.labels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(l) = v.iter().find(|l| ***l == *label) {
            return Arc::clone(l);
        }
        let l: Arc<str> = Arc::from(label);
        v.push(Arc::clone(&l));
        l
    }

    /// The shared copy of the owner (tenant) `owner` (added on first use): a thin pointer in
    /// each of its sessions, one heap copy for all of them. Owners come from the
    /// authenticated join server and the store.
    pub fn intern_owner(&self, owner: &str) -> Arc<String> {
        let mut set = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
        let key = owner.to_owned();
        if let Some(o) = set.get(&key) {
            return Arc::clone(o);
        }
        let o = Arc::new(key);
        set.insert(Arc::clone(&o));
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_owners_are_shared() {
        let l = KekLabels::default();
        assert!(Arc::ptr_eq(&l.intern("as-1"), &l.intern("as-1")));
        assert!(!Arc::ptr_eq(&l.intern("as-1"), &l.intern("as-2")));
        let (a, b) = (l.intern_owner("acme"), l.intern_owner("acme"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(*a, "acme");
        assert_ne!(*l.intern_owner("globex"), "acme");
    }
}
