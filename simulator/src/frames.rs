//! Device-side LoRaWAN frames: the one place where the simulator calls the `protocol` crate's
//! crypto (Join-request MIC, Join-accept decryption and MIC, session-key derivation, data-frame
//! encryption and MICs). The device state machine works with the plain results.
//!
//! Keys are kept raw in the fleet (16 bytes each) and expanded per frame: a million devices with
//! their AES key schedules expanded would need over a gigabyte.

use protocol::data::{
    DataFrame, Direction, FramePayload, FrmPayload, NetworkSessionKeys, SessionCrypto, Uplink,
    UplinkMicParams,
};
use protocol::derive::{js_keys, session_keys_1_0, session_keys_1_1, session_keys_1_1_opt_neg_0};
use protocol::ids::{DevAddr, DevEui, DevNonce, JoinEui, JoinNonce, NetId};
use protocol::join::{
    AnsweredRequest, EncryptedJoinAccept, JoinAcceptEncKey, JoinAcceptMicKey, JoinAcceptPayload,
    JoinRequest, JoinRootKey,
};
use protocol::keys::{
    AppKey, AppSKey, FNwkSIntKey, KeyCipher, NwkKey, NwkSEncKey, NwkSKey, SNwkSIntKey,
};
use protocol::phy::{MType, Mhdr};
use protocol::version::MacVersion;

/// What a device is provisioned with.
#[derive(Clone, Debug)]
pub struct Identity {
    /// DevEUI.
    pub dev_eui: DevEui,
    /// JoinEUI.
    pub join_eui: JoinEui,
    /// MAC version.
    pub version: MacVersion,
    /// AppKey.
    pub app_key: AppKey,
    /// NwkKey (1.1 only).
    pub nwk_key: Option<NwkKey>,
}

/// Session keys as the device derived them.
#[derive(Clone, Debug)]
pub enum Keys {
    /// A 1.0.x session, or a 1.1 device that joined with OptNeg = 0.
    V1_0 {
        /// NwkSKey (= FNwkSIntKey = SNwkSIntKey = NwkSEncKey).
        nwk_s_key: NwkSKey,
        /// AppSKey.
        app_s_key: AppSKey,
    },
    /// A 1.1 session with OptNeg = 1.
    V1_1 {
        /// FNwkSIntKey.
        f: FNwkSIntKey,
        /// SNwkSIntKey.
        s: SNwkSIntKey,
        /// NwkSEncKey.
        e: NwkSEncKey,
        /// AppSKey.
        app_s_key: AppSKey,
    },
}

impl Keys {
    fn crypto(&self) -> SessionCrypto {
        match self {
            Keys::V1_0 {
                nwk_s_key,
                app_s_key,
            } => SessionCrypto::new(
                &NetworkSessionKeys::V1_0 {
                    nwk_s_key: nwk_s_key.clone(),
                },
                Some(app_s_key),
            ),
            Keys::V1_1 { f, s, e, app_s_key } => SessionCrypto::new(
                &NetworkSessionKeys::V1_1 {
                    f_nwk_s_int_key: f.clone(),
                    s_nwk_s_int_key: s.clone(),
                    nwk_s_enc_key: e.clone(),
                },
                Some(app_s_key),
            ),
        }
    }
}

/// Builds the 23-byte Join-request (MIC under AppKey for 1.0.x, NwkKey for 1.1).
pub fn join_request(id: &Identity, dev_nonce: DevNonce) -> [u8; 23] {
    match (&id.nwk_key, id.version.is_1_1()) {
        (Some(nwk), true) => {
            let k = KeyCipher::new(nwk);
            JoinRequest::build(id.join_eui, id.dev_eui, dev_nonce, JoinRootKey::NwkKey(&k))
                .to_bytes()
        }
        _ => {
            let k = KeyCipher::new(&id.app_key);
            JoinRequest::build(id.join_eui, id.dev_eui, dev_nonce, JoinRootKey::AppKey(&k))
                .to_bytes()
        }
    }
}

