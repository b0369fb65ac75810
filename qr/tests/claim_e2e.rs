//! Onboarding end to end, with real HTTP and UDP: a join server (in process: management API and
//! JS↔NS link), the `qr` binary for labels and claims, and network servers of two NetIDs played
//! by a link client built on `protocol::link` (the netserver binary is not in this branch).
//!
//! The steps: a manufacturer imports a signed manifest; `qr labels` prints codes for the
//! devices; `qr claim` on one label claims a device for owner A with home NetID X; the device
//! joins through X, and through Y it is refused; A releases it, B claims it with the new token and
//! it joins through B's network Y; A can no longer see it. Also: each `qr claim` failure names its
//! step and reason.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use joinserver::config::Config;
use joinserver::onboarding::db::{Actor, OnboardStore, Role};
use joinserver::onboarding::manifest_sig::TrustedKeys;
use joinserver::onboarding::service::Onboarding;
use joinserver::secrets::{self, Secrets};
use joinserver::server::Server;
use protocol::ids::{DevEui, DevNonce, JoinEui, NetId};
use protocol::join::{JoinRequest, JoinRootKey};
use protocol::keys::{AppKey, KeyCipher, LinkKey};
use protocol::link::{self, Header, MessageType, PeerId};
use protocol::ts002::{JoinAns, ResultCode};
use qr::{ChecksumMode, DeviceCode, ProfileId};

const APP_KEY: &str = "2B7E151628AED2A6ABF7158809CF4F3C";
const JOIN_EUI: u64 = 0x70B3_D57E_D000_0001;
const DEV: u64 = 0x0004_A30B_0000_0101;
const DEV2: u64 = 0x0004_A30B_0000_0102;
const TOKEN: &str = "5EC12E7A0B0C0D0E";
const NET_X: u32 = 0x000013;
const NET_Y: u32 = 0x000042;

fn qr_cmd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qr"))
        .args(args)
        .output()
        .unwrap()
}

fn out(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The link keys of the network servers of NetIDs X and Y.
struct NetKeys([(u32, LinkKey); 2]);

/// Adds the network servers of NetIDs X and Y as peers of the join server in `dir`, each with its
/// own link key (the library call behind `joinserver peers add`, which records them in the
/// data directory's store). Returns their keys and the data directory's configuration (the
/// default when it has no `joinserver.toml`).
fn add_peers(dir: &Path) -> (NetKeys, Config) {
    let keys = [NET_X, NET_Y].map(|net| {
        let added = joinserver::peers::add(dir, NetId::new(net).unwrap()).unwrap();
        (net, secrets::read_hex_key(&added.link_key_file).unwrap())
    });
    let text =
        std::fs::read_to_string(dir.join(joinserver::peers::CONFIG_FILE)).unwrap_or_default();
    (NetKeys(keys), Config::from_toml(&text).unwrap())
}

/// A network server of NetID `net` sending one JoinReq over the link with its key.
fn join(addr: SocketAddr, keys: &NetKeys, net: u32, tid: u32, dev_nonce: u16) -> ResultCode {
    let key = &keys.0.iter().find(|(n, _)| *n == net).unwrap().1;
    let k = KeyCipher::new(&APP_KEY.parse::<AppKey>().unwrap());
    let jr = JoinRequest::build(
        JoinEui::new(JOIN_EUI),
        DevEui::new(DEV),
        DevNonce(dev_nonce),
        JoinRootKey::AppKey(&k),
    );
    let body = serde_json::to_vec(&serde_json::json!({
        "ProtocolVersion": "1.0",
        "SenderID": format!("{net:06X}"),
        "ReceiverID": format!("{JOIN_EUI:016X}"),
        "TransactionID": tid,
        "MessageType": "JoinReq",
        "MACVersion": "1.0.4",
        "PHYPayload": hex::encode(jr.to_bytes()),
        "DevEUI": format!("{DEV:016X}"),
        "DevAddr": "26011BDA",
        "DLSettings": "00",
        "RxDelay": 1,
    }))
    .unwrap();
    let mut d = Vec::new();
    link::seal(
        key,
        &Header {
            msg_type: MessageType::JoinReq,
            sender: PeerId::from_net_id(NetId::new(net).unwrap()),
            timestamp_ms: joinserver::link::now_ms(),
            nonce: u64::from(tid) << 8 | u64::from(net & 0xFF),
        },
        &body,
        &mut d,
    )
    .unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send_to(&d, addr).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf).expect("a JoinAns");
    let (_, body) = link::open(key, &buf[..n]).expect("authenticated answer");
    JoinAns::parse(body).unwrap().result.result_code
}

fn http(
    method: &str,
    url: &str,
    key: &str,
    body: Option<(&[u8], &str)>,
) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let auth = format!("Bearer {key}");
    let mut resp = match (method, body) {
        ("GET", _) => agent.get(url).header("Authorization", &auth).call(),
        ("DELETE", _) => agent.delete(url).header("Authorization", &auth).call(),
        (_, Some((b, sig))) => agent
            .post(url)
            .header("Authorization", &auth)
            .header("X-Manifest-Signature", sig)
            .send(b),
        _ => unreachable!("no such request in this test"),
    }
    .unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_default())
}

