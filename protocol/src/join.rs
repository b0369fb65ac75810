//! Join-request, Join-accept and Rejoin-request (protocol-notes A.2, A.4, A.6).
//!
//! - [`JoinRequest`]: the 23-byte frame a device sends to join; parsed and MIC-checked by the join
//!   server, built by the simulated device. Its MIC key is the [`JoinRootKey`]: AppKey for a
//!   LoRaWAN 1.0.x device, NwkKey for a 1.1 device.
//! - [`JoinAcceptPayload`]: the plaintext Join-accept fields. The join server computes the MIC
//!   with the formula the caller chooses ([`JoinAcceptMicKey`]: never inferred from the
//!   DLSettings byte, protocol-notes E.3) and encrypts into an [`EncryptedJoinAccept`]; the device
//!   decrypts that into a [`DecryptedJoinAccept`] and checks its MIC.
//! - [`RejoinRequest`]: LoRaWAN 1.1 Rejoin-request types 0, 1 and 2.
//!
//! Join-request parsing is built on the `lorawan` crate's parser (which covers 1.0.x; the 1.1
//! frame has the same layout). Its MIC is computed here on a key schedule prepared once per
//! join: see [`JoinRequest::compute_mic`] for why not `lorawan`'s. Everything 1.1-specific (the OptNeg Join-accept MIC, JSEncKey,
//! Rejoin-requests) is written here on our own AES/CMAC primitives, because `lorawan` 0.9 does
//! not implement LoRaWAN 1.1. The Join-accept is also built and opened by hand: `lorawan`'s
//! `JoinAcceptCreator` and `DecryptedJoinAcceptPayload` take keys only as its own copyable,
//! non-zeroized `AES128` type, re-expand the AES key schedule for every operation, compare the MIC
//! in variable time, and cannot express the 1.1 MIC.

use std::fmt;

use crate::crypto::{mic_of, KeySchedule};
use crate::ids::{DevAddr, DevEui, DevNonce, JoinEui, JoinNonce, NetId};
use crate::keys::{AppKey, JsEncKey, JsIntKey, KeyCipher, Mic, NwkKey, SNwkSIntKey};
use crate::phy::{MType, Mhdr, UnsupportedMajor};

/// Length of a Join-request PHYPayload.
pub const JOIN_REQUEST_LEN: usize = 23;
/// Length of a Join-accept PHYPayload without CFList.
pub const JOIN_ACCEPT_LEN: usize = 17;
/// Length of a Join-accept PHYPayload with a CFList.
pub const JOIN_ACCEPT_WITH_CF_LIST_LEN: usize = 33;
/// Length of a Rejoin-request of type 0 or 2.
pub const REJOIN_REQUEST_02_LEN: usize = 19;
/// Length of a Rejoin-request of type 1.
pub const REJOIN_REQUEST_1_LEN: usize = 24;

/// Why a join frame was refused. Never contains key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinFrameError {
    /// The frame has the wrong length for its type.
    #[error("{frame}: expected {expected} bytes, found {found}")]
    Length {
        /// The frame, e.g. `join-request`.
        frame: &'static str,
        /// The lengths allowed, e.g. `23` or `17 or 33`.
        expected: &'static str,
        /// The length found.
        found: usize,
    },
    /// The MHDR's MType is not the one this frame needs.
    #[error("{frame}: wrong message type in MHDR {mhdr:#04x}")]
    MType {
        /// The frame expected.
        frame: &'static str,
        /// The MHDR byte found.
        mhdr: u8,
    },
    /// The MHDR's Major is not LoRaWAN R1.
    #[error(transparent)]
    Major(#[from] UnsupportedMajor),
    /// A Rejoin-request type other than 0, 1 or 2.
    #[error("unknown rejoin-request type {0}")]
    RejoinType(u8),
    /// The key given is not the one this frame's MIC uses (e.g. JSIntKey for a type 0 Rejoin).
    #[error("{frame}: its MIC uses {expected}, not {given}")]
    KeyRole {
        /// The frame.
        frame: &'static str,
        /// The key role the MIC uses.
        expected: &'static str,
        /// The key role given.
        given: &'static str,
    },
    /// The MIC does not match.
    #[error("{frame}: MIC mismatch")]
    Mic {
        /// The frame.
        frame: &'static str,
    },
}

impl JoinFrameError {
    /// A short stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Length { .. } => "length",
            Self::MType { .. } => "mtype",
            Self::Major(_) => "major",
            Self::RejoinType(_) => "rejoin_type",
            Self::KeyRole { .. } => "key_role",
            Self::Mic { .. } => "mic",
        }
    }
}

/// Checks the MHDR's MType and Major.
fn check_mhdr(frame: &'static str, b: u8, mtype: MType) -> Result<Mhdr, JoinFrameError> {
    let mhdr = Mhdr(b);
    if mhdr.mtype() != mtype {
        return Err(JoinFrameError::MType { frame, mhdr: b });
    }
    Ok(mhdr.check_major()?)
}

/// Copies `N` bytes from `b` at `at`; callers have checked the length.
fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

// ------------------------------------------------------------------------------------------------
// Keys

/// The root key that authenticates a Join-request and, with the 1.0 formula, the Join-accept:
/// AppKey for a LoRaWAN 1.0.x device, NwkKey for a 1.1 device (protocol-notes A.2, A.4).
#[derive(Clone, Copy, Debug)]
pub enum JoinRootKey<'a> {
    /// LoRaWAN 1.0.x: the AppKey.
    AppKey(&'a KeyCipher<AppKey>),
    /// LoRaWAN 1.1: the NwkKey.
    NwkKey(&'a KeyCipher<NwkKey>),
}

impl JoinRootKey<'_> {
    fn schedule(&self) -> &KeySchedule {
        match self {
            Self::AppKey(k) => &k.schedule,
            Self::NwkKey(k) => &k.schedule,
        }
    }
}

