//! Property tests: `parse(build(x)) == x` for every join frame and for key wrap / KeyEnvelope, and
//! no panic on arbitrary bytes for every parser.

use proptest::prelude::*;
use protocol::ids::{DevAddr, DevEui, DevNonce, JoinEui, JoinNonce, NetId};
use protocol::join::{
    AnsweredRequest, CfList, DlSettings, EncryptedJoinAccept, JoinAcceptEncKey, JoinAcceptMicKey,
    JoinAcceptPayload, JoinRequest, JoinRootKey, RejoinBody, RejoinMicKey, RejoinRequest, RxDelay,
};
use protocol::keys::{
    AppKey, AppSKey, JsEncKey, JsIntKey, Kek, KeyCipher, Mic, NwkKey, SNwkSIntKey,
};
use protocol::keywrap::{unwrap, unwrap_key, wrap, wrap_key, KeyEnvelope};
use protocol::phy::Mhdr;

fn net_id() -> impl Strategy<Value = NetId> {
    (0..=NetId::MAX).prop_map(|v| NetId::new(v).unwrap_or_else(|| unreachable!()))
}

fn join_nonce() -> impl Strategy<Value = JoinNonce> {
    (0..=JoinNonce::MAX).prop_map(|v| JoinNonce::new(v).unwrap_or_else(|| unreachable!()))
}

fn payload() -> impl Strategy<Value = JoinAcceptPayload> {
    (
        join_nonce(),
        net_id(),
        any::<u32>(),
        any::<u8>(),
        any::<u8>(),
        proptest::option::of(any::<[u8; 16]>()),
    )
        .prop_map(|(join_nonce, net_id, addr, dl, rx, cf)| JoinAcceptPayload {
            join_nonce,
            net_id,
            dev_addr: DevAddr::new(addr),
            dl_settings: DlSettings(dl),
            rx_delay: RxDelay(rx),
            cf_list: cf.map(CfList),
        })
}

fn answered() -> impl Strategy<Value = AnsweredRequest> {
    prop_oneof![
        any::<u16>().prop_map(|n| AnsweredRequest::JoinRequest(DevNonce(n))),
        any::<u16>().prop_map(|c| AnsweredRequest::Rejoin0 { rj_count0: c }),
        any::<u16>().prop_map(|c| AnsweredRequest::Rejoin1 { rj_count1: c }),
        any::<u16>().prop_map(|c| AnsweredRequest::Rejoin2 { rj_count0: c }),
    ]
}

fn rejoin_body() -> impl Strategy<Value = RejoinBody> {
    prop_oneof![
        (net_id(), any::<u64>(), any::<u16>()).prop_map(|(net_id, d, c)| RejoinBody::Type0 {
            net_id,
            dev_eui: DevEui::new(d),
            rj_count0: c
        }),
        (any::<u64>(), any::<u64>(), any::<u16>()).prop_map(|(j, d, c)| RejoinBody::Type1 {
            join_eui: JoinEui::new(j),
            dev_eui: DevEui::new(d),
            rj_count1: c
        }),
        (net_id(), any::<u64>(), any::<u16>()).prop_map(|(net_id, d, c)| RejoinBody::Type2 {
            net_id,
            dev_eui: DevEui::new(d),
            rj_count0: c
        }),
    ]
}

