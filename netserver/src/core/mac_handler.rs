//! MAC commands of an accepted uplink: the answers the network server piggybacks on the next
//! downlink, and what the commands tell it about the device.
//!
//! - `LinkCheckReq` → `LinkCheckAns`: the margin is the best reception's SNR above the
//!   demodulation floor of the uplink's spreading factor (whole dB, 0..=254), the gateway count
//!   is the number of gateways that heard the frame.
//! - `DeviceTimeReq` → `DeviceTimeAns`: GPS time (seconds since 1980-01-06T00:00:00Z, leap
//!   seconds counted) at the reception, in 1/256 s.
//! - `RekeyInd` (1.1) → `RekeyConf` with the server's minor version (1); it confirms the 1.1
//!   security context.
//! - `LinkADRAns`, `DevStatusAns`: reported back to the caller, which updates the session.
//! - Other answers (`RXParamSetupAns`, …) need no reply.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protocol::mac::MacCommand;
use protocol::region::Region;

/// Seconds between the Unix epoch and the GPS epoch (1980-01-06T00:00:00Z).
pub const GPS_EPOCH_UNIX_S: u64 = 315_964_800;
/// Leap seconds GPS time is ahead of UTC (since 2017-01-01; no leap second announced since).
pub const GPS_LEAP_SECONDS: u64 = 18;

/// What the network knows about the uplink carrying the commands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UplinkRadio {
    /// The best SNR among the receptions, dB.
    pub best_snr: f32,
    /// The uplink's data rate index.
    pub data_rate: u8,
    /// The network's region (what `data_rate` means).
    pub region: Region,
    /// Gateways that heard the frame.
    pub gateways: usize,
    /// Wall-clock time of the reception (the first copy's arrival).
    pub received_at: SystemTime,
    /// Whether the session is LoRaWAN 1.1 (RekeyInd is answered only then).
    pub is_1_1: bool,
}

/// The answers and the facts learnt from an uplink's MAC commands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MacOutcome {
    /// Answers to send in the next downlink.
    pub answers: Vec<MacCommand>,
    /// A `RekeyInd` arrived (1.1): the session's security context is confirmed.
    pub rekey_ind: bool,
    /// `LinkADRAns`: (power, data rate, channel mask) acknowledged.
    pub link_adr_ans: Option<(bool, bool, bool)>,
    /// `DevStatusAns`: (battery, margin).
    pub dev_status: Option<(u8, i8)>,
}

/// GPS time of `t`: seconds and 1/256 fractions. `None` before the GPS epoch.
pub fn gps_time(t: SystemTime) -> Option<(u32, u8)> {
    let unix = t.duration_since(UNIX_EPOCH).ok()?;
    let secs = unix
        .as_secs()
        .checked_sub(GPS_EPOCH_UNIX_S)?
        .checked_add(GPS_LEAP_SECONDS)?;
    let frac = (u64::from(unix.subsec_nanos()) * 256 / 1_000_000_000) as u8;
    Some((secs as u32, frac))
}

/// The LinkCheckAns margin: SNR above the demodulation floor, whole dB, 0..=254.
pub fn link_margin(best_snr: f32, region: Region, data_rate: u8) -> u8 {
    let Some(floor) = super::adr::required_snr_db(region, data_rate) else {
        return 0; // FSK: no SNR floor is defined; report no margin.
    };
    let m = (best_snr - floor).floor();
    if m.is_nan() || m <= 0.0 {
        0
    } else {
        m.min(254.0) as u8
    }
}

/// Answers the uplink commands `cmds`.
pub fn handle(cmds: &[MacCommand], radio: &UplinkRadio) -> MacOutcome {
    let mut out = MacOutcome::default();
    for c in cmds {
        match *c {
            MacCommand::LinkCheckReq => out.answers.push(MacCommand::LinkCheckAns {
                margin: link_margin(radio.best_snr, radio.region, radio.data_rate),
                gw_cnt: radio.gateways.min(255) as u8,
            }),
            MacCommand::DeviceTimeReq => {
                if let Some((seconds, fractional_second)) = gps_time(radio.received_at) {
                    out.answers.push(MacCommand::DeviceTimeAns {
                        seconds,
                        fractional_second,
                    });
                }
            }
            MacCommand::RekeyInd { .. } if radio.is_1_1 => {
                out.rekey_ind = true;
                out.answers.push(MacCommand::RekeyConf {
                    serv_lorawan_minor: 1,
                });
            }
            MacCommand::LinkADRAns {
                power_ack,
                data_rate_ack,
                channel_mask_ack,
            } => out.link_adr_ans = Some((power_ack, data_rate_ack, channel_mask_ack)),
            MacCommand::DevStatusAns { battery, margin } => {
                out.dev_status = Some((battery, margin));
            }
            _ => {}
        }
    }
    // One answer of each kind is enough when a device repeats a request in one frame.
    out.answers.dedup();
    out
}

