//! LoRaWAN Backend Interfaces (TS002) over HTTPS on 127.0.0.1, driven by a client that builds
//! its requests as ChirpStack v4's `backend` crate does (field for field, in its order, binary
//! fields in lowercase hex, `Content-Type: application/json`, the `Authorization` header sent
//! verbatim, a client certificate when configured) and reads the answers as it does (only the
//! TS002 1.0 result codes parse).

mod common;

use std::path::Path;

use common::ts002::*;
use common::*;
use joinserver::server::Server;
use protocol::derive;
use protocol::ids::{DevEui, DevNonce, JoinEui, NetId};
use protocol::join::{
    AnsweredRequest, EncryptedJoinAccept, JoinAcceptEncKey, JoinAcceptMicKey, JoinAcceptPayload,
    JoinRootKey,
};
use protocol::keys::{AppKey, AppSKey, KeyCipher, NwkKey, NwkSKey};
use protocol::keywrap::KeyEnvelope;

/// A client of `server`'s listener.
fn ts002(server: &Server, dir: &Path, authorization: Option<String>) -> Ts002 {
    assert_eq!(server.bi_scheme(), Some("https"));
    Ts002::connect(server.bi_addr().unwrap().port(), dir, authorization, None)
}

/// A data directory with the test devices and peer 000013, a server certificate, and the
/// listener on an ephemeral port (with `extra` TOML appended).
fn start(dir: &Path, extra: &str) -> Server {
    httpsec::tls::ensure_self_signed(
        &server_cert(dir),
        &dir.join("tls/api.key"),
        &["localhost".into(), "127.0.0.1".into()],
    )
    .unwrap();
    restart(dir, extra)
}

fn restart(dir: &Path, extra: &str) -> Server {
    let text =
        std::fs::read_to_string(dir.join(joinserver::peers::CONFIG_FILE)).unwrap_or_default();
    let mut c = joinserver::config::Config::from_toml(&format!("{text}\n{extra}")).unwrap();
    c.link.listen = "127.0.0.1:0".parse().unwrap();
    c.metrics.listen = "127.0.0.1:0".into();
    c.backend_interfaces.listen = "127.0.0.1:0".into();
    Server::start(dir, &c).unwrap()
}

/// `joinserver peers token --net-id N`.
fn token(dir: &Path, net_id: u32) -> String {
    let mut store = joinserver::store::SqliteStore::open(dir).unwrap();
    let t = joinserver::bi::tokens::create(&mut store, NetId::new(net_id).unwrap(), 1).unwrap();
    format!("Bearer {}", t.expose())
}

fn open_accept(dev: u64, dev_nonce: u16, phy: &str) -> JoinAcceptPayload {
    let app = KeyCipher::new(&APP_KEY.parse::<AppKey>().unwrap());
    let enc = EncryptedJoinAccept::from_bytes(&hex::decode(phy).unwrap()).unwrap();
    if dev == 3 {
        let nwk = KeyCipher::new(&NWK_KEY.parse::<NwkKey>().unwrap());
        let js_int = KeyCipher::new(&derive::js_keys(&nwk, DevEui::new(dev)).js_int_key);
        enc.open(
            JoinAcceptEncKey::NwkKey(&nwk),
            JoinAcceptMicKey::OptNeg {
                js_int_key: &js_int,
                join_eui: JoinEui::new(JOIN_EUI),
                answered: AnsweredRequest::JoinRequest(DevNonce(dev_nonce)),
            },
        )
        .unwrap()
    } else {
        enc.open(
            JoinAcceptEncKey::AppKey(&app),
            JoinAcceptMicKey::Legacy(JoinRootKey::AppKey(&app)),
        )
        .unwrap()
    }
}

