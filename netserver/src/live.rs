//! The mutable, in-memory side of a session that the data path works on: frame counters, the
//! LoRaWAN 1.1 rekey state, the ADR history and the pending confirmed downlink. All of it is
//! inline (no heap allocation); the session crypto is not kept here but expanded per frame
//! ([`crate::session::Session::crypto`]).
//!
//! Every uplink of a device takes the session's lock once, for the whole check-and-update of
//! its counters (never across an `.await`), so two copies of a frame handled by two socket
//! loops cannot both be accepted.

use std::num::NonZeroU64;
use std::sync::{Mutex, MutexGuard};

use protocol::data::NetworkSessionKeys;

use crate::core::adr::{LinkSettings, SnrHistory};
use crate::keys::NetworkKeys;
use crate::session::FrameCounters;

/// A confirmed downlink waiting for the device's ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingConfirmed {
    /// Its FCntDown (1.1: AFCntDown), the ConfFCnt of the acknowledging uplink's MIC.
    pub f_cnt: u32,
    /// The id the integration gave it (ids start at 1, so an `Option` of this is 16 bytes).
    pub id: NonZeroU64,
}

/// The data path's state of one session.
#[derive(Debug, Clone)]
pub struct DataState {
    /// Frame counters: `f_cnt_up` is the next expected FCntUp (0: nothing accepted since the
    /// join), the down counters are the next values to use.
    pub counters: FrameCounters,
    /// LoRaWAN 1.1: a RekeyInd confirmed the session.
    pub rekey_confirmed: bool,
    /// A confirmed downlink waiting for its ACK.
    pub pending_confirmed: Option<PendingConfirmed>,
    /// Best SNR of the last uplinks (ADR).
    pub snr: SnrHistory,
    /// TX power index the device uses (0 after a join).
    pub tx_power: u8,
    /// A LinkADRReq sent and not yet answered.
    pub adr_requested: Option<LinkSettings>,
    /// Uplinks since the last DevStatusReq.
    pub since_dev_status: u32,
    /// The last DevStatusAns: battery and margin.
    pub dev_status: Option<(u8, i8)>,
}

impl DataState {
    /// A fresh state from stored counters.
    pub fn new(counters: FrameCounters) -> Self {
        Self {
            counters,
            rekey_confirmed: false,
            pending_confirmed: None,
            snr: SnrHistory::default(),
            tx_power: 0,
            adr_requested: None,
            since_dev_status: 0,
            dev_status: None,
        }
    }

    /// The last accepted FCntUp, `None` when none was accepted since the join.
    pub fn last_accepted(&self) -> Option<u32> {
        self.counters.f_cnt_up.checked_sub(1)
    }
}

/// The live part of a [`crate::session::Session`]: its [`DataState`] behind the lock every
/// uplink of the device takes once.
pub struct Live {
    state: Mutex<DataState>,
}

impl Live {
    /// From the stored counters.
    pub fn new(counters: FrameCounters) -> Self {
        Self {
            state: Mutex::new(DataState::new(counters)),
        }
    }

    /// Locks the state (a poisoned lock is recovered: the state is plain data).
    pub fn lock(&self) -> MutexGuard<'_, DataState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("counters", &self.lock().counters)
            .finish()
    }
}

/// The protocol crate's form of the network keys.
pub fn network_session_keys(k: &NetworkKeys) -> NetworkSessionKeys {
    match k {
        NetworkKeys::V1_0(k) => NetworkSessionKeys::V1_0 {
            nwk_s_key: k.clone(),
        },
        NetworkKeys::V1_1 {
            f_nwk_s_int_key,
            s_nwk_s_int_key,
            nwk_s_enc_key,
        } => NetworkSessionKeys::V1_1 {
            f_nwk_s_int_key: f_nwk_s_int_key.clone(),
            s_nwk_s_int_key: s_nwk_s_int_key.clone(),
            nwk_s_enc_key: nwk_s_enc_key.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use protocol::ids::DevEui;
    use protocol::keys::NwkSKey;

    use super::*;
    use crate::session::tests::stored;
    use crate::session::{Session, Sessions};

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
    fn counters_and_last_accepted() {
        let live = Live::new(FrameCounters::default());
        assert_eq!(live.lock().last_accepted(), None);
        live.lock().counters.f_cnt_up = 8;
        assert_eq!(live.lock().last_accepted(), Some(7));
    }
}

#[cfg(test)]
mod size {
    use std::mem::size_of;

    use crate::session::Session;

    /// The session record is small and fixed-size: no key schedules, no heap parts but a
    /// SessionKeyID when there is one (`netserver/tests/memory.rs` measures the whole table).
    #[test]
    fn session_inline_size_is_bounded() {
        // 240 bytes: with the `Arc` counts, one 272-byte glibc chunk.
        assert!(size_of::<Session>() <= 240, "{}", size_of::<Session>());
        assert!(
            size_of::<super::DataState>() <= 64,
            "{}",
            size_of::<super::DataState>()
        );
    }
}