/// A Join-accept the device has decrypted and authenticated.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// JoinNonce.
    pub join_nonce: JoinNonce,
    /// The network's NetID.
    pub net_id: NetId,
    /// The assigned DevAddr.
    pub dev_addr: DevAddr,
    /// OptNeg (1.1 device on a 1.1 network).
    pub opt_neg: bool,
    /// RX1 data-rate offset.
    pub rx1_dr_offset: u8,
    /// RX2 data rate.
    pub rx2_dr: u8,
    /// RX1 delay in seconds (1..=15).
    pub rx1_delay_s: u8,
    /// The CFList, if the Join-accept carries one.
    pub cf_list: Option<protocol::join::CfList>,
    /// The derived session keys.
    pub keys: Keys,
}

/// Why a device refused a Join-accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    /// Wrong length or MHDR.
    #[error("malformed join-accept")]
    Malformed,
    /// The MIC did not verify.
    #[error("join-accept MIC mismatch")]
    Mic,
    /// 1.1: JoinNonce not greater than the last one accepted.
    #[error("join-accept JoinNonce {got} not greater than {last}")]
    JoinNonce {
        /// Received.
        got: u32,
        /// Last accepted.
        last: u32,
    },
}

impl AcceptError {
    /// Short stable label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Mic => "mic",
            Self::JoinNonce { .. } => "join_nonce",
        }
    }
}

/// Device side: decrypts a Join-accept answering the Join-request with `dev_nonce`, checks its
/// MIC (1.0 formula, or for 1.1 the OptNeg formula under JSIntKey when OptNeg is set), checks
/// JoinNonce (1.1: strictly greater than `last_join_nonce`) and derives the session keys.
pub fn open_join_accept(
    id: &Identity,
    phy: &[u8],
    dev_nonce: DevNonce,
    last_join_nonce: Option<u32>,
) -> Result<Accepted, AcceptError> {
    let enc = EncryptedJoinAccept::from_bytes(phy).map_err(|_| AcceptError::Malformed)?;
    let app = KeyCipher::new(&id.app_key);
    let opened = match (&id.nwk_key, id.version.is_1_1()) {
        (Some(nwk_key), true) => open_1_1(id, &enc, &KeyCipher::new(nwk_key), &app, dev_nonce)?,
        _ => open_1_0(&enc, &app, dev_nonce)?,
    };
    let (payload, keys, opt_neg) = opened;
    if id.version.is_1_1() {
        if let Some(last) = last_join_nonce {
            if p_join_nonce(&payload) <= last {
                return Err(AcceptError::JoinNonce {
                    got: p_join_nonce(&payload),
                    last,
                });
            }
        }
    }
    Ok(Accepted {
        join_nonce: payload.join_nonce,
        net_id: payload.net_id,
        dev_addr: payload.dev_addr,
        opt_neg,
        rx1_dr_offset: payload.dl_settings.rx1_dr_offset(),
        rx2_dr: payload.dl_settings.rx2_data_rate(),
        rx1_delay_s: payload.rx_delay.seconds(),
        cf_list: payload.cf_list,
        keys,
    })
}

/// A Join-accept's plaintext, the session keys derived from it, and its OptNeg bit.
type Opened = (JoinAcceptPayload, Keys, bool);

/// A LoRaWAN 1.0 device (or a 1.1 device without a NwkKey): decrypted and MIC-checked under
/// AppKey, the 1.0 session keys.
fn open_1_0(
    enc: &EncryptedJoinAccept,
    app: &KeyCipher<AppKey>,
    dev_nonce: DevNonce,
) -> Result<Opened, AcceptError> {
    let d = enc.decrypt(JoinAcceptEncKey::AppKey(app));
    d.verify_mic(JoinAcceptMicKey::Legacy(JoinRootKey::AppKey(app)))
        .map_err(|_| AcceptError::Mic)?;
    let p = d.payload;
    let k = session_keys_1_0(app, p.join_nonce, p.net_id, dev_nonce);
    let keys = Keys::V1_0 {
        nwk_s_key: k.nwk_s_key,
        app_s_key: k.app_s_key,
    };
    Ok((p, keys, false))
}

