//! LoRaWAN 1.1 rejoin cryptography against a second, independent implementation.
//!
//! Few public vectors exist for rejoins (the Rejoin-request MICs in
//! `vectors/join_request_mic.json`; none for the Join-accept that answers a Rejoin-request). So
//! this file holds a second implementation, written from the LoRaWAN 1.1 specification
//! (TS001-1.1, "LoRaWAN 1.1 Specification", October 2017) straight on the RustCrypto `aes` and
//! `cmac` crates, sharing no code with `protocol`'s frames, key schedules or derivation. Each
//! function cites the section it follows. The reference is itself anchored: it reproduces the
//! public TTS and brocaar Rejoin-request MICs first, then `protocol` must agree with it on fixed
//! cases and on random ones (proptest).

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::{Aes128, Block};
use cmac::{Cmac, Mac};
use proptest::prelude::*;
use protocol::derive;
use protocol::ids::{DevAddr, DevEui, JoinEui, JoinNonce, NetId};
use protocol::join::{
    AnsweredRequest, CfList, DlSettings, EncryptedJoinAccept, JoinAcceptEncKey, JoinAcceptMicKey,
    JoinAcceptPayload, RejoinBody, RejoinMicKey, RejoinRequest, RxDelay,
};
use protocol::keys::{AppKey, KeyCipher, NwkKey, SNwkSIntKey};

/// The reference: the specification's formulas, byte by byte.
mod spec {
    use super::*;

    /// §6.2.5 (Rejoin) / §4.4: `aes128_cmac(key, msg)`, MIC = the first four bytes.
    pub fn cmac4(key: &[u8; 16], msg: &[u8]) -> [u8; 4] {
        let mut m = <Cmac<Aes128> as Mac>::new_from_slice(key).expect("16-byte key");
        m.update(msg);
        let t = m.finalize().into_bytes();
        [t[0], t[1], t[2], t[3]]
    }

    /// `aes128_encrypt(key, block)`.
    pub fn aes_enc(key: &[u8; 16], block: [u8; 16]) -> [u8; 16] {
        let c = Aes128::new_from_slice(key).expect("16-byte key");
        let mut b = Block::from(block);
        c.encrypt_block(&mut b);
        b.into()
    }

    /// `aes128_decrypt(key, block)`.
    pub fn aes_dec(key: &[u8; 16], block: [u8; 16]) -> [u8; 16] {
        let c = Aes128::new_from_slice(key).expect("16-byte key");
        let mut b = Block::from(block);
        c.decrypt_block(&mut b);
        b.into()
    }

    /// Little-endian bytes of the low `n` bytes of `v` (all multi-byte fields travel LSB
    /// first, §4.3.1 note and §6.2.4/§6.2.5 tables).
    pub fn le(v: u64, n: usize) -> Vec<u8> {
        v.to_le_bytes()[..n].to_vec()
    }

