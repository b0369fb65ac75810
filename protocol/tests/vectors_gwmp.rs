//! Every entry of `tests/vectors/gwmp_datagrams.json`: the 16 real datagrams (helium/semtech-udp
//! and chirpstack-gateway-bridge tests) and the 5 PROTOCOL.TXT JSON examples.
//!
//! The PROTOCOL.TXT examples have `data` strings that are not strict standard base64 (URL-safe
//! `-`, missing padding, non-zero trailing bits). They are handled explicitly: the strict
//! parser must REJECT them with kind `base64`; then the same JSON, with each `data` decoded
//! leniently (checking the decoded length equals `size`, as the vector notes state) and
//! re-encoded strictly, must parse with every field as in the example.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use protocol::gwmp::{CodingRate, CrcStatus, DataRate, Identifier, Packet, TxAckCode, TxTiming};
use protocol::ids::GatewayEui;
use serde_json::Value;

fn vectors() -> Value {
    let text = include_str!("vectors/gwmp_datagrams.json");
    serde_json::from_str(text).expect("vector file is JSON")
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("field {k} missing in {v}"))
}

fn hz(mhz: f64) -> u32 {
    (mhz * 1e6).round() as u32
}

/// Checks a parsed rxpk against its JSON object from the vector file.
fn check_rxpk(id: &str, got: &protocol::gwmp::RxPk, want: &Value) {
    assert_eq!(
        u64::from(got.tmst),
        want["tmst"].as_u64().unwrap(),
        "{id} tmst"
    );
    assert_eq!(got.freq_hz, hz(want["freq"].as_f64().unwrap()), "{id} freq");
    assert_eq!(got.time.as_deref(), want["time"].as_str(), "{id} time");
    assert_eq!(got.tmms, want["tmms"].as_u64(), "{id} tmms");
    assert_eq!(got.chan.map(u64::from), want["chan"].as_u64(), "{id} chan");
    assert_eq!(got.rfch.map(u64::from), want["rfch"].as_u64(), "{id} rfch");
    let stat = match want["stat"].as_i64().unwrap() {
        1 => CrcStatus::Ok,
        -1 => CrcStatus::Bad,
        0 => CrcStatus::NoCrc,
        other => panic!("{id}: stat {other}"),
    };
    assert_eq!(got.stat, stat, "{id} stat");
    match (&want["datr"], got.datr) {
        (Value::String(d), DataRate::Lora { .. }) => assert_eq!(&got.datr.to_string(), d),
        (Value::Number(n), DataRate::Fsk { bitrate }) => {
            assert_eq!(Some(u64::from(bitrate)), n.as_u64(), "{id} datr")
        }
        (w, g) => panic!("{id}: datr {w} parsed as {g:?}"),
    }
    assert_eq!(
        format!("{:?}", got.datr.modulation()).to_uppercase(),
        s(want, "modu"),
        "{id} modu"
    );
    let codr = want["codr"].as_str().map(|c| match c {
        "4/5" => CodingRate::Cr4_5,
        "4/6" => CodingRate::Cr4_6,
        "4/7" => CodingRate::Cr4_7,
        "4/8" => CodingRate::Cr4_8,
        other => panic!("{id}: codr {other}"),
    });
    assert_eq!(got.codr, codr, "{id} codr");
    assert_eq!(got.rssi.map(i64::from), want["rssi"].as_i64(), "{id} rssi");
    assert_eq!(got.lsnr, want["lsnr"].as_f64(), "{id} lsnr");
    assert_eq!(got.jver.map(u64::from), want["jver"].as_u64(), "{id} jver");
    assert_eq!(
        got.data.len() as u64,
        want["size"].as_u64().unwrap(),
        "{id} size"
    );
    match want["rsig"].as_array() {
        None => assert!(got.rsig.is_empty(), "{id} rsig"),
        Some(rsig) => {
            assert_eq!(got.rsig.len(), rsig.len(), "{id} rsig");
            for (g, w) in got.rsig.iter().zip(rsig) {
                assert_eq!(u64::from(g.ant), w["ant"].as_u64().unwrap());
                assert_eq!(u64::from(g.chan), w["chan"].as_u64().unwrap());
                assert_eq!(i64::from(g.rssic), w["rssic"].as_i64().unwrap());
                assert_eq!(g.lsnr, w["lsnr"].as_f64());
            }
            // jver 2 has no top-level rssi/lsnr: the helpers fall back to rsig.
            assert_eq!(got.best_rssi(), got.rsig.iter().map(|r| r.rssic).max());
        }
    }
}

