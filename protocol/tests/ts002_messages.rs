//! TS002 messages as brocaar/lorawan `backend`, ChirpStack and TTS write them (hand-written
//! examples with their field names; lowercase, uppercase and `0x` hex), exact serialised JSON,
//! and the refusals with their error kinds.

use protocol::ids::{DevAddr, DevEui};
use protocol::keywrap::KeyEnvelope;
use protocol::ts002::{
    AnsResult, Header, JoinAns, JoinReq, Message, MessageType, NetworkKeys, ProtocolVersion,
    RejoinReq, ResultCode,
};
use protocol::version::MacVersion;

/// A 23-byte Join-request: MHDR, JoinEUI 0102030405060708 and DevEUI 0807060504030201 (both
/// little-endian on air), DevNonce 0x0102, MIC.
const JOIN_REQUEST_HEX: &str = "00080706050403020101020304050607080201aabbccdd";

/// brocaar/lorawan `backend.JoinReqPayload` as ChirpStack v3 sends it: lowercase hex.
const BROCAAR_JOIN_REQ: &str = r#"{
  "ProtocolVersion": "1.0",
  "SenderID": "000001",
  "ReceiverID": "0102030405060708",
  "TransactionID": 1234,
  "MessageType": "JoinReq",
  "SenderToken": "0a0b",
  "MACVersion": "1.0.2",
  "PHYPayload": "00080706050403020101020304050607080201aabbccdd",
  "DevEUI": "0807060504030201",
  "DevAddr": "01020304",
  "DLSettings": "12",
  "RxDelay": 1,
  "CFList": "184f84e85684b85e84886684586e8400"
}"#;

/// The same request as TTS writes hex (uppercase), with `0x` prefixes, 1.1 and NSIDs.
const TTS_JOIN_REQ: &str = r#"{"ProtocolVersion":"1.1","SenderID":"000001","ReceiverID":"0102030405060708","SenderNSID":"ns1","TransactionID":4294967295,"MessageType":"JoinReq","MACVersion":"1.1","PHYPayload":"0x00080706050403020101020304050607080201AABBCCDD","DevEUI":"0X0807060504030201","DevAddr":"0x01020304","DLSettings":"0x80","RxDelay":5}"#;

fn header(v: ProtocolVersion, t: MessageType) -> Header {
    Header {
        protocol_version: v,
        sender_id: "000001".into(),
        receiver_id: "0102030405060708".into(),
        transaction_id: 1234,
        message_type: t,
        sender_token: None,
        receiver_token: None,
        sender_ns_id: None,
        receiver_ns_id: None,
        vs_extension: None,
    }
}

fn env(label: &str, hex_key: &str) -> KeyEnvelope {
    KeyEnvelope {
        kek_label: label.into(),
        aes_key: hex::decode(hex_key).unwrap(),
    }
}

#[test]
fn brocaar_join_req() {
    let r = JoinReq::parse(BROCAAR_JOIN_REQ.as_bytes()).unwrap();
    assert_eq!(r.header.protocol_version, ProtocolVersion::V1_0);
    assert_eq!(r.header.sender_id, "000001");
    assert_eq!(r.header.receiver_id, "0102030405060708");
    assert_eq!(r.header.transaction_id, 1234);
    assert_eq!(r.header.sender_token, Some(vec![0x0a, 0x0b]));
    assert_eq!(r.mac_version, MacVersion::V1_0_2);
    assert_eq!(hex::encode(&r.phy_payload), JOIN_REQUEST_HEX);
    assert_eq!(r.phy_payload.len(), 23);
    assert_eq!(r.dev_eui, DevEui::new(0x0807060504030201));
    assert_eq!(r.dev_addr, DevAddr::new(0x01020304));
    assert_eq!(r.dl_settings, 0x12);
    assert_eq!(r.rx_delay, 1);
    assert_eq!(
        r.cf_list.as_deref().map(hex::encode).as_deref(),
        Some("184f84e85684b85e84886684586e8400")
    );
}

#[test]
fn tts_join_req_uppercase_and_0x() {
    let r = JoinReq::parse(TTS_JOIN_REQ.as_bytes()).unwrap();
    let b = JoinReq::parse(BROCAAR_JOIN_REQ.as_bytes()).unwrap();
    assert_eq!(r.phy_payload, b.phy_payload);
    assert_eq!(r.dev_eui, b.dev_eui);
    assert_eq!(r.dev_addr, b.dev_addr);
    assert_eq!(r.dl_settings, 0x80);
    assert_eq!(r.mac_version, MacVersion::V1_1);
    assert_eq!(r.header.transaction_id, u32::MAX);
    assert_eq!(r.header.sender_ns_id.as_deref(), Some("ns1"));
    assert_eq!(r.cf_list, None);
}