    /// §6.2.2: `JSIntKey = aes128_encrypt(NwkKey, 0x06 | DevEUI | pad16)` and
    /// `JSEncKey = aes128_encrypt(NwkKey, 0x05 | DevEUI | pad16)`.
    pub fn js_key(nwk_key: &[u8; 16], kind: u8, dev_eui: u64) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = kind;
        b[1..9].copy_from_slice(&le(dev_eui, 8));
        aes_enc(nwk_key, b)
    }

    /// §6.2.5.1 (Rejoin-request type 0 and 2): the frame
    /// `MHDR(0xC0) | RejoinType | NetID(3) | DevEUI(8) | RJcount0(2) | MIC`, with
    /// `cmac = aes128_cmac(SNwkSIntKey, MHDR | RejoinType | NetID | DevEUI | RJcount0)`.
    pub fn rejoin_02(
        s_nwk_s_int_key: &[u8; 16],
        t: u8,
        net_id: u32,
        dev: u64,
        rj0: u16,
    ) -> Vec<u8> {
        let mut msg = vec![0xC0, t];
        msg.extend(le(u64::from(net_id), 3));
        msg.extend(le(dev, 8));
        msg.extend(le(u64::from(rj0), 2));
        let mic = cmac4(s_nwk_s_int_key, &msg);
        msg.extend(mic);
        msg
    }

    /// §6.2.5.2 (Rejoin-request type 1): the frame
    /// `MHDR(0xC0) | 0x01 | JoinEUI(8) | DevEUI(8) | RJcount1(2) | MIC`, with
    /// `cmac = aes128_cmac(JSIntKey, MHDR | RejoinType | JoinEUI | DevEUI | RJcount1)`.
    pub fn rejoin_1(js_int_key: &[u8; 16], join_eui: u64, dev: u64, rj1: u16) -> Vec<u8> {
        let mut msg = vec![0xC0, 0x01];
        msg.extend(le(join_eui, 8));
        msg.extend(le(dev, 8));
        msg.extend(le(u64::from(rj1), 2));
        let mic = cmac4(js_int_key, &msg);
        msg.extend(mic);
        msg
    }

    /// The plaintext Join-accept fields (§6.2.3, Table "Join-Accept payload").
    pub struct Accept {
        pub join_nonce: u32,
        pub net_id: u32,
        pub dev_addr: u32,
        pub dl_settings: u8,
        pub rx_delay: u8,
        pub cf_list: Option<[u8; 16]>,
    }

    /// §6.2.3: the Join-accept answering a Rejoin-request of type `t` (0, 1, 2), as sent:
    /// `cmac = aes128_cmac(JSIntKey, JoinReqType | JoinEUI | RJcount | MHDR | JoinNonce | NetID |
    /// DevAddr | DLSettings | RxDelay | CFList)` where JoinReqType is the rejoin type and the
    /// RJcount (RJcount0 for types 0 and 2, RJcount1 for type 1) stands where a Join-request's
    /// DevNonce stands; then `aes128_decrypt(JSEncKey, JoinNonce | NetID | DevAddr | DLSettings |
    /// RxDelay | CFList | MIC)` block by block ("encrypted with JSEncKey" when answering a
    /// Rejoin-request; the MHDR stays plain).
    pub fn rejoin_accept(
        nwk_key: &[u8; 16],
        dev: u64,
        join_eui: u64,
        t: u8,
        rj: u16,
        a: &Accept,
    ) -> Vec<u8> {
        let js_int = js_key(nwk_key, 0x06, dev);
        let js_enc = js_key(nwk_key, 0x05, dev);
        let mut payload = Vec::new();
        payload.extend(le(u64::from(a.join_nonce), 3));
        payload.extend(le(u64::from(a.net_id), 3));
        payload.extend(le(u64::from(a.dev_addr), 4));
        payload.push(a.dl_settings);
        payload.push(a.rx_delay);
        if let Some(cf) = a.cf_list {
            payload.extend(cf);
        }
        let mut mic_in = vec![t];
        mic_in.extend(le(join_eui, 8));
        mic_in.extend(le(u64::from(rj), 2));
        mic_in.push(0x20);
        mic_in.extend(&payload);
        payload.extend(cmac4(&js_int, &mic_in));
        let mut out = vec![0x20];
        for chunk in payload.chunks(16) {
            let mut b = [0u8; 16];
            b.copy_from_slice(chunk);
            out.extend(aes_dec(&js_enc, b));
        }
        out
    }

    /// §6.2.3 (session keys, OptNeg set): `FNwkSIntKey = aes128_encrypt(NwkKey, 0x01 | JoinNonce
    /// | JoinEUI | DevNonce | pad16)`, `AppSKey` (0x02, from the AppKey), `SNwkSIntKey` (0x03),
    /// `NwkSEncKey` (0x04); answering a Rejoin-request the RJcount takes the DevNonce's place.
    /// Returns `[FNwkSIntKey, AppSKey, SNwkSIntKey, NwkSEncKey]`.
    pub fn session_keys(
        nwk_key: &[u8; 16],
        app_key: &[u8; 16],
        join_nonce: u32,
        join_eui: u64,
        rj: u16,
    ) -> [[u8; 16]; 4] {
        let block = |kind: u8| {
            let mut b = [0u8; 16];
            b[0] = kind;
            b[1..4].copy_from_slice(&le(u64::from(join_nonce), 3));
            b[4..12].copy_from_slice(&le(join_eui, 8));
            b[12..14].copy_from_slice(&le(u64::from(rj), 2));
            b
        };
        [
            aes_enc(nwk_key, block(0x01)),
            aes_enc(app_key, block(0x02)),
            aes_enc(nwk_key, block(0x03)),
            aes_enc(nwk_key, block(0x04)),
        ]
    }
}

