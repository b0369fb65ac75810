//! Data frames up and down (protocol-notes A.7): parsing, building, MICs, FRMPayload and FOpts
//! encryption for LoRaWAN 1.0.x and 1.1.
//!
//! ```text
//! PHYPayload = MHDR | FHDR | [FPort | FRMPayload] | MIC
//! FHDR       = DevAddr(4, LE) | FCtrl(1) | FCnt(2, LE) | FOpts(0..15)
//! ```
//!
//! The pieces and who calls them:
//! - [`DataFrame::parse`]: a zero-copy view of a received data frame (network server and device).
//! - [`DataFrame::open_uplink`] / [`DataFrame::open_downlink`]: MIC check, then FOpts (1.1) and
//!   FRMPayload decryption, giving an owned [`Uplink`] / [`Downlink`].
//! - [`Uplink::build`] (device side, used by the simulator) and [`Downlink::build`] (network
//!   side: ACKs, MAC answers in FOpts or on FPort 0, application payloads, FPending).
//! - [`SessionCrypto`]: the session keys with their AES key schedules expanded once, built from
//!   [`NetworkSessionKeys`] (1.0: NwkSKey; 1.1: three keys) and an optional [`AppSKey`].
//!
//! What comes from the `lorawan` crate (0.9) and what is by hand:
//! - The FHDR fields are read with `lorawan::parser::FHDR` (same layout in 1.0 and 1.1). The
//!   FPort is located by hand: `lorawan`'s `DataHeader::f_port` reports no FPort when FPort is
//!   present with an empty FRMPayload, which the lora-packet vector `data-lora-packet-empty-frm`
//!   has.
//! - The B0/B1/A blocks, MICs and keystreams are by hand for 1.0 and 1.1 alike. For 1.1 there is
//!   no choice (`lorawan` has no 1.1: no B1, no ConfFCnt, no FOpts encryption). For 1.0,
//!   `lorawan`'s B0/A_i helpers are private (`mod securityhelpers`), and its public
//!   `EncryptedDataPayload` API expands the AES and CMAC key schedules on every frame (through
//!   `CryptoFactory::new_mac/new_enc`), needs a mutable copy of the whole frame to decrypt,
//!   picks the key from its own FPort reading (wrong for FPort with empty FRMPayload), and takes
//!   Dir from the MHDR, so it cannot express the public raw vectors that MIC an uplink message
//!   with Dir = 1. The 1.0 B0 is the same block as the 1.1 uplink B0, so one hand-written path
//!   serves both. `lorawan`'s public 1.0 API is the oracle for ours in
//!   `tests/prop_data.rs` (MIC, decryption and `DataPayloadCreator` frames agree byte for
//!   byte), and `benches/uplink.rs` measures it next to ours (about twice our time per frame).
//! - AES-CMAC is computed with per-session key schedules and subkeys (`crypto::KeySchedule`, shared with the
//!   join path), not with `cmac::Cmac`, which recomputes its subkeys on every message.
//!
//! The network server's uplink pipeline: [`DataFrame::parse`] → look up sessions by
//! [`DataFrame::dev_addr`] → [`crate::fcnt::check_fcnt`] with [`DataFrame::fcnt16`] →
//! [`DataFrame::open_uplink`] with the verdict's full counter → act on the verdict (deliver and
//! store a new counter, or drop a retransmission) → [`crate::mac::parse`] the FOpts / FPort 0
//! commands.

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128Enc;

pub use crate::crypto::PayloadCipher;
use crate::crypto::{mic_of, KeySchedule};
use crate::ids::DevAddr;
use crate::keys::{AppSKey, Mic, NwkSEncKey, NwkSKey};
use crate::phy::{MType, Mhdr};

/// The largest data frame accepted: `len(msg)` (the frame without its MIC) must fit the one-byte
/// length field of the B0/B1 blocks, so 255 + 4 bytes. Radios carry at most 255 bytes, and the
/// regional maximum payload sizes are lower still, but the frame format itself allows this much
/// (the public rust-lorawan vector `data-rust-lorawan-long-up` is a 256-byte frame).
pub const MAX_PHY_PAYLOAD_LEN: usize = 255 + MIC_LEN;
/// The largest FOpts field (FOptsLen is 4 bits).
pub const MAX_FOPTS_LEN: usize = 15;
/// MHDR(1) + FHDR without FOpts(7) + MIC(4): the shortest data frame.
pub const MIN_DATA_FRAME_LEN: usize = 12;

const MIC_LEN: usize = 4;
/// MHDR | DevAddr | FCtrl | FCnt: where FOpts begin.
const FOPTS_START: usize = 8;

/// The direction of a frame: `Dir` in the B0 and A blocks is 0 uplink, 1 downlink.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Direction {
    /// End-device to network.
    Uplink,
    /// Network to end-device.
    Downlink,
}

impl Direction {
    /// The `Dir` byte of the B0 and A blocks.
    pub const fn dir_byte(self) -> u8 {
        match self {
            Self::Uplink => 0,
            Self::Downlink => 1,
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Keys and prepared ciphers

/// The network session keys of a device (defined with the key derivation, in
/// [`crate::derive`]): `V1_0 { nwk_s_key }` for 1.0.x, `V1_1 { f_nwk_s_int_key, s_nwk_s_int_key,
/// nwk_s_enc_key }` for 1.1. A 1.1 device joined with OptNeg = 0 (a 1.0 network) uses the 1.0
/// MIC formulas: give it `V1_0` with its FNwkSIntKey value as the NwkSKey (protocol-notes A.5).
pub use crate::derive::NetworkSessionKeys;

/// The keystream ciphers of a session's keys (the type is with the AES primitives, which
/// hold their round keys in one).
impl PayloadCipher {
    /// For application payloads (FPort ≥ 1).
    pub fn from_app_s_key(key: &AppSKey) -> Self {
        Self(Aes128Enc::new(key.expose().into()))
    }
    /// For FPort 0 payloads of a 1.0 session.
    pub fn from_nwk_s_key(key: &NwkSKey) -> Self {
        Self(Aes128Enc::new(key.expose().into()))
    }
    /// For FPort 0 payloads and FOpts of a 1.1 session.
    pub fn from_nwk_s_enc_key(key: &NwkSEncKey) -> Self {
        Self(Aes128Enc::new(key.expose().into()))
    }
}

// Not boxed: a session holds exactly one, and a box would add an indirection to every MIC.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum NetworkCiphers {
    /// One NwkSKey for the MIC and the FPort 0 keystream: expanded once ([`KeySchedule::cipher`]).
    V1_0 { mic: KeySchedule },
    V1_1 {
        f_int: KeySchedule,
        s_int: KeySchedule,
        enc: PayloadCipher,
    },
}

/// The network session keys with their key schedules expanded: what MIC checks and FPort 0 /
/// FOpts encryption run on. Build once per session. `Debug` is redacted.
#[derive(Clone)]
pub struct NetworkSessionCrypto(NetworkCiphers);

impl std::fmt::Debug for NetworkSessionCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = if self.is_1_1() { "1.1" } else { "1.0" };
        write!(f, "NetworkSessionCrypto({v}, <redacted>)")
    }
}

