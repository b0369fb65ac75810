//! The live part of a session: its [`DataState`] behind the one lock every uplink of the
//! device takes (the session crypto is not kept here but expanded per frame,
//! [`crate::store::session::Session::crypto`]).
//!
//! Every uplink of a device takes the session's lock once, for the whole check-and-update of
//! its counters (never across an `.await`), so two copies of a frame handled by two socket
//! loops cannot both be accepted.

use std::sync::{Mutex, MutexGuard};

use crate::core::device::{DataState, FrameCounters, PendingConfirmed};

/// The live part of a [`crate::store::session::Session`]: its [`DataState`] behind the lock every
/// uplink of the device takes once.
pub struct Live {
    state: Mutex<DataState>,
}

impl Live {
    /// From the stored counters and last accepted RJcount0.
    pub fn new(counters: FrameCounters, last_rj_count0: Option<u16>) -> Self {
        let mut state = DataState::new(counters);
        if let Some(c) = last_rj_count0 {
            state.set_last_rj_count0(c);
        }
        Self {
            state: Mutex::new(state),
        }
    }

    /// Locks the state (a poisoned lock is recovered: the state is plain data).
    pub fn lock(&self) -> MutexGuard<'_, DataState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Raises the counters to `committed` (what a shared store holds: another instance went
    /// further), each to the larger value, and takes its `pending` confirmed downlink unless this
    /// state's down counters are ahead (it sent a downlink not committed yet). Skipped,
    /// returning false, if the lock is held: the holder's next commit is judged against the
    /// store anyway.
    pub fn catch_up(
        &self,
        committed: FrameCounters,
        rekey_confirmed: bool,
        pending: Option<PendingConfirmed>,
    ) -> bool {
        let Ok(mut st) = self.state.try_lock() else {
            return false;
        };
        if committed.n_f_cnt_down >= st.counters.n_f_cnt_down
            && committed.a_f_cnt_down >= st.counters.a_f_cnt_down
        {
            st.pending_confirmed = pending;
        }
        let c = &mut st.counters;
        c.f_cnt_up = c.f_cnt_up.max(committed.f_cnt_up);
        c.n_f_cnt_down = c.n_f_cnt_down.max(committed.n_f_cnt_down);
        c.a_f_cnt_down = c.a_f_cnt_down.max(committed.a_f_cnt_down);
        st.rekey_confirmed |= rekey_confirmed;
        true
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("counters", &self.lock().counters)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use protocol::ids::DevEui;
    use protocol::keys::NwkSKey;

    use super::*;
    use crate::keys::NetworkKeys;
    use crate::store::session::Session;
    use crate::store::stored::tests::stored;
    use crate::store::table::Sessions;

    fn session(dev_eui: u64, dev_addr: u32, nonce: u16) -> Session {
        let mut s = stored(dev_eui, dev_addr);
        s.dev_nonce.0 = nonce;
        let keys = NetworkKeys::V1_0(NwkSKey::new([nonce as u8; 16]));
        Session::new(&s, keys, &Default::default(), None).unwrap()
    }

    #[test]
    fn a_replaced_session_stays_a_candidate_until_dropped() {
        let t = Sessions::new();
        t.insert(session(1, 0x2600_0001, 1));
        let old = t
            .by_dev_addr(protocol::ids::DevAddr::new(0x2600_0001))
            .unwrap();
        // A new join gives the device another address; its old address is reused by device 2.
        t.insert(session(1, 0x2600_0002, 2));
        t.insert(session(2, 0x2600_0001, 1));
        let at_old = t.candidates(protocol::ids::DevAddr::new(0x2600_0001));
        assert_eq!(
            at_old.len(),
            2,
            "device 2's session and device 1's replaced one"
        );
        assert_eq!(at_old[0].dev_eui, DevEui::new(2));
        assert!(Arc::ptr_eq(&at_old[1], &old));
        assert!(!t.is_current(&old));
        let new = t.candidates(protocol::ids::DevAddr::new(0x2600_0002));
        assert_eq!(new.len(), 1);
        assert!(t.is_current(&new[0]));
        t.drop_previous(DevEui::new(1));
        assert_eq!(
            t.candidates(protocol::ids::DevAddr::new(0x2600_0001)).len(),
            1
        );
        // A second join before any uplink keeps only the latest replaced session.
        t.insert(session(1, 0x2600_0003, 3));
        t.insert(session(1, 0x2600_0004, 4));
        assert_eq!(
            t.candidates(protocol::ids::DevAddr::new(0x2600_0002)).len(),
            0
        );
        assert_eq!(
            t.candidates(protocol::ids::DevAddr::new(0x2600_0003)).len(),
            1
        );
    }

    #[test]
    fn last_rj_count0_round_trips_through_the_live_state() {
        for last in [None, Some(0), Some(7), Some(u16::MAX - 1)] {
            let live = Live::new(FrameCounters::default(), last);
            assert_eq!(live.lock().last_rj_count0(), last);
        }
        let live = Live::new(FrameCounters::default(), None);
        live.lock().set_last_rj_count0(41);
        assert_eq!(live.lock().last_rj_count0(), Some(41));
    }

    #[test]
    fn counters_and_last_accepted() {
        let live = Live::new(FrameCounters::default(), None);
        assert_eq!(live.lock().last_accepted(), None);
        live.lock().counters.f_cnt_up = 8;
        assert_eq!(live.lock().last_accepted(), Some(7));
    }
}

#[cfg(test)]
mod size {
    use std::mem::size_of;

    use crate::core::device::DataState;

    use crate::store::session::Session;

    /// The session record is small and fixed-size: no key schedules, no heap parts but a
    /// SessionKeyID when there is one (`netserver/tests/memory.rs` measures the whole table).
    #[test]
    fn session_inline_size_is_bounded() {
        // 240 bytes: with the `Arc` counts, one 272-byte glibc chunk.
        assert!(size_of::<Session>() <= 240, "{}", size_of::<Session>());
        assert!(size_of::<DataState>() <= 64, "{}", size_of::<DataState>());
    }
}
