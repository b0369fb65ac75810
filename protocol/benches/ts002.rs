//! The TS002 JSON of the join server link, as the servers write and read it per join:
//!
//! - `join_req_write` / `join_req_parse`: the network server writes a JoinReq (with the
//!   `VSExtension` it sends), the join server reads it;
//! - `join_ans_write` / `join_ans_parse`: the join server writes a successful 1.0 JoinAns
//!   (NwkSKey and AppSKey wrapped, the `VSExtension` with MACVersion, DLSettings, RxDelay and
//!   Owner), the network server reads it.
//!
//! Run: `cargo bench -p protocol --bench ts002 -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use protocol::ids::{DevAddr, DevEui};
use protocol::keywrap::KeyEnvelope;
use protocol::ts002::{
    AnsResult, Header, JoinAns, JoinReq, MessageType, NetworkKeys, ProtocolVersion, ResultCode,
    VS_FOLLOWS_JS_MAC_VERSION,
};
use protocol::version::MacVersion;

fn header(t: MessageType) -> Header {
    Header {
        protocol_version: ProtocolVersion::V1_1,
        sender_id: "000013".into(),
        receiver_id: "70b3d57ed0000000".into(),
        transaction_id: 123_456_789,
        message_type: t,
        sender_token: None,
        receiver_token: None,
        sender_ns_id: None,
        receiver_ns_id: None,
        vs_extension: None,
    }
}

fn join_req() -> JoinReq {
    let mut header = header(MessageType::JoinReq);
    header.vs_extension = Some(serde_json::json!({ VS_FOLLOWS_JS_MAC_VERSION: true }));
    JoinReq {
        header,
        mac_version: MacVersion::V1_0_3,
        phy_payload: vec![0x00; 23],
        dev_eui: DevEui::new(0x0004_a30b_001c_0530),
        dev_addr: DevAddr::new(0x2601_2345),
        dl_settings: 0x00,
        rx_delay: 1,
        cf_list: None,
    }
}

fn join_ans() -> JoinAns {
    let mut header = header(MessageType::JoinAns);
    std::mem::swap(&mut header.sender_id, &mut header.receiver_id);
    header.vs_extension = Some(serde_json::json!({
        "MACVersion": "1.0.3", "DLSettings": "00", "RxDelay": 1, "Owner": "tenant-17",
    }));
    let wrapped = |b: u8| KeyEnvelope {
        kek_label: "ns-kek".into(),
        aes_key: vec![b; 24],
    };
    JoinAns {
        header,
        result: AnsResult {
            result_code: ResultCode::Success,
            description: None,
        },
        phy_payload: Some(vec![0x20; 17]),
        lifetime: Some(0),
        network_keys: Some(NetworkKeys::V1_0 {
            nwk_s_key: wrapped(1),
        }),
        app_s_key: Some(KeyEnvelope {
            kek_label: "as-kek".into(),
            aes_key: vec![2; 24],
        }),
        session_key_id: None,
    }
}

fn bench(c: &mut Criterion) {
    let req = join_req();
    let req_json = serde_json::to_vec(&req).unwrap();
    let ans = join_ans();
    let ans_json = serde_json::to_vec(&ans).unwrap();
    c.bench_function("join_req_write", |b| {
        b.iter(|| serde_json::to_vec(black_box(&req)).unwrap())
    });
    c.bench_function("join_req_parse", |b| {
        b.iter(|| JoinReq::parse(black_box(&req_json)).unwrap())
    });
    c.bench_function("join_ans_write", |b| {
        b.iter(|| serde_json::to_vec(black_box(&ans)).unwrap())
    });
    c.bench_function("join_ans_parse", |b| {
        b.iter(|| JoinAns::parse_answer_to(black_box(&ans_json), MessageType::JoinReq).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