impl NetworkSessionCrypto {
    /// Expands the key schedules of `keys`.
    pub fn new(keys: &NetworkSessionKeys) -> Self {
        Self(match keys {
            NetworkSessionKeys::V1_0 { nwk_s_key } => NetworkCiphers::V1_0 {
                mic: KeySchedule::new(nwk_s_key.expose()),
            },
            NetworkSessionKeys::V1_1 {
                f_nwk_s_int_key,
                s_nwk_s_int_key,
                nwk_s_enc_key,
            } => NetworkCiphers::V1_1 {
                f_int: KeySchedule::new(f_nwk_s_int_key.expose()),
                s_int: KeySchedule::new(s_nwk_s_int_key.expose()),
                enc: PayloadCipher::from_nwk_s_enc_key(nwk_s_enc_key),
            },
        })
    }
    /// Whether this is a LoRaWAN 1.1 session (1.1 MICs, encrypted FOpts).
    pub const fn is_1_1(&self) -> bool {
        matches!(self.0, NetworkCiphers::V1_1 { .. })
    }
    /// The cipher for FPort 0 payloads (NwkSKey in 1.0, NwkSEncKey in 1.1).
    pub fn payload_cipher(&self) -> &PayloadCipher {
        match &self.0 {
            NetworkCiphers::V1_0 { mic } => mic.cipher(),
            NetworkCiphers::V1_1 { enc, .. } => enc,
        }
    }
}

/// All session crypto of a device: network keys, and the AppSKey when this party holds it.
#[derive(Clone, Debug)]
pub struct SessionCrypto {
    /// The network session keys.
    pub network: NetworkSessionCrypto,
    /// The application session key; `None` on a network server that forwards application
    /// payloads still encrypted.
    pub app: Option<PayloadCipher>,
}

impl SessionCrypto {
    /// Expands the key schedules of the session keys.
    pub fn new(network: &NetworkSessionKeys, app_s_key: Option<&AppSKey>) -> Self {
        Self {
            network: NetworkSessionCrypto::new(network),
            app: app_s_key.map(PayloadCipher::from_app_s_key),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Raw primitives (explicit Dir and DevAddr)

/// Which counter a 1.1 FOpts keystream is bound to: byte 4 of the errata A block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FOptsCounter {
    /// FCntUp (uplinks) or NFCntDown (downlinks without FPort or with FPort 0): 0x01.
    NetworkOrUp,
    /// AFCntDown (downlinks with FPort > 0): 0x02.
    AFCntDown,
}

impl FOptsCounter {
    const fn x(self) -> u8 {
        match self {
            Self::NetworkOrUp => 0x01,
            Self::AFCntDown => 0x02,
        }
    }
}

fn a_block(x: u8, dir: Direction, dev_addr: DevAddr, fcnt: u32) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0x01;
    a[4] = x;
    a[5] = dir.dir_byte();
    a[6..10].copy_from_slice(&dev_addr.to_le_bytes());
    a[10..14].copy_from_slice(&fcnt.to_le_bytes());
    a
}

/// The FRMPayload block `A_i = 0x01 | 0x00×4 | Dir | DevAddr | FCnt32 | 0x00 | i`.
pub fn frm_payload_a_block(dir: Direction, dev_addr: DevAddr, fcnt: u32, i: u8) -> [u8; 16] {
    let mut a = a_block(0x00, dir, dev_addr, fcnt);
    a[15] = i;
    a
}

/// The 1.1 FOpts block (errata) `A = 0x01 | 0x00×3 | X | Dir | DevAddr | FCnt | 0x00 | 0x01`.
pub fn fopts_a_block(
    counter: FOptsCounter,
    dir: Direction,
    dev_addr: DevAddr,
    fcnt: u32,
) -> [u8; 16] {
    let mut a = a_block(counter.x(), dir, dev_addr, fcnt);
    a[15] = 0x01;
    a
}

/// The B0 block of an uplink MIC (1.0, and cmacF in 1.1):
/// `0x49 | 0x00×4 | 0x00 | DevAddr | FCntUp | 0x00 | len(msg)`.
pub fn uplink_b0(dev_addr: DevAddr, fcnt: u32, msg_len: u8) -> [u8; 16] {
    b_block(0, 0, 0, Direction::Uplink, dev_addr, fcnt, msg_len.into())
}

/// The 1.1 B1 block (cmacS): `0x49 | ConfFCnt | TxDr | TxCh | 0x00 | DevAddr | FCntUp | 0x00 |
/// len(msg)`, with ConfFCnt as it is used (0 unless ACK).
pub fn uplink_b1(
    conf_fcnt: u16,
    tx_dr: u8,
    tx_ch: u8,
    dev_addr: DevAddr,
    fcnt: u32,
    msg_len: u8,
) -> [u8; 16] {
    b_block(
        conf_fcnt,
        tx_dr,
        tx_ch,
        Direction::Uplink,
        dev_addr,
        fcnt,
        msg_len.into(),
    )
}

/// The B0 block of a downlink MIC: `0x49 | ConfFCnt | 0x0000 | 0x01 | DevAddr | FCntDown | 0x00
/// | len(msg)`; ConfFCnt as it is used (always 0 in 1.0; in 1.1, 0 unless ACK).
pub fn downlink_b0(conf_fcnt: u16, dev_addr: DevAddr, fcnt: u32, msg_len: u8) -> [u8; 16] {
    b_block(
        conf_fcnt,
        0,
        0,
        Direction::Downlink,
        dev_addr,
        fcnt,
        msg_len.into(),
    )
}

/// XORs `data` with `S_i = aes(K, A_i)`, `A_i[15] = i` for `i = 1, 2, …`.
fn xor_keystream(cipher: &PayloadCipher, mut a: [u8; 16], data: &mut [u8]) {
    for (i, chunk) in data.chunks_mut(16).enumerate() {
        // At most 255 bytes reach here from frames; the counter byte wraps only past 4080 bytes.
        a[15] = (i as u8).wrapping_add(1);
        let mut s = a.into();
        cipher.0.encrypt_block(&mut s);
        for (d, k) in chunk.iter_mut().zip(s.iter()) {
            *d ^= k;
        }
    }
}

/// FRMPayload encryption (the same call decrypts): `A_i = 0x01 | 0x00×4 | Dir | DevAddr | FCnt32
/// | 0x00 | i`.
pub fn encrypt_frm_payload(
    cipher: &PayloadCipher,
    dir: Direction,
    dev_addr: DevAddr,
    fcnt: u32,
    data: &mut [u8],
) {
    xor_keystream(cipher, a_block(0x00, dir, dev_addr, fcnt), data);
}

/// LoRaWAN 1.1 FOpts encryption with NwkSEncKey (the same call decrypts), with the errata A
/// block `0x01 | 0x00×3 | X | Dir | DevAddr | FCnt | 0x00 | 0x01` (protocol-notes A.7, E.4).
/// Not in `lorawan` 0.9, which has no 1.1.
pub fn encrypt_fopts(
    cipher: &PayloadCipher,
    counter: FOptsCounter,
    dir: Direction,
    dev_addr: DevAddr,
    fcnt: u32,
    data: &mut [u8],
) {
    xor_keystream(cipher, a_block(counter.x(), dir, dev_addr, fcnt), data);
}

/// The uplink MIC parameters that only LoRaWAN 1.1 uses (block B1). Ignored by 1.0 sessions.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct UplinkMicParams {
    /// FCnt of the confirmed downlink being acknowledged; only its 16 LSB are used, and only
    /// when the uplink's ACK bit is set (otherwise ConfFCnt = 0, whatever is passed here).
    pub conf_fcnt: u32,
    /// The data rate index of the uplink transmission.
    pub tx_dr: u8,
    /// The channel index of the uplink transmission.
    pub tx_ch: u8,
}