impl<'a> From<&'a KeyCipher<AppKey>> for JoinRootKey<'a> {
    fn from(k: &'a KeyCipher<AppKey>) -> Self {
        Self::AppKey(k)
    }
}

impl<'a> From<&'a KeyCipher<NwkKey>> for JoinRootKey<'a> {
    fn from(k: &'a KeyCipher<NwkKey>) -> Self {
        Self::NwkKey(k)
    }
}

// ------------------------------------------------------------------------------------------------
// Join-request

/// A Join-request: `MHDR | JoinEUI | DevEUI | DevNonce | MIC`, 23 bytes, never encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinRequest {
    /// The MHDR as received (0x00 when built; its RFU bits are covered by the MIC).
    pub mhdr: Mhdr,
    /// JoinEUI (AppEUI in 1.0.x).
    pub join_eui: JoinEui,
    /// DevEUI.
    pub dev_eui: DevEui,
    /// DevNonce.
    pub dev_nonce: DevNonce,
    /// The MIC as carried by the frame.
    pub mic: Mic,
}

impl JoinRequest {
    const FRAME: &'static str = "join-request";

    /// Parses a Join-request PHYPayload. Does not check the MIC: see [`Self::verify_mic`].
    pub fn parse(phy: &[u8]) -> Result<Self, JoinFrameError> {
        let length = JoinFrameError::Length {
            frame: Self::FRAME,
            expected: "23",
            found: phy.len(),
        };
        let first = *phy.first().ok_or(length)?;
        let mhdr = check_mhdr(Self::FRAME, first, MType::JoinRequest)?;
        if phy.len() != JOIN_REQUEST_LEN {
            return Err(length);
        }
        // The field layout is lorawan's (1.0.x and 1.1 share it). It checks length and MType
        // again, which we have already done, so its error cannot happen; map it anyway.
        let lw = lorawan::parser::JoinRequestPayload::new_with_factory(
            phy,
            lorawan::default_crypto::DefaultFactory,
        )
        .map_err(|_| length)?;
        Ok(Self {
            mhdr,
            join_eui: JoinEui::from_le_bytes(array(lw.app_eui().as_ref(), 0)),
            dev_eui: DevEui::from_le_bytes(array(lw.dev_eui().as_ref(), 0)),
            dev_nonce: DevNonce::from_le_bytes(array(lw.dev_nonce().as_ref(), 0)),
            mic: Mic(array(phy, JOIN_REQUEST_LEN - 4)),
        })
    }

    /// Builds a Join-request (device side), MHDR 0x00, with its MIC under `key`.
    pub fn build(
        join_eui: JoinEui,
        dev_eui: DevEui,
        dev_nonce: DevNonce,
        key: JoinRootKey<'_>,
    ) -> Self {
        let mut req = Self {
            mhdr: Mhdr::new(MType::JoinRequest),
            join_eui,
            dev_eui,
            dev_nonce,
            mic: Mic([0; 4]),
        };
        req.mic = req.compute_mic(key);
        req
    }

    /// The PHYPayload bytes.
    pub fn to_bytes(&self) -> [u8; JOIN_REQUEST_LEN] {
        let mut b = [0u8; JOIN_REQUEST_LEN];
        b[0] = self.mhdr.0;
        b[1..9].copy_from_slice(&self.join_eui.to_le_bytes());
        b[9..17].copy_from_slice(&self.dev_eui.to_le_bytes());
        b[17..19].copy_from_slice(&self.dev_nonce.to_le_bytes());
        b[19..23].copy_from_slice(&self.mic.0);
        b
    }

    /// `cmac(key, MHDR | JoinEUI | DevEUI | DevNonce)[0..3]`.
    ///
    /// By hand rather than `lorawan`'s `JoinRequestPayload::validate_mic`, which takes the key
    /// only as its own copyable, non-zeroized `AES128` (a copy of the root key), expands the AES
    /// key schedule again on every call, and compares the MIC in variable time; its MIC helper
    /// that could take a prepared CMAC state is private. Here the MIC runs on the key schedule
    /// prepared once per join and reused for derivation and the Join-accept; even alone, parse +
    /// verify is faster this way (`benches/join.rs`: `a_parse_verify` vs
    /// `a_lorawan_parse_verify`).
    pub fn compute_mic(&self, key: JoinRootKey<'_>) -> Mic {
        let b = self.to_bytes();
        mic_of(&key.schedule().cmac(&[&b[..JOIN_REQUEST_LEN - 4]]))
    }