/// A LoRaWAN 1.1 device: decrypted under NwkKey; with OptNeg set, MIC-checked under JSIntKey
/// and the 1.1 session keys, otherwise MIC-checked under NwkKey and the 1.0-style keys a 1.1
/// device derives for a 1.0 network.
fn open_1_1(
    id: &Identity,
    enc: &EncryptedJoinAccept,
    nwk: &KeyCipher<NwkKey>,
    app: &KeyCipher<AppKey>,
    dev_nonce: DevNonce,
) -> Result<Opened, AcceptError> {
    let d = enc.decrypt(JoinAcceptEncKey::NwkKey(nwk));
    let p = d.payload;
    if !p.dl_settings.opt_neg() {
        d.verify_mic(JoinAcceptMicKey::Legacy(JoinRootKey::NwkKey(nwk)))
            .map_err(|_| AcceptError::Mic)?;
        let k = session_keys_1_1_opt_neg_0(nwk, p.join_nonce, p.net_id, dev_nonce);
        let keys = Keys::V1_0 {
            nwk_s_key: NwkSKey::new(*k.f_nwk_s_int_key.expose()),
            app_s_key: k.app_s_key,
        };
        return Ok((p, keys, false));
    }
    let js = js_keys(nwk, id.dev_eui);
    let js_int = KeyCipher::new(&js.js_int_key);
    let answered = AnsweredRequest::JoinRequest(dev_nonce);
    d.verify_mic(JoinAcceptMicKey::OptNeg {
        js_int_key: &js_int,
        join_eui: id.join_eui,
        answered,
    })
    .map_err(|_| AcceptError::Mic)?;
    let k = session_keys_1_1(nwk, app, p.join_nonce, id.join_eui, answered);
    let keys = Keys::V1_1 {
        f: k.f_nwk_s_int_key,
        s: k.s_nwk_s_int_key,
        e: k.nwk_s_enc_key,
        app_s_key: k.app_s_key,
    };
    Ok((p, keys, true))
}

/// Device side: a LoRaWAN 1.1 Rejoin-request of type 0 or 2 (`rejoin_type`) with `rj_count0`,
/// signed with the session's SNwkSIntKey; `None` for a session without one (1.0 keys).
pub fn rejoin_request(
    id: &Identity,
    keys: &Keys,
    net_id: NetId,
    rejoin_type: u8,
    rj_count0: u16,
) -> Option<Vec<u8>> {
    use protocol::join::{RejoinBody, RejoinMicKey, RejoinRequest};
    let Keys::V1_1 { s, .. } = keys else {
        return None;
    };
    let body = RejoinBody::type_0_or_2(rejoin_type, net_id, id.dev_eui, rj_count0);
    let key = KeyCipher::new(s);
    RejoinRequest::build(body, RejoinMicKey::SNwkSIntKey(&key))
        .ok()
        .map(|r| r.to_bytes())
}