/// 1.0.3, 1.0.4 and 1.1 devices join as ChirpStack asks: the Join-accept decrypts and verifies
/// device-side and carries exactly the request's DevAddr, DLSettings, RxDelay and CFList; the
/// network keys unwrap under the peer's KEK (its label), the AppSKey under the application KEK;
/// `SessionKeyID` and `Lifetime` are filled; the AppSKey is then served by `AppSKeyReq`.
#[test]
fn devices_of_each_version_join_as_chirpstack_asks() {
    let tmp = tempfile::tempdir().unwrap();
    let s = provision(tmp.path());
    let server = start(tmp.path(), "");
    let c = ts002(&server, tmp.path(), Some(token(tmp.path(), NET_ID)));
    let app = KeyCipher::new(&APP_KEY.parse::<AppKey>().unwrap());
    for (dev, mac) in [(1u64, "1.0.3"), (2, "1.0.4"), (3, "1.1.0")] {
        let dn = 0x0102 + dev as u16;
        // A TransactionID above 2^31, as ChirpStack's random u32 often is.
        let tid = 0xF000_0000 + dev as u32;
        let a = c.post(&cs_join_req(tid, NET_ID, dev, mac, &phy(dev, dn)));
        assert_eq!(
            a.result.code,
            CsResultCode::Success,
            "{mac}: {:?}",
            a.result
        );
        assert_eq!(a.transaction_id, tid);
        assert_eq!(a.message_type, "JoinAns");
        assert_eq!(a.sender_id.to_lowercase(), format!("{JOIN_EUI:016x}"));
        assert_eq!(a.receiver_id.to_lowercase(), format!("{NET_ID:06x}"));
        let p = open_accept(dev, dn, a.phy_payload.as_deref().unwrap());
        assert_eq!(p.dev_addr.as_u32(), DEV_ADDR, "{mac}");
        assert_eq!(p.net_id.as_u32(), NET_ID);
        assert_eq!(p.dl_settings.0, if dev == 3 { 0x80 } else { 0x00 }, "{mac}");
        assert_eq!(p.rx_delay.0, 1);
        assert_eq!(hex::encode(p.cf_list.unwrap().0), CF_LIST);
        assert_eq!(a.lifetime, Some(0));
        let sk_id = a.session_key_id.clone().expect("SessionKeyID");
        let aps = a.app_s_key.clone().unwrap();
        assert_eq!(aps.kek_label, s.as_kek.label);
        let app_s_key: AppSKey = aps.open(Some(&s.as_kek.key)).unwrap();
        if dev == 3 {
            assert!(a.nwk_s_key.is_none(), "1.1: no NwkSKey");
            let nwk = KeyCipher::new(&NWK_KEY.parse::<NwkKey>().unwrap());
            let dk = derive::session_keys_1_1(
                &nwk,
                &app,
                p.join_nonce,
                JoinEui::new(JOIN_EUI),
                AnsweredRequest::JoinRequest(DevNonce(dn)),
            );
            let f = a.f_nwk_s_int_key.as_ref().unwrap();
            assert_eq!(f.kek_label, s.ns_kek.label);
            assert_eq!(
                f.open::<protocol::keys::FNwkSIntKey>(Some(&s.ns_kek.key))
                    .unwrap(),
                dk.f_nwk_s_int_key
            );
            let sn = a.s_nwk_s_int_key.as_ref().unwrap();
            assert_eq!(
                sn.open::<protocol::keys::SNwkSIntKey>(Some(&s.ns_kek.key))
                    .unwrap(),
                dk.s_nwk_s_int_key
            );
            let e = a.nwk_s_enc_key.as_ref().unwrap();
            assert_eq!(
                e.open::<protocol::keys::NwkSEncKey>(Some(&s.ns_kek.key))
                    .unwrap(),
                dk.nwk_s_enc_key
            );
            assert_eq!(app_s_key, dk.app_s_key);
        } else {
            assert!(
                a.f_nwk_s_int_key.is_none()
                    && a.s_nwk_s_int_key.is_none()
                    && a.nwk_s_enc_key.is_none()
            );
            let dk = derive::session_keys_1_0(
                &app,
                p.join_nonce,
                NetId::new(NET_ID).unwrap(),
                DevNonce(dn),
            );
            let k = a.nwk_s_key.as_ref().unwrap();
            assert_eq!(k.kek_label, s.ns_kek.label, "the peer's own KEK");
            assert_eq!(
                k.open::<NwkSKey>(Some(&s.ns_kek.key)).unwrap(),
                dk.nwk_s_key
            );
            assert_eq!(app_s_key, dk.app_s_key);
        }

        // The application server of the home network fetches the same AppSKey later.
        let req = serde_json::json!({
            "ProtocolVersion": "1.0", "SenderID": format!("{NET_ID:06x}"),
            "ReceiverID": format!("{JOIN_EUI:016x}"), "TransactionID": 9,
            "MessageType": "AppSKeyReq", "DevEUI": format!("{dev:016x}"), "SessionKeyID": sk_id,
        });
        let ans: serde_json::Value = serde_json::from_str(
            &c.post_raw(
                "",
                "application/json; charset=utf-8",
                req.to_string().as_bytes(),
            )
            .unwrap()
            .1,
        )
        .unwrap();
        assert_eq!(ans["Result"]["ResultCode"], "Success", "{ans}");
        assert_eq!(ans["MessageType"], "AppSKeyAns");
        let env: KeyEnvelope = serde_json::from_value(ans["AppSKey"].clone()).unwrap();
        assert_eq!(env.open::<AppSKey>(Some(&s.as_kek.key)).unwrap(), app_s_key);
        // Not for a session that is not the device's current one.
        let mut other = req.clone();
        other["SessionKeyID"] = "010000130000010001".into();
        let a = c.post(other.to_string().as_bytes());
        assert_ne!(a.result.code, CsResultCode::Success);
    }
    let (_, text) = http_get(server.metrics_addr().unwrap(), "/metrics");
    assert_eq!(
        metric(&text, "joinserver_joins_total{result=\"success\"}"),
        3
    );
    assert_eq!(
        metric(
            &text,
            "joinserver_bi_requests_total{message_type=\"JoinReq\",result=\"success\"}"
        ),
        3
    );
}

