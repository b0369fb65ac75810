//! `SessionKeyID` and `AppSKeyReq`, sans IO.
//!
//! A `SessionKeyID` names a device's session so that an application server can fetch its AppSKey
//! later. It carries what derives the key, never a key: a format byte, the NetID the join came
//! through, the JoinNonce and the DevNonce (9 bytes). An `AppSKeyReq` is answered only for the
//! device's latest session (the nonces the store holds) through its home network, so the join
//! server derives no key for inputs a caller chose, and keeps no session keys.

use std::sync::Arc;

use protocol::ids::{DevEui, DevNonce, JoinNonce, NetId};
use protocol::keys::AppSKey;
use protocol::ts002::ResultCode;

use crate::core::DeviceMap;

/// The format byte of the `SessionKeyID`s this join server writes.
const FORMAT: u8 = 1;

/// A session, as its `SessionKeyID` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionKeyId {
    /// The network the join came through.
    pub net_id: NetId,
    /// The JoinNonce of its Join-accept.
    pub join_nonce: JoinNonce,
    /// The DevNonce of its Join-request.
    pub dev_nonce: DevNonce,
}

impl SessionKeyId {
    /// The 9 bytes: format, NetID, JoinNonce (both MSB first), DevNonce (MSB first).
    pub fn to_bytes(self) -> Vec<u8> {
        let mut b = vec![FORMAT];
        b.extend_from_slice(&self.net_id.as_u32().to_be_bytes()[1..]);
        b.extend_from_slice(&self.join_nonce.as_u32().to_be_bytes()[1..]);
        b.extend_from_slice(&self.dev_nonce.0.to_be_bytes());
        b
    }

    /// Reads [`Self::to_bytes`]'s form; `None` for anything else.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let [FORMAT, n0, n1, n2, j0, j1, j2, d0, d1] = *b else {
            return None;
        };
        Some(Self {
            net_id: NetId::new(u32::from_be_bytes([0, n0, n1, n2]))?,
            join_nonce: JoinNonce::new(u32::from_be_bytes([0, j0, j1, j2]))?,
            dev_nonce: DevNonce(u16::from_be_bytes([d0, d1])),
        })
    }
}

/// Why an `AppSKeyReq` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppSKeyError {
    /// No such device.
    #[error("unknown device")]
    UnknownDevEui,
    /// The `SessionKeyID` is not the device's current session.
    #[error("SessionKeyID is not the device's current session")]
    UnknownSession,
    /// The caller is not the device's home network.
    #[error("the caller is not the device's home network")]
    NotHome,
}

impl AppSKeyError {
    /// The TS002 1.0 ResultCode.
    pub fn result_code(&self) -> ResultCode {
        match self {
            Self::UnknownDevEui => ResultCode::UnknownDevEui,
            Self::UnknownSession => ResultCode::MalformedRequest,
            Self::NotHome => ResultCode::ActivationDisallowed,
        }
    }

    /// A short stable label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownDevEui => "unknown_dev_eui",
            Self::UnknownSession => "unknown_session",
            Self::NotHome => "activation_disallowed",
        }
    }
}

/// The AppSKey of `dev_eui`'s session `session_key_id` for the peer `caller`, with the device's
/// owner (whose KEK wraps it).
pub fn app_s_key(
    devices: &DeviceMap,
    dev_eui: DevEui,
    session_key_id: &[u8],
    caller: NetId,
) -> Result<(AppSKey, Option<Arc<str>>), AppSKeyError> {
    let d = devices.get(&dev_eui).ok_or(AppSKeyError::UnknownDevEui)?;
    if d.home_net_id != Some(caller) {
        return Err(AppSKeyError::NotHome);
    }
    let id = SessionKeyId::parse(session_key_id).ok_or(AppSKeyError::UnknownSession)?;
    let current = id.net_id == caller
        && d.nonces.last_join_nonce == id.join_nonce.as_u32()
        && d.nonces.last_dev_nonce == Some(id.dev_nonce.0);
    if !current {
        return Err(AppSKeyError::UnknownSession);
    }
    let key = d
        .keys
        .app_s_key(d.join_eui, id.net_id, id.join_nonce, id.dev_nonce);
    Ok((key, d.owner.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_key_ids_round_trip_and_refuse_other_forms() {
        let id = SessionKeyId {
            net_id: NetId::new(0x00_0013).unwrap(),
            join_nonce: JoinNonce::new(0x01_0203).unwrap(),
            dev_nonce: DevNonce(0x0405),
        };
        let b = id.to_bytes();
        assert_eq!(hex::encode(&b), "01000013010203".to_owned() + "0405");
        assert_eq!(SessionKeyId::parse(&b), Some(id));
        assert_eq!(SessionKeyId::parse(&b[..8]), None);
        let mut other = b.clone();
        other[0] = 2;
        assert_eq!(SessionKeyId::parse(&other), None);
        assert_eq!(SessionKeyId::parse(&[]), None);
    }
}