    /// Checks the MIC (constant-time comparison).
    pub fn verify_mic(&self, key: JoinRootKey<'_>) -> Result<(), JoinFrameError> {
        if self.compute_mic(key) == self.mic {
            Ok(())
        } else {
            Err(JoinFrameError::Mic { frame: Self::FRAME })
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Join-accept fields

/// The Join-accept DLSettings byte: `OptNeg(7) | RX1DROffset(6..4) | RX2DataRate(3..0)`.
/// OptNeg is RFU (0) in LoRaWAN 1.0.x.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DlSettings(pub u8);

impl DlSettings {
    /// From its fields, or `None` if `rx1_dr_offset > 7` or `rx2_data_rate > 15`.
    pub const fn new(opt_neg: bool, rx1_dr_offset: u8, rx2_data_rate: u8) -> Option<Self> {
        if rx1_dr_offset > 7 || rx2_data_rate > 15 {
            return None;
        }
        Some(Self(
            ((opt_neg as u8) << 7) | (rx1_dr_offset << 4) | rx2_data_rate,
        ))
    }
    /// Bit 7: the device and join server agreed on LoRaWAN 1.1 (OptNeg).
    pub const fn opt_neg(self) -> bool {
        self.0 & 0x80 != 0
    }
    /// Bits 6..4: the RX1 data-rate offset.
    pub const fn rx1_dr_offset(self) -> u8 {
        (self.0 >> 4) & 0x07
    }
    /// Bits 3..0: the RX2 data rate.
    pub const fn rx2_data_rate(self) -> u8 {
        self.0 & 0x0F
    }
}

impl fmt::Debug for DlSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DlSettings")
            .field("opt_neg", &self.opt_neg())
            .field("rx1_dr_offset", &self.rx1_dr_offset())
            .field("rx2_data_rate", &self.rx2_data_rate())
            .finish()
    }
}

/// The Join-accept RxDelay byte: bits 3..0 are `Del`, the RX1 delay in seconds, where 0 means
/// 1 s (protocol-notes A.4, E.10); bits 7..4 are RFU and kept as received.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RxDelay(pub u8);

impl RxDelay {
    /// The RxDelay for `seconds` (0..=15), or `None` above 15.
    pub const fn new(seconds: u8) -> Option<Self> {
        if seconds > 15 {
            None
        } else {
            Some(Self(seconds))
        }
    }
    /// `Del`: bits 3..0 as sent.
    pub const fn del(self) -> u8 {
        self.0 & 0x0F
    }
    /// The RX1 delay in seconds: `Del`, with 0 meaning 1.
    pub const fn seconds(self) -> u8 {
        match self.del() {
            0 => 1,
            d => d,
        }
    }
}

/// The 16-byte CFList of a Join-accept.
///
/// CFListType (the last byte) 0 carries five extra channel frequencies, each 3 bytes
/// little-endian in units of 100 Hz (EU868 and other dynamic-channel regions); type 1 is a
/// channel mask for fixed-channel regions.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CfList(pub [u8; 16]);

impl CfList {
    /// The largest frequency a CFList entry can carry: (2^24 − 1) × 100 Hz.
    pub const MAX_FREQUENCY_HZ: u32 = 0x00FF_FFFF * 100;

    /// A CFList of type 0 with these five frequencies in Hz (0 = no channel), or `None` if a
    /// frequency is not a multiple of 100 Hz or exceeds [`Self::MAX_FREQUENCY_HZ`].
    pub fn from_frequencies_hz(frequencies: [u32; 5]) -> Option<Self> {
        let mut b = [0u8; 16];
        for (i, f) in frequencies.iter().enumerate() {
            if f % 100 != 0 || *f > Self::MAX_FREQUENCY_HZ {
                return None;
            }
            let v = (f / 100).to_le_bytes();
            b[3 * i..3 * i + 3].copy_from_slice(&v[..3]);
        }
        Some(Self(b))
    }
    /// CFListType: the last byte.
    pub const fn cf_list_type(&self) -> u8 {
        self.0[15]
    }
    /// The five frequencies in Hz of a type 0 CFList (0 = no channel); `None` for other types.
    pub fn frequencies_hz(&self) -> Option<[u32; 5]> {
        if self.cf_list_type() != 0 {
            return None;
        }
        // The 3-byte LE × 100 Hz encoding is lorawan's (`maccommands::Frequency`), shared with
        // NewChannelReq and the other 1.0.x MAC commands.
        let mut out = [0u32; 5];
        for (i, f) in out.iter_mut().enumerate() {
            let c: [u8; 3] = array(&self.0, 3 * i);
            *f = lorawan::maccommands::Frequency::from(&c).value();
        }
        Some(out)
    }
}

impl CfList {
    /// A CFList of type 1 (US915, AU915): ChMask0…ChMask4, each 16 bits little-endian, for
    /// channels 0–15 … 64–79, then five RFU bytes and CFListType 1.
    pub fn from_channel_masks(masks: [u16; 5]) -> Self {
        let mut b = [0u8; 16];
        for (i, m) in masks.iter().enumerate() {
            b[2 * i..2 * i + 2].copy_from_slice(&m.to_le_bytes());
        }
        b[15] = 1;
        Self(b)
    }

    /// ChMask0…ChMask4 of a type 1 CFList; `None` for other types.
    pub fn channel_masks(&self) -> Option<[u16; 5]> {
        if self.cf_list_type() != 1 {
            return None;
        }
        let mut out = [0u16; 5];
        for (i, m) in out.iter_mut().enumerate() {
            *m = u16::from_le_bytes(array(&self.0, 2 * i));
        }
        Some(out)
    }
}

impl fmt::Debug for CfList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.frequencies_hz() {
            Some(freqs) => write!(f, "CfList(type 0, {freqs:?} Hz)"),
            None => match self.channel_masks() {
                Some(masks) => write!(f, "CfList(type 1, ChMask {masks:04X?})"),
                None => write!(f, "CfList({})", hex::encode(self.0)),
            },
        }
    }
}

/// The plaintext Join-accept MACPayload:
/// `JoinNonce | NetID | DevAddr | DLSettings | RxDelay | [CFList]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinAcceptPayload {
    /// JoinNonce (AppNonce in 1.0.x).
    pub join_nonce: JoinNonce,
    /// The home network's NetID.
    pub net_id: NetId,
    /// The device address assigned by the network server.
    pub dev_addr: DevAddr,
    /// DLSettings.
    pub dl_settings: DlSettings,
    /// RxDelay.
    pub rx_delay: RxDelay,
    /// The optional CFList.
    pub cf_list: Option<CfList>,
}

