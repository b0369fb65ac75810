//! The state of one device's session that the uplink core decides on: frame counters, the
//! LoRaWAN 1.1 rekey state, the ADR history and the pending confirmed downlink. Plain data, all
//! inline (no heap allocation); the shell keeps it behind the session's lock
//! ([`crate::store::live::Live`]).

use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};

use crate::core::adr::{LinkSettings, SnrHistory};

/// Frame counters of a session (all 0 after a join).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameCounters {
    /// Next expected FCntUp (32-bit).
    pub f_cnt_up: u32,
    /// Next NFCntDown (1.1) / FCntDown (1.0).
    pub n_f_cnt_down: u32,
    /// Next AFCntDown (1.1).
    pub a_f_cnt_down: u32,
}

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
    /// LoRaWAN 1.1: the lowest RJcount0 a Rejoin-request type 0 or 2 under this session may
    /// carry, RJcount0_last + 1 (0 before the first). Not an `Option<u16>`, which would cost
    /// this state 8 bytes: RJcount0 never reaches 65535 (the device stops before it), so the
    /// next value always fits.
    pub next_rj_count0: u16,
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
            next_rj_count0: 0,
        }
    }

    /// The last accepted RJcount0 (RJcount0_last), `None` before the first.
    pub fn last_rj_count0(&self) -> Option<u16> {
        self.next_rj_count0.checked_sub(1)
    }

    /// Records `rj_count0` as the last accepted RJcount0 (it is below 65535: see
    /// [`crate::core::rejoin::check_against`]).
    pub fn set_last_rj_count0(&mut self, rj_count0: u16) {
        self.next_rj_count0 = rj_count0.saturating_add(1);
    }

    /// The last accepted FCntUp, `None` when none was accepted since the join.
    pub fn last_accepted(&self) -> Option<u32> {
        self.counters.f_cnt_up.checked_sub(1)
    }
}
