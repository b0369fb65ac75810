//! The in-memory session table the uplink path reads: by DevEUI, with the DevAddr index, and
//! the replaced sessions kept until their successor is used.

use std::sync::Arc;

use dashmap::DashMap;
use protocol::ids::{DevAddr, DevEui};

use crate::core::KeyedHasher;
use crate::store::labels::KekLabels;
use crate::store::session::Session;

/// The in-memory session table: by DevEUI, with the DevAddr index the data path looks up.
///
/// Each index holds one entry per session, whose value is the session's `Arc` (16 bytes with
/// the key), never a copy of the session.
#[derive(Debug, Default)]
pub struct Sessions {
    by_dev_eui: DashMap<DevEui, Arc<Session>, KeyedHasher>,
    by_dev_addr: DashMap<DevAddr, Arc<Session>, KeyedHasher>,
    // Data path: a replaced session is kept until the first uplink under its successor
    // (the device may not have received the Join-accept); indexed by its DevAddr. Few
    // devices are between a rejoin and their next uplink at any time.
    previous: DashMap<DevEui, Arc<Session>, KeyedHasher>,
    previous_by_addr: DashMap<DevAddr, Vec<DevEui>, KeyedHasher>,
    labels: KekLabels,
}

impl Sessions {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The interned KEKLabels the sessions' envelopes share.
    pub fn labels(&self) -> &KekLabels {
        &self.labels
    }

    /// Installs `s`, replacing the device's previous session; returns the replaced one, which
    /// is kept as a candidate of its DevAddr until [`Sessions::drop_previous`].
    pub fn insert(&self, s: Session) -> Option<Arc<Session>> {
        let s = Arc::new(s);
        let (dev_eui, dev_addr) = (s.dev_eui, s.dev_addr);
        let old = self.by_dev_eui.insert(dev_eui, Arc::clone(&s));
        if let Some(old) = &old {
            self.by_dev_addr
                .remove_if(&old.dev_addr, |_, cur| Arc::ptr_eq(cur, old));
        }
        self.by_dev_addr.insert(dev_addr, s);
        if let Some(old) = &old {
            self.keep_previous(Arc::clone(old));
        }
        old
    }

    /// Installs a replaced session restored from the store (the device had rejoined, and no
    /// uplink under its new session was seen before the restart).
    pub fn insert_previous(&self, s: Session) {
        self.keep_previous(Arc::new(s));
    }

    fn keep_previous(&self, old: Arc<Session>) {
        let (dev_eui, addr) = (old.dev_eui, old.dev_addr);
        if let Some(before) = self.previous.insert(dev_eui, old) {
            self.unindex_previous(before.dev_addr, dev_eui);
        }
        let mut list = self.previous_by_addr.entry(addr).or_default();
        if !list.contains(&dev_eui) {
            list.push(dev_eui);
        }
    }

    fn unindex_previous(&self, addr: DevAddr, dev_eui: DevEui) {
        if let dashmap::Entry::Occupied(mut e) = self.previous_by_addr.entry(addr) {
            e.get_mut().retain(|d| *d != dev_eui);
            if e.get().is_empty() {
                e.remove();
            }
        }
    }

    /// Every session an uplink from `dev_addr` may belong to: the current one holding the
    /// address, and replaced sessions at that address not yet superseded by an uplink.
    pub fn candidates(&self, dev_addr: DevAddr) -> Vec<Arc<Session>> {
        let mut out: Vec<Arc<Session>> = self.by_dev_addr(dev_addr).into_iter().collect();
        if let Some(list) = self.previous_by_addr.get(&dev_addr) {
            out.extend(
                list.iter()
                    .filter_map(|d| self.previous.get(d).map(|s| Arc::clone(&s))),
            );
        }
        out
    }

    /// Installs `s` as the device's current session and keeps `keep` (the session the device
    /// was using: a rejoin verified under it) as its replaced session, whatever session `s`
    /// displaces; returns the displaced current session, if any.
    pub fn insert_keeping(&self, s: Session, keep: Arc<Session>) -> Option<Arc<Session>> {
        let old = self.insert(s);
        if old.as_ref().is_some_and(|o| !Arc::ptr_eq(o, &keep)) {
            self.keep_previous(keep);
        }
        old
    }

    /// The device's replaced session, kept until its successor is used.
    pub fn previous(&self, dev_eui: DevEui) -> Option<Arc<Session>> {
        self.previous.get(&dev_eui).map(|s| Arc::clone(&s))
    }

    /// Whether `s` is the device's current session.
    pub fn is_current(&self, s: &Arc<Session>) -> bool {
        self.by_dev_eui
            .get(&s.dev_eui)
            .is_some_and(|c| Arc::ptr_eq(&c, s))
    }

    /// Forgets the device's replaced session (its successor has been used); whether there was
    /// one.
    pub fn drop_previous(&self, dev_eui: DevEui) -> bool {
        match self.previous.remove(&dev_eui) {
            Some((_, old)) => {
                self.unindex_previous(old.dev_addr, dev_eui);
                true
            }
            None => false,
        }
    }

    /// Every current session (for a snapshot).
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.by_dev_eui
            .iter()
            .map(|e| Arc::clone(e.value()))
            .collect()
    }

    /// The device's session.
    pub fn get(&self, dev_eui: DevEui) -> Option<Arc<Session>> {
        self.by_dev_eui.get(&dev_eui).map(|s| Arc::clone(&s))
    }

    /// The session holding `dev_addr`.
    pub fn by_dev_addr(&self, dev_addr: DevAddr) -> Option<Arc<Session>> {
        self.by_dev_addr.get(&dev_addr).map(|s| Arc::clone(&s))
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.by_dev_eui.len()
    }

    /// Whether there is no session.
    pub fn is_empty(&self) -> bool {
        self.by_dev_eui.is_empty()
    }
}
