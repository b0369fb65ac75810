//! Property tests of the wire codecs: parse(serialize(x)) == x for every GWMP datagram type and
//! the TS002 messages, and no panic on arbitrary input for every parser.

use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use protocol::gwmp::{
    CodingRate, CrcStatus, DataRate, Packet, PullResp, PushData, RSig, RxPk, Stat, Token, TxAck,
    TxAckCode, TxPk, TxTiming, TxWarning,
};
use protocol::ids::{DevAddr, DevEui, GatewayEui};
use protocol::keywrap::KeyEnvelope;
use protocol::ts002::{
    Ans, AnsResult, AppSKeyAns, AppSKeyReq, Header, HomeNsAns, HomeNsReq, JoinAns, JoinReq,
    Message, MessageType, NetworkKeys, ProtocolVersion, RejoinReq, ResultCode, SessionInUseAns,
    SessionInUseReq,
};
use protocol::version::MacVersion;

fn finite() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("finite", |f| f.is_finite())
}

fn token() -> impl Strategy<Value = Token> {
    any::<[u8; 2]>().prop_map(Token)
}

fn gateway() -> impl Strategy<Value = GatewayEui> {
    any::<u64>().prop_map(GatewayEui::new)
}

fn datr() -> impl Strategy<Value = DataRate> {
    prop_oneof![
        (5u8..=12, prop::sample::select(vec![125u16, 250, 500])).prop_map(|(sf, bw)| {
            DataRate::Lora {
                spreading_factor: sf,
                bandwidth_khz: bw,
            }
        }),
        (1u32..).prop_map(|bitrate| DataRate::Fsk { bitrate }),
    ]
}

fn codr() -> impl Strategy<Value = CodingRate> {
    prop::sample::select(vec![
        CodingRate::Cr4_5,
        CodingRate::Cr4_6,
        CodingRate::Cr4_7,
        CodingRate::Cr4_8,
        CodingRate::Off,
    ])
}

/// Printable text including quotes, backslashes and non-ASCII, so escapes are exercised.
fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[ -~]{0,24}", "\\PC{0,12}", "[\"\\\\\u{1}\n\t]{0,4}"]
}

fn rsig() -> impl Strategy<Value = RSig> {
    (
        any::<u8>(),
        any::<u8>(),
        any::<i32>(),
        of(any::<i32>()),
        of(finite()),
        of(any::<i32>()),
    )
        .prop_map(|(ant, chan, rssic, rssis, lsnr, foff)| RSig {
            ant,
            chan,
            rssic,
            rssis,
            lsnr,
            foff,
        })
}

prop_compose! {
    fn rxpk()(
        tmst in any::<u32>(),
        time in of(text()),
        tmms in of(any::<u64>()),
        chan in of(any::<u8>()),
        rfch in of(any::<u8>()),
        freq_hz in 1u32..,
        stat in prop::sample::select(vec![CrcStatus::Ok, CrcStatus::Bad, CrcStatus::NoCrc]),
        datr in datr(),
        codr in of(codr()),
        rssi in of(any::<i32>()),
        lsnr in of(finite()),
        jver in of(any::<u8>()),
        rsig in vec(rsig(), 0..3),
        brd in of(any::<u32>()),
        aesk in of(any::<u32>()),
        data in vec(any::<u8>(), 0..256),
    ) -> RxPk {
        RxPk { tmst, time, tmms, chan, rfch, freq_hz, stat, datr, codr, rssi, lsnr, jver, rsig, brd, aesk, data }
    }
}

prop_compose! {
    fn stat()(
        time in of(text()),
        lati in of(finite()),
        long in of(finite()),
        alti in of(any::<i32>()),
        rxnb in of(any::<u32>()),
        rxok in of(any::<u32>()),
        rxfw in of(any::<u32>()),
        ackr in of(finite()),
        dwnb in of(any::<u32>()),
        txnb in of(any::<u32>()),
    ) -> Stat {
        Stat { time, lati, long, alti, rxnb, rxok, rxfw, ackr, dwnb, txnb }
    }
}

prop_compose! {
    fn txpk()(
        timing in prop_oneof![
            Just(TxTiming::Immediate),
            any::<u32>().prop_map(TxTiming::Tmst),
            any::<u64>().prop_map(TxTiming::Tmms),
        ],
        freq_hz in 1u32..,
        rfch in any::<u8>(),
        powe in of(any::<i8>()),
        datr in datr(),
        codr in codr(),
        fdev in any::<u32>(),
        opt_codr in of(codr()),
        opt_fdev in of(any::<u32>()),
        ipol in of(any::<bool>()),
        prea in of(any::<u16>()),
        ncrc in of(any::<bool>()),
        data in vec(any::<u8>(), 0..256),
    ) -> TxPk {
        // lora_pkt_fwd needs codr for LoRa and fdev for FSK; the other is optional.
        let (codr, fdev) = match datr {
            DataRate::Lora { .. } => (Some(codr), opt_fdev),
            DataRate::Fsk { .. } => (opt_codr, Some(fdev)),
        };
        TxPk { timing, freq_hz, rfch, powe, datr, codr, fdev, ipol, prea, ncrc, data }
    }
}