/// Every refusal is an HTTP 200 with a TS002 1.0 ResultCode ChirpStack parses.
#[test]
fn refusals_get_the_right_result_code_in_http_200() {
    let tmp = tempfile::tempdir().unwrap();
    provision(tmp.path());
    add_peer(tmp.path(), 0x42);
    let server = start(tmp.path(), "");
    let tok = token(tmp.path(), NET_ID);
    let c = ts002(&server, tmp.path(), Some(tok.clone()));
    let code = |c: &Ts002, body: Vec<u8>| c.post(&body).result.code;

    assert_eq!(
        code(&c, cs_join_req(1, NET_ID, 2, "1.0.4", &phy(2, 7))),
        CsResultCode::Success
    );
    // The same DevNonce again (a replay).
    assert_eq!(
        code(&c, cs_join_req(2, NET_ID, 2, "1.0.4", &phy(2, 7))),
        CsResultCode::JoinReqFailed
    );
    // A bad MIC.
    let mut bad = phy(2, 8);
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert_eq!(
        code(&c, cs_join_req(3, NET_ID, 2, "1.0.4", &bad)),
        CsResultCode::MICFailed
    );
    // An unknown DevEUI (a Join-request of a device never provisioned).
    let k = KeyCipher::new(&APP_KEY.parse::<AppKey>().unwrap());
    let unknown = protocol::join::JoinRequest::build(
        JoinEui::new(JOIN_EUI),
        DevEui::new(0x99),
        DevNonce(1),
        JoinRootKey::AppKey(&k),
    );
    assert_eq!(
        code(
            &c,
            cs_join_req(4, NET_ID, 0x99, "1.0.4", &unknown.to_bytes())
        ),
        CsResultCode::UnknownDevEUI
    );
    // An unclaimed device, and a device whose home is another network.
    let a = c.post(&cs_join_req(5, NET_ID, 6, "1.0.4", &phy(6, 1)));
    assert_eq!(a.result.code, CsResultCode::ActivationDisallowed);
    assert!(
        a.result.description.contains("not claimed"),
        "{:?}",
        a.result
    );
    assert_eq!(
        code(&c, cs_join_req(6, NET_ID, 5, "1.0.4", &phy(5, 1))),
        CsResultCode::ActivationDisallowed
    );
    // A device profile of the other LoRaWAN family than the device's.
    let a = c.post(&cs_join_req(7, NET_ID, 3, "1.0.3", &phy(3, 1)));
    assert_eq!(a.result.code, CsResultCode::JoinReqFailed);
    assert!(
        a.result.description.contains("MACVersion"),
        "{:?}",
        a.result
    );
    // The refusals consumed no DevNonce: the 1.1 device joins with DevNonce 1 afterwards.
    assert_eq!(
        code(&c, cs_join_req(8, NET_ID, 3, "1.1", &phy(3, 1))),
        CsResultCode::Success
    );

    // Wrong peer credentials: an unknown token, none at all, another peer's SenderID.
    let wrong = ts002(&server, tmp.path(), Some("Bearer jsbi_0123".into()));
    let a = wrong.post(&cs_join_req(9, NET_ID, 2, "1.0.4", &phy(2, 20)));
    assert_eq!(a.result.code, CsResultCode::UnknownSender);
    assert_eq!(a.transaction_id, 9);
    let none = ts002(&server, tmp.path(), None);
    assert_eq!(
        code(&none, cs_join_req(10, NET_ID, 2, "1.0.4", &phy(2, 21))),
        CsResultCode::UnknownSender
    );
    assert_eq!(
        code(&c, cs_join_req(11, 0x42, 5, "1.0.4", &phy(5, 2))),
        CsResultCode::UnknownSender
    );
    // Another peer's own token does not open this peer's devices either.
    let c42 = ts002(&server, tmp.path(), Some(token(tmp.path(), 0x42)));
    assert_eq!(
        code(&c42, cs_join_req(12, 0x42, 2, "1.0.4", &phy(2, 22))),
        CsResultCode::ActivationDisallowed
    );
    assert_eq!(
        code(&c42, cs_join_req(13, 0x42, 5, "1.0.4", &phy(5, 3))),
        CsResultCode::Success
    );

    // A RejoinReq goes through the rejoin pipeline (a Join-request's PHYPayload in it is
    // malformed); anything else is MalformedRequest, garbage too.
    let mut rejoin: serde_json::Value =
        serde_json::from_slice(&cs_join_req(14, NET_ID, 2, "1.0.4", &phy(2, 30))).unwrap();
    rejoin["MessageType"] = "RejoinReq".into();
    let a = c.post(rejoin.to_string().as_bytes());
    assert_eq!(
        (a.result.code, a.message_type.as_str()),
        (CsResultCode::MalformedRequest, "RejoinAns")
    );
    assert!(
        a.result.description.contains("rejoin-request"),
        "{:?}",
        a.result
    );
    let mut pr = rejoin.clone();
    pr["MessageType"] = "PRStartReq".into();
    let a = c.post(pr.to_string().as_bytes());
    assert_eq!(
        (a.result.code, a.message_type.as_str()),
        (CsResultCode::MalformedRequest, "PRStartAns")
    );
    assert_eq!(
        c.post(b"{\"MessageType\": 5}").result.code,
        CsResultCode::MalformedRequest
    );
    assert_eq!(
        c.post(b"\xff\xfe").result.code,
        CsResultCode::MalformedRequest
    );
    // ProtocolVersion 1.1 needs SenderNSID; with it, it is served (and answered in 1.0 codes).
    let mut v11: serde_json::Value =
        serde_json::from_slice(&cs_join_req(15, NET_ID, 2, "1.0.4", &phy(2, 31))).unwrap();
    v11["ProtocolVersion"] = "1.1".into();
    assert_eq!(
        c.post(v11.to_string().as_bytes()).result.code,
        CsResultCode::MalformedRequest
    );
    v11["SenderNSID"] = "ns.example".into();
    v11["PHYPayload"] = "00".into();
    assert_eq!(
        c.post(v11.to_string().as_bytes()).result.code,
        CsResultCode::MalformedRequest
    );
    v11["PHYPayload"] = hex::encode(phy(2, 31)).into();
    assert_eq!(
        c.post(v11.to_string().as_bytes()).result.code,
        CsResultCode::Success
    );

    // Outside TS002: method, content type, any path.
    assert_eq!(c.post_raw("", "text/plain", b"{}").unwrap().0, 415);
    let (status, text) = c
        .post_raw(
            "/api/v3/js/join",
            "application/json",
            &cs_join_req(16, NET_ID, 2, "1.0.4", &phy(2, 40)),
        )
        .unwrap();
    assert_eq!(status, 200);
    assert!(text.contains("\"Success\""), "any path: {text}");
    let r = c
        .agent
        .get(&c.url)
        .header("Authorization", &tok)
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);

    let (_, text) = http_get(server.metrics_addr().unwrap(), "/metrics");
    assert_eq!(
        metric(
            &text,
            "joinserver_bi_refused_total{reason=\"unknown_token\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &text,
            "joinserver_bi_refused_total{reason=\"no_credential\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &text,
            "joinserver_bi_refused_total{reason=\"sender_mismatch\"}"
        ),
        1
    );
    assert_eq!(
        metric(&text, "joinserver_joins_total{result=\"mic_failed\"}"),
        1
    );
}

