//! Property tests for data frames, frame counters and MAC commands:
//! - parse(build(x)) == x for uplinks and downlinks, 1.0 and 1.1;
//! - for 1.0, the `lorawan` crate's public API agrees with ours byte for byte (MIC, FRMPayload
//!   decryption, and `DataPayloadCreator` frames);
//! - parse(encode(cmds)) == cmds for MAC commands;
//! - no parser panics on arbitrary bytes.

use proptest::prelude::*;
use protocol::data::{
    DataFrame, Direction, Downlink, FramePayload, FrmPayload, NetworkSessionKeys, OpenError,
    SessionCrypto, Uplink, UplinkMicParams,
};
use protocol::fcnt::check_fcnt;
use protocol::ids::DevAddr;
use protocol::keys::{AppSKey, FNwkSIntKey, NwkSEncKey, NwkSKey, SNwkSIntKey};
use protocol::mac::{self, payload_len};
use protocol::version::MacVersion;

fn session(v1_1: bool, keys: [[u8; 16]; 4], with_app: bool) -> SessionCrypto {
    let nwk = if v1_1 {
        NetworkSessionKeys::V1_1 {
            f_nwk_s_int_key: FNwkSIntKey::new(keys[0]),
            s_nwk_s_int_key: SNwkSIntKey::new(keys[1]),
            nwk_s_enc_key: NwkSEncKey::new(keys[2]),
        }
    } else {
        NetworkSessionKeys::V1_0 {
            nwk_s_key: NwkSKey::new(keys[0]),
        }
    };
    let app = AppSKey::new(keys[3]);
    SessionCrypto::new(&nwk, with_app.then_some(&app))
}

/// (payload, fopts); payload kind 3 (already encrypted) goes with a session without AppSKey.
fn payload_and_fopts() -> impl Strategy<Value = (FramePayload, Vec<u8>)> {
    let fopts = prop::collection::vec(any::<u8>(), 0..=15);
    let data = prop::collection::vec(any::<u8>(), 0..=200);
    (0u8..4, 1u8..=255, data, fopts).prop_map(|(kind, f_port, data, fopts)| match kind {
        0 => (FramePayload::None, fopts),
        1 => (FramePayload::MacCommands(FrmPayload(data)), Vec::new()),
        2 => (
            FramePayload::Application {
                f_port,
                payload: FrmPayload(data),
            },
            fopts,
        ),
        _ => (
            FramePayload::EncryptedApplication {
                f_port,
                ciphertext: data,
            },
            fopts,
        ),
    })
}