fn claim(input: &str, url: &str, key_file: &Path, net: &str) -> Output {
    qr_cmd(&[
        "claim",
        input,
        "--join-server",
        url,
        "--api-key-file",
        key_file.to_str().unwrap(),
        "--home-net-id",
        net,
    ])
}

#[test]
fn manufacturer_to_owner_to_next_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("js");
    std::fs::create_dir(&dir).unwrap();
    secrets::init(&dir).unwrap();
    let s = Secrets::load(&dir).unwrap();
    let (net_keys, mut config) = add_peers(&dir);
    let signer = SigningKey::from_bytes(&[3; 32]);
    config.link.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.listen = String::new();
    config.api.listen = "127.0.0.1:0".into();
    config.api.trusted_manifest_keys = vec![hex::encode(signer.verifying_key().as_bytes())];
    let cli = Onboarding::new(
        OnboardStore::open(&dir).unwrap(),
        None,
        s.master.clone(),
        TrustedKeys::default(),
        Default::default(),
    );
    let key = |role, name| {
        let (k, _) = cli.create_api_key(&Actor::cli(), role, name).unwrap();
        k.expose().to_owned()
    };
    let acme = key(Role::Manufacturer, "acme");
    let (alice, bob) = (key(Role::Owner, "alice"), key(Role::Owner, "bob"));
    let alice_file = tmp.path().join("alice.key");
    let bob_file = tmp.path().join("bob.key");
    std::fs::write(&alice_file, format!("{alice}\n")).unwrap();
    std::fs::write(&bob_file, format!("{bob}\n")).unwrap();

    let server = Server::start(&dir, &config).unwrap();
    let url = format!("http://{}", server.api_addr().unwrap());
    let (la, lk) = (server.link_addr(), &net_keys);

    // 1. The manufacturer imports a signed manifest.
    let manifest = format!(
        "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token\n\
         {DEV:016X},{JOIN_EUI:016X},1.0.4,{APP_KEY},,,{TOKEN}\n\
         {DEV2:016X},{JOIN_EUI:016X},1.0.4,{APP_KEY},,,0B0B0B0B0B0B0B0B\n"
    );
    let sig = hex::encode(signer.sign(manifest.as_bytes()).to_bytes());
    let (st, r) = http(
        "POST",
        &format!("{url}/api/v1/devices/import"),
        &acme,
        Some((manifest.as_bytes(), &sig)),
    );
    assert_eq!((st, r["imported"].as_u64()), (201, Some(2)), "{r}");

    // 2. `qr labels` prints a code per device.
    let manifest_file = tmp.path().join("manifest.csv");
    std::fs::write(&manifest_file, &manifest).unwrap();
    let labels = tmp.path().join("labels");
    let o = qr_cmd(&[
        "labels",
        manifest_file.to_str().unwrap(),
        "--out",
        labels.to_str().unwrap(),
        "--format",
        "png",
    ]);
    assert!(o.status.success(), "{:?}", out(&o));
    let label = labels.join(format!("{DEV:016X}.png"));
    assert!(label.is_file() && labels.join(format!("{DEV2:016X}.png")).is_file());

    // The device is unclaimed: it joins nowhere.
    assert_eq!(join(la, lk, NET_X, 1, 1), ResultCode::ActivationDisallowed);

    // 3. `qr claim` on the label: owner A (alice), home NetID X.
    let o = claim(label.to_str().unwrap(), &url, &alice_file, "000013");
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("claimed {DEV:016X}"))
            && stdout.contains("\"alice\"")
            && stdout.contains("home NetID 000013")
            && stdout.contains("from image"),
        "{stdout}"
    );
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));

    // 4. It joins through X; 5. not through Y.
    assert_eq!(join(la, lk, NET_X, 2, 2), ResultCode::Success);
    assert_eq!(join(la, lk, NET_Y, 3, 3), ResultCode::ActivationDisallowed);

    // Claim failures, each with its step and reason.
    let fails = |o: Output, step: &str, reason: &str| {
        let (_, err) = out(&o);
        assert!(!o.status.success());
        assert!(err.contains(step) && err.contains(reason), "{err}");
    };
    let code = |token: &str| {
        DeviceCode::new(
            JoinEui::new(JOIN_EUI),
            DevEui::new(DEV),
            ProfileId::new(0, 0),
        )
        .with_owner_token(token)
        .unwrap()
        .encode(ChecksumMode::Include)
    };
    fails(
        claim(&code(TOKEN), &url, &bob_file, "000042"),
        "step 3 (claim)",
        "already claimed",
    );
    let mut bad_sum = code(TOKEN);
    bad_sum.pop();
    bad_sum.push(if code(TOKEN).ends_with('0') { '1' } else { '0' });
    fails(
        claim(&bad_sum, &url, &bob_file, "000042"),
        "step 2 (validate)",
        "CheckSum",
    );
    let blank = tmp.path().join("blank.png");
    image::GrayImage::from_pixel(200, 200, image::Luma([255]))
        .save(&blank)
        .unwrap();
    fails(
        claim(blank.to_str().unwrap(), &url, &bob_file, "000042"),
        "step 1 (decode)",
        "no QR code found",
    );
    let closed = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    fails(
        claim(
            &code(TOKEN),
            &format!("http://127.0.0.1:{closed}"),
            &bob_file,
            "000042",
        ),
        "step 3 (claim)",
        "unreachable",
    );

    // 6. A releases the device and passes the fresh token on; B claims it and it joins
    //    through B's network server (NetID Y), no longer through X.
    let dev_url = format!("{url}/api/v1/devices/{DEV:016X}");
    let (st, r) = http("DELETE", &format!("{dev_url}/claim"), &alice, None);
    assert_eq!(st, 200, "{r}");
    let new_token = r["owner_token"].as_str().unwrap().to_owned();
    fails(
        claim(&code(TOKEN), &url, &bob_file, "000042"),
        "step 3 (claim)",
        "wrong owner token",
    );
    let o = claim(&code(&new_token), &url, &bob_file, "000042");
    assert!(o.status.success(), "{:?}", out(&o));
    assert!(out(&o).0.contains("\"bob\"") && out(&o).0.contains("home NetID 000042"));
    assert_eq!(join(la, lk, NET_Y, 4, 4), ResultCode::Success);
    assert_eq!(join(la, lk, NET_X, 5, 5), ResultCode::ActivationDisallowed);

    // 7. A can no longer see the device; B can.
    assert_eq!(http("GET", &dev_url, &alice, None).0, 404);
    assert_eq!(http("GET", &dev_url, &bob, None).0, 200);
    server.shutdown();
}

