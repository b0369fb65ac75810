//! Onboarding end to end on one join server, over real HTTP (the management API) and real UDP
//! (the JS↔NS link): signed manifests, owner tokens, claim and release, home-network binding,
//! rate limiting, lifecycle operations, per-tenant visibility and the audit log.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{datagram, http_get, metric, now_ms, JOIN_EUI};
use ed25519_dalek::{Signer, SigningKey};
use joinserver::onboarding::db::Role;
use joinserver::onboarding::tr005::crc16_modbus;
use joinserver::secrets::{self, Secrets};
use joinserver::server::Server;
use protocol::ids::{DevEui, DevNonce, JoinEui};
use protocol::join::{JoinRequest, JoinRootKey};
use protocol::keys::{AppKey, KeyCipher, LinkKey, NwkKey};
use protocol::link;
use protocol::ts002::{JoinAns, ResultCode};
use serde_json::{json, Value};

const KEY_A: &str = "2B7E151628AED2A6ABF7158809CF4F3C";
const KEY_B: &str = "000102030405060708090A0B0C0D0E0F";
const NEW_KEY: &str = "F0E0D0C0B0A090807060504030201000";
const NET_X: u32 = 0x000013;
const NET_Y: u32 = 0x000042;
// A: 1.0.4 with a token in the manifest; B: 1.0.4, token generated; C: 1.1; D: 1.0.4.
const A: u64 = 0x0004_A30B_0000_000A;
const B: u64 = 0x0004_A30B_0000_000B;
const C: u64 = 0x0004_A30B_0000_000C;
const D: u64 = 0x0004_A30B_0000_000D;
const TOKEN_A: &str = "A1B2C3D4E5F60718";
const TOKEN_C: &str = "CCCC0000CCCC0000";
const TOKEN_D: &str = "DDDD0000DDDD0000";

/// A request body and its headers.
type Body<'a> = Option<(&'a [u8], &'a [(&'a str, &'a str)])>;

struct Http {
    agent: ureq::Agent,
    base: String,
}