fn tx_ack_code() -> impl Strategy<Value = TxAckCode> {
    prop_oneof![
        prop::sample::select(vec![
            TxAckCode::TooLate,
            TxAckCode::TooEarly,
            TxAckCode::CollisionPacket,
            TxAckCode::CollisionBeacon,
            TxAckCode::TxFreq,
            TxAckCode::TxPower,
            TxAckCode::GpsUnlocked,
            TxAckCode::Unknown,
        ]),
        // Unrecognised codes are kept verbatim; they never spell a known code or NONE.
        "[A-Z_]{1,16}".prop_filter_map("unknown code", |s| match TxAckCode::from_wire(&s) {
            Some(c @ TxAckCode::Other(_)) => Some(c),
            _ => None,
        }),
    ]
}

fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        (token(), gateway(), vec(rxpk(), 0..4), of(stat())).prop_map(
            |(token, gateway, rxpk, stat)| Packet::PushData(PushData {
                token,
                gateway,
                rxpk,
                stat
            })
        ),
        token().prop_map(|token| Packet::PushAck { token }),
        (token(), gateway()).prop_map(|(token, gateway)| Packet::PullData { token, gateway }),
        token().prop_map(|token| Packet::PullAck { token }),
        (token(), txpk()).prop_map(|(token, txpk)| Packet::PullResp(PullResp { token, txpk })),
        (
            token(),
            gateway(),
            of(tx_ack_code()),
            of((tx_ack_code(), of(any::<i32>())))
        )
            .prop_map(|(token, gateway, error, warning)| Packet::TxAck(TxAck {
                token,
                gateway,
                error,
                warning: warning.map(|(code, value)| TxWarning { code, value }),
            })),
    ]
}

// ---------------------------------------------------------------------------------------------
// TS002

fn header(t: MessageType) -> impl Strategy<Value = Header> {
    (
        prop::sample::select(vec![ProtocolVersion::V1_0, ProtocolVersion::V1_1]),
        text(),
        text(),
        any::<u32>(),
        of(vec(any::<u8>(), 0..8)),
        of(vec(any::<u8>(), 0..8)),
        of(text()),
        of(text()),
        of(text()),
    )
        .prop_map(move |(v, s, r, tid, st, rt, sn, rn, vs)| Header {
            protocol_version: v,
            sender_id: s,
            receiver_id: r,
            transaction_id: tid,
            message_type: t,
            sender_token: st,
            receiver_token: rt,
            sender_ns_id: sn,
            receiver_ns_id: rn,
            vs_extension: vs.map(|v| serde_json::json!({ "vendor": v, "n": 1 })),
        })
}

fn mac_version() -> impl Strategy<Value = MacVersion> {
    prop::sample::select(vec![
        MacVersion::V1_0_0,
        MacVersion::V1_0_1,
        MacVersion::V1_0_2,
        MacVersion::V1_0_3,
        MacVersion::V1_0_4,
        MacVersion::V1_1,
    ])
}

prop_compose! {
    fn join_req()(
        header in header(MessageType::JoinReq),
        mac_version in mac_version(),
        phy_payload in vec(any::<u8>(), 0..40),
        dev_eui in any::<u64>(),
        dev_addr in any::<u32>(),
        dl_settings in any::<u8>(),
        rx_delay in 0u8..=15,
        cf_list in of(any::<[u8; 16]>()),
    ) -> JoinReq {
        JoinReq {
            header, mac_version, phy_payload,
            dev_eui: DevEui::new(dev_eui), dev_addr: DevAddr::new(dev_addr),
            dl_settings, rx_delay, cf_list: cf_list.map(|c| c.to_vec()),
        }
    }
}

fn envelope() -> impl Strategy<Value = KeyEnvelope> {
    prop_oneof![
        any::<[u8; 16]>().prop_map(|k| KeyEnvelope {
            kek_label: String::new(),
            aes_key: k.to_vec()
        }),
        ("[a-z0-9-]{1,12}", any::<[u8; 24]>()).prop_map(|(l, k)| KeyEnvelope {
            kek_label: l,
            aes_key: k.to_vec()
        }),
    ]
}