fn b_block(
    conf_fcnt: u16,
    tx_dr: u8,
    tx_ch: u8,
    dir: Direction,
    dev_addr: DevAddr,
    fcnt: u32,
    len: usize,
) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = 0x49;
    b[1..3].copy_from_slice(&conf_fcnt.to_le_bytes());
    b[3] = tx_dr;
    b[4] = tx_ch;
    b[5] = dir.dir_byte();
    b[6..10].copy_from_slice(&dev_addr.to_le_bytes());
    b[10..14].copy_from_slice(&fcnt.to_le_bytes());
    b[15] = len as u8;
    b
}

/// ConfFCnt as it enters B0/B1: the 16 LSB when ACK is set, else 0 (protocol-notes E.5).
fn conf_fcnt_used(ack: bool, conf_fcnt: u32) -> u16 {
    if ack {
        conf_fcnt as u16
    } else {
        0
    }
}

/// The MIC of an uplink message `msg = MHDR | FHDR | FPort | FRMPayload` (after encryption),
/// with explicit DevAddr and full 32-bit FCntUp. `ack` is the frame's ACK bit.
///
/// - 1.0: `cmac(NwkSKey, B0 | msg)[0..3]`.
/// - 1.1: `cmac(SNwkSIntKey, B1 | msg)[0..1] | cmac(FNwkSIntKey, B0 | msg)[0..1]`.
///
/// `msg` longer than 255 bytes would get a truncated length byte; parsed and built frames never
/// are that long ([`MAX_PHY_PAYLOAD_LEN`]).
pub fn uplink_mic(
    nwk: &NetworkSessionCrypto,
    dev_addr: DevAddr,
    fcnt: u32,
    ack: bool,
    params: &UplinkMicParams,
    msg: &[u8],
) -> Mic {
    let b0 = b_block(0, 0, 0, Direction::Uplink, dev_addr, fcnt, msg.len());
    match &nwk.0 {
        NetworkCiphers::V1_0 { mic, .. } => mic_of(&mic.cmac(&[&b0, msg])),
        NetworkCiphers::V1_1 { f_int, s_int, .. } => {
            let b1 = b_block(
                conf_fcnt_used(ack, params.conf_fcnt),
                params.tx_dr,
                params.tx_ch,
                Direction::Uplink,
                dev_addr,
                fcnt,
                msg.len(),
            );
            let s = s_int.cmac(&[&b1, msg]);
            let f = f_int.cmac(&[&b0, msg]);
            Mic([s[0], s[1], f[0], f[1]])
        }
    }
}

/// The MIC of a downlink message with explicit DevAddr and full 32-bit FCntDown (1.1: AFCntDown
/// for FPort > 0, NFCntDown otherwise). `conf_fcnt` is the acknowledged uplink's FCnt (1.1 only,
/// used only when `ack`).
///
/// - 1.0: `cmac(NwkSKey, B0 | msg)[0..3]`, Dir = 1.
/// - 1.1: `cmac(SNwkSIntKey, B0' | msg)[0..3]`, B0' carrying ConfFCnt.
pub fn downlink_mic(
    nwk: &NetworkSessionCrypto,
    dev_addr: DevAddr,
    fcnt: u32,
    ack: bool,
    conf_fcnt: u32,
    msg: &[u8],
) -> Mic {
    match &nwk.0 {
        NetworkCiphers::V1_0 { mic, .. } => {
            let b0 = b_block(0, 0, 0, Direction::Downlink, dev_addr, fcnt, msg.len());
            mic_of(&mic.cmac(&[&b0, msg]))
        }
        NetworkCiphers::V1_1 { s_int, .. } => {
            let b0 = b_block(
                conf_fcnt_used(ack, conf_fcnt),
                0,
                0,
                Direction::Downlink,
                dev_addr,
                fcnt,
                msg.len(),
            );
            mic_of(&s_int.cmac(&[&b0, msg]))
        }
    }
}

// ------------------------------------------------------------------------------------------------
// FCtrl

