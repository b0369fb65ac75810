//! Building the `txpk` of a Class-A downlink: frequency, data rate, `tmst`, power, RF chain and
//! polarity for the chosen window (protocol-notes A.9, B).
//!
//! - RX1: the uplink's frequency; DR = max(0, uplink DR − RX1DROffset). A Join-accept uses the
//!   device's defaults (RX1DROffset 0), since the DLSettings it carries apply only after it.
//! - RX2: the regional default frequency and DR (EU868: 869.525 MHz, DR0).
//! - Always `ipol` true (downlinks use inverted polarity), `codr` 4/5, `size` = payload length.

use protocol::gwmp::{CodingRate, DataRate, GwmpError, Packet, PullResp, Token, TxPk, TxTiming};
use protocol::region;

use crate::core::reception::Reception;
use crate::core::timing::{Scheduled, Window};
use crate::ops::config::JoinConfig;

/// Radio settings of downlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownlinkRadio {
    /// RF chain to transmit on (`rfch`; 0 on common gateways, the chain with TX enabled).
    pub rf_chain: u8,
    /// RX1 power, dBm EIRP.
    pub rx1_power_dbm: i8,
    /// RX2 power, dBm EIRP.
    pub rx2_power_dbm: i8,
}

impl DownlinkRadio {
    /// The settings of `[join]` (they apply to every downlink, Join-accept or data).
    pub fn of(j: &JoinConfig) -> Self {
        Self {
            rf_chain: j.tx_rf_chain,
            rx1_power_dbm: j.rx1_tx_power_dbm,
            rx2_power_dbm: j.rx2_tx_power_dbm,
        }
    }
}

/// The PULL_RESP datagram carrying `txpk` (`token`: random, drawn by the caller).
pub fn pull_resp(token: [u8; 2], txpk: TxPk) -> Result<Vec<u8>, GwmpError> {
    Packet::PullResp(PullResp {
        token: Token(token),
        txpk,
    })
    .to_bytes()
}

/// Why no `txpk` could be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DownlinkError {
    /// The data rate has no EU868 modulation.
    #[error("data rate DR{0} does not exist in EU868")]
    DataRate(u8),
    /// The uplink DR and RX1DROffset give no RX1 data rate.
    #[error("no RX1 data rate for uplink DR{0} with RX1DROffset {1}")]
    Rx1Offset(u8, u8),
}

/// The RX1 or RX2 parameters for a downlink answering `uplink`, scheduled as `at`.
pub fn build_txpk(
    uplink: &Reception,
    at: &Scheduled,
    rx1_dr_offset: u8,
    radio: &DownlinkRadio,
    payload: Vec<u8>,
) -> Result<TxPk, DownlinkError> {
    let (freq_hz, dr, powe) = match at.window {
        Window::Rx1 => (
            uplink.frequency_hz,
            region::rx1_dr(uplink.data_rate, rx1_dr_offset)
                .map_err(|_| DownlinkError::Rx1Offset(uplink.data_rate, rx1_dr_offset))?,
            radio.rx1_power_dbm,
        ),
        Window::Rx2 => (region::RX2_FREQ_HZ, region::RX2_DR, radio.rx2_power_dbm),
    };
    let datr: DataRate = region::data_rate(dr).map_err(|_| DownlinkError::DataRate(dr))?;
    let fsk = matches!(datr, DataRate::Fsk { .. });
    Ok(TxPk {
        timing: TxTiming::Tmst(at.tmst),
        freq_hz,
        rfch: radio.rf_chain,
        powe: Some(powe),
        datr,
        codr: (!fsk).then_some(CodingRate::Cr4_5),
        // FSK downlinks need a frequency deviation: 25 kHz for EU868's 50 kbps FSK.
        fdev: fsk.then_some(25_000),
        ipol: Some(!fsk),
        prea: None,
        ncrc: None,
        data: payload,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::core::reception::tests::rx;

    const RADIO: DownlinkRadio = DownlinkRadio {
        rf_chain: 0,
        rx1_power_dbm: 14,
        rx2_power_dbm: 27,
    };

    #[test]
    fn rx1_join_accept_on_uplink_frequency_and_dr() {
        let t = Instant::now();
        let mut up = rx(1, 5.0, -80, t);
        up.frequency_hz = 868_300_000;
        up.data_rate = 3;
        let at = Scheduled {
            window: Window::Rx1,
            tmst: 6_000_000,
            opens_at: t,
        };
        let tx = build_txpk(&up, &at, 0, &RADIO, vec![0x20; 17]).unwrap();
        assert_eq!(tx.timing, TxTiming::Tmst(6_000_000));
        assert_eq!(tx.freq_hz, 868_300_000);
        assert_eq!(tx.datr, DataRate::lora(9, 125).unwrap());
        assert_eq!(tx.codr, Some(CodingRate::Cr4_5));
        assert_eq!(tx.ipol, Some(true));
        assert_eq!((tx.rfch, tx.powe), (0, Some(14)));
        assert_eq!(tx.data.len(), 17);
        // With an offset, the DR drops, never below DR0.
        let tx = build_txpk(&up, &at, 2, &RADIO, vec![]).unwrap();
        assert_eq!(tx.datr, DataRate::lora(11, 125).unwrap());
        let tx = build_txpk(&up, &at, 5, &RADIO, vec![]).unwrap();
        assert_eq!(tx.datr, DataRate::lora(12, 125).unwrap());
    }

    #[test]
    fn rx2_join_accept_on_869_525_dr0() {
        let t = Instant::now();
        let up = rx(1, 5.0, -80, t);
        let at = Scheduled {
            window: Window::Rx2,
            tmst: 7_000_000,
            opens_at: t,
        };
        let tx = build_txpk(&up, &at, 0, &RADIO, vec![0x20; 33]).unwrap();
        assert_eq!(tx.freq_hz, 869_525_000);
        assert_eq!(tx.datr, DataRate::lora(12, 125).unwrap());
        assert_eq!(tx.timing, TxTiming::Tmst(7_000_000));
        assert_eq!(tx.powe, Some(27));
        assert_eq!(tx.ipol, Some(true));
    }
}
