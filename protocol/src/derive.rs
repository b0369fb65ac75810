//! Session-key derivation for LoRaWAN 1.0.x and 1.1 (protocol-notes A.5).
//!
//! Every key is `aes128_encrypt(root, type | fields | zero padding)` with little-endian fields.
//! The root keys come in prepared ([`KeyCipher`]) so a join expands each root key once.
//!
//! Written by hand rather than with `lorawan`'s `derive_newskey`/`derive_appskey`: those are
//! methods of its *decrypted Join-accept* (the device side), so the join server, which holds
//! only the plaintext fields it is about to send, cannot call them; they also take the key as a
//! copy in `lorawan`'s non-zeroized `AES128` type and expand its schedule per key. `lorawan` 0.9
//! has no LoRaWAN 1.1 derivation at all.

use crate::ids::{DevEui, DevNonce, JoinEui, JoinNonce, NetId};
use crate::join::AnsweredRequest;
use crate::keys::{
    AppKey, AppSKey, FNwkSIntKey, JsEncKey, JsIntKey, KeyCipher, NwkKey, NwkSEncKey, NwkSKey,
    SNwkSIntKey,
};

/// The session keys of a LoRaWAN 1.0.x device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionKeys10 {
    /// NwkSKey.
    pub nwk_s_key: NwkSKey,
    /// AppSKey.
    pub app_s_key: AppSKey,
}

/// The session keys of a LoRaWAN 1.1 device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionKeys11 {
    /// FNwkSIntKey.
    pub f_nwk_s_int_key: FNwkSIntKey,
    /// SNwkSIntKey.
    pub s_nwk_s_int_key: SNwkSIntKey,
    /// NwkSEncKey.
    pub nwk_s_enc_key: NwkSEncKey,
    /// AppSKey.
    pub app_s_key: AppSKey,
}

/// The join server keys of a LoRaWAN 1.1 device, derived from its NwkKey and DevEUI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsKeys {
    /// JSIntKey: Join-accept MIC with OptNeg, Rejoin type 1 MIC.
    pub js_int_key: JsIntKey,
    /// JSEncKey: encrypts a Join-accept answering a Rejoin-request.
    pub js_enc_key: JsEncKey,
}

/// The network session keys the network server holds, for either version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkSessionKeys {
    /// LoRaWAN 1.0.x: one NwkSKey.
    V1_0 {
        /// NwkSKey.
        nwk_s_key: NwkSKey,
    },
    /// LoRaWAN 1.1 (for a 1.1 device joined with OptNeg = 0 the three keys are equal).
    V1_1 {
        /// FNwkSIntKey.
        f_nwk_s_int_key: FNwkSIntKey,
        /// SNwkSIntKey.
        s_nwk_s_int_key: SNwkSIntKey,
        /// NwkSEncKey.
        nwk_s_enc_key: NwkSEncKey,
    },
}

impl NetworkSessionKeys {
    /// FNwkSIntKey; for 1.0.x the NwkSKey, which is equivalent (protocol-notes A.5).
    pub fn f_nwk_s_int_key(&self) -> FNwkSIntKey {
        match self {
            Self::V1_0 { nwk_s_key } => FNwkSIntKey::new(*nwk_s_key.expose()),
            Self::V1_1 {
                f_nwk_s_int_key, ..
            } => f_nwk_s_int_key.clone(),
        }
    }
    /// SNwkSIntKey; for 1.0.x the NwkSKey.
    pub fn s_nwk_s_int_key(&self) -> SNwkSIntKey {
        match self {
            Self::V1_0 { nwk_s_key } => SNwkSIntKey::new(*nwk_s_key.expose()),
            Self::V1_1 {
                s_nwk_s_int_key, ..
            } => s_nwk_s_int_key.clone(),
        }
    }
    /// NwkSEncKey; for 1.0.x the NwkSKey.
    pub fn nwk_s_enc_key(&self) -> NwkSEncKey {
        match self {
            Self::V1_0 { nwk_s_key } => NwkSEncKey::new(*nwk_s_key.expose()),
            Self::V1_1 { nwk_s_enc_key, .. } => nwk_s_enc_key.clone(),
        }
    }
}

/// The session keys of either version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionKeys {
    /// LoRaWAN 1.0.x.
    V1_0(SessionKeys10),
    /// LoRaWAN 1.1 (OptNeg = 1, or a 1.1 device joined with OptNeg = 0).
    V1_1(SessionKeys11),
}