#[test]
fn join_req_serialises_exactly() {
    let r = JoinReq::parse(BROCAAR_JOIN_REQ.as_bytes()).unwrap();
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(
        json,
        concat!(
            r#"{"ProtocolVersion":"1.0","SenderID":"000001","ReceiverID":"0102030405060708","#,
            r#""TransactionID":1234,"MessageType":"JoinReq","SenderToken":"0a0b","#,
            r#""MACVersion":"1.0.2","PHYPayload":"00080706050403020101020304050607080201aabbccdd","#,
            r#""DevEUI":"0807060504030201","DevAddr":"01020304","DLSettings":"12","RxDelay":1,"#,
            r#""CFList":"184f84e85684b85e84886684586e8400"}"#
        )
    );
    assert_eq!(JoinReq::parse(json.as_bytes()).unwrap(), r);
}

/// brocaar's join server answer for 1.0.x: NwkSKey in clear, AppSKey wrapped under the AS KEK
/// (the brocaar/ChirpStack KeyEnvelope vector: KEK 0807060504030201×2, key 0102030405060708×2).
const BROCAAR_JOIN_ANS_1_0: &str = r#"{
  "ProtocolVersion": "1.0",
  "SenderID": "0102030405060708",
  "ReceiverID": "000001",
  "TransactionID": 1234,
  "MessageType": "JoinAns",
  "ReceiverToken": "0a0b",
  "Result": {"ResultCode": "Success"},
  "PHYPayload": "20a1b2c3d4e5f60718293a4b5c6d7e8f90",
  "NwkSKey": {"KEKLabel": "", "AESKey": "000102030405060708090a0b0c0d0e0f"},
  "AppSKey": {"KEKLabel": "lora-app-server", "AESKey": "e3d5a47ba25cbe6e5da820846e0cb6a82b750c59d848ec7a"}
}"#;

/// A TTS-style 1.1 answer: uppercase hex, three network keys wrapped, SessionKeyID, Lifetime 0.
const TTS_JOIN_ANS_1_1: &str = r#"{"ProtocolVersion":"1.1","SenderID":"0102030405060708","ReceiverID":"000001","TransactionID":7,"MessageType":"JoinAns","Result":{"ResultCode":"Success","Description":""},"PHYPayload":"20A1B2C3D4E5F60718293A4B5C6D7E8F90","Lifetime":0,"FNwkSIntKey":{"KEKLabel":"ns-kek","AESKey":"1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5"},"SNwkSIntKey":{"KEKLabel":"ns-kek","AESKey":"0x1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5"},"NwkSEncKey":{"KEKLabel":"ns-kek","AESKey":"1fa68b0a8112b447aef34bd8fb5a7b829d3e862371d2cfe5"},"SessionKeyID":"01AB"}"#;

#[test]
fn brocaar_join_ans_1_0() {
    let a = JoinAns::parse(BROCAAR_JOIN_ANS_1_0.as_bytes()).unwrap();
    assert!(a.result.result_code.is_success());
    assert_eq!(a.result.description, None);
    assert_eq!(a.header.receiver_token, Some(vec![0x0a, 0x0b]));
    assert_eq!(a.phy_payload.as_ref().map(Vec::len), Some(17));
    assert_eq!(a.lifetime, None, "brocaar leaves Lifetime out");
    assert_eq!(
        a.network_keys,
        Some(NetworkKeys::V1_0 {
            nwk_s_key: env("", "000102030405060708090a0b0c0d0e0f")
        })
    );
    assert_eq!(
        a.app_s_key,
        Some(env(
            "lora-app-server",
            "e3d5a47ba25cbe6e5da820846e0cb6a82b750c59d848ec7a"
        ))
    );
    assert_eq!(a.session_key_id, None);
    // Keys never show in Debug output.
    let dbg = format!("{a:?}");
    assert!(
        !dbg.contains("e3d5a47b") && !dbg.contains("0a0b0c0d0e0f"),
        "{dbg}"
    );
    // Round trip through the serialised form.
    let json = serde_json::to_vec(&a).unwrap();
    assert_eq!(JoinAns::parse(&json).unwrap(), a);
}