/// The request a Join-accept answers, and so the `JoinReqType` and the nonce in the 1.1 OptNeg
/// MIC (protocol-notes A.4) and in 1.1 key derivation (A.5): the DevNonce for a Join-request,
/// the rejoin counter for a Rejoin-request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnsweredRequest {
    /// A Join-request (JoinReqType 0xFF) with this DevNonce.
    JoinRequest(DevNonce),
    /// A Rejoin-request type 0 (JoinReqType 0x00) with this RJcount0.
    Rejoin0 {
        /// RJcount0.
        rj_count0: u16,
    },
    /// A Rejoin-request type 1 (JoinReqType 0x01) with this RJcount1.
    Rejoin1 {
        /// RJcount1.
        rj_count1: u16,
    },
    /// A Rejoin-request type 2 (JoinReqType 0x02) with this RJcount0.
    Rejoin2 {
        /// RJcount0.
        rj_count0: u16,
    },
}

impl AnsweredRequest {
    /// JoinReqType: 0xFF for a Join-request, the rejoin type otherwise.
    pub const fn join_req_type(self) -> u8 {
        match self {
            Self::JoinRequest(_) => 0xFF,
            Self::Rejoin0 { .. } => 0x00,
            Self::Rejoin1 { .. } => 0x01,
            Self::Rejoin2 { .. } => 0x02,
        }
    }
    /// The DevNonce or RJcount, little-endian, as it enters the MIC and key derivation.
    pub const fn nonce_le_bytes(self) -> [u8; 2] {
        match self {
            Self::JoinRequest(n) => n.to_le_bytes(),
            Self::Rejoin0 { rj_count0: c }
            | Self::Rejoin1 { rj_count1: c }
            | Self::Rejoin2 { rj_count0: c } => c.to_le_bytes(),
        }
    }
}

/// Which Join-accept MIC formula, with its key. The caller chooses from what it knows of the
/// device (its MAC version and the OptNeg it answers with), never from the DLSettings byte
/// (protocol-notes E.3).
#[derive(Clone, Copy, Debug)]
pub enum JoinAcceptMicKey<'a> {
    /// LoRaWAN 1.0.x, or a 1.1 device answered with OptNeg = 0:
    /// `cmac(AppKey or NwkKey, MHDR | payload)[0..3]`.
    Legacy(JoinRootKey<'a>),
    /// LoRaWAN 1.1 with OptNeg = 1:
    /// `cmac(JSIntKey, JoinReqType | JoinEUI | DevNonce-or-RJcount | MHDR | payload)[0..3]`.
    OptNeg {
        /// JSIntKey.
        js_int_key: &'a KeyCipher<JsIntKey>,
        /// The device's JoinEUI.
        join_eui: JoinEui,
        /// The request answered.
        answered: AnsweredRequest,
    },
}

/// The key that encrypts a Join-accept (protocol-notes A.4).
#[derive(Clone, Copy, Debug)]
pub enum JoinAcceptEncKey<'a> {
    /// LoRaWAN 1.0.x.
    AppKey(&'a KeyCipher<AppKey>),
    /// LoRaWAN 1.1, answering a Join-request.
    NwkKey(&'a KeyCipher<NwkKey>),
    /// LoRaWAN 1.1, answering a Rejoin-request.
    JsEncKey(&'a KeyCipher<JsEncKey>),
}

impl JoinAcceptEncKey<'_> {
    fn schedule(&self) -> &KeySchedule {
        match self {
            Self::AppKey(k) => &k.schedule,
            Self::NwkKey(k) => &k.schedule,
            Self::JsEncKey(k) => &k.schedule,
        }
    }
}

impl<'a> From<&'a KeyCipher<AppKey>> for JoinAcceptEncKey<'a> {
    fn from(k: &'a KeyCipher<AppKey>) -> Self {
        Self::AppKey(k)
    }
}

impl<'a> From<&'a KeyCipher<NwkKey>> for JoinAcceptEncKey<'a> {
    fn from(k: &'a KeyCipher<NwkKey>) -> Self {
        Self::NwkKey(k)
    }
}

impl<'a> From<&'a KeyCipher<JsEncKey>> for JoinAcceptEncKey<'a> {
    fn from(k: &'a KeyCipher<JsEncKey>) -> Self {
        Self::JsEncKey(k)
    }
}

impl<'a> From<JoinRootKey<'a>> for JoinAcceptEncKey<'a> {
    fn from(k: JoinRootKey<'a>) -> Self {
        match k {
            JoinRootKey::AppKey(k) => Self::AppKey(k),
            JoinRootKey::NwkKey(k) => Self::NwkKey(k),
        }
    }
}

/// MHDR + longest payload + MIC.
type AcceptBuf = [u8; JOIN_ACCEPT_WITH_CF_LIST_LEN];

impl JoinAcceptPayload {
    const FRAME: &'static str = "join-accept";

    /// Length of the payload without MHDR and MIC: 12 or 28.
    pub const fn len(&self) -> usize {
        if self.cf_list.is_some() {
            28
        } else {
            12
        }
    }

    /// Never empty; present for clippy's `len_without_is_empty`.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Writes `MHDR | payload` into `b`; returns the PHYPayload length including the MIC.
    fn write(&self, mhdr: Mhdr, b: &mut AcceptBuf) -> usize {
        b[0] = mhdr.0;
        b[1..4].copy_from_slice(&self.join_nonce.to_le_bytes());
        b[4..7].copy_from_slice(&self.net_id.to_le_bytes());
        b[7..11].copy_from_slice(&self.dev_addr.to_le_bytes());
        b[11] = self.dl_settings.0;
        b[12] = self.rx_delay.0;
        if let Some(cf) = &self.cf_list {
            b[13..29].copy_from_slice(&cf.0);
        }
        1 + self.len() + 4
    }