/// FCtrl of an uplink: `ADR(7) ADRACKReq(6) ACK(5) ClassB(4) FOptsLen(3..0)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct UplinkFCtrl {
    /// ADR: the device accepts network-controlled data rates.
    pub adr: bool,
    /// ADRACKReq: the device asks for a downlink to confirm ADR.
    pub adr_ack_req: bool,
    /// ACK: acknowledges the last confirmed downlink.
    pub ack: bool,
    /// ClassB: the device is in Class B (RFU in 1.0.2).
    pub class_b: bool,
    /// FOptsLen: length of FOpts (0..15).
    pub f_opts_len: u8,
}

impl UplinkFCtrl {
    /// Decodes the FCtrl byte.
    pub const fn from_byte(b: u8) -> Self {
        Self {
            adr: b & 0x80 != 0,
            adr_ack_req: b & 0x40 != 0,
            ack: b & 0x20 != 0,
            class_b: b & 0x10 != 0,
            f_opts_len: b & 0x0f,
        }
    }
    /// Encodes the FCtrl byte (FOptsLen masked to 4 bits).
    pub const fn to_byte(self) -> u8 {
        (self.adr as u8) << 7
            | (self.adr_ack_req as u8) << 6
            | (self.ack as u8) << 5
            | (self.class_b as u8) << 4
            | (self.f_opts_len & 0x0f)
    }
}

/// FCtrl of a downlink: `ADR(7) RFU(6) ACK(5) FPending(4) FOptsLen(3..0)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DownlinkFCtrl {
    /// ADR: the network controls the device's data rate.
    pub adr: bool,
    /// ACK: acknowledges the last confirmed uplink.
    pub ack: bool,
    /// FPending: the network has more data to send.
    pub f_pending: bool,
    /// FOptsLen: length of FOpts (0..15).
    pub f_opts_len: u8,
}

impl DownlinkFCtrl {
    /// Decodes the FCtrl byte (the RFU bit 6 is ignored).
    pub const fn from_byte(b: u8) -> Self {
        Self {
            adr: b & 0x80 != 0,
            ack: b & 0x20 != 0,
            f_pending: b & 0x10 != 0,
            f_opts_len: b & 0x0f,
        }
    }
    /// Encodes the FCtrl byte (RFU = 0, FOptsLen masked to 4 bits).
    pub const fn to_byte(self) -> u8 {
        (self.adr as u8) << 7
            | (self.ack as u8) << 5
            | (self.f_pending as u8) << 4
            | (self.f_opts_len & 0x0f)
    }
}

/// FCtrl decoded according to the frame's direction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FCtrl {
    /// An uplink's FCtrl.
    Uplink(UplinkFCtrl),
    /// A downlink's FCtrl.
    Downlink(DownlinkFCtrl),
}

impl FCtrl {
    /// The ACK bit (present in both directions).
    pub const fn ack(self) -> bool {
        match self {
            Self::Uplink(f) => f.ack,
            Self::Downlink(f) => f.ack,
        }
    }
    /// The ADR bit (present in both directions).
    pub const fn adr(self) -> bool {
        match self {
            Self::Uplink(f) => f.adr,
            Self::Downlink(f) => f.adr,
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Payload types

/// A decrypted FRMPayload (application data, or MAC commands on FPort 0).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct FrmPayload(pub Vec<u8>);

/// An FRMPayload as sent on air, still encrypted (borrowed from a received frame).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EncryptedFrmPayload<'a>(pub &'a [u8]);

impl<'a> EncryptedFrmPayload<'a> {
    /// The ciphertext bytes.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.0
    }
    /// Decrypts with the key the FPort calls for.
    pub fn decrypt(
        &self,
        cipher: &PayloadCipher,
        dir: Direction,
        dev_addr: DevAddr,
        fcnt: u32,
    ) -> FrmPayload {
        let mut out = self.0.to_vec();
        encrypt_frm_payload(cipher, dir, dev_addr, fcnt, &mut out);
        FrmPayload(out)
    }
}

/// What follows the FHDR of a data frame. The FPort rules of A.7 are in the type: MAC commands
/// travel on FPort 0 only, application data on FPort 1..=255 only, and there is no payload
/// without an FPort.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum FramePayload {
    /// No FPort and no FRMPayload.
    None,
    /// FPort 0: MAC commands (plaintext), encrypted on air with NwkSKey / NwkSEncKey. FOpts must
    /// then be empty.
    MacCommands(FrmPayload),
    /// FPort 1..=255 with a plaintext payload (possibly empty), encrypted on air with AppSKey.
    Application {
        /// FPort, 1..=255 (224 is the MAC test protocol).
        f_port: u8,
        /// The plaintext.
        payload: FrmPayload,
    },
    /// FPort 1..=255 with a payload already encrypted under AppSKey by whoever holds it; sent
    /// and received as is. Opening gives this when the session has no AppSKey.
    EncryptedApplication {
        /// FPort, 1..=255.
        f_port: u8,
        /// The ciphertext.
        ciphertext: Vec<u8>,
    },
}

impl FramePayload {
    /// The FPort on air, if any.
    pub const fn f_port(&self) -> Option<u8> {
        match self {
            Self::None => None,
            Self::MacCommands(_) => Some(0),
            Self::Application { f_port, .. } | Self::EncryptedApplication { f_port, .. } => {
                Some(*f_port)
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Errors

/// Why bytes are not a well-formed data frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Fewer than 12 bytes (MHDR, FHDR without FOpts, MIC).
    #[error("data frame too short: {0} bytes, at least 12 needed")]
    TooShort(usize),
    /// More than 255 bytes.
    #[error("data frame too long: {0} bytes, at most 259")]
    TooLong(usize),
    /// MHDR Major is not LoRaWAN R1.
    #[error("unsupported LoRaWAN major version {0} in MHDR")]
    UnsupportedMajor(u8),
    /// The MType is not a data frame.
    #[error("not a data frame: MType {0:?}")]
    NotDataFrame(MType),
    /// FOptsLen runs past the end of the frame.
    #[error("FOptsLen {f_opts_len} does not fit in a {len}-byte frame")]
    FOptsTruncated {
        /// FOptsLen from FCtrl.
        f_opts_len: u8,
        /// The frame length.
        len: usize,
    },
    /// FOpts present with FPort 0: MAC commands in both places; the frame must be discarded.
    #[error("MAC commands in both FOpts and FPort 0")]
    FOptsWithFPort0,
}

impl ParseError {
    /// A short stable label, for metrics.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::TooShort(_) => "too_short",
            Self::TooLong(_) => "too_long",
            Self::UnsupportedMajor(_) => "unsupported_major",
            Self::NotDataFrame(_) => "not_data_frame",
            Self::FOptsTruncated { .. } => "fopts_truncated",
            Self::FOptsWithFPort0 => "fopts_with_fport0",
        }
    }
}

/// Why a parsed frame could not be opened (authenticated and decrypted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// An uplink was opened as a downlink or the reverse.
    #[error("expected a {expected:?} frame")]
    WrongDirection {
        /// The direction the caller asked for.
        expected: Direction,
    },
    /// The MIC does not match these keys and this FCnt.
    #[error("MIC mismatch")]
    MicMismatch,
}

impl OpenError {
    /// A short stable label, for metrics.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::WrongDirection { .. } => "wrong_direction",
            Self::MicMismatch => "mic_mismatch",
        }
    }
}