#[test]
fn tts_join_ans_1_1() {
    let a = JoinAns::parse(TTS_JOIN_ANS_1_1.as_bytes()).unwrap();
    let wrapped = "1fa68b0a8112b447aef34bd8fb5a7b829d3e862371d2cfe5";
    assert_eq!(
        a.network_keys,
        Some(NetworkKeys::V1_1 {
            f_nwk_s_int_key: env("ns-kek", wrapped),
            s_nwk_s_int_key: env("ns-kek", wrapped),
            nwk_s_enc_key: env("ns-kek", wrapped),
        })
    );
    assert_eq!(a.lifetime, Some(0));
    assert_eq!(a.app_s_key, None);
    assert_eq!(a.session_key_id, Some(vec![0x01, 0xab]));
    assert_eq!(a.result.description.as_deref(), Some(""));
    let json = serde_json::to_string(&a).unwrap();
    assert!(json.contains(r#""FNwkSIntKey":{"KEKLabel":"ns-kek","AESKey":"1fa68b0a"#));
    assert!(
        !json.contains("NwkSKey\""),
        "no 1.0 key in a 1.1 answer: {json}"
    );
    assert_eq!(JoinAns::parse(json.as_bytes()).unwrap(), a);
}

#[test]
fn failure_answers() {
    for code in ["UnkownReceiver", "UnknownReceiver"] {
        let json = format!(
            r#"{{"ProtocolVersion":"1.0","SenderID":"0102030405060708","ReceiverID":"000001","TransactionID":9,"MessageType":"JoinAns","Result":{{"ResultCode":"{code}","Description":"unknown JoinEUI"}}}}"#
        );
        let a = JoinAns::parse(json.as_bytes()).unwrap();
        assert_eq!(a.result.result_code, ResultCode::UnknownReceiver);
        assert_eq!(a.result.description.as_deref(), Some("unknown JoinEUI"));
        assert_eq!(a.network_keys, None);
        // Written with the TS002-1.0 spelling.
        let out = serde_json::to_string(&a).unwrap();
        assert!(out.contains(r#""ResultCode":"UnkownReceiver""#), "{out}");
    }
    for (code, want) in [
        ("MalformedRequest", ResultCode::MalformedRequest),
        ("MalformedMessage", ResultCode::MalformedMessage),
        ("MICFailed", ResultCode::MicFailed),
        ("JoinReqFailed", ResultCode::JoinReqFailed),
        ("FrameReplayed", ResultCode::FrameReplayed),
        (
            "SomethingNew",
            ResultCode::Unrecognized("SomethingNew".into()),
        ),
    ] {
        let json = format!(
            r#"{{"ProtocolVersion":"1.1","SenderID":"a","ReceiverID":"b","TransactionID":1,"MessageType":"JoinAns","Result":{{"ResultCode":"{code}"}}}}"#
        );
        let a = JoinAns::parse(json.as_bytes()).unwrap();
        assert_eq!(a.result.result_code, want);
        assert!(!a.result.result_code.is_success());
        let back = serde_json::to_string(&a).unwrap();
        assert!(
            back.contains(&format!(r#""ResultCode":"{code}""#)),
            "{back}"
        );
    }
    // The answer a join server builds for a failed request.
    let req = JoinReq::parse(BROCAAR_JOIN_REQ.as_bytes()).unwrap();
    let ans = JoinAns::failure(&req.header, ResultCode::MicFailed, None);
    assert_eq!(ans.header.transaction_id, 1234);
    assert_eq!(ans.header.sender_id, "0102030405060708");
    assert_eq!(ans.header.receiver_token, Some(vec![0x0a, 0x0b]));
    assert_eq!(
        serde_json::to_string(&ans).unwrap(),
        r#"{"ProtocolVersion":"1.0","SenderID":"0102030405060708","ReceiverID":"000001","TransactionID":1234,"MessageType":"JoinAns","ReceiverToken":"0a0b","Result":{"ResultCode":"MICFailed"}}"#
    );
}

#[test]
fn refusals_have_kinds() {
    let ans = |extra: &str, code: &str| {
        format!(
            r#"{{"ProtocolVersion":"1.0","SenderID":"a","ReceiverID":"b","TransactionID":1,"MessageType":"JoinAns","Result":{{"ResultCode":"{code}"}}{extra}}}"#
        )
    };
    let k = r#"{"KEKLabel":"","AESKey":"000102030405060708090a0b0c0d0e0f"}"#;
    let cases: Vec<(String, &str)> = vec![
        (
            ans(&format!(r#","NwkSKey":{k},"FNwkSIntKey":{k}"#), "Failure"),
            "inconsistent_fields",
        ),
        (
            ans(&format!(r#","FNwkSIntKey":{k},"SNwkSIntKey":{k}"#), "Other"),
            "inconsistent_fields",
        ),
        (
            ans(&format!(r#","NwkSKey":{k},"AppSKey":{k}"#), "Success"),
            "missing_field",
        ),
        (
            ans(&format!(r#","PHYPayload":"20","AppSKey":{k}"#), "Success"),
            "missing_field",
        ),
        (
            ans(&format!(r#","PHYPayload":"20","NwkSKey":{k}"#), "Success"),
            "missing_field",
        ),
        (ans(r#","PHYPayload":"2""#, "Other"), "json"),
        (ans(r#","PHYPayload":"zz""#, "Other"), "json"),
        (ans("", "Other").replace("\"1.0\"", "\"2.0\""), "json"),
        (
            ans("", "Other").replace("JoinAns", "JoinReq"),
            "message_type",
        ),
        (
            ans("", "Other").replace("\"TransactionID\":1", "\"TransactionID\":-1"),
            "json",
        ),
        (ans("", "Other").replace("\"TransactionID\":1,", ""), "json"),
        ("{".into(), "json"),
    ];
    for (json, kind) in &cases {
        let e = JoinAns::parse(json.as_bytes()).unwrap_err();
        assert_eq!(e.kind(), *kind, "{json}: {e}");
        assert!(e.result_code(ProtocolVersion::V1_0).is_malformed());
    }
    let req_cases = [
        (BROCAAR_JOIN_REQ.replace("\"12\"", "\"1234\""), "json"),
        (BROCAAR_JOIN_REQ.replace("\"12\"", "\"\""), "json"),
        (
            BROCAAR_JOIN_REQ.replace("\"RxDelay\": 1", "\"RxDelay\": 16"),
            "invalid_field",
        ),
        (
            BROCAAR_JOIN_REQ.replace("586e8400", "586e84"),
            "invalid_field",
        ),
        (BROCAAR_JOIN_REQ.replace("\"1.0.2\"", "\"1.2\""), "json"),
        (
            BROCAAR_JOIN_REQ.replace("\"01020304\"", "\"010203\""),
            "json",
        ),
        (
            BROCAAR_JOIN_REQ.replace("\"JoinReq\"", "\"JoinAns\""),
            "message_type",
        ),
    ];
    for (json, kind) in &req_cases {
        let e = JoinReq::parse(json.as_bytes()).unwrap_err();
        assert_eq!(e.kind(), *kind, "{json}: {e}");
    }
    let mut bad = BROCAAR_JOIN_REQ.as_bytes().to_vec();
    let i = bad.len() - 3;
    bad[i] = 0xff;
    assert_eq!(JoinReq::parse(&bad).unwrap_err().kind(), "utf8");
    assert_eq!(
        Message::parse(br#"{"MessageType":"PRStartReq"}"#)
            .unwrap_err()
            .kind(),
        "message_type"
    );
}

#[test]
fn message_dispatch_and_rejoin() {
    match Message::parse(BROCAAR_JOIN_REQ.as_bytes()).unwrap() {
        Message::JoinReq(r) => assert_eq!(r.dl_settings, 0x12),
        m => panic!("{m:?}"),
    }
    assert!(matches!(
        Message::parse(BROCAAR_JOIN_ANS_1_0.as_bytes()).unwrap(),
        Message::JoinAns(_)
    ));
    let rejoin = BROCAAR_JOIN_REQ
        .replace("\"JoinReq\"", "\"RejoinReq\"")
        .replace("\"1.0.2\"", "\"1.1\"");
    let m = Message::parse(rejoin.as_bytes()).unwrap();
    match &m {
        Message::RejoinReq(r) => {
            assert_eq!(r.mac_version, MacVersion::V1_1);
            assert_eq!(r.header.message_type, MessageType::RejoinReq);
        }
        m => panic!("{m:?}"),
    }
    assert_eq!(Message::parse(&m.to_json().unwrap()).unwrap(), m);
    assert!(RejoinReq::parse(BROCAAR_JOIN_REQ.as_bytes()).is_err());
    let built = JoinAns {
        header: header(ProtocolVersion::V1_1, MessageType::JoinAns),
        result: AnsResult {
            result_code: ResultCode::Success,
            description: None,
        },
        phy_payload: Some(vec![0x20; 17]),
        lifetime: Some(0),
        network_keys: Some(NetworkKeys::V1_0 {
            nwk_s_key: env("", "000102030405060708090a0b0c0d0e0f"),
        }),
        app_s_key: Some(env(
            "as",
            "e3d5a47ba25cbe6e5da820846e0cb6a82b750c59d848ec7a",
        )),
        session_key_id: None,
    };
    let m = Message::JoinAns(Box::new(built));
    assert_eq!(Message::parse(&m.to_json().unwrap()).unwrap(), m);
}

/// A successful answer with every field present is written in one order, byte for byte: the
/// header's fields, then `Result`, `PHYPayload`, `Lifetime`, the keys and `SessionKeyID` (the
/// form both join servers of this repository have written; network servers read it).
#[test]
fn a_full_join_ans_is_written_exactly() {
    let mut h = header(ProtocolVersion::V1_1, MessageType::JoinAns);
    h.sender_token = Some(vec![0x01]);
    h.receiver_token = Some(vec![0x0a, 0x0b]);
    h.sender_ns_id = Some("ns-a".into());
    h.receiver_ns_id = Some("ns-b".into());
    h.vs_extension = Some(serde_json::json!({"MACVersion": "1.1", "Owner": "t"}));
    let wrapped = "1fa68b0a8112b447aef34bd8fb5a7b829d3e862371d2cfe5";
    let mut a = JoinAns {
        header: h,
        result: AnsResult {
            result_code: ResultCode::Success,
            description: Some(String::new()),
        },
        phy_payload: Some(vec![0x20, 0xa1]),
        lifetime: Some(0),
        network_keys: Some(NetworkKeys::V1_1 {
            f_nwk_s_int_key: env("ns-kek", wrapped),
            s_nwk_s_int_key: env("ns-kek", wrapped),
            nwk_s_enc_key: env("", "000102030405060708090a0b0c0d0e0f"),
        }),
        app_s_key: Some(env("as", wrapped)),
        session_key_id: Some(vec![0x01, 0xab]),
    };
    let json = serde_json::to_string(&a).unwrap();
    assert_eq!(
        json,
        concat!(
            r#"{"ProtocolVersion":"1.1","SenderID":"000001","ReceiverID":"0102030405060708","#,
            r#""TransactionID":1234,"MessageType":"JoinAns","SenderToken":"01","ReceiverToken":"0a0b","#,
            r#""SenderNSID":"ns-a","ReceiverNSID":"ns-b","VSExtension":{"MACVersion":"1.1","Owner":"t"},"#,
            r#""Result":{"ResultCode":"Success","Description":""},"PHYPayload":"20a1","Lifetime":0,"#,
            r#""FNwkSIntKey":{"KEKLabel":"ns-kek","AESKey":"1fa68b0a8112b447aef34bd8fb5a7b829d3e862371d2cfe5"},"#,
            r#""SNwkSIntKey":{"KEKLabel":"ns-kek","AESKey":"1fa68b0a8112b447aef34bd8fb5a7b829d3e862371d2cfe5"},"#,
            r#""NwkSEncKey":{"KEKLabel":"","AESKey":"000102030405060708090a0b0c0d0e0f"},"#,
            r#""AppSKey":{"KEKLabel":"as","AESKey":"1fa68b0a8112b447aef34bd8fb5a7b829d3e862371d2cfe5"},"#,
            r#""SessionKeyID":"01ab"}"#
        )
    );
    assert_eq!(JoinAns::parse(json.as_bytes()).unwrap(), a);
    // A 1.0 answer: NwkSKey in the keys' place.
    a.network_keys = Some(NetworkKeys::V1_0 {
        nwk_s_key: env("ns-kek", wrapped),
    });
    let json = serde_json::to_string(&a).unwrap();
    assert!(
        json.contains(r#""Lifetime":0,"NwkSKey":{"KEKLabel":"ns-kek","AESKey":"1fa6"#),
        "{json}"
    );
    assert!(
        json.contains(r#"},"AppSKey":"#) && !json.contains("FNwkSIntKey"),
        "{json}"
    );
    assert_eq!(JoinAns::parse(json.as_bytes()).unwrap(), a);
}
