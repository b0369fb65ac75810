//! The join server's crypto path, measured four ways in one run:
//!
//! - `a_parse_verify`: Join-request parse + MIC check (key preparation included, as per join);
//!   `a_lorawan_parse_verify` is the same with the `lorawan` crate's parser and `validate_mic`,
//!   for the comparison quoted in `join.rs`.
//! - `b_join_1_0`: the full 1.0 join-server path with this crate: parse and verify the
//!   Join-request, derive NwkSKey and AppSKey, build and encrypt the Join-accept (no CFList).
//! - `c_lrwn_join_1_0`: the same work with ChirpStack's `lrwn` 4.13.
//! - `d_bare_aes_cmac`: only the AES/CMAC operations that path needs, straight on `aes`/`cmac`:
//!   CMAC over the 19-byte Join-request MIC input, 2 AES-128 encryptions for the derivation,
//!   CMAC over the 13-byte Join-accept MIC input, 1 AES-128 decryption for the 16-byte
//!   Join-accept. That is 2 CMACs (3 + 2 AES blocks including their subkey block) + 2 AES
//!   encryptions + 1 AES decryption = 8 block operations, with the key schedules each API
//!   naturally needs (two `Cmac::new`, one `Aes128::new`).
//!
//! Run: `cargo bench -p protocol --bench join -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::Aes128;
use cmac::{Cmac, Mac};
use criterion::{criterion_group, criterion_main, Criterion};

use protocol::derive::session_keys_1_0;
use protocol::ids::{DevAddr, JoinNonce, NetId};
use protocol::join::{
    DlSettings, JoinAcceptEncKey, JoinAcceptMicKey, JoinAcceptPayload, JoinRequest, JoinRootKey,
    RxDelay,
};
use protocol::keys::{AppKey, KeyCipher};

/// jr-tts-crypto from `tests/vectors/join_request_mic.json` (AppKey 01…01).
const JOIN_REQUEST: [u8; 23] = [
    0x00, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02,
    0x01, 0x02, 0x01, 0xe6, 0xe1, 0x0c, 0x55,
];
const APP_KEY: [u8; 16] = [1; 16];
const JOIN_NONCE: u32 = 0x010203;
const NET_ID: u32 = 0x010203;
const DEV_ADDR: u32 = 0x0102_0304;

fn ours(app_key: &AppKey, phy: &[u8]) -> Option<([u8; 16], [u8; 16], [u8; 17])> {
    let req = JoinRequest::parse(phy).ok()?;
    let app = KeyCipher::new(app_key);
    req.verify_mic(JoinRootKey::AppKey(&app)).ok()?;
    let join_nonce = JoinNonce::new(JOIN_NONCE)?;
    let net_id = NetId::new(NET_ID)?;
    let keys = session_keys_1_0(&app, join_nonce, net_id, req.dev_nonce);
    let accept = JoinAcceptPayload {
        join_nonce,
        net_id,
        dev_addr: DevAddr::new(DEV_ADDR),
        dl_settings: DlSettings(0),
        rx_delay: RxDelay(1),
        cf_list: None,
    }
    .encrypt(
        JoinAcceptMicKey::Legacy(JoinRootKey::AppKey(&app)),
        JoinAcceptEncKey::AppKey(&app),
    );
    let mut out = [0u8; 17];
    out.copy_from_slice(accept.as_bytes());
    Some((*keys.nwk_s_key.expose(), *keys.app_s_key.expose(), out))
}

fn lrwn_path(key: &lrwn::AES128Key, phy: &[u8]) -> Option<([u8; 16], [u8; 16], Vec<u8>)> {
    use lrwn::{
        keys, DLSettings, FType, JoinAcceptPayload, JoinType, Major, NetID, Payload, PhyPayload,
        MHDR,
    };
    let req = PhyPayload::from_slice(phy).ok()?;
    if !req.validate_join_request_mic(key).ok()? {
        return None;
    }
    let Payload::JoinRequest(jr) = &req.payload else {
        return None;
    };
    let net_id = NetID::from_be_bytes([0x01, 0x02, 0x03]);
    let nwk_s_key =
        keys::get_f_nwk_s_int_key(false, key, &net_id, &jr.join_eui, JOIN_NONCE, jr.dev_nonce)
            .ok()?;
    let app_s_key =
        keys::get_app_s_key(false, key, &net_id, &jr.join_eui, JOIN_NONCE, jr.dev_nonce).ok()?;
    let mut accept = PhyPayload {
        mhdr: MHDR {
            f_type: FType::JoinAccept,
            major: Major::LoRaWANR1,
        },
        payload: Payload::JoinAccept(JoinAcceptPayload {
            join_nonce: JOIN_NONCE,
            home_netid: net_id,
            devaddr: lrwn::DevAddr::from_be_bytes(DEV_ADDR.to_be_bytes()),
            dl_settings: DLSettings {
                opt_neg: false,
                rx2_dr: 0,
                rx1_dr_offset: 0,
            },
            rx_delay: 1,
            cflist: None,
        }),
        mic: None,
    };
    accept
        .set_join_accept_mic(JoinType::Join, &jr.join_eui, jr.dev_nonce, key)
        .ok()?;
    accept.encrypt_join_accept_payload(key).ok()?;
    Some((
        nwk_s_key.to_bytes(),
        app_s_key.to_bytes(),
        accept.to_vec().ok()?,
    ))
}