impl SessionKeys {
    /// Splits into what the network server holds and what the application server holds.
    pub fn into_parts(self) -> (NetworkSessionKeys, AppSKey) {
        match self {
            Self::V1_0(k) => (
                NetworkSessionKeys::V1_0 {
                    nwk_s_key: k.nwk_s_key,
                },
                k.app_s_key,
            ),
            Self::V1_1(k) => (
                NetworkSessionKeys::V1_1 {
                    f_nwk_s_int_key: k.f_nwk_s_int_key,
                    s_nwk_s_int_key: k.s_nwk_s_int_key,
                    nwk_s_enc_key: k.nwk_s_enc_key,
                },
                k.app_s_key,
            ),
        }
    }
}

/// `type | JoinNonce | NetID | DevNonce | pad16` (1.0 layout).
fn block_1_0(key_type: u8, join_nonce: JoinNonce, net_id: NetId, dev_nonce: DevNonce) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = key_type;
    b[1..4].copy_from_slice(&join_nonce.to_le_bytes());
    b[4..7].copy_from_slice(&net_id.to_le_bytes());
    b[7..9].copy_from_slice(&dev_nonce.to_le_bytes());
    b
}

/// `type | JoinNonce | JoinEUI | DevNonce-or-RJcount | pad16` (1.1 layout).
fn block_1_1(key_type: u8, join_nonce: JoinNonce, join_eui: JoinEui, nonce: [u8; 2]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = key_type;
    b[1..4].copy_from_slice(&join_nonce.to_le_bytes());
    b[4..12].copy_from_slice(&join_eui.to_le_bytes());
    b[12..14].copy_from_slice(&nonce);
    b
}

/// Encrypts two derivation blocks with one prepared key in a single ECB call.
fn derive_pair(
    root: &crate::crypto::KeySchedule,
    a: [u8; 16],
    b: [u8; 16],
) -> ([u8; 16], [u8; 16]) {
    let mut buf = [0u8; 32];
    buf[..16].copy_from_slice(&a);
    buf[16..].copy_from_slice(&b);
    root.encrypt_blocks(&mut buf);
    let mut x = [0u8; 16];
    let mut y = [0u8; 16];
    x.copy_from_slice(&buf[..16]);
    y.copy_from_slice(&buf[16..]);
    zeroize::Zeroize::zeroize(&mut buf);
    (x, y)
}

/// LoRaWAN 1.0.x: NwkSKey (type 0x01) and AppSKey (type 0x02) from the AppKey.
pub fn session_keys_1_0(
    app_key: &KeyCipher<AppKey>,
    join_nonce: JoinNonce,
    net_id: NetId,
    dev_nonce: DevNonce,
) -> SessionKeys10 {
    let (nwk, app) = derive_pair(
        &app_key.schedule,
        block_1_0(0x01, join_nonce, net_id, dev_nonce),
        block_1_0(0x02, join_nonce, net_id, dev_nonce),
    );
    SessionKeys10 {
        nwk_s_key: NwkSKey::new(nwk),
        app_s_key: AppSKey::new(app),
    }
}

/// A LoRaWAN 1.1 device joined with OptNeg = 0 (to a 1.0 network): the 1.0 formulas with the
/// **NwkKey** as root; FNwkSIntKey = type 0x01, AppSKey = type 0x02, and
/// SNwkSIntKey = NwkSEncKey = FNwkSIntKey.
pub fn session_keys_1_1_opt_neg_0(
    nwk_key: &KeyCipher<NwkKey>,
    join_nonce: JoinNonce,
    net_id: NetId,
    dev_nonce: DevNonce,
) -> SessionKeys11 {
    let (nwk, app) = derive_pair(
        &nwk_key.schedule,
        block_1_0(0x01, join_nonce, net_id, dev_nonce),
        block_1_0(0x02, join_nonce, net_id, dev_nonce),
    );
    SessionKeys11 {
        f_nwk_s_int_key: FNwkSIntKey::new(nwk),
        s_nwk_s_int_key: SNwkSIntKey::new(nwk),
        nwk_s_enc_key: NwkSEncKey::new(nwk),
        app_s_key: AppSKey::new(app),
    }
}