fn result_code() -> impl Strategy<Value = ResultCode> {
    prop_oneof![
        prop::sample::select(ResultCode::known().collect::<Vec<_>>()),
        "[A-Za-z]{1,20}".prop_filter_map("unknown", |s| match ResultCode::from_wire(&s) {
            c @ ResultCode::Unrecognized(_) => Some(c),
            _ => None,
        }),
    ]
}

prop_compose! {
    fn join_ans()(
        header in header(MessageType::JoinAns),
        code in result_code(),
        description in of(text()),
        phy_payload in of(vec(any::<u8>(), 17..=33)),
        lifetime in of(any::<u32>()),
        keys in of(prop_oneof![
            envelope().prop_map(|nwk_s_key| NetworkKeys::V1_0 { nwk_s_key }),
            (envelope(), envelope(), envelope()).prop_map(|(f, s, e)| NetworkKeys::V1_1 {
                f_nwk_s_int_key: f, s_nwk_s_int_key: s, nwk_s_enc_key: e,
            }),
        ]),
        app_s_key in of(envelope()),
        session_key_id in of(vec(any::<u8>(), 0..8)),
    ) -> JoinAns {
        let mut a = JoinAns {
            header,
            result: AnsResult { result_code: code, description },
            phy_payload, lifetime, network_keys: keys, app_s_key, session_key_id,
        };
        // A Success answer carries a payload, network keys and AppSKey or SessionKeyID.
        if a.result.result_code.is_success() {
            a.phy_payload.get_or_insert_with(|| vec![0x20; 17]);
            a.network_keys.get_or_insert_with(|| NetworkKeys::V1_0 {
                nwk_s_key: KeyEnvelope { kek_label: String::new(), aes_key: vec![0; 16] },
            });
            if a.app_s_key.is_none() && a.session_key_id.is_none() {
                a.session_key_id = Some(vec![1]);
            }
        }
        a
    }
}