fn flags() -> impl Strategy<Value = [bool; 5]> {
    prop::array::uniform5(any::<bool>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn uplink_roundtrip(
        v1_1 in any::<bool>(),
        keys in prop::array::uniform4(prop::array::uniform16(any::<u8>())),
        addr in any::<u32>(),
        fcnt in any::<u32>(),
        f in flags(),
        (payload, fopts) in payload_and_fopts(),
        conf_fcnt in any::<u32>(),
        tx_dr in 0u8..16,
        tx_ch in any::<u8>(),
    ) {
        let with_app = !matches!(payload, FramePayload::EncryptedApplication { .. });
        let s = session(v1_1, keys, with_app);
        let up = Uplink {
            confirmed: f[0],
            dev_addr: DevAddr::new(addr),
            fcnt,
            adr: f[1],
            adr_ack_req: f[2],
            ack: f[3],
            class_b: f[4],
            fopts,
            payload,
        };
        let params = UplinkMicParams { conf_fcnt, tx_dr, tx_ch };
        let phy = up.build(&s, &params).expect("valid uplink builds");
        let frame = DataFrame::parse(&phy).expect("built frame parses");
        prop_assert_eq!(frame.direction(), Direction::Uplink);
        prop_assert_eq!(frame.open_uplink(&s, fcnt, &params), Ok(up.clone()));
        // ConfFCnt only counts with ACK (E.5); otherwise any value gives the same MIC.
        let other = UplinkMicParams { conf_fcnt: conf_fcnt ^ 1, ..params };
        let same = frame.open_uplink(&s, fcnt, &other).is_ok();
        prop_assert_eq!(same, !(v1_1 && up.ack));
        // A flipped bit anywhere is caught by the MIC (or breaks the structure).
        for i in 0..phy.len() {
            let mut bad = phy.clone();
            bad[i] ^= 0x01;
            if let Ok(b) = DataFrame::parse(&bad) {
                if b.direction() == Direction::Uplink {
                    prop_assert_eq!(b.open_uplink(&s, fcnt, &params), Err(OpenError::MicMismatch));
                }
            }
        }
    }

    #[test]
    fn downlink_roundtrip(
        v1_1 in any::<bool>(),
        keys in prop::array::uniform4(prop::array::uniform16(any::<u8>())),
        addr in any::<u32>(),
        fcnt in any::<u32>(),
        f in flags(),
        (payload, fopts) in payload_and_fopts(),
        conf_fcnt in any::<u32>(),
    ) {
        let with_app = !matches!(payload, FramePayload::EncryptedApplication { .. });
        let s = session(v1_1, keys, with_app);
        let down = Downlink {
            confirmed: f[0],
            dev_addr: DevAddr::new(addr),
            fcnt,
            adr: f[1],
            ack: f[2],
            f_pending: f[3],
            fopts,
            payload,
        };
        let phy = down.build(&s, conf_fcnt).expect("valid downlink builds");
        let frame = DataFrame::parse(&phy).expect("built frame parses");
        prop_assert_eq!(frame.direction(), Direction::Downlink);
        prop_assert_eq!(frame.open_downlink(&s, fcnt, conf_fcnt), Ok(down.clone()));
        let same = frame.open_downlink(&s, fcnt, conf_fcnt ^ 1).is_ok();
        prop_assert_eq!(same, !(v1_1 && down.ack));
    }

    /// Our 1.0 frames against the `lorawan` crate's public API.
    #[test]
    fn lorawan_crate_agrees_on_1_0(
        keys in prop::array::uniform4(prop::array::uniform16(any::<u8>())),
        addr in any::<u32>(),
        fcnt in any::<u32>(),
        uplink in any::<bool>(),
        confirmed in any::<bool>(),
        adr in any::<bool>(),
        f_port in 1u8..=255,
        data in prop::collection::vec(any::<u8>(), 1..=200),
    ) {
        let s = session(false, keys, true);
        let payload = FramePayload::Application { f_port, payload: FrmPayload(data.clone()) };
        let ours = if uplink {
            Uplink {
                confirmed, dev_addr: DevAddr::new(addr), fcnt, adr,
                adr_ack_req: false, ack: false, class_b: false, fopts: vec![], payload,
            }.build(&s, &UplinkMicParams::default())
        } else {
            Downlink {
                confirmed, dev_addr: DevAddr::new(addr), fcnt, adr,
                ack: false, f_pending: false, fopts: vec![], payload,
            }.build(&s, 0)
        }.expect("builds");

        // lorawan's creator makes the same bytes.
        let mut creator = lorawan::creator::DataPayloadCreator::new();
        creator
            .set_uplink(uplink)
            .set_confirmed(confirmed)
            .set_dev_addr(&DevAddr::new(addr).to_le_bytes())
            .set_fctrl(&lorawan::parser::FCtrl::new(u8::from(adr) << 7, uplink))
            .set_fcnt(fcnt)
            .set_f_port(f_port);
        let nwk = lorawan::keys::NewSKey::from(keys[0]);
        let app = lorawan::keys::AppSKey::from(keys[3]);
        let theirs = creator.build(&data, &[], &nwk, &app).expect("lorawan builds");
        prop_assert_eq!(&ours[..], theirs);

        // lorawan's parser validates our MIC and decrypts our payload.
        let enc = lorawan::parser::EncryptedDataPayload::new(ours.clone()).expect("lorawan parses");
        prop_assert!(enc.validate_mic(nwk.inner(), fcnt));
        let dec = enc.decrypt(Some(nwk.inner()), Some(app.inner()), fcnt).expect("decrypts");
        match dec.frm_payload() {
            lorawan::parser::FRMPayload::Data(d) => prop_assert_eq!(d, &data[..]),
            _ => prop_assert!(false, "lorawan sees no application data"),
        }
    }

    /// parse(encode(cmds)) == cmds, for commands drawn as valid CID + payload bytes.
    #[test]
    fn mac_commands_roundtrip(
        uplink in any::<bool>(),
        raw in prop::collection::vec((1u8..=0x0f, prop::array::uniform5(any::<u8>())), 0..12),
    ) {
        let dir = if uplink { Direction::Uplink } else { Direction::Downlink };
        let mut bytes = Vec::new();
        for (cid, p) in raw {
            if let Some(n) = payload_len(dir, cid) {
                bytes.push(cid);
                bytes.extend_from_slice(&p[..n]);
            }
        }
        let cmds = mac::parse(dir, &bytes).expect("valid CIDs with full payloads parse");
        let encoded = mac::encode(dir, &cmds).expect("parsed commands encode");
        prop_assert_eq!(encoded.len(), bytes.len());
        prop_assert_eq!(mac::parse(dir, &encoded), Ok(cmds.clone()));
        // Sent the other way they are refused (every one of these has a direction).
        let other = if uplink { Direction::Downlink } else { Direction::Uplink };
        if !cmds.is_empty() {
            prop_assert!(mac::encode(other, &cmds).is_err());
        }
    }

    /// No parser panics on arbitrary input, and what parses can be opened without panicking.
    /// Half the inputs start with a data-frame MHDR so the deeper paths are reached.
    #[test]
    fn no_panic_on_arbitrary_bytes(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            (prop::sample::select(vec![0x40u8, 0x60, 0x80, 0xA0]),
             prop::collection::vec(any::<u8>(), 0..270))
                .prop_map(|(m, rest)| [vec![m], rest].concat()),
        ],
        fcnt in any::<u32>(),
        last in proptest::option::of(any::<u32>()),
        fcnt16 in any::<u16>(),
    ) {
        for v1_1 in [false, true] {
            let s = session(v1_1, [[7; 16]; 4], true);
            if let Ok(f) = DataFrame::parse(&bytes) {
                let _ = (f.fctrl(), f.fopts_on_air(), f.frm_payload(), f.mic(), f.msg());
                let _ = f.open_uplink(&s, fcnt, &UplinkMicParams::default());
                let _ = f.open_downlink(&s, fcnt, fcnt);
                let _ = f.decrypt_fopts(&s.network, fcnt);
            }
        }
        let _ = mac::parse(Direction::Uplink, &bytes);
        let _ = mac::parse(Direction::Downlink, &bytes);
        for v in [MacVersion::V1_0_2, MacVersion::V1_1] {
            if let Ok(verdict) = check_fcnt(v, last, fcnt16) {
                prop_assert_eq!(verdict.fcnt() as u16, fcnt16);
            }
        }
    }
}