    /// Reads the payload from `MHDR | payload | MIC` of a known-good length (17 or 33).
    fn read(b: &[u8]) -> Self {
        Self {
            join_nonce: JoinNonce::from_le_bytes(array(b, 1)),
            net_id: NetId::from_le_bytes(array(b, 4)),
            dev_addr: DevAddr::from_le_bytes(array(b, 7)),
            dl_settings: DlSettings(b[11]),
            rx_delay: RxDelay(b[12]),
            cf_list: (b.len() == JOIN_ACCEPT_WITH_CF_LIST_LEN).then(|| CfList(array(b, 13))),
        }
    }

    /// The MIC over `MHDR | payload` with the formula and key the caller chose.
    fn mic_over(msg: &[u8], key: JoinAcceptMicKey<'_>) -> Mic {
        match key {
            JoinAcceptMicKey::Legacy(root) => mic_of(&root.schedule().cmac(&[msg])),
            // 1.1 OptNeg formula: not in lorawan 0.9, so by hand.
            JoinAcceptMicKey::OptNeg {
                js_int_key,
                join_eui,
                answered,
            } => mic_of(&js_int_key.schedule.cmac(&[
                &[answered.join_req_type()],
                &join_eui.to_le_bytes(),
                &answered.nonce_le_bytes(),
                msg,
            ])),
        }
    }

    /// The Join-accept MIC (MHDR 0x20) with the formula and key the caller chose.
    pub fn mic(&self, key: JoinAcceptMicKey<'_>) -> Mic {
        let mut b = [0u8; JOIN_ACCEPT_WITH_CF_LIST_LEN];
        let n = self.write(Mhdr::new(MType::JoinAccept), &mut b);
        Self::mic_over(&b[..n - 4], key)
    }

    /// Join server side: computes the MIC over the plaintext, then encrypts `payload | MIC` with
    /// AES *decrypt* (ECB) under `enc_key`, giving the complete 17- or 33-byte PHYPayload.
    pub fn encrypt(
        &self,
        mic_key: JoinAcceptMicKey<'_>,
        enc_key: JoinAcceptEncKey<'_>,
    ) -> EncryptedJoinAccept {
        let mut buf = [0u8; JOIN_ACCEPT_WITH_CF_LIST_LEN];
        let n = self.write(Mhdr::new(MType::JoinAccept), &mut buf);
        let mic = Self::mic_over(&buf[..n - 4], mic_key);
        buf[n - 4..n].copy_from_slice(&mic.0);
        enc_key.schedule().decrypt_blocks(&mut buf[1..n]);
        EncryptedJoinAccept { buf, len: n as u8 }
    }
}

/// A complete, encrypted Join-accept PHYPayload (17 or 33 bytes), as sent on air and in the
/// TS002 JoinAns `PHYPayload`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EncryptedJoinAccept {
    buf: AcceptBuf,
    len: u8,
}

impl EncryptedJoinAccept {
    /// Checks the length (17 or 33) and the MHDR (Join-accept, LoRaWAN R1).
    pub fn from_bytes(phy: &[u8]) -> Result<Self, JoinFrameError> {
        let length = JoinFrameError::Length {
            frame: JoinAcceptPayload::FRAME,
            expected: "17 or 33",
            found: phy.len(),
        };
        let first = *phy.first().ok_or(length)?;
        check_mhdr(JoinAcceptPayload::FRAME, first, MType::JoinAccept)?;
        if phy.len() != JOIN_ACCEPT_LEN && phy.len() != JOIN_ACCEPT_WITH_CF_LIST_LEN {
            return Err(length);
        }
        let mut buf = [0u8; JOIN_ACCEPT_WITH_CF_LIST_LEN];
        buf[..phy.len()].copy_from_slice(phy);
        Ok(Self {
            buf,
            len: phy.len() as u8,
        })
    }

    /// The PHYPayload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// Device side: decrypts with AES *encrypt* (ECB) under `key`. The MIC is not checked yet:
    /// read the OptNeg bit if needed, then call [`DecryptedJoinAccept::verify_mic`].
    pub fn decrypt(&self, key: JoinAcceptEncKey<'_>) -> DecryptedJoinAccept {
        let mut b = self.buf;
        let n = usize::from(self.len);
        key.schedule().encrypt_blocks(&mut b[1..n]);
        DecryptedJoinAccept {
            mhdr: Mhdr(b[0]),
            payload: JoinAcceptPayload::read(&b[..n]),
            mic: Mic(array(&b, n - 4)),
        }
    }

    /// Decrypts, then checks the MIC with the formula the caller chose.
    pub fn open(
        &self,
        enc_key: JoinAcceptEncKey<'_>,
        mic_key: JoinAcceptMicKey<'_>,
    ) -> Result<JoinAcceptPayload, JoinFrameError> {
        let d = self.decrypt(enc_key);
        d.verify_mic(mic_key)?;
        Ok(d.payload)
    }
}

impl fmt::Debug for EncryptedJoinAccept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptedJoinAccept({})", hex::encode(self.as_bytes()))
    }
}

/// A decrypted Join-accept whose MIC has not been checked yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecryptedJoinAccept {
    /// The MHDR as received.
    pub mhdr: Mhdr,
    /// The plaintext payload.
    pub payload: JoinAcceptPayload,
    /// The MIC carried by the frame.
    pub mic: Mic,
}

