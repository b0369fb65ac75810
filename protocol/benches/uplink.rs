//! Data uplink on the network server: parse + MIC check + FRMPayload decryption of a LoRaWAN 1.0
//! uplink (12-byte payload, FPort 1), with our code and with ChirpStack's `lrwn` 4.13 doing the
//! same work.
//!
//! `cargo bench -p protocol --bench uplink -- --warm-up-time 1 --measurement-time 3`
//!
//! - `ours`: `DataFrame::parse` + `open_uplink` with the session's key schedules expanded once
//!   (`SessionCrypto`), as a holder of many frames of one session would keep them.
//! - `ours_keys_per_frame`: the same, expanding the key schedules on every frame (what `lrwn`
//!   does, and what the network server does, since it keeps no key schedules per session).
//! - `ours_keys_per_frame_unwrap`: the same plus an RFC 3394 unwrap of the AppSKey envelope
//!   under the AS KEK: the cost the network server avoids by opening the AppSKey once per
//!   session.
//! - `lorawan_0_9`: the `lorawan` crate's public API (`EncryptedDataPayload`: copy, validate_mic,
//!   decrypt), for the record of why the frame path is hand-written.
//! - `lrwn`: `PhyPayload::from_slice`, set the full FCnt, `validate_uplink_data_mic`,
//!   `decrypt_frm_payload`, as ChirpStack's uplink handler does.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use protocol::data::{
    DataFrame, FramePayload, FrmPayload, NetworkSessionKeys, SessionCrypto, Uplink, UplinkMicParams,
};
use protocol::ids::DevAddr;
use protocol::keys::{AppSKey, Kek, NwkSKey};
use protocol::keywrap::{unwrap_key, wrap_key};

const NWK_S_KEY: [u8; 16] = [
    0x44, 0x02, 0x42, 0x41, 0xed, 0x4c, 0xe9, 0xa6, 0x8c, 0x6a, 0x8b, 0xc0, 0x55, 0x23, 0x3f, 0xd3,
];
const APP_S_KEY: [u8; 16] = [
    0xec, 0x92, 0x58, 0x02, 0xae, 0x43, 0x0c, 0xa7, 0x7f, 0xd3, 0xdd, 0x73, 0xcb, 0x2c, 0xc5, 0x88,
];
const FCNT: u32 = 0x0001_0042;
const PAYLOAD: &[u8; 12] = b"meter:012345";

fn frame() -> Vec<u8> {
    let s = SessionCrypto::new(
        &NetworkSessionKeys::V1_0 {
            nwk_s_key: NwkSKey::new(NWK_S_KEY),
        },
        Some(&AppSKey::new(APP_S_KEY)),
    );
    Uplink {
        confirmed: false,
        dev_addr: DevAddr::new(0x26011BDA),
        fcnt: FCNT,
        adr: true,
        adr_ack_req: false,
        ack: false,
        class_b: false,
        fopts: vec![],
        payload: FramePayload::Application {
            f_port: 1,
            payload: FrmPayload(PAYLOAD.to_vec()),
        },
    }
    .build(&s, &UplinkMicParams::default())
    .expect("bench frame builds")
}

fn ours(s: &SessionCrypto, phy: &[u8]) -> Vec<u8> {
    let f = DataFrame::parse(phy).expect("parses");
    match f
        .open_uplink(s, FCNT, &UplinkMicParams::default())
        .expect("MIC ok")
        .payload
    {
        FramePayload::Application { payload, .. } => payload.0,
        _ => unreachable!("bench frame is FPort 1"),
    }
}

fn lorawan_0_9(phy: &[u8]) -> Vec<u8> {
    let nwk = lorawan::keys::AES128(NWK_S_KEY);
    let app = lorawan::keys::AES128(APP_S_KEY);
    let enc = lorawan::parser::EncryptedDataPayload::new(phy.to_vec()).expect("parses");
    assert!(enc.validate_mic(&nwk, FCNT));
    let dec = enc.decrypt(Some(&nwk), Some(&app), FCNT).expect("decrypts");
    match dec.frm_payload() {
        lorawan::parser::FRMPayload::Data(d) => d.to_vec(),
        _ => unreachable!("bench frame is FPort 1"),
    }
}

fn lrwn_uplink(phy: &[u8]) -> Vec<u8> {
    let nwk = lrwn::AES128Key::from_bytes(NWK_S_KEY);
    let app = lrwn::AES128Key::from_bytes(APP_S_KEY);
    let mut p = lrwn::PhyPayload::from_slice(phy).expect("parses");
    if let lrwn::Payload::MACPayload(pl) = &mut p.payload {
        pl.fhdr.f_cnt = FCNT;
    }
    let ok = p
        .validate_uplink_data_mic(lrwn::MACVersion::LoRaWAN1_0, 0, 0, 0, &nwk, &nwk)
        .expect("validates");
    assert!(ok);
    p.decrypt_frm_payload(&app).expect("decrypts");
    match p.payload {
        lrwn::Payload::MACPayload(pl) => match pl.frm_payload {
            Some(lrwn::FRMPayload::Raw(d)) => d,
            _ => unreachable!("bench frame is FPort 1"),
        },
        _ => unreachable!("bench frame is a data frame"),
    }
}

fn bench(c: &mut Criterion) {
    let phy = frame();
    let session = SessionCrypto::new(
        &NetworkSessionKeys::V1_0 {
            nwk_s_key: NwkSKey::new(NWK_S_KEY),
        },
        Some(&AppSKey::new(APP_S_KEY)),
    );
    // All four do the same work and get the same plaintext.
    assert_eq!(ours(&session, &phy), PAYLOAD);
    assert_eq!(lorawan_0_9(&phy), PAYLOAD);
    assert_eq!(lrwn_uplink(&phy), PAYLOAD);

    let mut g = c.benchmark_group("uplink_1_0_fport1_12B");
    g.bench_function("ours", |b| {
        b.iter(|| ours(black_box(&session), black_box(&phy)))
    });
    g.bench_function("ours_keys_per_frame", |b| {
        b.iter(|| {
            let s = SessionCrypto::new(
                &NetworkSessionKeys::V1_0 {
                    nwk_s_key: NwkSKey::new(black_box(NWK_S_KEY)),
                },
                Some(&AppSKey::new(black_box(APP_S_KEY))),
            );
            ours(&s, black_box(&phy))
        })
    });
    let as_kek = Kek::new([0x22; 16]);
    let wrapped = wrap_key(&as_kek, &AppSKey::new(APP_S_KEY));
    g.bench_function("ours_keys_per_frame_unwrap", |b| {
        b.iter(|| {
            let app: AppSKey = unwrap_key(black_box(&as_kek), black_box(&wrapped)).unwrap();
            let s = SessionCrypto::new(
                &NetworkSessionKeys::V1_0 {
                    nwk_s_key: NwkSKey::new(black_box(NWK_S_KEY)),
                },
                Some(&app),
            );
            ours(&s, black_box(&phy))
        })
    });
    g.bench_function("lorawan_0_9", |b| b.iter(|| lorawan_0_9(black_box(&phy))));
    g.bench_function("lrwn", |b| b.iter(|| lrwn_uplink(black_box(&phy))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
