//! The data uplink pipeline's decisions, as named pure steps (protocol-notes A.7, A.8):
//!
//! 1. [`parse`]: the PHYPayload as a [`DataFrame`] (malformed → dropped);
//! 2. the caller finds the sessions that hold the frame's DevAddr (none → `unknown_devaddr`);
//! 3. [`authenticate`]: for each candidate session, infer the 32-bit FCnt from its counter,
//!    check the MIC (1.0 or 1.1 per the session) and judge the counter: a new frame, an NbTrans
//!    repeat of the last one (`duplicate`), a replay of an older one (`replay`), or a jump past
//!    MAX_FCNT_GAP for 1.0.2/1.0.3 sessions (`fcnt_gap`). A DevAddr holding several sessions
//!    is resolved by the MIC;
//! 4. [`mac_commands`]: MAC commands from FOpts or from an FPort 0 payload; both at once is a
//!    malformed frame (A.7: discard it);
//! 5. [`needs_downlink`] / [`downlink_counter`]: whether the device gets a downlink in its
//!    receive windows, and which counter it consumes.
//!
//! Every function here is pure: the shell ([`crate::uplink::path`]) holds the locks, the clock
//! and the I/O.

use protocol::data::{DataFrame, FramePayload, SessionCrypto, Uplink, UplinkMicParams};
use protocol::fcnt::{self, FCntError, FCntVerdict};
use protocol::mac::{self, MacCommand};
use protocol::region::ChannelPlan;
use protocol::version::MacVersion;

/// The result of one uplink, a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UplinkResult {
    /// Authenticated, new counter, delivered.
    Ok,
    /// No session at the DevAddr validates the MIC.
    MicFailed,
    /// The MIC validates with a counter at or below the last accepted one.
    Replay,
    /// No session holds the DevAddr.
    UnknownDevAddr,
    /// A repeat of the last accepted frame (NbTrans, or a confirmed retransmission).
    Duplicate,
    /// LoRaWAN 1.0.2/1.0.3: the counter jumped by MAX_FCNT_GAP or more.
    FcntGap,
    /// Not a well-formed data frame (or MAC commands in FOpts and FPort 0 at once).
    Malformed,
    /// LoRaWAN 1.1: a frame under a new session before the RekeyInd that confirms it.
    SessionUnconfirmed,
}

impl UplinkResult {
    /// Every result, for pre-creating metric labels.
    pub const ALL: [Self; 8] = [
        Self::Ok,
        Self::MicFailed,
        Self::Replay,
        Self::UnknownDevAddr,
        Self::Duplicate,
        Self::FcntGap,
        Self::Malformed,
        Self::SessionUnconfirmed,
    ];

    /// Stable metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::MicFailed => "mic_failed",
            Self::Replay => "replay",
            Self::UnknownDevAddr => "unknown_devaddr",
            Self::Duplicate => "duplicate",
            Self::FcntGap => "fcnt_gap",
            Self::Malformed => "malformed",
            Self::SessionUnconfirmed => "session_unconfirmed",
        }
    }
}

/// Step 1: parses a data uplink.
pub fn parse(phy: &[u8]) -> Result<DataFrame<'_>, UplinkResult> {
    let f = DataFrame::parse(phy).map_err(|_| UplinkResult::Malformed)?;
    if f.direction() != protocol::data::Direction::Uplink {
        return Err(UplinkResult::Malformed);
    }
    Ok(f)
}

/// One session that holds the frame's DevAddr, as the authentication step sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The session's LoRaWAN version (MAX_FCNT_GAP applies up to 1.0.3).
    pub version: MacVersion,
    /// The last accepted FCntUp; `None` when nothing was accepted since the join.
    pub last_accepted: Option<u32>,
    /// The session keys.
    pub crypto: &'a SessionCrypto,
    /// The 1.1 B1 parameters (ConfFCnt of the confirmed downlink the frame may acknowledge,
    /// TxDr, TxCh); ignored by 1.0 sessions.
    pub mic_params: UplinkMicParams,
}

/// The outcome of authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// The frame is authentic under candidate `index`.
    Accepted {
        /// Which candidate.
        index: usize,
        /// New frame or repeat of the last one.
        verdict: FCntVerdict,
        /// The opened frame.
        uplink: Uplink,
    },
    /// Refused, with the reason.
    Refused(UplinkResult),
}

/// The most specific refusal among the candidate sessions of a frame: `replay`, then
/// `fcnt_gap`, then `mic_failed` (what a frame no candidate accepts is counted as). The one
/// place this ranking lives: [`authenticate`] and the uplink core's candidate loop
/// ([`crate::core::uplink::handle`]) both keep their refusals here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal(UplinkResult);