/// Why a frame could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// FOpts longer than 15 bytes.
    #[error("FOpts of {0} bytes, at most 15")]
    FOptsTooLong(usize),
    /// FOpts together with FPort 0 MAC commands.
    #[error("MAC commands in both FOpts and FPort 0")]
    FOptsWithFPort0,
    /// An application payload on FPort 0.
    #[error("application payload on FPort 0")]
    ApplicationOnFPort0,
    /// The frame would exceed [`MAX_PHY_PAYLOAD_LEN`] bytes.
    #[error("frame of {0} bytes, at most 259")]
    TooLong(usize),
    /// A plaintext application payload but no AppSKey in the session.
    #[error("no AppSKey to encrypt the application payload")]
    MissingAppSKey,
}

impl BuildError {
    /// A short stable label, for metrics.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::FOptsTooLong(_) => "fopts_too_long",
            Self::FOptsWithFPort0 => "fopts_with_fport0",
            Self::ApplicationOnFPort0 => "application_on_fport0",
            Self::TooLong(_) => "too_long",
            Self::MissingAppSKey => "missing_app_s_key",
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Parsed view

/// A received data frame, parsed without copying: the fields are slices of the input.
///
/// Parsing checks the structure only; [`open_uplink`](Self::open_uplink) /
/// [`open_downlink`](Self::open_downlink) check the MIC and decrypt.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DataFrame<'a> {
    bytes: &'a [u8],
    mhdr: Mhdr,
    dev_addr: DevAddr,
    fctrl: u8,
    fcnt: u16,
    fport: Option<u8>,
    fhdr_end: usize,
}