/// Device side: a Join-accept answering the device's Rejoin-request `answered` (type 0 or 2
/// with its RJcount0): decrypted with JSEncKey, its MIC checked under JSIntKey over the rejoin
/// type, JoinEUI and RJcount, JoinNonce above `last_join_nonce`, and the keys derived with the
/// RJcount in the DevNonce's place (LoRaWAN 1.1 §6.2.3).
pub fn open_rejoin_accept(
    id: &Identity,
    phy: &[u8],
    answered: AnsweredRequest,
    last_join_nonce: Option<u32>,
) -> Result<Accepted, AcceptError> {
    let enc = EncryptedJoinAccept::from_bytes(phy).map_err(|_| AcceptError::Malformed)?;
    let Some(nwk_key) = &id.nwk_key else {
        return Err(AcceptError::Mic);
    };
    let nwk = KeyCipher::new(nwk_key);
    let js = js_keys(&nwk, id.dev_eui);
    let (js_int, js_enc) = (
        KeyCipher::new(&js.js_int_key),
        KeyCipher::new(&js.js_enc_key),
    );
    let p = enc
        .open(
            JoinAcceptEncKey::JsEncKey(&js_enc),
            JoinAcceptMicKey::OptNeg {
                js_int_key: &js_int,
                join_eui: id.join_eui,
                answered,
            },
        )
        .map_err(|_| AcceptError::Mic)?;
    if let Some(last) = last_join_nonce.filter(|&l| p.join_nonce.as_u32() <= l) {
        return Err(AcceptError::JoinNonce {
            got: p.join_nonce.as_u32(),
            last,
        });
    }
    let app = KeyCipher::new(&id.app_key);
    let k = session_keys_1_1(&nwk, &app, p.join_nonce, id.join_eui, answered);
    Ok(Accepted {
        join_nonce: p.join_nonce,
        net_id: p.net_id,
        dev_addr: p.dev_addr,
        opt_neg: true,
        rx1_dr_offset: p.dl_settings.rx1_dr_offset(),
        rx2_dr: p.dl_settings.rx2_data_rate(),
        rx1_delay_s: p.rx_delay.seconds(),
        cf_list: p.cf_list,
        keys: Keys::V1_1 {
            f: k.f_nwk_s_int_key,
            s: k.s_nwk_s_int_key,
            e: k.nwk_s_enc_key,
            app_s_key: k.app_s_key,
        },
    })
}

fn p_join_nonce(p: &JoinAcceptPayload) -> u32 {
    p.join_nonce.as_u32()
}

/// What goes into one data uplink.
#[derive(Clone, Debug)]
pub struct UplinkSpec<'a> {
    /// DevAddr.
    pub dev_addr: DevAddr,
    /// Full 32-bit FCntUp.
    pub fcnt: u32,
    /// Confirmed data up.
    pub confirmed: bool,
    /// ACK of a confirmed downlink, with that downlink's FCnt (1.1 ConfFCnt).
    pub ack: Option<u32>,
    /// MAC commands in FOpts (≤ 15 bytes).
    pub fopts: &'a [u8],
    /// FPort (≥ 1).
    pub f_port: u8,
    /// Application payload (plaintext).
    pub payload: &'a [u8],
    /// Data rate index (1.1 TxDr).
    pub tx_dr: u8,
    /// Channel index (1.1 TxCh).
    pub tx_ch: u8,
}

/// Builds an encrypted, MIC'd data uplink.
pub fn build_uplink(keys: &Keys, u: &UplinkSpec<'_>) -> Result<Vec<u8>, String> {
    let up = Uplink {
        confirmed: u.confirmed,
        dev_addr: u.dev_addr,
        fcnt: u.fcnt,
        adr: false,
        adr_ack_req: false,
        ack: u.ack.is_some(),
        class_b: false,
        fopts: u.fopts.to_vec(),
        payload: FramePayload::Application {
            f_port: u.f_port,
            payload: FrmPayload(u.payload.to_vec()),
        },
    };
    up.build(
        &keys.crypto(),
        &UplinkMicParams {
            conf_fcnt: u.ack.unwrap_or(0),
            tx_dr: u.tx_dr,
            tx_ch: u.tx_ch,
        },
    )
    .map_err(|e| e.to_string())
}