impl Default for Refusal {
    fn default() -> Self {
        Self(UplinkResult::MicFailed)
    }
}

impl Refusal {
    const fn rank(r: UplinkResult) -> u8 {
        match r {
            UplinkResult::Replay => 2,
            UplinkResult::FcntGap => 1,
            _ => 0,
        }
    }

    /// Keeps `r` if it is more specific than what is kept.
    pub fn keep(&mut self, r: UplinkResult) {
        if Self::rank(r) > Self::rank(self.0) {
            self.0 = r;
        }
    }

    /// The most specific refusal kept (`mic_failed` when none was more specific).
    pub const fn reason(self) -> UplinkResult {
        self.0
    }
}

/// The counter a frame would have if it were a *replay* of an older frame: the largest value
/// at or below `last` whose 16 LSB are `fcnt16`.
pub const fn behind(last: u32, fcnt16: u16) -> u32 {
    last.wrapping_sub((last as u16).wrapping_sub(fcnt16) as u32)
}

/// Step 3: authenticates `frame` against each candidate and judges its counter.
///
/// Per candidate, with the counter inferred from its last accepted value:
/// - a new counter whose MIC validates → accepted as new;
/// - the last counter again whose MIC validates → accepted as a repeat (`Retransmission`);
/// - otherwise, if the MIC validates with the largest counter at or below the last accepted
///   one that has the same 16 LSB → `replay` (an old frame played again);
/// - a 1.0.2/1.0.3 counter past MAX_FCNT_GAP whose MIC validates with it → `fcnt_gap`;
/// - else `mic_failed`.
///
/// The first candidate that accepts wins; among refusals the most specific reason is kept
/// (replay, then fcnt_gap, then mic_failed). An empty list is `unknown_devaddr`.
pub fn authenticate(frame: &DataFrame<'_>, candidates: &[Candidate<'_>]) -> Auth {
    if candidates.is_empty() {
        return Auth::Refused(UplinkResult::UnknownDevAddr);
    }
    let mut refusal = Refusal::default();
    for (index, c) in candidates.iter().enumerate() {
        let mic_ok = |fcnt: u32| {
            frame.expected_uplink_mic(&c.crypto.network, fcnt, &c.mic_params) == frame.mic()
        };
        let is_replay = || {
            c.last_accepted
                .is_some_and(|last| mic_ok(behind(last, frame.fcnt16())))
        };
        let result = match fcnt::check_fcnt(c.version, c.last_accepted, frame.fcnt16()) {
            Ok(verdict) if mic_ok(verdict.fcnt()) => {
                // A counter of 2^32 − 1 would make the next expected value wrap to 0, which
                // is indistinguishable from a fresh session: the device must rejoin first.
                if verdict.fcnt() == u32::MAX {
                    UplinkResult::FcntGap
                } else {
                    match frame.open_uplink(c.crypto, verdict.fcnt(), &c.mic_params) {
                        Ok(uplink) => {
                            return Auth::Accepted {
                                index,
                                verdict,
                                uplink,
                            }
                        }
                        Err(_) => UplinkResult::MicFailed,
                    }
                }
            }
            Ok(_) | Err(FCntError::Replay { .. }) => {
                if is_replay() {
                    UplinkResult::Replay
                } else {
                    UplinkResult::MicFailed
                }
            }
            Err(FCntError::GapTooLarge { fcnt, .. }) => {
                if is_replay() {
                    UplinkResult::Replay
                } else if mic_ok(fcnt) {
                    UplinkResult::FcntGap
                } else {
                    UplinkResult::MicFailed
                }
            }
        };
        refusal.keep(result);
    }
    Auth::Refused(refusal.reason())
}

/// Step 4: the uplink's MAC commands, from FOpts or from an FPort 0 payload. Both at once is
/// refused (`malformed`). Commands after an unknown CID are not readable and are ignored; the
/// readable ones before it are kept.
pub fn mac_commands(uplink: &Uplink) -> Result<Vec<MacCommand>, UplinkResult> {
    let bytes: &[u8] = match (&uplink.payload, uplink.fopts.is_empty()) {
        (FramePayload::MacCommands(_), false) => return Err(UplinkResult::Malformed),
        (FramePayload::MacCommands(p), true) => &p.0,
        (_, _) => &uplink.fopts,
    };
    Ok(parse_prefix(bytes))
}