/// `qr claim` over HTTPS: the join server's API with the self-signed certificate `joinserver
/// init` writes (here by the same library call), trusted through `--ca-file`. Without it the
/// system's roots do not know the certificate and the claim fails at step 3, claiming nothing;
/// plain HTTP to a non-loopback address is refused before any connection.
#[test]
fn https_claim_with_the_ca_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("js");
    std::fs::create_dir(&dir).unwrap();
    secrets::init(&dir).unwrap();
    let cert = dir.join(joinserver::config::API_TLS_CERT);
    httpsec::tls::ensure_self_signed(
        &cert,
        &dir.join(joinserver::config::API_TLS_KEY),
        &["localhost".into(), "127.0.0.1".into()],
    )
    .unwrap();
    let s = Secrets::load(&dir).unwrap();
    let mut store = joinserver::store::SqliteStore::open(&dir).unwrap();
    let manifest = format!(
        "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token\n\
         {DEV:016X},{JOIN_EUI:016X},1.0.4,{APP_KEY},,,{TOKEN}\n"
    );
    joinserver::devices::import(
        &mut store,
        &s.master,
        &manifest,
        joinserver::devices::Format::Csv,
    )
    .unwrap();
    let cli = Onboarding::new(
        OnboardStore::open(&dir).unwrap(),
        None,
        s.master.clone(),
        TrustedKeys::default(),
        Default::default(),
    );
    let (alice, _) = cli
        .create_api_key(&Actor::cli(), Role::Owner, "alice")
        .unwrap();
    let alice_file = tmp.path().join("alice.key");
    std::fs::write(&alice_file, format!("{}\n", alice.expose())).unwrap();
    let (net_keys, mut config) = add_peers(&dir);
    config.link.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.listen = String::new();
    config.api.listen = "127.0.0.1:0".into();
    let server = Server::start(&dir, &config).unwrap();
    assert_eq!(server.api_scheme(), Some("https"));
    let url = format!("https://127.0.0.1:{}", server.api_addr().unwrap().port());
    let code = DeviceCode::new(
        JoinEui::new(JOIN_EUI),
        DevEui::new(DEV),
        ProfileId::new(0, 0),
    )
    .with_owner_token(TOKEN)
    .unwrap()
    .encode(ChecksumMode::Include);

    // The system's roots do not know a self-signed certificate: nothing is claimed.
    let o = claim(&code, &url, &alice_file, "000013");
    let (_, err) = out(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("step 3 (claim)") && err.contains("unreachable"),
        "{err}"
    );
    // Plain HTTP to an address other hosts reach: refused before any connection.
    let o = claim(&code, "http://192.0.2.1:8080", &alice_file, "000013");
    assert!(out(&o).1.contains("refusing plain HTTP"), "{:?}", out(&o));

    let o = qr_cmd(&[
        "claim",
        &code,
        "--join-server",
        &url,
        "--api-key-file",
        alice_file.to_str().unwrap(),
        "--ca-file",
        cert.to_str().unwrap(),
        "--home-net-id",
        "000013",
    ]);
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("claimed {DEV:016X}")) && stdout.contains("home NetID 000013"),
        "{stdout}"
    );
    assert_eq!(
        join(server.link_addr(), &net_keys, NET_X, 1, 1),
        ResultCode::Success
    );
    server.shutdown();
}