/// LoRaWAN 1.1 with OptNeg = 1: FNwkSIntKey (0x01), SNwkSIntKey (0x03) and NwkSEncKey (0x04)
/// from the NwkKey, AppSKey (0x02) from the AppKey, over JoinNonce, JoinEUI and the DevNonce
/// (or, answering a Rejoin-request, its RJcount).
pub fn session_keys_1_1(
    nwk_key: &KeyCipher<NwkKey>,
    app_key: &KeyCipher<AppKey>,
    join_nonce: JoinNonce,
    join_eui: JoinEui,
    answered: AnsweredRequest,
) -> SessionKeys11 {
    let nonce = answered.nonce_le_bytes();
    let mut net = [0u8; 48];
    net[..16].copy_from_slice(&block_1_1(0x01, join_nonce, join_eui, nonce));
    net[16..32].copy_from_slice(&block_1_1(0x03, join_nonce, join_eui, nonce));
    net[32..].copy_from_slice(&block_1_1(0x04, join_nonce, join_eui, nonce));
    nwk_key.schedule.encrypt_blocks(&mut net);
    let mut app = block_1_1(0x02, join_nonce, join_eui, nonce);
    app_key.schedule.encrypt_blocks(&mut app);
    let mut f = [0u8; 16];
    let mut s = [0u8; 16];
    let mut e = [0u8; 16];
    f.copy_from_slice(&net[..16]);
    s.copy_from_slice(&net[16..32]);
    e.copy_from_slice(&net[32..]);
    zeroize::Zeroize::zeroize(&mut net);
    let keys = SessionKeys11 {
        f_nwk_s_int_key: FNwkSIntKey::new(f),
        s_nwk_s_int_key: SNwkSIntKey::new(s),
        nwk_s_enc_key: NwkSEncKey::new(e),
        app_s_key: AppSKey::new(app),
    };
    zeroize::Zeroize::zeroize(&mut app);
    keys
}

/// LoRaWAN 1.1 join server keys: JSEncKey (0x05) and JSIntKey (0x06) from the NwkKey over the
/// DevEUI.
pub fn js_keys(nwk_key: &KeyCipher<NwkKey>, dev_eui: DevEui) -> JsKeys {
    let block = |t: u8| {
        let mut b = [0u8; 16];
        b[0] = t;
        b[1..9].copy_from_slice(&dev_eui.to_le_bytes());
        b
    };
    let (int, enc) = derive_pair(&nwk_key.schedule, block(0x06), block(0x05));
    JsKeys {
        js_int_key: JsIntKey::new(int),
        js_enc_key: JsEncKey::new(enc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_blocks_have_the_documented_layout() {
        // sk-rust-lorawan-10 and sk-tts-legacy input blocks.
        let b = block_1_0(
            0x01,
            JoinNonce::new(5_704_647).unwrap(),
            NetId::new(0x221101).unwrap(),
            DevNonce(4141),
        );
        assert_eq!(hex::encode(b), "01c70b570111222d1000000000000000");
        let b = block_1_1(
            0x03,
            JoinNonce::new(0x010000).unwrap(),
            "0807060504030201".parse().unwrap(),
            DevNonce(258).to_le_bytes(),
        );
        assert_eq!(hex::encode(b), "03000001010203040506070802010000");
    }

    #[test]
    fn network_keys_of_1_0_are_the_nwk_s_key_in_every_role() {
        let k = NwkSKey::new([9; 16]);
        let (net, app) = SessionKeys::V1_0(SessionKeys10 {
            nwk_s_key: k.clone(),
            app_s_key: AppSKey::new([8; 16]),
        })
        .into_parts();
        assert_eq!(app, AppSKey::new([8; 16]));
        assert_eq!(net, NetworkSessionKeys::V1_0 { nwk_s_key: k });
        assert_eq!(net.f_nwk_s_int_key().expose(), &[9; 16]);
        assert_eq!(net.s_nwk_s_int_key().expose(), &[9; 16]);
        assert_eq!(net.nwk_s_enc_key().expose(), &[9; 16]);
    }

    #[test]
    fn opt_neg_0_network_keys_are_equal_and_rooted_in_nwk_key() {
        let root = [0x42; 16];
        let (n, d, j) = (
            JoinNonce::new(3).unwrap(),
            DevNonce(7),
            NetId::new(0x13).unwrap(),
        );
        let k = session_keys_1_1_opt_neg_0(&KeyCipher::new(&NwkKey::new(root)), n, j, d);
        let as_1_0 = session_keys_1_0(&KeyCipher::new(&AppKey::new(root)), n, j, d);
        assert_eq!(k.f_nwk_s_int_key.expose(), as_1_0.nwk_s_key.expose());
        assert_eq!(k.s_nwk_s_int_key.expose(), as_1_0.nwk_s_key.expose());
        assert_eq!(k.nwk_s_enc_key.expose(), as_1_0.nwk_s_key.expose());
        assert_eq!(k.app_s_key, as_1_0.app_s_key);
    }
}