/// The commands readable from the start of `bytes`.
fn parse_prefix(bytes: &[u8]) -> Vec<MacCommand> {
    let dir = protocol::data::Direction::Uplink;
    match mac::parse(dir, bytes) {
        Ok(v) => v,
        Err(e) => {
            // Re-parse the well-formed prefix: the error says where parsing stopped.
            let end = match e {
                mac::MacParseError::UnknownCid { offset, .. } => offset,
                mac::MacParseError::Truncated { offset, .. } => offset,
            };
            mac::parse(dir, &bytes[..end.min(bytes.len())]).unwrap_or_default()
        }
    }
}

/// Step 4b (LoRaWAN 1.1): a new session is confirmed by the device's RekeyInd, which it sends in
/// every uplink until it gets RekeyConf. Until then, frames under the new session without a
/// RekeyInd are discarded (LoRaWAN 1.1 §6.2.4), and do not advance the counter.
pub fn rekey_gate(is_1_1: bool, confirmed: bool, cmds: &[MacCommand]) -> Result<(), UplinkResult> {
    let rekey_ind = cmds
        .iter()
        .any(|c| matches!(c, MacCommand::RekeyInd { .. }));
    if is_1_1 && !confirmed && !rekey_ind {
        return Err(UplinkResult::SessionUnconfirmed);
    }
    Ok(())
}

/// Step 5: whether the device gets a downlink in this uplink's windows: it asked for an ACK
/// (confirmed) or for any downlink (ADRACKReq), or there are MAC answers or queued data.
pub fn needs_downlink(uplink: &Uplink, mac_answers: usize, queued: bool) -> bool {
    uplink.confirmed || uplink.adr_ack_req || mac_answers > 0 || queued
}

/// Which downlink counter a downlink uses: 1.1 AFCntDown for FPort > 0, NFCntDown otherwise;
/// 1.0 one FCntDown (kept in the NFCntDown slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownCounter {
    /// NFCntDown (1.1) or FCntDown (1.0).
    Network,
    /// AFCntDown (1.1, FPort > 0).
    Application,
}

/// The counter a downlink with `f_port` uses in a session of `is_1_1`.
pub const fn downlink_counter(is_1_1: bool, f_port: Option<u8>) -> DownCounter {
    match (is_1_1, f_port) {
        (true, Some(p)) if p > 0 => DownCounter::Application,
        _ => DownCounter::Network,
    }
}