/// A data downlink the device authenticated and decrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// Confirmed data down (the device must ACK it in its next uplink).
    pub confirmed: bool,
    /// ACK of the device's last confirmed uplink.
    pub ack: bool,
    /// Full 32-bit FCntDown.
    pub fcnt: u32,
    /// Whether the frame used the 1.1 AFCntDown (FPort > 0) rather than NFCntDown.
    pub app_counter: bool,
    /// MAC commands (from FOpts or an FPort 0 payload), plaintext.
    pub mac: Vec<u8>,
}

/// Why a device dropped a data downlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DownlinkError {
    /// Not a data downlink, or malformed.
    #[error("malformed data downlink")]
    Malformed,
    /// For another DevAddr.
    #[error("downlink for another DevAddr")]
    OtherDevice,
    /// MIC mismatch.
    #[error("downlink MIC mismatch")]
    Mic,
    /// FCnt not greater than the last one received.
    #[error("downlink FCnt replayed")]
    Replay,
}

/// The full 32-bit counter of a received 16-bit FCnt, given the last one received (`None`
/// right after a join): `protocol::fcnt::infer_fcnt` with next = last + 1.
pub fn infer_fcnt(last: Option<u32>, fcnt16: u16) -> u32 {
    protocol::fcnt::infer_fcnt(last.map_or(0, |l| l.wrapping_add(1)), fcnt16)
}

/// Device side: opens a data downlink. `last_n`/`last_a` are the last NFCntDown / AFCntDown
/// received (1.0 uses `last_n` only); `conf_fcnt` is the FCnt of the confirmed uplink it may ACK.
pub fn open_downlink(
    keys: &Keys,
    dev_addr: DevAddr,
    phy: &[u8],
    last_n: Option<u32>,
    last_a: Option<u32>,
    conf_fcnt: u32,
) -> Result<Received, DownlinkError> {
    let f = DataFrame::parse(phy).map_err(|_| DownlinkError::Malformed)?;
    if f.direction() != Direction::Downlink {
        return Err(DownlinkError::Malformed);
    }
    if f.dev_addr() != dev_addr {
        return Err(DownlinkError::OtherDevice);
    }
    let v11 = matches!(keys, Keys::V1_1 { .. });
    let app_counter = v11 && f.f_port().is_some_and(|p| p > 0);
    let last = if app_counter { last_a } else { last_n };
    let fcnt = infer_fcnt(last, f.fcnt16());
    if last.is_some_and(|l| fcnt <= l) {
        return Err(DownlinkError::Replay);
    }
    let d = f
        .open_downlink(&keys.crypto(), fcnt, conf_fcnt)
        .map_err(|_| DownlinkError::Mic)?;
    let mut mac = d.fopts;
    if let FramePayload::MacCommands(p) = d.payload {
        mac.extend_from_slice(&p.0);
    }
    Ok(Received {
        confirmed: d.confirmed,
        ack: d.ack,
        fcnt,
        app_counter,
        mac,
    })
}

/// Whether a PHYPayload is a Join-accept (by its MHDR).
pub fn is_join_accept(phy: &[u8]) -> bool {
    phy.first()
        .is_some_and(|&b| Mhdr(b).mtype() == MType::JoinAccept)
}

/// The DevAddr of a data frame, read from its FHDR without any check.
pub fn peek_dev_addr(phy: &[u8]) -> Option<DevAddr> {
    if phy.len() < 12 {
        return None;
    }
    Some(DevAddr::from_le_bytes([phy[1], phy[2], phy[3], phy[4]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fcnt_inference() {
        assert_eq!(infer_fcnt(None, 0), 0);
        assert_eq!(infer_fcnt(None, 5), 5);
        assert_eq!(infer_fcnt(Some(4), 5), 5);
        assert_eq!(infer_fcnt(Some(0xFFFF), 0), 0x1_0000);
        assert_eq!(infer_fcnt(Some(0x1_0005), 7), 0x1_0007);
        // A repeat of the last value maps to it, and is then refused as a replay.
        assert_eq!(infer_fcnt(Some(9), 9), 9);
    }
}
