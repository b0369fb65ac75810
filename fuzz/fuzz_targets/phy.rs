//! Any bytes as a LoRaWAN PHYPayload, dispatched on the MHDR as the network server and the
//! simulator do. Beyond "no panic": every accepted frame re-encodes to exactly the input bytes,
//! and an accepted data frame goes through the whole uplink/downlink opening path (MIC check,
//! FOpts and FRMPayload decryption, MAC-command parsing) under fixed 1.0 and 1.1 session keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::data::{DataFrame, Direction, SessionCrypto, UplinkMicParams};
use protocol::derive::NetworkSessionKeys;
use protocol::join::{EncryptedJoinAccept, JoinAcceptEncKey, JoinRequest, RejoinRequest};
use protocol::keys::{AppKey, AppSKey, FNwkSIntKey, KeyCipher, NwkSEncKey, NwkSKey, SNwkSIntKey};
use protocol::mac;
use protocol::phy::{MType, Mhdr};

fuzz_target!(|data: &[u8]| {
    let Some(&first) = data.first() else { return };
    match Mhdr(first).mtype() {
        MType::JoinRequest => {
            if let Ok(jr) = JoinRequest::parse(data) {
                assert_eq!(&jr.to_bytes()[..], data, "Join-request re-encodes exactly");
            }
        }
        MType::RejoinRequest => {
            if let Ok(rj) = RejoinRequest::parse(data) {
                assert_eq!(rj.to_bytes(), data, "Rejoin-request re-encodes exactly");
            }
        }
        MType::JoinAccept => {
            if let Ok(ja) = EncryptedJoinAccept::from_bytes(data) {
                assert_eq!(ja.as_bytes(), data);
                let key = KeyCipher::new(&AppKey::new([0x2B; 16]));
                let _ = ja.decrypt(JoinAcceptEncKey::AppKey(&key));
            }
        }
        MType::Proprietary => {}
        _ => {
            let Ok(frame) = DataFrame::parse(data) else {
                return;
            };
            let dir = frame.direction();
            let _ = mac::parse(dir, frame.fopts_on_air());
            for session in sessions() {
                let fcnt = u32::from(frame.fcnt16());
                let opened = match dir {
                    Direction::Uplink => frame
                        .open_uplink(&session, fcnt, &UplinkMicParams::default())
                        .map(|_| ()),
                    Direction::Downlink => frame.open_downlink(&session, fcnt, 0).map(|_| ()),
                };
                // Random bytes almost never carry a valid MIC; the point is no panic.
                let _ = opened;
                let _ = frame.decrypt_fopts(&session.network, fcnt);
            }
        }
    }
});

fn sessions() -> [SessionCrypto; 2] {
    let v1_0 = NetworkSessionKeys::V1_0 {
        nwk_s_key: NwkSKey::new([1; 16]),
    };
    let v1_1 = NetworkSessionKeys::V1_1 {
        f_nwk_s_int_key: FNwkSIntKey::new([2; 16]),
        s_nwk_s_int_key: SNwkSIntKey::new([3; 16]),
        nwk_s_enc_key: NwkSEncKey::new([4; 16]),
    };
    let app = AppSKey::new([5; 16]);
    [
        SessionCrypto::new(&v1_0, Some(&app)),
        SessionCrypto::new(&v1_1, None),
    ]
}