/// Parses, checks the ack and the round trip parse(serialize(parse(bytes))) == parse(bytes).
fn parse_round_trip(id: &str, bytes: &[u8]) -> Packet {
    let p = Packet::parse(bytes).unwrap_or_else(|e| panic!("{id}: {e} ({})", e.kind()));
    let again = Packet::parse(&p.to_bytes().unwrap()).unwrap();
    assert_eq!(again, p, "{id}: round trip");
    p
}

/// The real datagrams. Returns how many entries were checked.
fn check_datagrams(v: &Value) -> usize {
    let mut checked = 0;
    for d in v["datagrams"].as_array().unwrap() {
        let id = s(d, "id");
        assert!(d["source"]["repo"].is_string(), "{id}: source kept");
        let bytes = hex::decode(s(d, "datagram_hex")).unwrap();
        assert_eq!(bytes.len() as u64, d["length"].as_u64().unwrap(), "{id}");
        let token = hex::decode(s(d, "token_hex")).unwrap();
        let ident = Identifier::from_byte(d["identifier"].as_u64().unwrap() as u8).unwrap();

        if id == "gwmp-csgb-pull-resp-min" {
            // `{}` has no "txpk". lora_pkt_fwd refuses such a PULL_RESP ("no txpk object in
            // JSON, TX aborted"), and so does this codec: the header is valid, the body is not.
            let e = Packet::parse(&bytes).unwrap_err();
            assert_eq!(e.kind(), "json", "{id}");
            assert!(e.to_string().contains("txpk"), "{id}: {e}");
            checked += 1;
            continue;
        }

        let p = parse_round_trip(id, &bytes);
        assert_eq!(p.identifier(), ident, "{id}");
        assert_eq!(
            p.token().0.as_slice(),
            token.as_slice(),
            "{id} token verbatim"
        );
        assert_eq!(
            p.gateway().map(|g| g.to_string().to_lowercase()),
            d["gateway_eui"].as_str().map(str::to_owned),
            "{id} gateway EUI"
        );
        assert_eq!(
            p.ack().map(hex::encode),
            d["expected_server_reply_hex"].as_str().map(str::to_owned),
            "{id} ack"
        );
        match &p {
            Packet::PushData(pd) => {
                let json = &d["json"];
                let want_rxpk = json["rxpk"].as_array().cloned().unwrap_or_default();
                assert_eq!(pd.rxpk.len(), want_rxpk.len(), "{id}");
                let phys = d["rxpk_phy_payloads"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                assert_eq!(phys.len(), want_rxpk.len(), "{id}");
                for ((got, want), phy) in pd.rxpk.iter().zip(&want_rxpk).zip(&phys) {
                    check_rxpk(id, got, want);
                    assert_eq!(hex::encode(&got.data), s(phy, "phy_payload_hex"), "{id}");
                    assert_eq!(
                        u64::from(got.data[0] >> 5),
                        phy["mtype_bits"].as_u64().unwrap()
                    );
                }
                match (&pd.stat, json.get("stat")) {
                    (None, None) => {}
                    (Some(st), Some(w)) => {
                        assert_eq!(st.time.as_deref(), w["time"].as_str(), "{id}");
                        assert_eq!(st.lati, w["lati"].as_f64(), "{id}");
                        assert_eq!(st.long, w["long"].as_f64(), "{id}");
                        assert_eq!(st.rxnb.map(u64::from), w["rxnb"].as_u64(), "{id}");
                        assert_eq!(st.rxok.map(u64::from), w["rxok"].as_u64(), "{id}");
                        assert_eq!(st.rxfw.map(u64::from), w["rxfw"].as_u64(), "{id}");
                        // "ackr": null reads as None, like an absent field.
                        assert_eq!(st.ackr, w["ackr"].as_f64(), "{id}");
                        assert_eq!(st.dwnb.map(u64::from), w["dwnb"].as_u64(), "{id}");
                        assert_eq!(st.txnb.map(u64::from), w["txnb"].as_u64(), "{id}");
                    }
                    (got, want) => panic!("{id}: stat {got:?} vs {want:?}"),
                }
            }
            Packet::TxAck(a) => {
                let err = d["json"]["txpk_ack"]["error"].as_str();
                match err {
                    None => assert!(a.is_success(), "{id}: no JSON / NUL is success"),
                    Some(code) => {
                        assert!(!a.is_success(), "{id}");
                        assert_eq!(a.error.as_ref().map(TxAckCode::as_str), Some(code));
                    }
                }
            }
            Packet::PullData { .. } | Packet::PushAck { .. } | Packet::PullAck { .. } => {
                assert_eq!(
                    p.to_bytes().unwrap(),
                    bytes,
                    "{id}: fixed datagram re-encodes exactly"
                );
            }
            Packet::PullResp(_) => panic!("{id}: no PULL_RESP vector is expected to parse"),
        }
        checked += 1;
    }
    checked
}

/// Lenient base64 (URL-safe or standard alphabet, optional padding, trailing bits allowed),
/// used only to recover the bytes the PROTOCOL.TXT examples meant.
fn lenient_decode(s: &str) -> Vec<u8> {
    let std_alphabet: String = s
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    engine.decode(std_alphabet).unwrap()
}

/// Replaces every `data` string under `v` by its strict re-encoding; returns how many were
/// not strict base64 to begin with.
fn make_strict(v: &mut Value) -> usize {
    let mut changed = 0;
    match v {
        Value::Object(m) => {
            if let (Some(Value::String(d)), Some(size)) = (m.get("data"), m.get("size")) {
                let bytes = lenient_decode(d);
                assert_eq!(bytes.len() as u64, size.as_u64().unwrap(), "lenient {d}");
                let strict = STANDARD.encode(&bytes);
                if &strict != d {
                    changed += 1;
                }
                m.insert("data".into(), Value::String(strict));
            }
            for (_, x) in m.iter_mut() {
                changed += make_strict(x);
            }
        }
        Value::Array(a) => {
            for x in a {
                changed += make_strict(x);
            }
        }
        _ => {}
    }
    changed
}

fn datagram(ident: Identifier, json: &Value) -> Vec<u8> {
    let mut b = vec![2, 0xab, 0xcd, ident as u8];
    if ident != Identifier::PullResp {
        b.extend_from_slice(&GatewayEui::new(0xaa555a0000000001).to_be_bytes());
    }
    b.extend_from_slice(serde_json::to_string(json).unwrap().as_bytes());
    b
}

fn check_protocol_txt(v: &Value) -> usize {
    let ex = &v["protocol_txt_json_examples"];
    assert_eq!(s(&ex["source"], "repo"), "Lora-net/packet_forwarder");
    let examples = ex["examples"].as_object().unwrap();
    let mut checked = 0;
    for (name, json) in examples {
        let ident = if json.get("rxpk").is_some() || json.get("stat").is_some() {
            Identifier::PushData
        } else if json.get("txpk").is_some() {
            Identifier::PullResp
        } else if json.get("txpk_ack").is_some() {
            Identifier::TxAck
        } else {
            panic!("{name}: unexpected example")
        };
        let mut strict_json = json.clone();
        let non_strict = make_strict(&mut strict_json);
        if non_strict > 0 {
            let e = Packet::parse(&datagram(ident, json)).unwrap_err();
            assert_eq!(e.kind(), "base64", "{name}: strict parser must refuse {e}");
        }
        let p = parse_round_trip(name, &datagram(ident, &strict_json));
        match (name.as_str(), &p) {
            ("rxpk_example_section4", Packet::PushData(pd)) => {
                assert_eq!(
                    non_strict, 2,
                    "two of the three data strings are not strict"
                );
                let want = strict_json["rxpk"].as_array().unwrap();
                assert_eq!(pd.rxpk.len(), 3);
                for (got, want) in pd.rxpk.iter().zip(want) {
                    check_rxpk(name, got, want);
                }
                assert_eq!(pd.rxpk[0].freq_hz, 866_349_812);
                assert_eq!(pd.rxpk[1].datr, DataRate::Fsk { bitrate: 50_000 });
                assert_eq!(pd.rxpk[1].codr, None);
                assert_eq!(pd.rxpk[1].data, b"TEST_PACKET_1234");
            }
            ("stat_example_section4", Packet::PushData(pd)) => {
                assert_eq!(non_strict, 0);
                let st = pd.stat.as_ref().unwrap();
                assert_eq!(st.time.as_deref(), Some("2014-01-12 08:59:28 GMT"));
                assert_eq!(
                    (st.lati, st.long, st.alti),
                    (Some(46.24), Some(3.2523), Some(145))
                );
                assert_eq!((st.rxnb, st.rxok, st.rxfw), (Some(2), Some(2), Some(2)));
                assert_eq!((st.ackr, st.dwnb, st.txnb), (Some(100.0), Some(2), Some(2)));
            }
            ("txpk_example_lora_section6", Packet::PullResp(pr)) => {
                assert_eq!(non_strict, 1);
                let t = &pr.txpk;
                assert_eq!(t.timing, TxTiming::Immediate);
                assert_eq!(t.freq_hz, 864_123_456);
                assert_eq!((t.rfch, t.powe), (0, Some(14)));
                assert_eq!(t.datr, DataRate::lora(11, 125).unwrap());
                assert_eq!(t.codr, Some(CodingRate::Cr4_6));
                assert_eq!(t.ipol, Some(false));
                assert_eq!(t.data.len(), 32);
            }
            ("txpk_example_fsk_section6", Packet::PullResp(pr)) => {
                assert_eq!(non_strict, 1);
                let t = &pr.txpk;
                assert_eq!(t.timing, TxTiming::Immediate);
                assert_eq!(t.freq_hz, 861_300_000);
                assert_eq!(t.powe, Some(12));
                assert_eq!(t.datr, DataRate::Fsk { bitrate: 50_000 });
                assert_eq!(t.fdev, Some(3000));
                assert_eq!(t.data.len(), 32);
            }
            ("txpk_ack_example_section6", Packet::TxAck(a)) => {
                assert_eq!(non_strict, 0);
                assert_eq!(a.error, Some(TxAckCode::CollisionPacket));
                assert!(!a.is_success());
            }
            (name, p) => panic!("{name}: unexpected {p:?}"),
        }
        checked += 1;
    }
    checked
}

#[test]
fn every_gwmp_vector() {
    let v = vectors();
    let entries = v["datagrams"].as_array().unwrap().len()
        + v["protocol_txt_json_examples"]["examples"]
            .as_object()
            .unwrap()
            .len();
    let checked = check_datagrams(&v) + check_protocol_txt(&v);
    println!("gwmp vectors checked: {checked} of {entries}");
    assert_eq!(checked, entries);
    assert_eq!(entries, 21);
}

/// Negative cases derived from the real vectors: each must fail with the stated kind.
#[test]
fn derived_negatives_fail_with_their_kind() {
    let v = vectors();
    let by_id = |id: &str| {
        let d = v["datagrams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .unwrap();
        hex::decode(s(d, "datagram_hex")).unwrap()
    };
    let rxpk = by_id("gwmp-helium-push-data-rxpk");
    let text = String::from_utf8(rxpk[12..].to_vec()).unwrap();
    let with_json = |json: &str| {
        let mut b = rxpk[..12].to_vec();
        b.extend_from_slice(json.as_bytes());
        b
    };
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("version 1", [&[1u8][..], &rxpk[1..]].concat(), "version"),
        ("version 3", [&[3u8][..], &rxpk[1..]].concat(), "version"),
        (
            "identifier 6",
            [&rxpk[..3], &[6u8][..], &rxpk[4..]].concat(),
            "identifier",
        ),
        (
            "identifier 0xff",
            [&rxpk[..3], &[0xffu8][..], &rxpk[4..]].concat(),
            "identifier",
        ),
        ("3 bytes", rxpk[..3].to_vec(), "truncated"),
        ("EUI cut", rxpk[..9].to_vec(), "truncated"),
        ("no JSON", rxpk[..12].to_vec(), "json"),
        ("JSON cut", rxpk[..100].to_vec(), "json"),
        (
            "size 22",
            with_json(&text.replace("\"size\":23", "\"size\":22")),
            "size_mismatch",
        ),
        (
            "size 24",
            with_json(&text.replace("\"size\":23", "\"size\":24")),
            "size_mismatch",
        ),
        (
            "no padding",
            with_json(&text.replace("NrA=", "NrA")),
            "base64",
        ),
        (
            "URL-safe",
            with_json(&text.replace("ALQA", "-LQA")),
            "base64",
        ),
        (
            "bad char",
            with_json(&text.replace("ALQA", "AL*A")),
            "base64",
        ),
        (
            "FSK modu with LoRa datr",
            with_json(&text.replace("\"LORA\"", "\"FSK\"")),
            "invalid_field",
        ),
        (
            "stat 2",
            with_json(&text.replace("\"stat\":1", "\"stat\":2")),
            "invalid_field",
        ),
        (
            "negative freq",
            with_json(&text.replace("912.600000", "-912.6")),
            "invalid_field",
        ),
        (
            "unknown datr",
            with_json(&text.replace("SF8BW500", "SF8BW999")),
            "json",
        ),
        (
            "tmst missing",
            with_json(&text.replace("\"tmst\":1472242252,", "")),
            "missing_field",
        ),
        ("not JSON", with_json("{\"rxpk\":[{]}"), "json"),
    ];
    let mut bad_utf8 = with_json("{\"rxpk\":[],\"x\":\"?\"}");
    let last = bad_utf8.len() - 3;
    bad_utf8[last] = 0xff;
    cases.push(("invalid UTF-8", bad_utf8, "utf8"));
    let ack = by_id("gwmp-csgb-push-ack");
    cases.push((
        "PUSH_ACK + 1",
        [&ack[..], &[0u8][..]].concat(),
        "trailing_bytes",
    ));
    let pull = by_id("gwmp-csgb-pull-data");
    cases.push((
        "PULL_DATA + 1",
        [&pull[..], &[0u8][..]].concat(),
        "trailing_bytes",
    ));
    cases.push(("PULL_DATA - 1", pull[..11].to_vec(), "truncated"));
    let txack = by_id("gwmp-csgb-tx-ack-nojson");
    cases.push(("TX_ACK garbage", [&txack[..], b"xx"].concat(), "json"));
    for (name, bytes, kind) in &cases {
        match Packet::parse(bytes) {
            Err(e) => assert_eq!(e.kind(), *kind, "{name}: {e}"),
            Ok(p) => panic!("{name}: accepted as {p:?}"),
        }
    }
    println!("derived negatives checked: {}", cases.len());
}