impl Http {
    fn new(addr: SocketAddr) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Self {
            agent,
            base: format!("http://{addr}"),
        }
    }

    fn call(&self, method: &str, path: &str, key: Option<&str>, body: Body<'_>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let auth = key.map(|k| format!("Bearer {k}"));
        let mut resp = match method {
            "GET" | "DELETE" => {
                let mut r = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call().unwrap()
            }
            _ => {
                let mut r = if method == "PUT" {
                    self.agent.put(&url)
                } else {
                    self.agent.post(&url)
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                let (b, headers) = body.unwrap_or((b"", &[]));
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.send(b).unwrap()
            }
        };
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    fn json(&self, method: &str, path: &str, key: &str, body: &Value) -> (u16, Value) {
        let b = serde_json::to_vec(body).unwrap();
        self.call(
            method,
            path,
            Some(key),
            Some((&b, &[("Content-Type", "application/json")])),
        )
    }
}

/// The join server's link, as network servers see it.
struct Link<'a> {
    addr: SocketAddr,
    /// The link key of each NetID's network server.
    keys: [(u32, &'a LinkKey); 2],
}

/// A JoinReq from a network server of NetID `net`.
fn join(l: &Link<'_>, net: u32, tid: u32, dev: u64, dn: u16, root: &str, v11: bool) -> ResultCode {
    let jr = if v11 {
        let k = KeyCipher::new(&root.parse::<NwkKey>().unwrap());
        JoinRequest::build(
            JoinEui::new(JOIN_EUI),
            DevEui::new(dev),
            DevNonce(dn),
            JoinRootKey::NwkKey(&k),
        )
    } else {
        let k = KeyCipher::new(&root.parse::<AppKey>().unwrap());
        JoinRequest::build(
            JoinEui::new(JOIN_EUI),
            DevEui::new(dev),
            DevNonce(dn),
            JoinRootKey::AppKey(&k),
        )
    };
    let body = common::join_req_json(tid, net, dev, &jr.to_bytes());
    let nonce = u64::from(tid) * 13 + u64::from(net);
    let (link_addr, key) = (l.addr, l.keys.iter().find(|(n, _)| *n == net).unwrap().1);
    let d = datagram(key, net, now_ms(), nonce, &body);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send_to(&d, link_addr).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf).expect("a JoinAns");
    let (_, body) = link::open(key, &buf[..n]).expect("authenticated answer");
    JoinAns::parse(body).unwrap().result.result_code
}

fn qr_text(dev: u64, token: &str) -> String {
    let body = format!("LW:D0:{JOIN_EUI:016X}:{dev:016X}:00000000:O{token}");
    format!("{body}:C{:04X}", crc16_modbus(body.as_bytes()))
}

fn actions(records: &Value) -> Vec<(String, String, String)> {
    records["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["dev_eui"].as_str().unwrap_or("").to_owned(),
                r["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn onboarding_over_http_and_udp() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    secrets::init(dir).unwrap();
    let s = Secrets::load(dir).unwrap();
    // The network servers of NetIDs X and Y, each a peer with its own link key.
    let (peer_x, peer_y) = (common::add_peer(dir, NET_X), common::add_peer(dir, NET_Y));
    let signer = SigningKey::from_bytes(&[42; 32]);
    let mut config = common::config(dir);
    config.link.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.listen = "127.0.0.1:0".into();
    config.api.listen = "127.0.0.1:0".into();
    config.api.trusted_manifest_keys = vec![hex::encode(signer.verifying_key().as_bytes())];
    config.api.claim_failures_per_device = 3;

    // API keys, as `joinserver api-keys create` makes them.
    let keys = common::api_keys(
        dir,
        &s.master,
        &[
            (Role::Manufacturer, "acme"),
            (Role::Owner, "alice"),
            (Role::Owner, "bob"),
            (Role::Admin, "ops"),
        ],
    );
    let [acme, alice, bob, ops]: [String; 4] = keys.try_into().unwrap();

    let server = Server::start(dir, &config).unwrap();
    let api = Http::new(server.api_addr().unwrap());
    let la = &Link {
        addr: server.link_addr(),
        keys: [(NET_X, &peer_x.link), (NET_Y, &peer_y.link)],
    };

    // The document is served.
    let (st, doc) = api.call("GET", "/api/v1/openapi.json", None, None);
    assert_eq!(st, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    // Every operation of the router is in the document (and so reachable by schemathesis).
    for (path, method) in [
        ("/api/v1/devices", "get"),
        ("/api/v1/devices/import", "post"),
        ("/api/v1/devices/{dev_eui}", "get"),
        ("/api/v1/devices/{dev_eui}", "delete"),
        ("/api/v1/devices/{dev_eui}/claim", "put"),
        ("/api/v1/devices/{dev_eui}/claim", "delete"),
        ("/api/v1/devices/{dev_eui}/dev-nonce-reset", "post"),
        ("/api/v1/devices/{dev_eui}/root-keys", "put"),
        ("/api/v1/devices/{dev_eui}/lock", "put"),
        ("/api/v1/devices/{dev_eui}/lock", "delete"),
        ("/api/v1/claims", "post"),
        ("/api/v1/audit", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} undocumented"
        );
    }

    // 1. A manufacturer imports a signed manifest; a tampered or unsigned one is refused whole.
    let manifest = format!(
        "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token\n\
         {A:016X},{JOIN_EUI:016X},1.0.4,{KEY_A},,,{TOKEN_A}\n\
         {B:016X},{JOIN_EUI:016X},1.0.4,{KEY_A},,,\n\
         {C:016X},{JOIN_EUI:016X},1.1,{KEY_A},{KEY_B},,{TOKEN_C}\n\
         {D:016X},{JOIN_EUI:016X},1.0.4,{KEY_A},,,{TOKEN_D}\n"
    );
    let sig = hex::encode(signer.sign(manifest.as_bytes()).to_bytes());
    let tampered = manifest.replace(TOKEN_A, "0000000000000000");
    let post = |body: &str, sig: Option<&str>, key: &str| {
        let mut h = vec![("Content-Type", "text/csv")];
        if let Some(s) = sig {
            h.push(("X-Manifest-Signature", s));
        }
        api.call(
            "POST",
            "/api/v1/devices/import",
            Some(key),
            Some((body.as_bytes(), &h)),
        )
    };
    let (st, e) = post(&tampered, Some(&sig), &acme);
    assert_eq!((st, e["error"].as_str()), (422, Some("signature_invalid")));
    let (st, e) = post(&manifest, None, &acme);
    assert_eq!((st, e["error"].as_str()), (400, Some("signature_missing")));
    let (st, e) = post(&manifest, Some(&sig), &alice);
    assert_eq!(
        (st, e["error"].as_str()),
        (403, Some("forbidden")),
        "owners do not provision"
    );
    let (st, devs) = api.call("GET", "/api/v1/devices", Some(&ops), None);
    assert_eq!(
        (st, devs["devices"].as_array().unwrap().len()),
        (200, 0),
        "nothing imported"
    );
    let (st, r) = post(&manifest, Some(&sig), &acme);
    assert_eq!(st, 201, "{r}");
    assert_eq!(r["imported"], 4);
    let generated = r["generated_owner_tokens"].as_array().unwrap();
    assert_eq!(generated.len(), 1, "only B had no token");
    assert_eq!(generated[0]["dev_eui"], format!("{B:016X}"));
    let token_b = generated[0]["owner_token"].as_str().unwrap().to_owned();
    assert_eq!(token_b.len(), 32);

    // Unclaimed devices join nowhere.
    assert_eq!(
        join(la, NET_X, 1, A, 1, KEY_A, false),
        ResultCode::ActivationDisallowed
    );

    // The manufacturer sees its devices but not owners; an owner sees nothing yet (404).
    let path_a = format!("/api/v1/devices/{A:016X}");
    let (st, v) = api.call("GET", &path_a, Some(&acme), None);
    assert_eq!(st, 200);
    assert!(
        v.get("owner").is_none() && v.get("home_net_id").is_none() && v.get("claimed").is_none(),
        "{v}"
    );
    assert_eq!(api.call("GET", &path_a, Some(&alice), None).0, 404);
    assert_eq!(api.call("GET", &path_a, None, None).0, 401);
    assert_eq!(api.call("GET", &path_a, Some("jsk_0000"), None).0, 401);

    // A wrong token is refused, and rate-limited after repeated failures (per DevEUI: 3).
    let claim = |dev: u64, token: &str, net: u32, key: &str| {
        api.json(
            "PUT",
            &format!("/api/v1/devices/{dev:016X}/claim"),
            key,
            &json!({"owner_token": token, "home_net_id": format!("{net:06X}")}),
        )
    };
    for _ in 0..3 {
        let (st, e) = claim(B, "WRONG", NET_X, &alice);
        assert_eq!((st, e["error"].as_str()), (403, Some("wrong_token")));
    }
    let (st, e) = claim(B, &token_b, NET_X, &alice);
    assert_eq!(
        (st, e["error"].as_str()),
        (429, Some("rate_limited")),
        "even the right token waits"
    );
    assert_eq!(claim(0x1234, "X", NET_X, &bob).0, 404, "unknown device");

    // 3. Owner A (alice) claims device A for home NetID X; bob cannot claim it again.
    let (st, v) = claim(A, TOKEN_A, NET_X, &alice);
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (
            v["claimed"].as_bool(),
            v["home_net_id"].as_str(),
            v["owner"].as_str()
        ),
        (Some(true), Some("000013"), Some("alice"))
    );
    assert_eq!(
        (&v["last_join_at"], &v["last_join_net_id"]),
        (&Value::Null, &Value::Null),
        "not joined yet"
    );
    let (st, e) = claim(A, TOKEN_A, NET_Y, &bob);
    assert_eq!((st, e["error"].as_str()), (409, Some("already_claimed")));

    // 4. It joins through X; 5. not through Y. The join server records the accepted join.
    let before = std::time::SystemTime::now();
    assert_eq!(join(la, NET_X, 2, A, 1, KEY_A, false), ResultCode::Success);
    let after = std::time::SystemTime::now();
    assert_eq!(
        join(la, NET_Y, 3, A, 2, KEY_A, false),
        ResultCode::ActivationDisallowed
    );
    let (st, v) = api.call("GET", &path_a, Some(&alice), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["last_join_net_id"], "000013",
        "the refused join is not recorded"
    );
    let (_, m) = api.call("GET", &path_a, Some(&acme), None);
    assert!(
        m.get("last_join_at").is_none() && m.get("last_join_net_id").is_none(),
        "the manufacturer does not see where its device joined: {m}"
    );
    let at = v["last_join_at"].as_str().unwrap();
    let rfc = protocol::time::rfc3339;
    assert!(
        rfc(before).as_str() <= at && at <= rfc(after).as_str(),
        "{at} not within {} .. {}",
        rfc(before),
        rfc(after)
    );

    // 6. Alice releases it and gets a fresh token; bob claims with it; it joins through Y.
    let (st, r) = api.call("DELETE", &format!("{path_a}/claim"), Some(&alice), None);
    assert_eq!(st, 200, "{r}");
    let new_token = r["owner_token"].as_str().unwrap().to_owned();
    assert_ne!(new_token, TOKEN_A);
    assert_eq!(
        join(la, NET_X, 4, A, 3, KEY_A, false),
        ResultCode::ActivationDisallowed,
        "released: unclaimed"
    );
    assert_eq!(
        claim(A, TOKEN_A, NET_Y, &bob).1["error"],
        "wrong_token",
        "the old token is void"
    );
    let (st, v) = claim(A, &new_token, NET_Y, &bob);
    assert_eq!((st, v["owner"].as_str()), (200, Some("bob")));
    assert_eq!(join(la, NET_Y, 5, A, 4, KEY_A, false), ResultCode::Success);
    assert_eq!(
        join(la, NET_X, 6, A, 5, KEY_A, false),
        ResultCode::ActivationDisallowed
    );

    // 7. Alice no longer sees it.
    assert_eq!(api.call("GET", &path_a, Some(&alice), None).0, 404);
    let (_, list) = api.call("GET", "/api/v1/devices", Some(&alice), None);
    assert!(list["devices"].as_array().unwrap().is_empty(), "{list}");
    assert_eq!(
        api.call("DELETE", &format!("{path_a}/claim"), Some(&alice), None)
            .0,
        404
    );
    let (_, list) = api.call("GET", "/api/v1/devices", Some(&bob), None);
    assert_eq!(list["devices"][0]["dev_eui"], format!("{A:016X}"));

    // DevNonce reset: the factory-reset 1.0.4 device counts from 0 again.
    assert_eq!(
        join(la, NET_Y, 7, A, 0, KEY_A, false),
        ResultCode::JoinReqFailed
    );
    let (st, v) = api.call(
        "POST",
        &format!("{path_a}/dev-nonce-reset"),
        Some(&bob),
        None,
    );
    assert_eq!((st, v["last_dev_nonce"].clone()), (200, Value::Null), "{v}");
    assert_eq!(join(la, NET_Y, 8, A, 0, KEY_A, false), ResultCode::Success);

    // Claim from the raw QR text; then a root-key rotation of that 1.1 device.
    let (st, v) = api.json(
        "POST",
        "/api/v1/claims",
        &alice,
        &json!({"qr_code": qr_text(C, TOKEN_C), "home_net_id": "000013"}),
    );
    assert_eq!(
        (st, v["dev_eui"].as_str()),
        (200, Some(format!("{C:016X}").as_str())),
        "{v}"
    );
    let (st, e) = api.json(
        "POST",
        "/api/v1/claims",
        &alice,
        &json!({"qr_code": qr_text(C, TOKEN_C).replace(":C", ":CF"), "home_net_id": "000013"}),
    );
    assert_eq!((st, e["error"].as_str()), (400, Some("bad_request")));
    assert_eq!(join(la, NET_X, 9, C, 0, KEY_B, true), ResultCode::Success);
    let path_c = format!("/api/v1/devices/{C:016X}");
    let (st, _) = api.json(
        "PUT",
        &format!("{path_c}/root-keys"),
        &alice,
        &json!({"app_key": NEW_KEY}),
    );
    assert_eq!(st, 400, "1.1 needs a NwkKey");
    let (st, v) = api.json(
        "PUT",
        &format!("{path_c}/root-keys"),
        &alice,
        &json!({"app_key": NEW_KEY, "nwk_key": NEW_KEY}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        join(la, NET_X, 10, C, 0, KEY_B, true),
        ResultCode::MicFailed,
        "old keys are gone"
    );
    assert_eq!(
        join(la, NET_X, 11, C, 0, NEW_KEY, true),
        ResultCode::Success,
        "DevNonce reset with the rotation"
    );
    let (st, _) = api.json(
        "PUT",
        &format!("{path_c}/root-keys"),
        &bob,
        &json!({"app_key": NEW_KEY, "nwk_key": NEW_KEY}),
    );
    assert_eq!(st, 404, "bob may not touch alice's device");

    // A locked device cannot be claimed; only an admin locks.
    let path_d = format!("/api/v1/devices/{D:016X}");
    assert_eq!(
        api.call(
            "PUT",
            &format!("{path_d}/lock"),
            Some(&acme),
            Some((b"", &[]))
        )
        .0,
        403
    );
    assert_eq!(
        api.call(
            "PUT",
            &format!("{path_d}/lock"),
            Some(&ops),
            Some((b"", &[]))
        )
        .0,
        200
    );
    let (st, e) = claim(D, TOKEN_D, NET_X, &alice);
    assert_eq!((st, e["error"].as_str()), (423, Some("locked")));

    // Deprovision: the manufacturer removes its unclaimed device B; it no longer exists.
    let path_b = format!("/api/v1/devices/{B:016X}");
    assert_eq!(
        api.call("DELETE", &path_a, Some(&acme), None).0,
        409,
        "claimed: not the manufacturer's to remove"
    );
    assert_eq!(api.call("DELETE", &path_b, Some(&acme), None).0, 204);
    assert_eq!(
        join(la, NET_X, 12, B, 1, KEY_A, false),
        ResultCode::UnknownDevEui
    );

    // Every operation is in the audit log, with actor, time and outcome.
    let (st, all) = api.call("GET", "/api/v1/audit?limit=1000", Some(&ops), None);
    assert_eq!(st, 200);
    let got = actions(&all);
    let has = |action: &str, dev: Option<u64>, outcome: &str| {
        let dev = dev.map(|d| format!("{d:016X}")).unwrap_or_default();
        got.iter()
            .any(|(a, d, o)| a == action && *d == dev && o == outcome)
    };
    for (action, dev, outcome) in [
        ("api_key_create", None, "ok"),
        ("import", None, "refused:signature_invalid"),
        ("import", None, "refused:signature_missing"),
        ("import", None, "refused:forbidden"),
        ("import", None, "ok"),
        ("provision", Some(A), "ok"),
        ("provision", Some(D), "ok"),
        ("claim", Some(B), "refused:wrong_token"),
        ("claim", Some(B), "refused:rate_limited"),
        ("claim", Some(A), "ok"),
        ("claim", Some(A), "refused:already_claimed"),
        ("release", Some(A), "ok"),
        ("dev_nonce_reset", Some(A), "ok"),
        ("claim", Some(C), "ok"),
        ("claim", None, "refused:bad_request"),
        ("root_key_rotation", Some(C), "ok"),
        ("root_key_rotation", Some(C), "refused:not_found"),
        ("lock", Some(D), "refused:forbidden"),
        ("lock", Some(D), "ok"),
        ("claim", Some(D), "refused:locked"),
        ("deprovision", Some(A), "refused:already_claimed"),
        ("deprovision", Some(B), "ok"),
    ] {
        assert!(
            has(action, dev, outcome),
            "audit lacks {action} {dev:?} {outcome}: {got:?}"
        );
    }
    let first = &all["records"][0];
    assert!(first["at_ms"].as_i64().unwrap() > 1_700_000_000_000);
    assert!(first["actor"].as_str().unwrap() == "cli");
    // Filters; and an owner sees only its own records.
    let (_, only_a) = api.call(
        "GET",
        &format!("/api/v1/audit?dev_eui={A:016X}&outcome=refused"),
        Some(&ops),
        None,
    );
    let only_a = actions(&only_a);
    assert!(
        !only_a.is_empty()
            && only_a
                .iter()
                .all(|(_, d, o)| *d == format!("{A:016X}") && o.starts_with("refused")),
        "{only_a:?}"
    );
    let (_, mine) = api.call("GET", "/api/v1/audit?limit=1000", Some(&bob), None);
    assert!(mine["records"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["tenant"] == "bob"));
    // No secret appears in the log.
    let text = all.to_string();
    for secret in [TOKEN_A, &token_b, &new_token, KEY_A, NEW_KEY, &alice[4..]] {
        assert!(!text.contains(secret), "a secret is in the audit log");
    }

    // Both refusals are counted by reason.
    let (_, m) = http_get(server.metrics_addr().unwrap(), "/metrics");
    assert_eq!(
        metric(&m, "joinserver_joins_total{result=\"unclaimed\"}"),
        2
    );
    assert_eq!(
        metric(
            &m,
            "joinserver_joins_total{result=\"activation_disallowed\"}"
        ),
        2
    );
    server.shutdown();
}