impl<'a> DataFrame<'a> {
    /// Parses a PHYPayload of MType (un)confirmed data up/down.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let len = bytes.len();
        if len > MAX_PHY_PAYLOAD_LEN {
            return Err(ParseError::TooLong(len));
        }
        if len < MIN_DATA_FRAME_LEN {
            return Err(ParseError::TooShort(len));
        }
        let mhdr = Mhdr(bytes[0]);
        mhdr.check_major()
            .map_err(|e| ParseError::UnsupportedMajor(e.0))?;
        let uplink = match mhdr.mtype() {
            MType::UnconfirmedDataUp | MType::ConfirmedDataUp => true,
            MType::UnconfirmedDataDown | MType::ConfirmedDataDown => false,
            other => return Err(ParseError::NotDataFrame(other)),
        };
        let f_opts_len = bytes[5] & 0x0f;
        let fhdr_end = FOPTS_START + f_opts_len as usize;
        if fhdr_end + MIC_LEN > len {
            return Err(ParseError::FOptsTruncated { f_opts_len, len });
        }
        // The FHDR fields through `lorawan`'s 1.0 parser (same layout in 1.1).
        let fhdr = lorawan::parser::FHDR::new_from_raw(&bytes[1..fhdr_end], uplink);
        let mut dev_addr = [0u8; 4];
        dev_addr.copy_from_slice(fhdr.dev_addr().as_ref());
        // By hand: FPort is present whenever a byte follows the FHDR, even with an empty
        // FRMPayload (`lorawan`'s `f_port()` says None then).
        let fport = (fhdr_end + MIC_LEN < len).then(|| bytes[fhdr_end]);
        if fport == Some(0) && f_opts_len != 0 {
            return Err(ParseError::FOptsWithFPort0);
        }
        Ok(Self {
            bytes,
            mhdr,
            dev_addr: DevAddr::from_le_bytes(dev_addr),
            fctrl: fhdr.fctrl().raw_value(),
            fcnt: fhdr.fcnt(),
            fport,
            fhdr_end,
        })
    }

    /// The whole PHYPayload.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// The MHDR.
    pub const fn mhdr(&self) -> Mhdr {
        self.mhdr
    }
    /// Uplink or downlink, from the MType.
    pub const fn direction(&self) -> Direction {
        match self.mhdr.mtype() {
            MType::UnconfirmedDataUp | MType::ConfirmedDataUp => Direction::Uplink,
            _ => Direction::Downlink,
        }
    }
    /// Whether the MType is confirmed data.
    pub const fn is_confirmed(&self) -> bool {
        matches!(
            self.mhdr.mtype(),
            MType::ConfirmedDataUp | MType::ConfirmedDataDown
        )
    }
    /// The DevAddr.
    pub const fn dev_addr(&self) -> DevAddr {
        self.dev_addr
    }
    /// The raw FCtrl byte.
    pub const fn fctrl_byte(&self) -> u8 {
        self.fctrl
    }
    /// FCtrl decoded for the frame's direction.
    pub const fn fctrl(&self) -> FCtrl {
        match self.direction() {
            Direction::Uplink => FCtrl::Uplink(UplinkFCtrl::from_byte(self.fctrl)),
            Direction::Downlink => FCtrl::Downlink(DownlinkFCtrl::from_byte(self.fctrl)),
        }
    }
    /// The 16 LSB of the frame counter, as on air.
    pub const fn fcnt16(&self) -> u16 {
        self.fcnt
    }
    /// FOpts as on air (encrypted in 1.1).
    pub fn fopts_on_air(&self) -> &'a [u8] {
        self.bytes.get(FOPTS_START..self.fhdr_end).unwrap_or(&[])
    }
    /// The FPort, if present.
    pub const fn f_port(&self) -> Option<u8> {
        self.fport
    }
    /// The FRMPayload as on air (empty when there is no FPort).
    pub fn frm_payload(&self) -> EncryptedFrmPayload<'a> {
        let start = self.fhdr_end + usize::from(self.fport.is_some());
        let end = self.bytes.len() - MIC_LEN;
        EncryptedFrmPayload(self.bytes.get(start..end).unwrap_or(&[]))
    }
    /// `MHDR | FHDR | FPort | FRMPayload`: what the MIC covers.
    pub fn msg(&self) -> &'a [u8] {
        &self.bytes[..self.bytes.len() - MIC_LEN]
    }
    /// The MIC as on air.
    pub fn mic(&self) -> Mic {
        let n = self.bytes.len();
        Mic([
            self.bytes[n - 4],
            self.bytes[n - 3],
            self.bytes[n - 2],
            self.bytes[n - 1],
        ])
    }

    /// The uplink MIC this frame should carry under `nwk` with full counter `fcnt`.
    pub fn expected_uplink_mic(
        &self,
        nwk: &NetworkSessionCrypto,
        fcnt: u32,
        params: &UplinkMicParams,
    ) -> Mic {
        uplink_mic(
            nwk,
            self.dev_addr,
            fcnt,
            self.fctrl_ack(),
            params,
            self.msg(),
        )
    }

    /// The downlink MIC this frame should carry under `nwk` with full counter `fcnt`.
    pub fn expected_downlink_mic(
        &self,
        nwk: &NetworkSessionCrypto,
        fcnt: u32,
        conf_fcnt: u32,
    ) -> Mic {
        downlink_mic(
            nwk,
            self.dev_addr,
            fcnt,
            self.fctrl_ack(),
            conf_fcnt,
            self.msg(),
        )
    }

    const fn fctrl_ack(&self) -> bool {
        self.fctrl & 0x20 != 0
    }

    /// Network side: checks an uplink's MIC with the full 32-bit FCntUp (see
    /// [`crate::fcnt`]) and decrypts FOpts (1.1) and FRMPayload. FPort ≥ 1 payloads stay
    /// [`FramePayload::EncryptedApplication`] when `session.app` is `None`.
    pub fn open_uplink(
        &self,
        session: &SessionCrypto,
        fcnt: u32,
        params: &UplinkMicParams,
    ) -> Result<Uplink, OpenError> {
        if self.direction() != Direction::Uplink {
            return Err(OpenError::WrongDirection {
                expected: Direction::Uplink,
            });
        }
        if self.expected_uplink_mic(&session.network, fcnt, params) != self.mic() {
            return Err(OpenError::MicMismatch);
        }
        let f = UplinkFCtrl::from_byte(self.fctrl);
        Ok(Uplink {
            confirmed: self.is_confirmed(),
            dev_addr: self.dev_addr,
            fcnt,
            adr: f.adr,
            adr_ack_req: f.adr_ack_req,
            ack: f.ack,
            class_b: f.class_b,
            fopts: self.decrypt_fopts(&session.network, fcnt),
            payload: self.decrypt_payload(session, fcnt),
        })
    }

    /// Device side: checks a downlink's MIC with the full 32-bit FCntDown (1.1: AFCntDown for
    /// FPort > 0, NFCntDown otherwise) and decrypts FOpts (1.1) and FRMPayload. `conf_fcnt` is
    /// the FCnt of the confirmed uplink this downlink may acknowledge (1.1 only, used only when
    /// the ACK bit is set).
    pub fn open_downlink(
        &self,
        session: &SessionCrypto,
        fcnt: u32,
        conf_fcnt: u32,
    ) -> Result<Downlink, OpenError> {
        if self.direction() != Direction::Downlink {
            return Err(OpenError::WrongDirection {
                expected: Direction::Downlink,
            });
        }
        if self.expected_downlink_mic(&session.network, fcnt, conf_fcnt) != self.mic() {
            return Err(OpenError::MicMismatch);
        }
        let f = DownlinkFCtrl::from_byte(self.fctrl);
        Ok(Downlink {
            confirmed: self.is_confirmed(),
            dev_addr: self.dev_addr,
            fcnt,
            adr: f.adr,
            ack: f.ack,
            f_pending: f.f_pending,
            fopts: self.decrypt_fopts(&session.network, fcnt),
            payload: self.decrypt_payload(session, fcnt),
        })
    }

    /// FOpts in plaintext: decrypted with NwkSEncKey in 1.1, as on air in 1.0.
    pub fn decrypt_fopts(&self, nwk: &NetworkSessionCrypto, fcnt: u32) -> Vec<u8> {
        let mut fopts = self.fopts_on_air().to_vec();
        if nwk.is_1_1() && !fopts.is_empty() {
            let dir = self.direction();
            encrypt_fopts(
                nwk.payload_cipher(),
                fopts_counter(dir, self.fport),
                dir,
                self.dev_addr,
                fcnt,
                &mut fopts,
            );
        }
        fopts
    }

    fn decrypt_payload(&self, session: &SessionCrypto, fcnt: u32) -> FramePayload {
        let on_air = self.frm_payload();
        let (dir, dev_addr) = (self.direction(), self.dev_addr);
        match self.fport {
            None => FramePayload::None,
            Some(0) => FramePayload::MacCommands(on_air.decrypt(
                session.network.payload_cipher(),
                dir,
                dev_addr,
                fcnt,
            )),
            Some(f_port) => match &session.app {
                Some(app) => FramePayload::Application {
                    f_port,
                    payload: on_air.decrypt(app, dir, dev_addr, fcnt),
                },
                None => FramePayload::EncryptedApplication {
                    f_port,
                    ciphertext: on_air.as_bytes().to_vec(),
                },
            },
        }
    }
}

fn fopts_counter(dir: Direction, fport: Option<u8>) -> FOptsCounter {
    match (dir, fport) {
        (Direction::Downlink, Some(p)) if p > 0 => FOptsCounter::AFCntDown,
        _ => FOptsCounter::NetworkOrUp,
    }
}

// ------------------------------------------------------------------------------------------------
// Owned frames and builders