/// The LoRaWAN 1.1 TxCh of an uplink frequency: its channel index in the network's channel
/// plan (`ChannelPlan::index_of`: EU868 0–2 the defaults, 3–7 the CFList's; US915 0–71);
/// a frequency of no channel maps to 0 (its MIC then fails, as it would on the device's side).
pub fn tx_channel(plan: &ChannelPlan, freq_hz: u32) -> u8 {
    plan.index_of(freq_hz).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::data::{NetworkSessionKeys, Uplink};
    use protocol::ids::DevAddr;
    use protocol::keys::{AppSKey, FNwkSIntKey, NwkSEncKey, NwkSKey, SNwkSIntKey};
    use protocol::region::Region;

    fn crypto10(b: u8) -> SessionCrypto {
        SessionCrypto::new(
            &NetworkSessionKeys::V1_0 {
                nwk_s_key: NwkSKey::new([b; 16]),
            },
            Some(&AppSKey::new([0xA5; 16])),
        )
    }

    fn crypto11() -> SessionCrypto {
        SessionCrypto::new(
            &NetworkSessionKeys::V1_1 {
                f_nwk_s_int_key: FNwkSIntKey::new([1; 16]),
                s_nwk_s_int_key: SNwkSIntKey::new([2; 16]),
                nwk_s_enc_key: NwkSEncKey::new([3; 16]),
            },
            Some(&AppSKey::new([4; 16])),
        )
    }

    const ADDR: DevAddr = DevAddr::new(0x2601_1234);

    fn up(fcnt: u32, confirmed: bool, fopts: Vec<u8>, payload: FramePayload) -> Uplink {
        Uplink {
            confirmed,
            dev_addr: ADDR,
            fcnt,
            adr: true,
            adr_ack_req: false,
            ack: false,
            class_b: false,
            fopts,
            payload,
        }
    }

    fn app(b: &[u8]) -> FramePayload {
        FramePayload::Application {
            f_port: 10,
            payload: protocol::data::FrmPayload(b.to_vec()),
        }
    }

    fn cand<'a>(v: MacVersion, last: Option<u32>, c: &'a SessionCrypto) -> Candidate<'a> {
        Candidate {
            version: v,
            last_accepted: last,
            crypto: c,
            mic_params: UplinkMicParams::default(),
        }
    }

    fn frame(c: &SessionCrypto, fcnt: u32) -> Vec<u8> {
        up(fcnt, false, vec![], app(b"hello"))
            .build(c, &UplinkMicParams::default())
            .unwrap()
    }

    fn result(phy: &[u8], cands: &[Candidate<'_>]) -> Result<(usize, FCntVerdict), UplinkResult> {
        match authenticate(&parse(phy).unwrap(), cands) {
            Auth::Accepted { index, verdict, .. } => Ok((index, verdict)),
            Auth::Refused(r) => Err(r),
        }
    }

    #[test]
    fn counter_table_1_0_3_and_1_0_4() {
        let c = crypto10(9);
        let v103 = MacVersion::V1_0_3;
        let v104 = MacVersion::V1_0_4;
        let new = |fcnt, skipped| Ok((0, FCntVerdict::New { fcnt, skipped }));
        // (version, last accepted, frame FCnt, expected)
        let cases = [
            (v103, None, 0, new(0, 0)),
            (v103, Some(0), 1, new(1, 0)),
            (
                v103,
                Some(5),
                5,
                Ok((0, FCntVerdict::Retransmission { fcnt: 5 })),
            ),
            (v103, Some(5), 4, Err(UplinkResult::Replay)),
            (v103, Some(5), 0, Err(UplinkResult::Replay)),
            (v104, Some(5), 4, Err(UplinkResult::Replay)),
            (v103, Some(5), 5 + 16384, Err(UplinkResult::FcntGap)),
            (v103, Some(5), 5 + 16383, new(16388, 16382)),
            (v104, Some(5), 5 + 16384, new(16389, 16383)),
            // Past a 16-bit rollover.
            (v103, Some(0xFFFF), 0x1_0000, new(0x1_0000, 0)),
            (v103, Some(0x1_0003), 0xFFFE, Err(UplinkResult::Replay)),
            // 1.0.4 far ahead (> 2^16 away) cannot be told: the MIC fails with the inferred one.
            (v104, Some(5), 5 + 70_000, Err(UplinkResult::MicFailed)),
        ];
        for (v, last, fcnt, want) in cases {
            assert_eq!(
                result(&frame(&c, fcnt), &[cand(v, last, &c)]),
                want,
                "{v:?} last {last:?} fcnt {fcnt}"
            );
        }
        // A wrong key: mic_failed; no candidate: unknown_devaddr.
        let other = crypto10(8);
        assert_eq!(
            result(&frame(&c, 3), &[cand(v104, Some(2), &other)]),
            Err(UplinkResult::MicFailed)
        );
        assert_eq!(
            result(&frame(&c, 3), &[]),
            Err(UplinkResult::UnknownDevAddr)
        );
    }

    #[test]
    fn several_sessions_at_one_devaddr_resolved_by_mic() {
        let (a, b) = (crypto10(1), crypto10(2));
        let phy = frame(&b, 7);
        let cands = [
            cand(MacVersion::V1_0_3, Some(3), &a),
            cand(MacVersion::V1_0_3, Some(3), &b),
        ];
        assert_eq!(
            result(&phy, &cands),
            Ok((
                1,
                FCntVerdict::New {
                    fcnt: 7,
                    skipped: 3
                }
            ))
        );
        // A replay under b is reported as such even though a fails the MIC.
        let cands = [
            cand(MacVersion::V1_0_3, Some(3), &a),
            cand(MacVersion::V1_0_3, Some(9), &b),
        ];
        assert_eq!(result(&phy, &cands), Err(UplinkResult::Replay));
    }

    #[test]
    fn lorawan_1_1_mic_uses_conf_fcnt_when_ack() {
        let c = crypto11();
        let mut u = up(4, true, vec![0x02], app(b"x"));
        u.ack = true;
        let params = UplinkMicParams {
            conf_fcnt: 11,
            tx_dr: 5,
            tx_ch: 1,
        };
        let phy = u.build(&c, &params).unwrap();
        let mut cand11 = cand(MacVersion::V1_1, Some(3), &c);
        cand11.mic_params = params;
        let Auth::Accepted { uplink, .. } = authenticate(&parse(&phy).unwrap(), &[cand11]) else {
            panic!("1.1 uplink refused");
        };
        assert_eq!(uplink.fopts, vec![0x02], "FOpts decrypted");
        assert_eq!(uplink.payload, app(b"x"));
        // The wrong ConfFCnt fails the MIC.
        cand11.mic_params.conf_fcnt = 12;
        assert_eq!(
            authenticate(&parse(&phy).unwrap(), &[cand11]),
            Auth::Refused(UplinkResult::MicFailed)
        );
    }

    #[test]
    fn mac_commands_from_fopts_or_port_0_not_both() {
        let u = up(1, false, vec![0x02, 0x0D], app(b"a"));
        assert_eq!(
            mac_commands(&u).unwrap(),
            vec![MacCommand::LinkCheckReq, MacCommand::DeviceTimeReq]
        );
        let u = up(
            1,
            false,
            vec![],
            FramePayload::MacCommands(protocol::data::FrmPayload(vec![0x02])),
        );
        assert_eq!(mac_commands(&u).unwrap(), vec![MacCommand::LinkCheckReq]);
        let u = up(
            1,
            false,
            vec![0x02],
            FramePayload::MacCommands(protocol::data::FrmPayload(vec![0x02])),
        );
        assert_eq!(mac_commands(&u), Err(UplinkResult::Malformed));
        // A readable prefix before an unknown CID is kept.
        let u = up(1, false, vec![0x02, 0x7F, 0x02], app(b"a"));
        assert_eq!(mac_commands(&u).unwrap(), vec![MacCommand::LinkCheckReq]);
    }

    #[test]
    fn a_1_1_session_needs_its_rekey_ind() {
        let ind = [MacCommand::RekeyInd {
            dev_lorawan_minor: 1,
        }];
        assert_eq!(
            rekey_gate(true, false, &[MacCommand::LinkCheckReq]),
            Err(UplinkResult::SessionUnconfirmed)
        );
        assert_eq!(rekey_gate(true, false, &ind), Ok(()));
        assert_eq!(rekey_gate(true, true, &[]), Ok(()));
        assert_eq!(rekey_gate(false, false, &[]), Ok(()), "1.0 has no RekeyInd");
    }

    #[test]
    fn the_most_specific_refusal_is_kept() {
        let mut r = Refusal::default();
        assert_eq!(r.reason(), UplinkResult::MicFailed);
        r.keep(UplinkResult::FcntGap);
        assert_eq!(r.reason(), UplinkResult::FcntGap);
        r.keep(UplinkResult::MicFailed);
        assert_eq!(r.reason(), UplinkResult::FcntGap);
        r.keep(UplinkResult::Replay);
        r.keep(UplinkResult::FcntGap);
        assert_eq!(r.reason(), UplinkResult::Replay);
    }

    #[test]
    fn downlink_rules() {
        let mut u = up(1, false, vec![], app(b"a"));
        assert!(!needs_downlink(&u, 0, false));
        assert!(needs_downlink(&u, 1, false));
        assert!(needs_downlink(&u, 0, true));
        u.adr_ack_req = true;
        assert!(needs_downlink(&u, 0, false));
        u.adr_ack_req = false;
        u.confirmed = true;
        assert!(needs_downlink(&u, 0, false));
        assert_eq!(downlink_counter(true, Some(3)), DownCounter::Application);
        assert_eq!(downlink_counter(true, Some(0)), DownCounter::Network);
        assert_eq!(downlink_counter(true, None), DownCounter::Network);
        assert_eq!(downlink_counter(false, Some(3)), DownCounter::Network);
        let eu868 = ChannelPlan::new(Region::Eu868);
        assert_eq!(tx_channel(&eu868, 868_300_000), 1);
        assert_eq!(tx_channel(&eu868, 867_100_000), 0);
        let mut cf = eu868;
        cf.set_channel(3, 867_100_000, 0, 5).unwrap();
        assert_eq!(tx_channel(&cf, 867_100_000), 3);
        // US915: channel 8 (sub-band 2's first) on 903.9 MHz, 500 kHz channel 65 on 904.6 MHz.
        let us915 = ChannelPlan::with_sub_bands(Region::Us915, &[2]).unwrap();
        assert_eq!(tx_channel(&us915, 903_900_000), 8);
        assert_eq!(tx_channel(&us915, 904_600_000), 65);
        // AS923-1: the two default channels.
        let as923 = ChannelPlan::new(Region::As923_1);
        assert_eq!(tx_channel(&as923, 923_400_000), 1);
        assert_eq!(behind(0x1_0003, 0xFFFE), 0xFFFE);
        assert_eq!(behind(5, 5), 5);
        assert_eq!(behind(5, 4), 4);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let c = crypto10(1);
            if let Ok(f) = parse(&bytes) {
                let _ = authenticate(&f, &[cand(MacVersion::V1_0_3, Some(3), &c)]);
            }
        }
    }
}