/// The inputs of the bare operations, built once: the Join-accept MIC input (MHDR | payload)
/// and the two derivation blocks.
struct BareInputs {
    accept_mic_input: [u8; 13],
    derive_nwk: [u8; 16],
    derive_app: [u8; 16],
}

fn bare(key: &[u8; 16], phy: &[u8; 23], inp: &BareInputs) -> ([u8; 16], [u8; 16], [u8; 16]) {
    // 1. Join-request MIC: CMAC over 19 bytes, compared with the frame's.
    let mut mac = <Cmac<Aes128> as KeyInit>::new(key.into());
    mac.update(&phy[..19]);
    let tag = mac.finalize().into_bytes();
    let ok = tag[..4] == phy[19..];
    // 2. Two derivation blocks.
    let aes = Aes128::new(key.into());
    let mut nwk = inp.derive_nwk.into();
    let mut app = inp.derive_app.into();
    aes.encrypt_block(&mut nwk);
    aes.encrypt_block(&mut app);
    // 3. Join-accept MIC: CMAC over 13 bytes.
    let mut mac = <Cmac<Aes128> as KeyInit>::new(key.into());
    mac.update(&inp.accept_mic_input);
    let tag2 = mac.finalize().into_bytes();
    // 4. One AES decryption of payload | MIC.
    let mut block = [0u8; 16];
    block[..12].copy_from_slice(&inp.accept_mic_input[1..]);
    block[12..].copy_from_slice(&tag2[..4]);
    let mut block = block.into();
    aes.decrypt_block(&mut block);
    let mut out: [u8; 16] = block.into();
    out[0] ^= u8::from(!ok);
    (nwk.into(), app.into(), out)
}

fn join_benches(c: &mut Criterion) {
    let app_key = AppKey::new(APP_KEY);
    let lrwn_key = lrwn::AES128Key::from_bytes(APP_KEY);

    // The three paths agree to the byte before anything is timed.
    let a = ours(&app_key, &JOIN_REQUEST).expect("our path");
    let b = lrwn_path(&lrwn_key, &JOIN_REQUEST).expect("lrwn path");
    assert_eq!((a.0, a.1, a.2.to_vec()), b, "ours and lrwn disagree");
    let mut derive_nwk = [0u8; 16];
    derive_nwk[0] = 1;
    derive_nwk[1..4].copy_from_slice(&[0x03, 0x02, 0x01]);
    derive_nwk[4..7].copy_from_slice(&[0x03, 0x02, 0x01]);
    derive_nwk[7..9].copy_from_slice(&JOIN_REQUEST[17..19]);
    let mut derive_app = derive_nwk;
    derive_app[0] = 2;
    let mut accept_mic_input = [0u8; 13];
    accept_mic_input[0] = 0x20;
    accept_mic_input[1..4].copy_from_slice(&[0x03, 0x02, 0x01]);
    accept_mic_input[4..7].copy_from_slice(&[0x03, 0x02, 0x01]);
    accept_mic_input[7..11].copy_from_slice(&DEV_ADDR.to_le_bytes());
    accept_mic_input[11] = 0;
    accept_mic_input[12] = 1;
    let inputs = BareInputs {
        accept_mic_input,
        derive_nwk,
        derive_app,
    };
    let d = bare(&APP_KEY, &JOIN_REQUEST, &inputs);
    assert_eq!((d.0, d.1), (a.0, a.1), "bare derivation disagrees");
    assert_eq!(d.2[..], a.2[1..], "bare Join-accept disagrees");

    let mut g = c.benchmark_group("join");
    g.bench_function("a_parse_verify", |bench| {
        bench.iter(|| {
            let req = JoinRequest::parse(black_box(&JOIN_REQUEST)).ok()?;
            let app = KeyCipher::new(black_box(&app_key));
            req.verify_mic(JoinRootKey::AppKey(&app)).ok()
        })
    });
    g.bench_function("a_lorawan_parse_verify", |bench| {
        bench.iter(|| {
            let req =
                lorawan::parser::JoinRequestPayload::new(black_box(&JOIN_REQUEST[..])).ok()?;
            let key = lorawan::keys::AES128(*black_box(&app_key).expose());
            req.validate_mic(&key).then_some(())
        })
    });
    g.bench_function("b_join_1_0", |bench| {
        bench.iter(|| ours(black_box(&app_key), black_box(&JOIN_REQUEST)))
    });
    g.bench_function("c_lrwn_join_1_0", |bench| {
        bench.iter(|| lrwn_path(black_box(&lrwn_key), black_box(&JOIN_REQUEST)))
    });
    g.bench_function("d_bare_aes_cmac", |bench| {
        bench.iter(|| {
            bare(
                black_box(&APP_KEY),
                black_box(&JOIN_REQUEST),
                black_box(&inputs),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, join_benches);
criterion_main!(benches);