/// Failed authentications are limited per source address: then 429 with Retry-After.
#[test]
fn failed_authentications_are_rate_limited() {
    let tmp = tempfile::tempdir().unwrap();
    provision(tmp.path());
    let server = start(
        tmp.path(),
        "[backend_interfaces]\nauth_failures_per_addr = 3\n",
    );
    let wrong = ts002(&server, tmp.path(), Some("Bearer jsbi_nope".into()));
    for tid in 0..3 {
        let a = wrong.post(&cs_join_req(tid, NET_ID, 2, "1.0.4", &phy(2, 1)));
        assert_eq!(a.result.code, CsResultCode::UnknownSender);
    }
    let right = ts002(&server, tmp.path(), Some(token(tmp.path(), NET_ID)));
    let (status, _) = right
        .post_raw(
            "",
            "application/json",
            &cs_join_req(4, NET_ID, 2, "1.0.4", &phy(2, 1)),
        )
        .unwrap();
    assert_eq!(
        status, 429,
        "the address is locked out, whatever the credential"
    );
}

/// `HomeNSReq` as ChirpStack sends it: the home NetID of a claimed device; an unclaimed one
/// and an unknown one are refused.
#[test]
fn home_ns_req_gives_the_home_net_id_of_claimed_devices_only() {
    let tmp = tempfile::tempdir().unwrap();
    provision(tmp.path());
    let server = start(tmp.path(), "");
    let c = ts002(&server, tmp.path(), Some(token(tmp.path(), NET_ID)));
    let home_ns = |dev: u64| {
        let body = format!(
            r#"{{"ProtocolVersion":"1.0","SenderID":"{NET_ID:06x}","ReceiverID":"{JOIN_EUI:016x}","TransactionID":3000000000,"MessageType":"HomeNSReq","DevEUI":"{dev:016x}"}}"#
        );
        c.post(body.as_bytes())
    };
    let a = home_ns(5);
    assert_eq!(a.result.code, CsResultCode::Success);
    assert_eq!(a.message_type, "HomeNSAns");
    assert_eq!(a.transaction_id, 3_000_000_000);
    assert_eq!(a.h_net_id.unwrap().to_lowercase(), "000042");
    assert_eq!(home_ns(1).h_net_id.unwrap(), "000013");
    assert_eq!(home_ns(6).result.code, CsResultCode::ActivationDisallowed);
    assert_eq!(home_ns(0x77).result.code, CsResultCode::UnknownDevEUI);
}