proptest! {
    #[test]
    fn gwmp_round_trip(p in packet()) {
        let bytes = p.to_bytes().unwrap();
        prop_assert_eq!(Packet::parse(&bytes).unwrap(), p);
    }

    #[test]
    fn ts002_join_req_round_trip(m in join_req()) {
        let json = serde_json::to_vec(&m).unwrap();
        prop_assert_eq!(&JoinReq::parse(&json).unwrap(), &m);
        prop_assert_eq!(Message::parse(&json).unwrap(), Message::JoinReq(m));
    }

    #[test]
    fn ts002_rejoin_req_round_trip(m in join_req()) {
        let m = RejoinReq {
            header: Header { message_type: MessageType::RejoinReq, ..m.header },
            mac_version: m.mac_version, phy_payload: m.phy_payload, dev_eui: m.dev_eui,
            dev_addr: m.dev_addr, dl_settings: m.dl_settings, rx_delay: m.rx_delay,
            cf_list: m.cf_list,
        };
        let json = serde_json::to_vec(&m).unwrap();
        prop_assert_eq!(RejoinReq::parse(&json).unwrap(), m);
    }

    #[test]
    fn ts002_join_ans_round_trip(m in join_ans()) {
        let json = serde_json::to_vec(&m).unwrap();
        prop_assert_eq!(&JoinAns::parse(&json).unwrap(), &m);
        prop_assert_eq!(Message::parse(&json).unwrap(), Message::JoinAns(Box::new(m)));
    }

    /// The Backend Interfaces messages beyond the link's: HomeNSReq/Ans, AppSKeyReq/Ans, and
    /// the refusal of any request, which answers with the request's answer type.
    #[test]
    fn ts002_backend_interfaces_round_trip(
        h in header(MessageType::HomeNSReq),
        dev_eui in any::<u64>(),
        net_id in 0u32..=0xFF_FFFF,
        session_key_id in vec(any::<u8>(), 0..16),
        env in of(envelope()),
        description in "[ -~]{0,40}",
    ) {
        let dev_eui = DevEui::new(dev_eui);
        let req = HomeNsReq { header: h.clone(), dev_eui };
        let json = serde_json::to_vec(&req).unwrap();
        prop_assert_eq!(HomeNsReq::parse(&json).unwrap(), req);
        let ans = HomeNsAns {
            header: h.answer(MessageType::HomeNSAns),
            result: AnsResult { result_code: ResultCode::Success, description: None },
            h_net_id: protocol::ids::NetId::new(net_id),
        };
        let json = serde_json::to_vec(&ans).unwrap();
        prop_assert_eq!(serde_json::from_slice::<HomeNsAns>(&json).unwrap(), ans);
        let ak = Header { message_type: MessageType::AppSKeyReq, ..h.clone() };
        let req = AppSKeyReq { header: ak.clone(), dev_eui, session_key_id: session_key_id.clone() };
        let json = serde_json::to_vec(&req).unwrap();
        prop_assert_eq!(AppSKeyReq::parse(&json).unwrap(), req);
        let ans = AppSKeyAns {
            header: ak.answer(MessageType::AppSKeyAns),
            result: AnsResult { result_code: ResultCode::Success, description: None },
            dev_eui, app_s_key: env, session_key_id,
        };
        let json = serde_json::to_vec(&ans).unwrap();
        prop_assert_eq!(serde_json::from_slice::<AppSKeyAns>(&json).unwrap(), ans);
        let refusal = Ans::refusal(&ak, ResultCode::MalformedRequest, description.clone());
        prop_assert_eq!(refusal.header.message_type, MessageType::AppSKeyAns);
        prop_assert_eq!(refusal.header.transaction_id, ak.transaction_id);
        let json = serde_json::to_vec(&refusal).unwrap();
        prop_assert_eq!(serde_json::from_slice::<Ans>(&json).unwrap(), refusal);
        // A request type without an answer type is answered with its own.
        let other = Header { message_type: MessageType::ErrorNotif, ..h };
        prop_assert_eq!(
            Ans::refusal(&other, ResultCode::Other, description).header.message_type,
            MessageType::ErrorNotif
        );
    }

    /// This project's SessionInUseReq/Ans (not in TS002) in TS002's shape.
    #[test]
    fn session_in_use_round_trip(
        h in header(MessageType::SessionInUseReq),
        dev_eui in any::<u64>(),
        dev_addr in any::<u32>(),
        root_key_rotation in any::<i64>(),
        f_cnt_up in any::<u32>(),
    ) {
        let req = SessionInUseReq {
            header: h.clone(),
            dev_eui: DevEui::new(dev_eui),
            dev_addr: DevAddr::new(dev_addr),
            root_key_rotation,
            f_cnt_up,
        };
        let json = serde_json::to_vec(&req).unwrap();
        prop_assert_eq!(SessionInUseReq::parse(&json).unwrap(), req);
        prop_assert!(SessionInUseAns::parse(&json).is_err(), "a request is no answer");
        let ans = SessionInUseAns {
            header: h.answer(MessageType::SessionInUseReq.answer().unwrap()),
            result: AnsResult { result_code: ResultCode::Success, description: None },
        };
        let json = serde_json::to_vec(&ans).unwrap();
        prop_assert_eq!(SessionInUseAns::parse(&json).unwrap(), ans);
    }

    #[test]
    fn no_panic_on_arbitrary_bytes(b in vec(any::<u8>(), 0..300)) {
        let _ = SessionInUseReq::parse(&b);
        let _ = SessionInUseAns::parse(&b);
        let _ = HomeNsReq::parse(&b);
        let _ = AppSKeyReq::parse(&b);
        let _ = serde_json::from_slice::<Header>(&b);
        let _ = Packet::parse(&b);
        let _ = JoinReq::parse(&b);
        let _ = JoinAns::parse(&b);
        let _ = RejoinReq::parse(&b);
        let _ = Message::parse(&b);
        if let Ok(s) = std::str::from_utf8(&b) {
            let _ = DataRate::parse_lora(s);
            for r in protocol::region::Region::ALL {
                let _ = r.dr_of_datr(s, protocol::region::Link::Uplink);
                let _ = r.dr_of_datr(s, protocol::region::Link::Downlink);
            }
        }
    }

    /// Arbitrary JSON-ish text behind every valid GWMP header, to reach the body parsers.
    #[test]
    fn no_panic_on_json_like_bodies(
        id in 0u8..=5,
        eui in any::<[u8; 8]>(),
        body in "[\\[\\]{}\":,0-9a-z.eE+\\-\\\\ rxpkstadmufeqizgLORAFSK=/]{0,120}",
    ) {
        let mut b = vec![2, 0, 0, id];
        if id != 3 { b.extend_from_slice(&eui); }
        b.extend_from_slice(body.as_bytes());
        let _ = Packet::parse(&b);
    }

    /// Mutations of a valid datagram and of valid TS002 messages.
    #[test]
    fn no_panic_on_mutated_valid_input(p in packet(), m in join_ans(), pos in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
        let mut b = p.to_bytes().unwrap();
        if !b.is_empty() { let i = pos % b.len(); b[i] = byte; }
        let _ = Packet::parse(&b);
        b.truncate(cut % (b.len() + 1));
        let _ = Packet::parse(&b);
        let mut j = serde_json::to_vec(&m).unwrap();
        let i = pos % j.len();
        j[i] = byte;
        let _ = Message::parse(&j);
        j.truncate(cut % (j.len() + 1));
        let _ = Message::parse(&j);
    }
}
