//! What one gateway reported about one uplink: the radio metadata the network server keeps for
//! every gateway that heard a frame.

use std::cmp::Ordering;
use std::time::Instant;

use protocol::ids::GatewayEui;

/// One gateway's reception of an uplink (one GWMP `rxpk` with `stat` = 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Reception {
    /// The gateway that heard the frame.
    pub gateway: GatewayEui,
    /// The gateway's concentrator counter at the end of reception, µs (wraps at 2^32).
    pub tmst: u32,
    /// Local time at which the PUSH_DATA carrying this reception arrived: the anchor that maps
    /// `tmst` deadlines to local time.
    pub received_at: Instant,
    /// Centre frequency, Hz.
    pub frequency_hz: u32,
    /// Regional data rate index of the uplink (EU868 DR0..DR7).
    pub data_rate: u8,
    /// RF chain the frame was received on (`rfch`).
    pub rf_chain: u8,
    /// Received signal strength, dBm.
    pub rssi: i32,
    /// Signal-to-noise ratio, dB.
    pub snr: f32,
}

impl Reception {
    /// Orders receptions by link quality: higher SNR first, then higher RSSI. `Greater` means
    /// `self` is the better gateway to answer through.
    pub fn quality_cmp(&self, other: &Self) -> Ordering {
        self.snr
            .total_cmp(&other.snr)
            .then(self.rssi.cmp(&other.rssi))
    }
}

/// The best reception (SNR, then RSSI) among those `usable` accepts, e.g. gateways whose
/// PULL_DATA address is known. Ties keep the earliest.
pub fn best(
    receptions: &[Reception],
    mut usable: impl FnMut(&Reception) -> bool,
) -> Option<&Reception> {
    receptions
        .iter()
        .filter(|r| usable(r))
        .fold(None, |best, r| match best {
            Some(b) if r.quality_cmp(b) != Ordering::Greater => Some(b),
            _ => Some(r),
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn rx(gw: u64, snr: f32, rssi: i32, at: Instant) -> Reception {
        Reception {
            gateway: GatewayEui::new(gw),
            tmst: 1_000_000,
            received_at: at,
            frequency_hz: 868_100_000,
            data_rate: 5,
            rf_chain: 0,
            rssi,
            snr,
        }
    }

    #[test]
    fn best_is_snr_then_rssi_then_earliest() {
        let t = Instant::now();
        let list = [
            rx(1, 5.0, -100, t),
            rx(2, 7.5, -110, t),
            rx(3, 7.5, -90, t),
            rx(4, 7.5, -90, t),
            rx(5, -3.0, -40, t),
        ];
        assert_eq!(best(&list, |_| true).unwrap().gateway, GatewayEui::new(3));
        assert_eq!(
            best(&list, |r| r.gateway != GatewayEui::new(3))
                .unwrap()
                .gateway,
            GatewayEui::new(4)
        );
        assert_eq!(
            best(&list, |r| r.gateway.as_u64() % 2 == 1)
                .unwrap()
                .gateway,
            GatewayEui::new(3)
        );
        assert!(best(&list, |_| false).is_none());
        assert!(best(&[], |_| true).is_none());
    }
}