/// The reference reproduces every public Rejoin-request vector (TTS types 0/1/2, brocaar 1/2).
#[test]
fn the_reference_reproduces_the_public_rejoin_vectors() {
    let path = format!(
        "{}/tests/vectors/join_request_mic.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let entries = file["rejoin_request"].as_array().unwrap();
    assert_eq!(entries.len(), 5);
    for v in entries {
        let id = v["id"].as_str().unwrap();
        let key: [u8; 16] = hex::decode(v["key_hex"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let eui = |f: &str| u64::from_str_radix(v[f].as_str().unwrap(), 16).unwrap();
        let t = v["rejoin_type"].as_u64().unwrap() as u8;
        let built = if t == 1 {
            spec::rejoin_1(
                &key,
                eui("join_eui"),
                eui("dev_eui"),
                v["rj_count1"].as_u64().unwrap() as u16,
            )
        } else {
            let net = u32::from_str_radix(v["net_id"].as_str().unwrap(), 16).unwrap();
            spec::rejoin_02(
                &key,
                t,
                net,
                eui("dev_eui"),
                v["rj_count0"].as_u64().unwrap() as u16,
            )
        };
        assert_eq!(
            hex::encode(built),
            v["phy_payload_hex"].as_str().unwrap(),
            "{id}"
        );
    }
}

const NWK: [u8; 16] = *b"\x2b\x7e\x15\x16\x28\xae\xd2\xa6\xab\xf7\x15\x88\x09\xcf\x4f\x3c";
const APP: [u8; 16] = [0x5A; 16];

/// `protocol`'s Rejoin-request of each type, built and checked, against the reference.
fn check_rejoin_request(nwk: [u8; 16], s_key: [u8; 16], body: RejoinBody) {
    let s = KeyCipher::new(&SNwkSIntKey::new(s_key));
    let dev = body.dev_eui();
    let js_int = derive::js_keys(&KeyCipher::new(&NwkKey::new(nwk)), dev).js_int_key;
    let j = KeyCipher::new(&js_int);
    let (expected, key) = match body {
        RejoinBody::Type0 {
            net_id,
            dev_eui,
            rj_count0,
        }
        | RejoinBody::Type2 {
            net_id,
            dev_eui,
            rj_count0,
        } => (
            spec::rejoin_02(
                &s_key,
                body.rejoin_type(),
                net_id.as_u32(),
                dev_eui.as_u64(),
                rj_count0,
            ),
            RejoinMicKey::SNwkSIntKey(&s),
        ),
        RejoinBody::Type1 {
            join_eui,
            dev_eui,
            rj_count1,
        } => (
            spec::rejoin_1(
                &spec::js_key(&nwk, 0x06, dev_eui.as_u64()),
                join_eui.as_u64(),
                dev_eui.as_u64(),
                rj_count1,
            ),
            RejoinMicKey::JsIntKey(&j),
        ),
    };
    let built = RejoinRequest::build(body, key).unwrap();
    assert_eq!(
        hex::encode(built.to_bytes()),
        hex::encode(&expected),
        "{body:?}"
    );
    let parsed = RejoinRequest::parse(&expected).unwrap();
    assert_eq!(parsed.body, body);
    assert!(parsed.verify_mic(key).is_ok());
    // One flipped MIC bit is refused.
    let mut bad = expected.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert_eq!(
        RejoinRequest::parse(&bad)
            .unwrap()
            .verify_mic(key)
            .unwrap_err()
            .kind(),
        "mic"
    );
}

/// `protocol`'s Join-accept answering `answered`, encrypted and opened, against the reference.
fn check_rejoin_accept(
    nwk: [u8; 16],
    dev: u64,
    join_eui: u64,
    answered: AnsweredRequest,
    a: &spec::Accept,
) {
    let (t, rj) = match answered {
        AnsweredRequest::Rejoin0 { rj_count0 } => (0, rj_count0),
        AnsweredRequest::Rejoin1 { rj_count1 } => (1, rj_count1),
        AnsweredRequest::Rejoin2 { rj_count0 } => (2, rj_count0),
        AnsweredRequest::JoinRequest(_) => unreachable!("rejoins only"),
    };
    let expected = spec::rejoin_accept(&nwk, dev, join_eui, t, rj, a);
    let nwk_c = KeyCipher::new(&NwkKey::new(nwk));
    let js = derive::js_keys(&nwk_c, DevEui::new(dev));
    assert_eq!(js.js_int_key.expose(), &spec::js_key(&nwk, 0x06, dev));
    assert_eq!(js.js_enc_key.expose(), &spec::js_key(&nwk, 0x05, dev));
    let (int, enc) = (
        KeyCipher::new(&js.js_int_key),
        KeyCipher::new(&js.js_enc_key),
    );
    let payload = JoinAcceptPayload {
        join_nonce: JoinNonce::new(a.join_nonce).unwrap(),
        net_id: NetId::new(a.net_id).unwrap(),
        dev_addr: DevAddr::new(a.dev_addr),
        dl_settings: DlSettings(a.dl_settings),
        rx_delay: RxDelay(a.rx_delay),
        cf_list: a.cf_list.map(CfList),
    };
    let mic_key = JoinAcceptMicKey::OptNeg {
        js_int_key: &int,
        join_eui: JoinEui::new(join_eui),
        answered,
    };
    let sent = payload.encrypt(mic_key, JoinAcceptEncKey::JsEncKey(&enc));
    assert_eq!(
        hex::encode(sent.as_bytes()),
        hex::encode(&expected),
        "{answered:?}"
    );
    let opened = EncryptedJoinAccept::from_bytes(&expected)
        .unwrap()
        .open(JoinAcceptEncKey::JsEncKey(&enc), mic_key)
        .unwrap();
    assert_eq!(opened, payload);
    // The answer to one rejoin type does not verify as the answer to another, nor under NwkKey.
    let other = match answered {
        AnsweredRequest::Rejoin0 { rj_count0 } => AnsweredRequest::Rejoin2 { rj_count0 },
        _ => AnsweredRequest::Rejoin0 { rj_count0: rj },
    };
    let wrong_type = JoinAcceptMicKey::OptNeg {
        js_int_key: &int,
        join_eui: JoinEui::new(join_eui),
        answered: other,
    };
    assert_eq!(
        sent.open(JoinAcceptEncKey::JsEncKey(&enc), wrong_type)
            .unwrap_err()
            .kind(),
        "mic"
    );
    assert_eq!(
        sent.open(JoinAcceptEncKey::NwkKey(&nwk_c), mic_key)
            .unwrap_err()
            .kind(),
        "mic"
    );

    // The session keys: RJcount in the DevNonce's place.
    let app_c = KeyCipher::new(&AppKey::new(APP));
    let k = derive::session_keys_1_1(
        &nwk_c,
        &app_c,
        payload.join_nonce,
        JoinEui::new(join_eui),
        answered,
    );
    let [f, app, s, e] = spec::session_keys(&nwk, &APP, a.join_nonce, join_eui, rj);
    assert_eq!(
        (
            k.f_nwk_s_int_key.expose(),
            k.app_s_key.expose(),
            k.s_nwk_s_int_key.expose(),
            k.nwk_s_enc_key.expose()
        ),
        (&f, &app, &s, &e)
    );
}

#[test]
fn rejoin_requests_of_each_type_match_the_reference() {
    let net = NetId::new(0x00_0013).unwrap();
    let dev = DevEui::new(0x0004_A30B_001C_0530);
    for rj in [0u16, 1, 258, 0xFFFE] {
        check_rejoin_request(
            NWK,
            [0x11; 16],
            RejoinBody::Type0 {
                net_id: net,
                dev_eui: dev,
                rj_count0: rj,
            },
        );
        check_rejoin_request(
            NWK,
            [0x22; 16],
            RejoinBody::Type2 {
                net_id: net,
                dev_eui: dev,
                rj_count0: rj,
            },
        );
        check_rejoin_request(
            NWK,
            [0x33; 16],
            RejoinBody::Type1 {
                join_eui: JoinEui::new(0x70B3_D57E_D000_0001),
                dev_eui: dev,
                rj_count1: rj,
            },
        );
    }
}

#[test]
fn rejoin_join_accepts_match_the_reference() {
    let eu_cf = CfList::from_frequencies_hz([
        867_100_000,
        867_300_000,
        867_500_000,
        867_700_000,
        867_900_000,
    ])
    .unwrap()
    .0;
    let cases = [
        (AnsweredRequest::Rejoin0 { rj_count0: 0 }, None),
        (AnsweredRequest::Rejoin0 { rj_count0: 7 }, Some(eu_cf)),
        (AnsweredRequest::Rejoin1 { rj_count1: 258 }, None),
        (AnsweredRequest::Rejoin1 { rj_count1: 1 }, Some(eu_cf)),
        (AnsweredRequest::Rejoin2 { rj_count0: 3 }, None),
        (AnsweredRequest::Rejoin2 { rj_count0: 0xFFFE }, Some(eu_cf)),
    ];
    for (i, (answered, cf_list)) in cases.into_iter().enumerate() {
        let a = spec::Accept {
            join_nonce: 2 + i as u32,
            net_id: 0x13,
            dev_addr: 0x2601_1BDA + i as u32,
            dl_settings: 0x82,
            rx_delay: 1,
            cf_list,
        };
        check_rejoin_accept(
            NWK,
            0x0004_A30B_001C_0530,
            0x70B3_D57E_D000_0001,
            answered,
            &a,
        );
    }
}

/// A pinned example, so a change in both implementations at once is still noticed: a type 2
/// Rejoin-request and its Join-accept, for NwkKey 2b7e…4f3c, DevEUI 0004A30B001C0530,
/// JoinEUI 70B3D57ED0000001, NetID 000013, RJcount0 3, JoinNonce 5, DevAddr 26011BDA.
#[test]
fn a_pinned_rejoin_type_2_exchange() {
    let req = spec::rejoin_02(&[0x22; 16], 2, 0x13, 0x0004_A30B_001C_0530, 3);
    let accept = spec::rejoin_accept(
        &NWK,
        0x0004_A30B_001C_0530,
        0x70B3_D57E_D000_0001,
        2,
        3,
        &spec::Accept {
            join_nonce: 5,
            net_id: 0x13,
            dev_addr: 0x2601_1BDA,
            dl_settings: 0x82,
            rx_delay: 1,
            cf_list: None,
        },
    );
    assert_eq!(hex::encode(&req[..15]), "c00213000030051c000ba304000300");
    assert_eq!(req.len(), 19);
    assert_eq!(accept.len(), 17);
    // Pinned from a third computation, Python's `cryptography` (AES-ECB and CMAC) with the same
    // formulas, so the reference above cannot drift unnoticed.
    assert_eq!(hex::encode(&req[15..]), PINNED_REQ_MIC);
    assert_eq!(hex::encode(&accept), PINNED_ACCEPT);
}

const PINNED_REQ_MIC: &str = "93907e21";
const PINNED_ACCEPT: &str = "201824bc09413b5700990bc6ca7f7823e0";

fn answered_rejoin() -> impl Strategy<Value = AnsweredRequest> {
    prop_oneof![
        any::<u16>().prop_map(|c| AnsweredRequest::Rejoin0 { rj_count0: c }),
        any::<u16>().prop_map(|c| AnsweredRequest::Rejoin1 { rj_count1: c }),
        any::<u16>().prop_map(|c| AnsweredRequest::Rejoin2 { rj_count0: c }),
    ]
}

proptest! {
    #[test]
    fn protocol_agrees_with_the_reference_on_random_rejoins(
        nwk in any::<[u8; 16]>(),
        s_key in any::<[u8; 16]>(),
        dev in any::<u64>(),
        join_eui in any::<u64>(),
        net in 0u32..=0xFF_FFFF,
        rj in any::<u16>(),
        answered in answered_rejoin(),
        join_nonce in 0u32..0xFF_FFFF,
        dev_addr in any::<u32>(),
        dl in any::<u8>(),
        rx in any::<u8>(),
        cf in proptest::option::of(any::<[u8; 16]>()),
    ) {
        let net_id = NetId::new(net).unwrap();
        let dev_eui = DevEui::new(dev);
        check_rejoin_request(nwk, s_key, RejoinBody::Type0 { net_id, dev_eui, rj_count0: rj });
        check_rejoin_request(nwk, s_key, RejoinBody::Type2 { net_id, dev_eui, rj_count0: rj });
        check_rejoin_request(nwk, s_key, RejoinBody::Type1 { join_eui: JoinEui::new(join_eui), dev_eui, rj_count1: rj });
        let a = spec::Accept { join_nonce, net_id: net, dev_addr, dl_settings: dl, rx_delay: rx, cf_list: cf };
        check_rejoin_accept(nwk, dev, join_eui, answered, &a);
    }
}