/// A CA and a client certificate it signed, as PEM: (CA cert, client cert, client key).
fn client_identity(name: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(vec![]).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

/// mTLS: a client certificate chaining to the peer's CA authenticates it without a token; a
/// certificate of another CA fails the handshake; a token of another peer beside the
/// certificate is refused.
#[test]
fn client_certificates_authenticate_peers() {
    let tmp = tempfile::tempdir().unwrap();
    provision(tmp.path());
    add_peer(tmp.path(), 0x42);
    let (ca, cert, key) = client_identity("ns-000013");
    std::fs::write(tmp.path().join("ns13-ca.pem"), &ca).unwrap();
    let server = start(
        tmp.path(),
        "[[backend_interfaces.peers]]\nnet_id = \"000013\"\nca_file = \"ns13-ca.pem\"\n",
    );
    let c = Ts002::connect(
        server.bi_addr().unwrap().port(),
        tmp.path(),
        None,
        Some((cert.clone(), key.clone())),
    );
    assert_eq!(
        c.post(&cs_join_req(1, NET_ID, 1, "1.0.3", &phy(1, 1)))
            .result
            .code,
        CsResultCode::Success
    );
    // The certificate names peer 000013: SenderID 000042 is refused.
    assert_eq!(
        c.post(&cs_join_req(2, 0x42, 5, "1.0.4", &phy(5, 1)))
            .result
            .code,
        CsResultCode::UnknownSender
    );
    let both = Ts002::connect(
        server.bi_addr().unwrap().port(),
        tmp.path(),
        Some(token(tmp.path(), 0x42)),
        Some((cert, key)),
    );
    assert_eq!(
        both.post(&cs_join_req(3, NET_ID, 1, "1.0.3", &phy(1, 2)))
            .result
            .code,
        CsResultCode::UnknownSender
    );
    let (_, other_cert, other_key) = client_identity("intruder");
    let intruder = Ts002::connect(
        server.bi_addr().unwrap().port(),
        tmp.path(),
        None,
        Some((other_cert, other_key)),
    );
    assert!(
        intruder
            .post_raw(
                "",
                "application/json",
                &cs_join_req(4, NET_ID, 1, "1.0.3", &phy(1, 3))
            )
            .is_err(),
        "a certificate of an unknown CA fails the TLS handshake"
    );
}

/// The JoinReq ChirpStack v4 really posted (shared/interop-notes.md), byte for byte: answered
/// with a JoinAns it parses (that device is not provisioned here).
#[test]
fn a_captured_chirpstack_join_req_is_answered() {
    let tmp = tempfile::tempdir().unwrap();
    provision(tmp.path());
    let server = start(tmp.path(), "");
    let c = ts002(&server, tmp.path(), Some(token(tmp.path(), 0)));
    let body = br#"{"ProtocolVersion":"1.0","SenderID":"000000","ReceiverID":"0202020202020202","TransactionID":2136932983,"MessageType":"JoinReq","MACVersion":"1.0.3","PHYPayload":"000202020202020202010a020202020202000068eab108","DevEUI":"0202020202020a01","DevAddr":"00177efa","DLSettings":"00","RxDelay":1,"CFList":"184f84e85684b85e84886684586e8400"}"#;
    let a = c.post(body);
    assert_eq!(a.result.code, CsResultCode::UnknownDevEUI);
    assert_eq!(a.transaction_id, 2_136_932_983);
    assert_eq!(a.message_type, "JoinAns");
    assert_eq!(a.receiver_id, "000000");
    assert_eq!(a.sender_id.to_lowercase(), "0202020202020202");
}

/// A device whose owner lets this network server decrypt gets its AppSKey in clear (KEKLabel
/// ""); the same device through a peer without that choice gets it wrapped.
#[test]
fn an_owner_may_let_the_network_server_decrypt() {
    let tmp = tempfile::tempdir().unwrap();
    let s = provision(tmp.path());
    // Device 7: imported unclaimed with an owner token, then claimed by alice (what the API's
    // claim does, through the same store call).
    let mut store = joinserver::store::SqliteStore::open(tmp.path()).unwrap();
    let manifest = format!(
        "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token\n\
         0000000000000007,{JOIN_EUI:016X},1.0.4,{APP_KEY},,,ALICE0000007\n"
    );
    joinserver::devices::import(
        &mut store,
        &s.master,
        &manifest,
        joinserver::devices::Format::Csv,
    )
    .unwrap();
    drop(store);
    use joinserver::onboarding::backend::OnboardBackend;
    let mut db = joinserver::onboarding::db::OnboardStore::open(tmp.path()).unwrap();
    let presented =
        joinserver::onboarding::secret::owner_token_hash(DevEui::new(7), "ALICE0000007");
    let claimed = db
        .claim(
            &joinserver::onboarding::db::Actor::cli(),
            DevEui::new(7),
            &presented,
            "alice",
            NetId::new(NET_ID).unwrap(),
            "test",
        )
        .unwrap();
    assert!(matches!(
        claimed,
        joinserver::onboarding::db::ClaimOutcome::Claimed
    ));
    drop(db);
    let server = start(
        tmp.path(),
        "[[backend_interfaces.peers]]\nnet_id = \"000013\"\nclear_app_s_key_owners = [\"alice\"]\n",
    );
    let c = ts002(&server, tmp.path(), Some(token(tmp.path(), NET_ID)));
    let a = c.post(&cs_join_req(1, NET_ID, 7, "1.0.4", &phy(7, 1)));
    assert_eq!(a.result.code, CsResultCode::Success, "{:?}", a.result);
    let env = a.app_s_key.unwrap();
    assert_eq!(env.kek_label, "");
    let p = open_accept(7, 1, a.phy_payload.as_deref().unwrap());
    let app = KeyCipher::new(&APP_KEY.parse::<AppKey>().unwrap());
    let dk = derive::session_keys_1_0(&app, p.join_nonce, NetId::new(NET_ID).unwrap(), DevNonce(1));
    assert_eq!(env.open::<AppSKey>(None).unwrap(), dk.app_s_key);
    // The owner goes to the network server beside the applied settings (issue 15).
    let ext = a.vs_extension.expect("a VSExtension");
    assert_eq!(ext["Owner"], "alice");
    assert_eq!(ext["MACVersion"], "1.0.4");
    // Another owner's device (none) stays wrapped, and names no owner.
    let a = c.post(&cs_join_req(2, NET_ID, 2, "1.0.4", &phy(2, 1)));
    assert_eq!(a.app_s_key.unwrap().kek_label, s.as_kek.label);
    assert!(a.vs_extension.unwrap().get("Owner").is_none());
}

/// A LoRaWAN 1.1 Rejoin-request type 1 over Backend Interfaces: answered with a `RejoinAns`
/// whose Join-accept is encrypted with JSEncKey and signed with JSIntKey over the rejoin type,
/// JoinEUI and RJcount1 (LoRaWAN 1.1 §6.2.3); its RJcount1 is recorded, so the same rejoin is
/// refused, also after a restart.
#[test]
fn a_type_1_rejoin_over_backend_interfaces_gets_new_keys_once() {
    use protocol::join::{RejoinBody, RejoinMicKey, RejoinRequest};
    let tmp = tempfile::tempdir().unwrap();
    provision(tmp.path());
    let server = start(tmp.path(), "");
    let c = ts002(&server, tmp.path(), Some(token(tmp.path(), NET_ID)));
    assert_eq!(
        c.post(&cs_join_req(1, NET_ID, 3, "1.1", &phy(3, 1)))
            .result
            .code,
        CsResultCode::Success
    );
    let nwk = KeyCipher::new(&NWK_KEY.parse::<NwkKey>().unwrap());
    let js = derive::js_keys(&nwk, DevEui::new(3));
    let js_int = KeyCipher::new(&js.js_int_key);
    let js_enc = KeyCipher::new(&js.js_enc_key);
    let rejoin_req = |tid: u32, rj_count1: u16| {
        let body = RejoinBody::Type1 {
            join_eui: JoinEui::new(JOIN_EUI),
            dev_eui: DevEui::new(3),
            rj_count1,
        };
        let frame = RejoinRequest::build(body, RejoinMicKey::JsIntKey(&js_int))
            .unwrap()
            .to_bytes();
        let mut v: serde_json::Value =
            serde_json::from_slice(&cs_join_req(tid, NET_ID, 3, "1.1", &frame)).unwrap();
        v["MessageType"] = "RejoinReq".into();
        v.to_string().into_bytes()
    };
    let a = c.post(&rejoin_req(2, 5));
    assert_eq!(
        (a.result.code, a.message_type.as_str()),
        (CsResultCode::Success, "RejoinAns"),
        "{:?}",
        a.result
    );
    let enc =
        EncryptedJoinAccept::from_bytes(&hex::decode(a.phy_payload.as_ref().unwrap()).unwrap())
            .unwrap();
    let accept = enc
        .open(
            JoinAcceptEncKey::JsEncKey(&js_enc),
            JoinAcceptMicKey::OptNeg {
                js_int_key: &js_int,
                join_eui: JoinEui::new(JOIN_EUI),
                answered: AnsweredRequest::Rejoin1 { rj_count1: 5 },
            },
        )
        .expect("the Join-accept opens under JSEncKey and verifies under JSIntKey");
    assert_eq!(accept.dev_addr.as_u32(), DEV_ADDR);
    // The same RJcount1 again: refused, and the refusal is a RejoinAns.
    let again = c.post(&rejoin_req(3, 5));
    assert_eq!(
        (again.result.code, again.message_type.as_str()),
        (CsResultCode::JoinReqFailed, "RejoinAns")
    );
    // Our SessionInUseReq goes to the rotation trail: this device's keys were never rotated,
    // so the report is refused, in a SessionInUseAns.
    let report = serde_json::json!({
        "ProtocolVersion": "1.1", "SenderID": format!("{NET_ID:06X}"),
        "ReceiverID": format!("{JOIN_EUI:016X}"), "TransactionID": 9,
        "MessageType": "SessionInUseReq", "SenderNSID": format!("{NET_ID:06X}"),
        "DevEUI": "0000000000000003", "DevAddr": format!("{DEV_ADDR:08X}"),
        "RootKeyRotation": 1, "FCntUp": 0,
    });
    let (status, text) = c
        .post_raw("", "application/json", report.to_string().as_bytes())
        .unwrap();
    assert_eq!(status, 200, "{text}");
    let ans: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(ans["MessageType"], "SessionInUseAns", "{ans}");
    assert_eq!(ans["Result"]["ResultCode"], "UnknownDevEUI", "{ans}");
    // Rejoins in their own counter, by type and result (and among the joins, as before).
    let (_, text) = http_get(server.metrics_addr().unwrap(), "/metrics");
    for (sample, n) in [
        ("joinserver_rejoins_total{result=\"success\",type=\"1\"}", 1),
        (
            "joinserver_rejoins_total{result=\"rj_count1_too_small\",type=\"1\"}",
            1,
        ),
        ("joinserver_joins_total{result=\"success\"}", 2),
    ] {
        assert_eq!(metric(&text, sample), n, "{sample}");
    }
    drop(c);
    server.shutdown();
    let server = restart(tmp.path(), "");
    let c = ts002(&server, tmp.path(), Some(token(tmp.path(), NET_ID)));
    assert_eq!(
        c.post(&rejoin_req(4, 5)).result.code,
        CsResultCode::JoinReqFailed
    );
    assert_eq!(c.post(&rejoin_req(5, 6)).result.code, CsResultCode::Success);
}