proptest! {
    #[test]
    fn join_request_round_trips(
        key in any::<[u8; 16]>(),
        join_eui in any::<u64>(),
        dev_eui in any::<u64>(),
        dev_nonce in any::<u16>(),
        use_nwk_key in any::<bool>(),
    ) {
        let app = KeyCipher::new(&AppKey::new(key));
        let nwk = KeyCipher::new(&NwkKey::new(key));
        let root = if use_nwk_key { JoinRootKey::NwkKey(&nwk) } else { JoinRootKey::AppKey(&app) };
        let req = JoinRequest::build(
            JoinEui::new(join_eui), DevEui::new(dev_eui), DevNonce(dev_nonce), root,
        );
        let parsed = JoinRequest::parse(&req.to_bytes()).unwrap();
        prop_assert_eq!(parsed, req);
        prop_assert_eq!(parsed.verify_mic(root), Ok(()));
        // Any single-bit change of the frame body breaks the MIC.
        let mut b = req.to_bytes();
        b[1 + (dev_nonce as usize % 18)] ^= 1 << (join_eui % 8);
        prop_assert_eq!(JoinRequest::parse(&b).unwrap().verify_mic(root).unwrap_err().kind(), "mic");
    }

    #[test]
    fn join_request_parse_is_exact_on_any_well_formed_frame(
        rfu in 0u8..8, body in any::<[u8; 22]>(),
    ) {
        let mut phy = vec![rfu << 2];
        phy.extend_from_slice(&body);
        let req = JoinRequest::parse(&phy).unwrap();
        prop_assert_eq!(req.mhdr, Mhdr(rfu << 2));
        prop_assert_eq!(req.mic, Mic([body[18], body[19], body[20], body[21]]));
        prop_assert_eq!(req.to_bytes().to_vec(), phy);
    }

    #[test]
    fn join_accept_encrypt_then_decrypt_round_trips(
        p in payload(),
        k1 in any::<[u8; 16]>(),
        k2 in any::<[u8; 16]>(),
        join_eui in any::<u64>(),
        answered in answered(),
        opt_neg in any::<bool>(),
        enc_choice in 0u8..3,
    ) {
        let app = KeyCipher::new(&AppKey::new(k1));
        let nwk = KeyCipher::new(&NwkKey::new(k1));
        let js_enc = KeyCipher::new(&JsEncKey::new(k1));
        let js_int = KeyCipher::new(&JsIntKey::new(k2));
        let mic_key = if opt_neg {
            JoinAcceptMicKey::OptNeg { js_int_key: &js_int, join_eui: JoinEui::new(join_eui), answered }
        } else {
            JoinAcceptMicKey::Legacy(JoinRootKey::AppKey(&app))
        };
        let enc_key = match enc_choice {
            0 => JoinAcceptEncKey::AppKey(&app),
            1 => JoinAcceptEncKey::NwkKey(&nwk),
            _ => JoinAcceptEncKey::JsEncKey(&js_enc),
        };
        let enc = p.encrypt(mic_key, enc_key);
        let expected_len = if p.cf_list.is_some() { 33 } else { 17 };
        prop_assert_eq!(enc.as_bytes().len(), expected_len);
        let parsed = EncryptedJoinAccept::from_bytes(enc.as_bytes()).unwrap();
        prop_assert_eq!(parsed, enc);
        let d = parsed.decrypt(enc_key);
        prop_assert_eq!(d.payload, p);
        prop_assert_eq!(d.mic, p.mic(mic_key));
        prop_assert_eq!(d.mhdr, Mhdr(0x20));
        prop_assert_eq!(parsed.open(enc_key, mic_key), Ok(p));
        prop_assert_eq!(d.to_bytes().len(), expected_len);
    }

    #[test]
    fn rejoin_request_round_trips(body in rejoin_body(), key in any::<[u8; 16]>()) {
        let s = KeyCipher::new(&SNwkSIntKey::new(key));
        let j = KeyCipher::new(&JsIntKey::new(key));
        let mic_key = match body {
            RejoinBody::Type1 { .. } => RejoinMicKey::JsIntKey(&j),
            _ => RejoinMicKey::SNwkSIntKey(&s),
        };
        let req = RejoinRequest::build(body, mic_key).unwrap();
        let parsed = RejoinRequest::parse(&req.to_bytes()).unwrap();
        prop_assert_eq!(parsed, req);
        prop_assert_eq!(parsed.verify_mic(mic_key), Ok(()));
    }

    #[test]
    fn cf_list_type_0_round_trips(units in any::<[u32; 5]>()) {
        let hz = units.map(|u| (u & 0x00FF_FFFF) * 100);
        let cf = CfList::from_frequencies_hz(hz).unwrap();
        prop_assert_eq!(cf.frequencies_hz(), Some(hz));
    }

    #[test]
    fn dl_settings_round_trips(opt_neg in any::<bool>(), off in 0u8..8, dr in 0u8..16) {
        let d = DlSettings::new(opt_neg, off, dr).unwrap();
        prop_assert_eq!((d.opt_neg(), d.rx1_dr_offset(), d.rx2_data_rate()), (opt_neg, off, dr));
    }

    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40), key in any::<[u8; 16]>()) {
        let app = KeyCipher::new(&AppKey::new(key));
        let s = KeyCipher::new(&SNwkSIntKey::new(key));
        if let Ok(r) = JoinRequest::parse(&bytes) {
            prop_assert_eq!(r.to_bytes().to_vec(), bytes.clone());
            let _ = r.verify_mic(JoinRootKey::AppKey(&app));
        }
        if let Ok(r) = RejoinRequest::parse(&bytes) {
            prop_assert_eq!(r.to_bytes(), bytes.clone());
            let _ = r.verify_mic(RejoinMicKey::SNwkSIntKey(&s));
        }
        if let Ok(a) = EncryptedJoinAccept::from_bytes(&bytes) {
            prop_assert_eq!(a.as_bytes(), &bytes[..]);
            let _ = a.open(
                JoinAcceptEncKey::AppKey(&app),
                JoinAcceptMicKey::Legacy(JoinRootKey::AppKey(&app)),
            );
        }
    }

    #[test]
    fn parsers_never_panic_on_plausible_frames(
        mhdr in prop_oneof![Just(0x00u8), Just(0x20), Just(0xC0), any::<u8>()],
        second in any::<u8>(),
        len in prop_oneof![Just(17usize), Just(19), Just(23), Just(24), Just(33), 0usize..40],
    ) {
        let mut b = vec![second; len];
        if let Some(first) = b.first_mut() {
            *first = mhdr;
        }
        let _ = JoinRequest::parse(&b);
        let _ = RejoinRequest::parse(&b);
        let _ = EncryptedJoinAccept::from_bytes(&b);
    }

    #[test]
    fn key_wrap_round_trips(kek in any::<[u8; 16]>(), key in any::<[u8; 16]>(), label in "[a-z0-9-]{1,12}") {
        let kek = Kek::new(kek);
        let key = AppSKey::new(key);
        let wrapped = wrap_key(&kek, &key);
        prop_assert_eq!(unwrap_key::<AppSKey>(&kek, &wrapped), Ok(key.clone()));
        prop_assert_eq!(wrap(kek.expose(), key.expose()).unwrap(), wrapped.to_vec());
        let env = KeyEnvelope::seal(&label, Some(&kek), &key).unwrap();
        let json = serde_json::to_string(&env).unwrap();
        let back: KeyEnvelope = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back.open::<AppSKey>(Some(&kek)), Ok(key.clone()));
        let clear = KeyEnvelope::seal("", None, &key).unwrap();
        prop_assert_eq!(clear.open::<AppSKey>(None), Ok(key));
    }

    #[test]
    fn key_unwrap_never_panics(
        kek in proptest::collection::vec(any::<u8>(), 0..40),
        data in proptest::collection::vec(any::<u8>(), 0..48),
        label in proptest::option::of("[a-z]{0,4}"),
    ) {
        let _ = unwrap(&kek, &data);
        let _ = wrap(&kek, &data);
        let k = Kek::new([7; 16]);
        let _ = unwrap_key::<AppSKey>(&k, &data);
        let env = KeyEnvelope { kek_label: label.unwrap_or_default(), aes_key: data };
        let _ = env.open::<AppSKey>(None);
        let _ = env.open::<AppSKey>(Some(&k));
    }
}