/// A fake-clock helper for tests and callers: `UNIX_EPOCH + d`.
pub fn at_unix(d: Duration) -> SystemTime {
    UNIX_EPOCH + d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn radio(snr: f32, dr: u8, gws: usize) -> UplinkRadio {
        UplinkRadio {
            best_snr: snr,
            data_rate: dr,
            region: Region::Eu868,
            gateways: gws,
            // 2026-01-01T00:00:00.5Z
            received_at: at_unix(Duration::from_millis(1_767_225_600_500)),
            is_1_1: false,
        }
    }

    #[test]
    fn link_check_margin_and_gateway_count() {
        // DR5 = SF7, floor −7.5 dB: SNR 9.2 → 16.7 → 16 dB.
        let out = handle(&[MacCommand::LinkCheckReq], &radio(9.2, 5, 3));
        assert_eq!(
            out.answers,
            vec![MacCommand::LinkCheckAns {
                margin: 16,
                gw_cnt: 3
            }]
        );
        // DR0 = SF12, floor −20: SNR −19.5 → 0 dB; below the floor → 0.
        assert_eq!(link_margin(-19.5, Region::Eu868, 0), 0);
        assert_eq!(link_margin(-25.0, Region::Eu868, 0), 0);
        assert_eq!(link_margin(-10.0, Region::Eu868, 0), 10);
        assert_eq!(link_margin(500.0, Region::Eu868, 5), 254);
        assert_eq!(link_margin(f32::NAN, Region::Eu868, 5), 0);
        assert_eq!(link_margin(10.0, Region::Eu868, 7), 0);
        // US915 DR4 is SF8 at 500 kHz (floor −10 dB); DR0 SF10 (−15 dB).
        assert_eq!(link_margin(0.0, Region::Us915, 4), 10);
        assert_eq!(link_margin(0.0, Region::Us915, 0), 15);
    }

    #[test]
    fn device_time_is_gps_time_of_the_reception() {
        // GPS epoch itself (UTC 1980-01-06, before any leap second counted here) → 18 s.
        assert_eq!(
            gps_time(at_unix(Duration::from_secs(GPS_EPOCH_UNIX_S))),
            Some((18, 0))
        );
        // 2026-01-01T00:00:00.5Z: 1_767_225_600 − 315_964_800 + 18 = 1_451_260_818, 0.5 s = 128/256.
        let out = handle(&[MacCommand::DeviceTimeReq], &radio(0.0, 5, 1));
        assert_eq!(
            out.answers,
            vec![MacCommand::DeviceTimeAns {
                seconds: 1_451_260_818,
                fractional_second: 128
            }]
        );
        assert_eq!(gps_time(at_unix(Duration::from_secs(1))), None);
    }

    #[test]
    fn rekey_only_for_1_1_and_reports() {
        let ind = MacCommand::RekeyInd {
            dev_lorawan_minor: 1,
        };
        let out = handle(&[ind], &radio(0.0, 5, 1));
        assert!(
            !out.rekey_ind && out.answers.is_empty(),
            "1.0 ignores RekeyInd"
        );
        let mut r = radio(0.0, 5, 1);
        r.is_1_1 = true;
        let out = handle(
            &[
                ind,
                MacCommand::LinkADRAns {
                    power_ack: true,
                    data_rate_ack: true,
                    channel_mask_ack: false,
                },
                MacCommand::DevStatusAns {
                    battery: 200,
                    margin: -3,
                },
                ind,
            ],
            &r,
        );
        assert!(out.rekey_ind);
        assert_eq!(
            out.answers,
            vec![MacCommand::RekeyConf {
                serv_lorawan_minor: 1
            }]
        );
        assert_eq!(out.link_adr_ans, Some((true, true, false)));
        assert_eq!(out.dev_status, Some((200, -3)));
    }
}