/// An uplink data frame in plaintext: what a device sends, and what the network server gets
/// from [`DataFrame::open_uplink`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Uplink {
    /// Confirmed (MType 100) or unconfirmed (010) data up.
    pub confirmed: bool,
    /// DevAddr.
    pub dev_addr: DevAddr,
    /// The full 32-bit FCntUp; its 16 LSB go on air.
    pub fcnt: u32,
    /// FCtrl ADR.
    pub adr: bool,
    /// FCtrl ADRACKReq.
    pub adr_ack_req: bool,
    /// FCtrl ACK: acknowledges the last confirmed downlink.
    pub ack: bool,
    /// FCtrl ClassB.
    pub class_b: bool,
    /// FOpts in plaintext (MAC commands, at most 15 bytes); encrypted on air in 1.1.
    pub fopts: Vec<u8>,
    /// FPort and FRMPayload.
    pub payload: FramePayload,
}

/// A downlink data frame in plaintext: what the network server sends, and what a device gets
/// from [`DataFrame::open_downlink`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Downlink {
    /// Confirmed (MType 101) or unconfirmed (011) data down.
    pub confirmed: bool,
    /// DevAddr.
    pub dev_addr: DevAddr,
    /// The full 32-bit FCntDown (1.1: AFCntDown when FPort > 0, NFCntDown otherwise).
    pub fcnt: u32,
    /// FCtrl ADR.
    pub adr: bool,
    /// FCtrl ACK: acknowledges the last confirmed uplink.
    pub ack: bool,
    /// FCtrl FPending: more downlink data is waiting.
    pub f_pending: bool,
    /// FOpts in plaintext (MAC commands, at most 15 bytes); encrypted on air in 1.1.
    pub fopts: Vec<u8>,
    /// FPort and FRMPayload.
    pub payload: FramePayload,
}

impl Uplink {
    /// Device side: builds the PHYPayload. `params` feeds the 1.1 B1 block (ConfFCnt is used
    /// only when `ack` is set).
    pub fn build(
        &self,
        session: &SessionCrypto,
        params: &UplinkMicParams,
    ) -> Result<Vec<u8>, BuildError> {
        let mtype = if self.confirmed {
            MType::ConfirmedDataUp
        } else {
            MType::UnconfirmedDataUp
        };
        let fctrl = UplinkFCtrl {
            adr: self.adr,
            adr_ack_req: self.adr_ack_req,
            ack: self.ack,
            class_b: self.class_b,
            f_opts_len: 0,
        }
        .to_byte();
        let mut out = assemble(
            Mhdr::new(mtype),
            self.dev_addr,
            fctrl,
            self.fcnt,
            &self.fopts,
            &self.payload,
            session,
        )?;
        let mic = uplink_mic(
            &session.network,
            self.dev_addr,
            self.fcnt,
            self.ack,
            params,
            &out,
        );
        out.extend_from_slice(&mic.0);
        Ok(out)
    }
}

impl Downlink {
    /// Network side: builds the PHYPayload. `conf_fcnt` is the FCnt of the confirmed uplink
    /// being acknowledged (1.1 only, used only when `ack` is set).
    pub fn build(&self, session: &SessionCrypto, conf_fcnt: u32) -> Result<Vec<u8>, BuildError> {
        let mtype = if self.confirmed {
            MType::ConfirmedDataDown
        } else {
            MType::UnconfirmedDataDown
        };
        let fctrl = DownlinkFCtrl {
            adr: self.adr,
            ack: self.ack,
            f_pending: self.f_pending,
            f_opts_len: 0,
        }
        .to_byte();
        let mut out = assemble(
            Mhdr::new(mtype),
            self.dev_addr,
            fctrl,
            self.fcnt,
            &self.fopts,
            &self.payload,
            session,
        )?;
        let mic = downlink_mic(
            &session.network,
            self.dev_addr,
            self.fcnt,
            self.ack,
            conf_fcnt,
            &out,
        );
        out.extend_from_slice(&mic.0);
        Ok(out)
    }
}