impl DecryptedJoinAccept {
    /// The plaintext PHYPayload `MHDR | payload | MIC` (17 or 33 bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = [0u8; JOIN_ACCEPT_WITH_CF_LIST_LEN];
        let n = self.payload.write(self.mhdr, &mut b);
        b[n - 4..n].copy_from_slice(&self.mic.0);
        b[..n].to_vec()
    }

    /// Checks the MIC (constant-time comparison) with the formula the caller chose.
    pub fn verify_mic(&self, key: JoinAcceptMicKey<'_>) -> Result<(), JoinFrameError> {
        let mut b = [0u8; JOIN_ACCEPT_WITH_CF_LIST_LEN];
        let n = self.payload.write(self.mhdr, &mut b);
        if JoinAcceptPayload::mic_over(&b[..n - 4], key) == self.mic {
            Ok(())
        } else {
            Err(JoinFrameError::Mic {
                frame: JoinAcceptPayload::FRAME,
            })
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Rejoin-request (LoRaWAN 1.1 only: written by hand, lorawan 0.9 has no Rejoin-request)

/// The fields of a Rejoin-request, by type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejoinBody {
    /// Type 0: reset the whole context; to the network server.
    Type0 {
        /// The NetID of the network the device is in.
        net_id: NetId,
        /// DevEUI.
        dev_eui: DevEui,
        /// RJcount0.
        rj_count0: u16,
    },
    /// Type 1: like a Join-request, restores a lost context; to the join server.
    Type1 {
        /// JoinEUI.
        join_eui: JoinEui,
        /// DevEUI.
        dev_eui: DevEui,
        /// RJcount1.
        rj_count1: u16,
    },
    /// Type 2: rekey or change DevAddr, radio parameters kept; to the network server.
    Type2 {
        /// The NetID of the network the device is in.
        net_id: NetId,
        /// DevEUI.
        dev_eui: DevEui,
        /// RJcount0.
        rj_count0: u16,
    },
}

impl RejoinBody {
    /// A type 0 (`rejoin_type` 0) or type 2 (any other value) body: the two share their fields.
    pub const fn type_0_or_2(
        rejoin_type: u8,
        net_id: NetId,
        dev_eui: DevEui,
        rj_count0: u16,
    ) -> Self {
        if rejoin_type == 0 {
            Self::Type0 {
                net_id,
                dev_eui,
                rj_count0,
            }
        } else {
            Self::Type2 {
                net_id,
                dev_eui,
                rj_count0,
            }
        }
    }

    /// RejoinType: 0, 1 or 2.
    pub const fn rejoin_type(&self) -> u8 {
        match self {
            Self::Type0 { .. } => 0,
            Self::Type1 { .. } => 1,
            Self::Type2 { .. } => 2,
        }
    }
    /// The DevEUI.
    pub const fn dev_eui(&self) -> DevEui {
        match self {
            Self::Type0 { dev_eui, .. }
            | Self::Type1 { dev_eui, .. }
            | Self::Type2 { dev_eui, .. } => *dev_eui,
        }
    }
    /// The request a Join-accept to this Rejoin-request answers.
    pub const fn answered(&self) -> AnsweredRequest {
        match *self {
            Self::Type0 { rj_count0, .. } => AnsweredRequest::Rejoin0 { rj_count0 },
            Self::Type1 { rj_count1, .. } => AnsweredRequest::Rejoin1 { rj_count1 },
            Self::Type2 { rj_count0, .. } => AnsweredRequest::Rejoin2 { rj_count0 },
        }
    }
}

/// The key of a Rejoin-request MIC: SNwkSIntKey for types 0 and 2, JSIntKey for type 1.
#[derive(Clone, Copy, Debug)]
pub enum RejoinMicKey<'a> {
    /// For types 0 and 2.
    SNwkSIntKey(&'a KeyCipher<SNwkSIntKey>),
    /// For type 1.
    JsIntKey(&'a KeyCipher<JsIntKey>),
}

impl<'a> From<&'a KeyCipher<SNwkSIntKey>> for RejoinMicKey<'a> {
    fn from(k: &'a KeyCipher<SNwkSIntKey>) -> Self {
        Self::SNwkSIntKey(k)
    }
}

impl<'a> From<&'a KeyCipher<JsIntKey>> for RejoinMicKey<'a> {
    fn from(k: &'a KeyCipher<JsIntKey>) -> Self {
        Self::JsIntKey(k)
    }
}

/// A LoRaWAN 1.1 Rejoin-request (MHDR 0xC0, never encrypted): 19 bytes for types 0 and 2,
/// 24 bytes for type 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RejoinRequest {
    /// The MHDR as received (0xC0 when built).
    pub mhdr: Mhdr,
    /// The fields.
    pub body: RejoinBody,
    /// The MIC carried by the frame.
    pub mic: Mic,
}

impl RejoinRequest {
    const FRAME: &'static str = "rejoin-request";

    /// Parses a Rejoin-request PHYPayload. Does not check the MIC.
    pub fn parse(phy: &[u8]) -> Result<Self, JoinFrameError> {
        let length = |expected| JoinFrameError::Length {
            frame: Self::FRAME,
            expected,
            found: phy.len(),
        };
        let first = *phy.first().ok_or(length("19 or 24"))?;
        let mhdr = check_mhdr(Self::FRAME, first, MType::RejoinRequest)?;
        let rejoin_type = *phy.get(1).ok_or(length("19 or 24"))?;
        let (expected, text) = match rejoin_type {
            0 | 2 => (REJOIN_REQUEST_02_LEN, "19"),
            1 => (REJOIN_REQUEST_1_LEN, "24"),
            t => return Err(JoinFrameError::RejoinType(t)),
        };
        if phy.len() != expected {
            return Err(length(text));
        }
        let body = match rejoin_type {
            1 => RejoinBody::Type1 {
                join_eui: JoinEui::from_le_bytes(array(phy, 2)),
                dev_eui: DevEui::from_le_bytes(array(phy, 10)),
                rj_count1: u16::from_le_bytes(array(phy, 18)),
            },
            t => RejoinBody::type_0_or_2(
                t,
                NetId::from_le_bytes(array(phy, 2)),
                DevEui::from_le_bytes(array(phy, 5)),
                u16::from_le_bytes(array(phy, 13)),
            ),
        };
        Ok(Self {
            mhdr,
            body,
            mic: Mic(array(phy, expected - 4)),
        })
    }

