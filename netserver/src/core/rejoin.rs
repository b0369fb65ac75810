//! Rejoin-requests type 0 and 2 at the network server (LoRaWAN 1.1 §6.2.4): the frame must name
//! this network's NetID, its MIC must verify under the SNwkSIntKey of a session of the device
//! (the current one, or the one a rejoin or join replaced and the device may still use), and its
//! RJcount0 must be above the last one accepted under that session (RJcount0_last; it never
//! wraps). Pure decisions: the shell hands in each candidate session's key and last RJcount0,
//! under that session's lock, and records the new RJcount0 it is told to.
//!
//! Type 1 is not checked here: its MIC is under JSIntKey, which only the join server has; the
//! network server routes it by JoinEUI like a Join-request.

use protocol::ids::NetId;
use protocol::join::{RejoinBody, RejoinMicKey, RejoinRequest};
use protocol::keys::{KeyCipher, SNwkSIntKey};

/// Why a Rejoin-request type 0 or 2 is not forwarded to the join server. Each has a stable
/// metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RejoinRefusal {
    /// The frame names another network (a roaming rejoin: this server is not the device's
    /// home network).
    #[error("rejoin-request for NetID {frame}, this network is {ours}")]
    NetId {
        /// The NetID in the frame.
        frame: NetId,
        /// This network's NetID.
        ours: NetId,
    },
    /// The device has no LoRaWAN 1.1 session here to check the MIC with.
    #[error("no LoRaWAN 1.1 session for the device")]
    NoSession,
    /// No session's SNwkSIntKey verifies the MIC.
    #[error("rejoin-request MIC mismatch")]
    Mic,
    /// RJcount0 is not above the last accepted one: a replay.
    #[error("RJcount0 {got} is not greater than the last accepted {last}")]
    Replayed {
        /// The RJcount0 received.
        got: u16,
        /// The last accepted RJcount0.
        last: u16,
    },
    /// RJcount0 65535: the device stops sending type 0 and 2 before its counter reaches it
    /// (it never wraps, LoRaWAN 1.1 §6.2.4.1).
    #[error("RJcount0 65535 is never sent")]
    Exhausted,
    /// A type 1 handed to the type 0/2 check (the shell routes type 1 elsewhere).
    #[error("rejoin-request type 1 is checked by the join server")]
    Type1,
}

impl RejoinRefusal {
    /// Stable metric label.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::NetId { .. } => "net_id",
            Self::NoSession => "no_session",
            Self::Mic => "mic",
            Self::Replayed { .. } => "rj_count0_replayed",
            Self::Exhausted => "rj_count0_exhausted",
            Self::Type1 => "type_1",
        }
    }
}

/// The NetID and RJcount0 of a type 0 or 2 request.
fn fields(rj: &RejoinRequest) -> Result<(NetId, u16), RejoinRefusal> {
    match rj.body {
        RejoinBody::Type0 {
            net_id, rj_count0, ..
        }
        | RejoinBody::Type2 {
            net_id, rj_count0, ..
        } => Ok((net_id, rj_count0)),
        RejoinBody::Type1 { .. } => Err(RejoinRefusal::Type1),
    }
}

/// The first step, before any session is looked at: the request names this network.
pub fn check_net_id(rj: &RejoinRequest, ours: NetId) -> Result<(), RejoinRefusal> {
    let (frame, _) = fields(rj)?;
    if frame == ours {
        Ok(())
    } else {
        Err(RejoinRefusal::NetId { frame, ours })
    }
}

/// Checks a type 0 or 2 request against one session of the device: its SNwkSIntKey (`None` for
/// a LoRaWAN 1.0 session, which cannot have sent it) and its last accepted RJcount0. On
/// success, returns the RJcount0 the session must record as its last. [`RejoinRefusal::Mic`]
/// means "not this session": the shell tries the next candidate.
pub fn check_against(
    rj: &RejoinRequest,
    s_nwk_s_int_key: Option<&KeyCipher<SNwkSIntKey>>,
    last_rj_count0: Option<u16>,
) -> Result<u16, RejoinRefusal> {
    let (_, got) = fields(rj)?;
    let key = s_nwk_s_int_key.ok_or(RejoinRefusal::NoSession)?;
    rj.verify_mic(RejoinMicKey::SNwkSIntKey(key))
        .map_err(|_| RejoinRefusal::Mic)?;
    match last_rj_count0 {
        Some(last) if got <= last => Err(RejoinRefusal::Replayed { got, last }),
        _ if got == u16::MAX => Err(RejoinRefusal::Exhausted),
        _ => Ok(got),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ids::{DevEui, JoinEui};

    fn key(b: u8) -> KeyCipher<SNwkSIntKey> {
        KeyCipher::new(&SNwkSIntKey::new([b; 16]))
    }

    fn net(n: u32) -> NetId {
        NetId::new(n).unwrap()
    }

    fn request(t: u8, net_id: NetId, rj_count0: u16, k: &KeyCipher<SNwkSIntKey>) -> RejoinRequest {
        let body = RejoinBody::type_0_or_2(t, net_id, DevEui::new(7), rj_count0);
        RejoinRequest::build(body, RejoinMicKey::SNwkSIntKey(k)).unwrap()
    }

    #[test]
    fn net_id_mic_and_rj_count0_rules() {
        let k = key(1);
        for t in [0, 2] {
            let rj = request(t, net(0x13), 5, &k);
            assert_eq!(check_net_id(&rj, net(0x13)), Ok(()));
            assert_eq!(check_net_id(&rj, net(0x14)).unwrap_err().kind(), "net_id");
            // First rejoin of a session: any RJcount0; then strictly increasing.
            assert_eq!(check_against(&rj, Some(&k), None), Ok(5));
            assert_eq!(check_against(&rj, Some(&k), Some(4)), Ok(5));
            assert_eq!(
                check_against(&rj, Some(&k), Some(5)),
                Err(RejoinRefusal::Replayed { got: 5, last: 5 })
            );
            assert_eq!(
                check_against(&rj, Some(&k), Some(9)).unwrap_err().kind(),
                "rj_count0_replayed"
            );
            // Another session's key: not this session (the MIC is checked before the counter).
            assert_eq!(
                check_against(&rj, Some(&key(2)), Some(9)),
                Err(RejoinRefusal::Mic)
            );
            assert_eq!(
                check_against(&rj, None, None),
                Err(RejoinRefusal::NoSession)
            );
            let end = request(t, net(0x13), u16::MAX, &k);
            assert_eq!(
                check_against(&end, Some(&k), Some(9)),
                Err(RejoinRefusal::Exhausted)
            );
            assert_eq!(
                check_against(&end, Some(&k), None).unwrap_err().kind(),
                "rj_count0_exhausted"
            );
        }
        let j = KeyCipher::new(&protocol::keys::JsIntKey::new([1; 16]));
        let t1 = RejoinRequest::build(
            RejoinBody::Type1 {
                join_eui: JoinEui::new(1),
                dev_eui: DevEui::new(7),
                rj_count1: 1,
            },
            RejoinMicKey::JsIntKey(&j),
        )
        .unwrap();
        assert_eq!(check_net_id(&t1, net(0x13)), Err(RejoinRefusal::Type1));
        assert_eq!(
            check_against(&t1, Some(&k), None),
            Err(RejoinRefusal::Type1)
        );
    }
}