/// `MHDR | FHDR | [FPort | FRMPayload]`, FOpts and FRMPayload encrypted, without the MIC.
fn assemble(
    mhdr: Mhdr,
    dev_addr: DevAddr,
    fctrl_flags: u8,
    fcnt: u32,
    fopts: &[u8],
    payload: &FramePayload,
    session: &SessionCrypto,
) -> Result<Vec<u8>, BuildError> {
    if fopts.len() > MAX_FOPTS_LEN {
        return Err(BuildError::FOptsTooLong(fopts.len()));
    }
    let (f_port, body): (Option<u8>, &[u8]) = match payload {
        FramePayload::None => (None, &[]),
        FramePayload::MacCommands(p) => {
            if !fopts.is_empty() {
                return Err(BuildError::FOptsWithFPort0);
            }
            (Some(0), &p.0)
        }
        FramePayload::Application { f_port, payload } => (Some(*f_port), &payload.0),
        FramePayload::EncryptedApplication { f_port, ciphertext } => (Some(*f_port), ciphertext),
    };
    if f_port == Some(0) && !matches!(payload, FramePayload::MacCommands(_)) {
        return Err(BuildError::ApplicationOnFPort0);
    }
    let len = FOPTS_START + fopts.len() + usize::from(f_port.is_some()) + body.len() + MIC_LEN;
    if len > MAX_PHY_PAYLOAD_LEN {
        return Err(BuildError::TooLong(len));
    }
    let cipher = match payload {
        FramePayload::None | FramePayload::EncryptedApplication { .. } => None,
        FramePayload::MacCommands(_) => Some(session.network.payload_cipher()),
        FramePayload::Application { .. } => {
            Some(session.app.as_ref().ok_or(BuildError::MissingAppSKey)?)
        }
    };
    let dir = match mhdr.mtype() {
        MType::UnconfirmedDataUp | MType::ConfirmedDataUp => Direction::Uplink,
        _ => Direction::Downlink,
    };

    let mut out = Vec::with_capacity(len);
    out.push(mhdr.0);
    out.extend_from_slice(&dev_addr.to_le_bytes());
    out.push(fctrl_flags | fopts.len() as u8);
    out.extend_from_slice(&(fcnt as u16).to_le_bytes());
    out.extend_from_slice(fopts);
    if session.network.is_1_1() && !fopts.is_empty() {
        encrypt_fopts(
            session.network.payload_cipher(),
            fopts_counter(dir, f_port),
            dir,
            dev_addr,
            fcnt,
            &mut out[FOPTS_START..],
        );
    }
    if let Some(p) = f_port {
        out.push(p);
    }
    let start = out.len();
    out.extend_from_slice(body);
    if let Some(cipher) = cipher {
        encrypt_frm_payload(cipher, dir, dev_addr, fcnt, &mut out[start..]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{FNwkSIntKey, SNwkSIntKey};

    fn keys_1_0() -> SessionCrypto {
        SessionCrypto::new(
            &NetworkSessionKeys::V1_0 {
                nwk_s_key: NwkSKey::new([2; 16]),
            },
            Some(&AppSKey::new([1; 16])),
        )
    }

    fn keys_1_1() -> SessionCrypto {
        SessionCrypto::new(
            &NetworkSessionKeys::V1_1 {
                f_nwk_s_int_key: FNwkSIntKey::new([3; 16]),
                s_nwk_s_int_key: SNwkSIntKey::new([4; 16]),
                nwk_s_enc_key: NwkSEncKey::new([5; 16]),
            },
            Some(&AppSKey::new([1; 16])),
        )
    }

    fn uplink(payload: FramePayload, fopts: Vec<u8>) -> Uplink {
        Uplink {
            confirmed: true,
            dev_addr: DevAddr::new(0x0102_0304),
            fcnt: 0x0001_0203,
            adr: true,
            adr_ack_req: false,
            ack: true,
            class_b: false,
            fopts,
            payload,
        }
    }

    #[test]
    fn raw_primitives_and_frame_paths_agree() {
        for s in [keys_1_0(), keys_1_1()] {
            let up = uplink(
                FramePayload::Application {
                    f_port: 7,
                    payload: FrmPayload((0..40).collect()),
                },
                vec![2],
            );
            let params = UplinkMicParams {
                conf_fcnt: 9,
                tx_dr: 5,
                tx_ch: 2,
            };
            let phy = up.build(&s, &params).unwrap();
            let f = DataFrame::parse(&phy).unwrap();
            let raw = uplink_mic(&s.network, f.dev_addr(), up.fcnt, true, &params, f.msg());
            assert_eq!(raw, f.mic());
            let mut plain = f.frm_payload().as_bytes().to_vec();
            encrypt_frm_payload(
                s.app.as_ref().unwrap(),
                Direction::Uplink,
                f.dev_addr(),
                up.fcnt,
                &mut plain,
            );
            assert_eq!(plain, (0..40).collect::<Vec<u8>>());
            assert_eq!(f.open_uplink(&s, up.fcnt, &params).unwrap(), up);
            // A different full counter with the same 16 LSB fails.
            assert_eq!(
                f.open_uplink(&s, up.fcnt + 0x1_0000, &params),
                Err(OpenError::MicMismatch)
            );
        }
    }

    #[test]
    fn build_refuses_what_a7_forbids() {
        let s = keys_1_0();
        let p = UplinkMicParams::default();
        let mac0 = FramePayload::MacCommands(FrmPayload(vec![2]));
        assert_eq!(
            uplink(mac0, vec![2]).build(&s, &p),
            Err(BuildError::FOptsWithFPort0)
        );
        let app0 = FramePayload::Application {
            f_port: 0,
            payload: FrmPayload(vec![1]),
        };
        assert_eq!(
            uplink(app0, vec![]).build(&s, &p).unwrap_err().kind(),
            "application_on_fport0"
        );
        assert_eq!(
            uplink(FramePayload::None, vec![0; 16]).build(&s, &p),
            Err(BuildError::FOptsTooLong(16))
        );
        let big = FramePayload::Application {
            f_port: 1,
            payload: FrmPayload(vec![0; 247]),
        };
        assert_eq!(
            uplink(big, vec![]).build(&s, &p),
            Err(BuildError::TooLong(260))
        );
        let no_app = SessionCrypto {
            app: None,
            ..keys_1_0()
        };
        let app = FramePayload::Application {
            f_port: 1,
            payload: FrmPayload(vec![1]),
        };
        assert_eq!(
            uplink(app, vec![]).build(&no_app, &p),
            Err(BuildError::MissingAppSKey)
        );
    }

    #[test]
    fn parse_refuses_malformed_frames() {
        assert_eq!(DataFrame::parse(&[0x40; 11]), Err(ParseError::TooShort(11)));
        assert_eq!(
            DataFrame::parse(&[0x40; 260]).unwrap_err().kind(),
            "too_long"
        );
        let mut f = hex::decode("400403020180010001a694642615d6c3b582").unwrap();
        f[0] = 0x41;
        assert_eq!(DataFrame::parse(&f), Err(ParseError::UnsupportedMajor(1)));
        f[0] = 0x00;
        assert_eq!(
            DataFrame::parse(&f),
            Err(ParseError::NotDataFrame(MType::JoinRequest))
        );
        // FOptsLen 15 in a 12-byte frame.
        let short = hex::decode("40040302010f0000d6c3b582").unwrap();
        assert_eq!(
            DataFrame::parse(&short).unwrap_err().kind(),
            "fopts_truncated"
        );
        // FOptsLen 1 and FPort 0.
        let both = hex::decode("400403020101000002006969d6c3b582").unwrap();
        assert_eq!(DataFrame::parse(&both), Err(ParseError::FOptsWithFPort0));
    }

    #[test]
    fn downlink_roundtrip_and_conf_fcnt_only_with_ack() {
        for s in [keys_1_0(), keys_1_1()] {
            for ack in [false, true] {
                let d = Downlink {
                    confirmed: false,
                    dev_addr: DevAddr::new(0x2600_0001),
                    fcnt: 5,
                    adr: true,
                    ack,
                    f_pending: true,
                    fopts: vec![0x02, 7, 1],
                    payload: FramePayload::Application {
                        f_port: 3,
                        payload: FrmPayload(b"on".to_vec()),
                    },
                };
                let a = d.build(&s, 77).unwrap();
                let f = DataFrame::parse(&a).unwrap();
                assert_eq!(f.open_downlink(&s, 5, 77).unwrap(), d);
                let other = d.build(&s, 78).unwrap();
                // ConfFCnt changes the 1.1 MIC only when ACK is set.
                assert_eq!(a == other, !(ack && s.network.is_1_1()));
                assert_eq!(
                    f.open_uplink(&s, 5, &UplinkMicParams::default()),
                    Err(OpenError::WrongDirection {
                        expected: Direction::Uplink
                    })
                );
            }
        }
    }

    #[test]
    fn debug_does_not_show_keys() {
        let s = format!("{:?}", keys_1_1());
        assert!(s.contains("redacted"));
        assert!(!s.contains("0505"), "{s}");
        assert!(!s.contains("[5, 5"), "{s}");
    }
}