    /// Builds a Rejoin-request (device side), MHDR 0xC0, with its MIC. Fails if `key` is not the
    /// key this type's MIC uses.
    pub fn build(body: RejoinBody, key: RejoinMicKey<'_>) -> Result<Self, JoinFrameError> {
        let mut req = Self {
            mhdr: Mhdr::new(MType::RejoinRequest),
            body,
            mic: Mic([0; 4]),
        };
        req.mic = req.compute_mic(key)?;
        Ok(req)
    }

    /// The PHYPayload bytes (19 or 24).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = self.mic_input();
        b.extend_from_slice(&self.mic.0);
        b
    }

    /// `MHDR | RejoinType | NetID or JoinEUI | DevEUI | RJcount`.
    fn mic_input(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(REJOIN_REQUEST_1_LEN);
        b.push(self.mhdr.0);
        b.push(self.body.rejoin_type());
        match &self.body {
            RejoinBody::Type0 {
                net_id,
                dev_eui,
                rj_count0,
            }
            | RejoinBody::Type2 {
                net_id,
                dev_eui,
                rj_count0,
            } => {
                b.extend_from_slice(&net_id.to_le_bytes());
                b.extend_from_slice(&dev_eui.to_le_bytes());
                b.extend_from_slice(&rj_count0.to_le_bytes());
            }
            RejoinBody::Type1 {
                join_eui,
                dev_eui,
                rj_count1,
            } => {
                b.extend_from_slice(&join_eui.to_le_bytes());
                b.extend_from_slice(&dev_eui.to_le_bytes());
                b.extend_from_slice(&rj_count1.to_le_bytes());
            }
        }
        b
    }

    /// `cmac(key, MHDR | … | RJcount)[0..3]`; fails if `key` is not the key this type's MIC uses.
    pub fn compute_mic(&self, key: RejoinMicKey<'_>) -> Result<Mic, JoinFrameError> {
        let schedule = match (&self.body, key) {
            (RejoinBody::Type1 { .. }, RejoinMicKey::JsIntKey(k)) => &k.schedule,
            (RejoinBody::Type0 { .. } | RejoinBody::Type2 { .. }, RejoinMicKey::SNwkSIntKey(k)) => {
                &k.schedule
            }
            (body, given) => {
                let (expected, given) = match (body, given) {
                    (RejoinBody::Type1 { .. }, _) => ("JSIntKey", "SNwkSIntKey"),
                    _ => ("SNwkSIntKey", "JSIntKey"),
                };
                return Err(JoinFrameError::KeyRole {
                    frame: Self::FRAME,
                    expected,
                    given,
                });
            }
        };
        Ok(mic_of(&schedule.cmac(&[&self.mic_input()])))
    }

    /// Checks the MIC (constant-time comparison).
    pub fn verify_mic(&self, key: RejoinMicKey<'_>) -> Result<(), JoinFrameError> {
        if self.compute_mic(key)? == self.mic {
            Ok(())
        } else {
            Err(JoinFrameError::Mic { frame: Self::FRAME })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Key128;

    fn cipher<K: Key128>(b: u8) -> KeyCipher<K> {
        KeyCipher::new(&K::new([b; 16]))
    }

    #[test]
    fn join_request_parse_errors_are_typed() {
        let ok = hex::decode("00080706050403020108070605040302010201e6e10c55").unwrap();
        assert!(JoinRequest::parse(&ok).is_ok());
        let cases: &[(&[u8], &str)] = &[
            (&[], "length"),
            (&ok[..22], "length"),
            (&[ok.as_slice(), &[0]].concat(), "length"),
            (&[&[0x20], &ok[1..]].concat(), "mtype"),
            (&[&[0x01], &ok[1..]].concat(), "major"),
        ];
        for (bytes, kind) in cases {
            assert_eq!(
                JoinRequest::parse(bytes).unwrap_err().kind(),
                *kind,
                "{}",
                hex::encode(bytes)
            );
        }
        assert_eq!(
            JoinRequest::parse(&ok[..3]).unwrap_err().to_string(),
            "join-request: expected 23 bytes, found 3"
        );
    }

    #[test]
    fn join_request_keeps_mhdr_rfu_bits_under_the_mic() {
        let k = cipher::<AppKey>(1);
        let mut r = JoinRequest::build(
            JoinEui::new(1),
            DevEui::new(2),
            DevNonce(3),
            JoinRootKey::AppKey(&k),
        );
        assert!(r.verify_mic(JoinRootKey::AppKey(&k)).is_ok());
        r.mhdr = Mhdr(0x04);
        let back = JoinRequest::parse(&r.to_bytes()).unwrap();
        assert_eq!(back.mhdr, Mhdr(0x04));
        assert_eq!(
            back.verify_mic(JoinRootKey::AppKey(&k)).unwrap_err().kind(),
            "mic"
        );
    }

    #[test]
    fn dl_settings_and_rx_delay_fields() {
        let table: &[(u8, bool, u8, u8)] = &[
            (0x12, false, 1, 2),
            (0xcb, true, 4, 11),
            (0x80, true, 0, 0),
            (0x00, false, 0, 0),
            (0x7f, false, 7, 15),
        ];
        for &(b, opt_neg, off, dr) in table {
            let d = DlSettings(b);
            assert_eq!(
                (d.opt_neg(), d.rx1_dr_offset(), d.rx2_data_rate()),
                (opt_neg, off, dr)
            );
            assert_eq!(DlSettings::new(opt_neg, off, dr), Some(d));
        }
        assert_eq!(DlSettings::new(false, 8, 0), None);
        assert_eq!(DlSettings::new(false, 0, 16), None);
        let delays: &[(u8, u8, u8)] =
            &[(0, 0, 1), (1, 1, 1), (2, 2, 2), (15, 15, 15), (0xf3, 3, 3)];
        for &(b, del, s) in delays {
            assert_eq!((RxDelay(b).del(), RxDelay(b).seconds()), (del, s));
        }
        assert_eq!(RxDelay::new(16), None);
        assert_eq!(RxDelay::new(5), Some(RxDelay(5)));
    }

    #[test]
    fn cf_list_type_0_frequencies() {
        let eu = [
            867_100_000,
            867_300_000,
            867_500_000,
            867_700_000,
            867_900_000,
        ];
        let cf = CfList::from_frequencies_hz(eu).unwrap();
        assert_eq!(hex::encode(cf.0), "184f84e85684b85e84886684586e8400");
        assert_eq!(cf.frequencies_hz(), Some(eu));
        assert_eq!(cf.cf_list_type(), 0);
        assert!(CfList::from_frequencies_hz([867_100_050, 0, 0, 0, 0]).is_none());
        assert!(
            CfList::from_frequencies_hz([CfList::MAX_FREQUENCY_HZ + 100, 0, 0, 0, 0]).is_none()
        );
        let mut mask = [0u8; 16];
        mask[15] = 1;
        assert_eq!(CfList(mask).frequencies_hz(), None);
        assert_eq!(CfList(mask).cf_list_type(), 1);
    }

    #[test]
    fn join_accept_errors_are_typed_and_mic_formula_is_the_callers() {
        let app = cipher::<AppKey>(1);
        let js_int = cipher::<JsIntKey>(1);
        let p = JoinAcceptPayload {
            join_nonce: JoinNonce::new(1).unwrap(),
            net_id: NetId::new(0x13).unwrap(),
            dev_addr: DevAddr::new(0x2601_1BDA),
            dl_settings: DlSettings(0x80),
            rx_delay: RxDelay(1),
            cf_list: None,
        };
        let legacy = JoinAcceptMicKey::Legacy(JoinRootKey::AppKey(&app));
        let opt_neg = JoinAcceptMicKey::OptNeg {
            js_int_key: &js_int,
            join_eui: JoinEui::new(7),
            answered: AnsweredRequest::JoinRequest(DevNonce(1)),
        };
        // OptNeg set in DLSettings does not switch the formula: the caller does.
        assert_ne!(p.mic(legacy), p.mic(opt_neg));
        let enc = p.encrypt(legacy, JoinAcceptEncKey::AppKey(&app));
        assert_eq!(enc.as_bytes().len(), 17);
        assert_eq!(enc.open(JoinAcceptEncKey::AppKey(&app), legacy), Ok(p));
        assert_eq!(
            enc.open(JoinAcceptEncKey::AppKey(&app), opt_neg)
                .unwrap_err()
                .kind(),
            "mic"
        );
        let b = enc.as_bytes();
        for (bytes, kind) in [
            (&b[..16], "length"),
            (&b[..0], "length"),
            (&[&[0x00], &b[1..]].concat()[..], "mtype"),
            (&[&[0x22], &b[1..]].concat()[..], "major"),
        ] {
            assert_eq!(
                EncryptedJoinAccept::from_bytes(bytes).unwrap_err().kind(),
                kind
            );
        }
        assert_eq!(EncryptedJoinAccept::from_bytes(b).unwrap(), enc);
    }

    #[test]
    fn rejoin_errors_are_typed() {
        let s = cipher::<SNwkSIntKey>(1);
        let j = cipher::<JsIntKey>(1);
        let body = RejoinBody::Type0 {
            net_id: NetId::new(1).unwrap(),
            dev_eui: DevEui::new(2),
            rj_count0: 3,
        };
        let e = RejoinRequest::build(body, RejoinMicKey::JsIntKey(&j)).unwrap_err();
        assert_eq!(e.kind(), "key_role");
        assert_eq!(
            e.to_string(),
            "rejoin-request: its MIC uses SNwkSIntKey, not JSIntKey"
        );
        let r = RejoinRequest::build(body, RejoinMicKey::SNwkSIntKey(&s)).unwrap();
        let b = r.to_bytes();
        assert_eq!(b.len(), 19);
        for (bytes, kind) in [
            (&b[..1], "length"),
            (&b[..18], "length"),
            (&[&b[..1], &[3], &b[2..]].concat()[..], "rejoin_type"),
            (&[&b[..1], &[1], &b[2..]].concat()[..], "length"),
            (&[&[0x40], &b[1..]].concat()[..], "mtype"),
            (&[&[0xC3], &b[1..]].concat()[..], "major"),
        ] {
            assert_eq!(RejoinRequest::parse(bytes).unwrap_err().kind(), kind);
        }
        assert_eq!(body.answered(), AnsweredRequest::Rejoin0 { rj_count0: 3 });
        assert_eq!(body.dev_eui(), DevEui::new(2));
    }
}
