//! Onboarding end to end with every real binary: `joinserver` (management API over HTTP and the
//! JS↔NS link over UDP), two `netserver`s (NetID X = 000013 and Y = 000042) and `qr`, with
//! virtual gateways speaking GWMP.
//!
//! A manufacturer imports a signed manifest; `qr labels` prints codes for the devices; `qr claim`
//! on one label claims a device for owner A with home NetID X; the device joins through X's
//! network server and is refused through Y's; A releases it and passes the new token to B, who
//! claims it for Y with `qr claim`; it now joins through Y and not through X; A can no longer see
//! it.
//!
//! The other crates' binaries are built by a nested Cargo (same profile and target directory,
//! [`common::workspace_bin`]), as `otaa.rs` does for the join server.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    http, netserver_serve, run_ok as run, serve_joinserver, workspace_bin as bin, Gateway, Proc,
};
use ed25519_dalek::{Signer, SigningKey};
use protocol::gwmp::{CrcStatus, TxPk};
use protocol::ids::{DevEui, DevNonce, JoinEui, NetId};
use protocol::join::{
    EncryptedJoinAccept, JoinAcceptEncKey, JoinAcceptMicKey, JoinRequest, JoinRootKey,
};
use protocol::keys::{AppKey, KeyCipher};

const APP_KEY: &str = "2B7E151628AED2A6ABF7158809CF4F3C";
const JOIN_EUI: u64 = 0x70B3_D57E_D000_0001;
const DEV: u64 = 0x0004_A30B_0000_0E2E;
const DEV2: u64 = 0x0004_A30B_0000_0E2F;
const TOKEN: &str = "E2E0E2E0E2E0E2E0";
const NET_X: u32 = 0x000013;
const NET_Y: u32 = 0x000042;

/// A virtual gateway on 868.1 MHz whose PULL_DATA the network server has acknowledged.
fn gateway(eui: u64, ns: SocketAddr) -> Gateway {
    let g = Gateway::new(eui, ns).on_868_1();
    g.pull_data();
    g
}

/// The device sends a Join-request with `dev_nonce` through `gw`; the Join-accept, if one comes.
fn join(gw: &Gateway, dev_nonce: u16, tmst: u32) -> Option<TxPk> {
    let k = KeyCipher::new(&APP_KEY.parse::<AppKey>().unwrap());
    let phy = JoinRequest::build(
        JoinEui::new(JOIN_EUI),
        DevEui::new(DEV),
        DevNonce(dev_nonce),
        JoinRootKey::AppKey(&k),
    );
    gw.send_push(&phy.to_bytes(), tmst, 7.0, -100, CrcStatus::Ok);
    gw.pull_resp(Duration::from_secs(3)).map(|(_, tx)| tx)
}

/// Device side: the Join-accept decrypts and verifies under the device's AppKey; its NetID.
fn accepted_net_id(tx: &TxPk) -> NetId {
    let k = KeyCipher::new(&APP_KEY.parse::<AppKey>().unwrap());
    EncryptedJoinAccept::from_bytes(&tx.data)
        .unwrap()
        .open(
            JoinAcceptEncKey::AppKey(&k),
            JoinAcceptMicKey::Legacy(JoinRootKey::AppKey(&k)),
        )
        .expect("Join-accept MIC")
        .net_id
}

#[test]
fn manufacturer_owner_next_owner_through_real_network_servers() {
    let (js_bin, qr_bin) = (bin("joinserver"), bin("qr"));
    let tmp = tempfile::tempdir().unwrap();
    let js_dir = tmp.path().join("js");
    run(Command::new(&js_bin)
        .arg("init")
        .arg("--data-dir")
        .arg(&js_dir));
    let key = |role: &str, name: &str| {
        let o = run(Command::new(&js_bin)
            .args(["api-keys", "create", "--role", role, "--name", name])
            .arg("--data-dir")
            .arg(&js_dir));
        String::from_utf8(o.stdout).unwrap().trim().to_owned()
    };
    let (acme, alice, bob) = (
        key("manufacturer", "acme"),
        key("owner", "alice"),
        key("owner", "bob"),
    );
    let (alice_file, bob_file) = (tmp.path().join("alice.key"), tmp.path().join("bob.key"));
    std::fs::write(&alice_file, &alice).unwrap();
    std::fs::write(&bob_file, &bob).unwrap();
    let signer = SigningKey::from_bytes(&[0x5E; 32]);
    std::fs::write(
        js_dir.join("joinserver.toml"),
        format!(
            "[api]\ntrusted_manifest_keys = [\"{}\"]\n",
            hex::encode(signer.verifying_key().as_bytes())
        ),
    )
    .unwrap();
    // The network servers of NetIDs X and Y, each a peer with its own link key and network KEK.
    for net in [NET_X, NET_Y] {
        common::add_peer(&js_dir, &format!("{net:06X}"));
    }
    let js = serve_joinserver(
        &js_dir,
        &["--api-listen", "127.0.0.1:0"],
        "warn",
        Some("warn"),
    );
    let (api, link) = (js.addr("api"), js.addr("link"));
    let secrets = js_dir.join("secrets");
    let netserver = |net: u32| {
        let dir = tmp.path().join(format!("ns-{net:06X}"));
        let config = tmp.path().join(format!("ns-{net:06X}.toml"));
        std::fs::write(&config, "[gwmp]\nworkers = 1\n").unwrap();
        let c = netserver_serve(
            &config,
            &dir,
            &link.to_string(),
            &secrets,
            &format!("{net:06X}"),
        );
        Proc::spawn_logging(c, "netserver listening", "warn", Some("warn"))
    };
    let (ns_x, ns_y) = (netserver(NET_X), netserver(NET_Y));
    let gw_x = gateway(0xAA55_5A00_0000_0E2A, ns_x.addr("gwmp"));
    let gw_y = gateway(0xAA55_5A00_0000_0E2B, ns_y.addr("gwmp"));

    // 1. The manufacturer imports a signed manifest over the API.
    let manifest = format!(
        "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token\n\
         {DEV:016X},{JOIN_EUI:016X},1.0.4,{APP_KEY},,,{TOKEN}\n\
         {DEV2:016X},{JOIN_EUI:016X},1.0.4,{APP_KEY},,,0E2F0E2F0E2F0E2F\n"
    );
    let sig = hex::encode(signer.sign(manifest.as_bytes()).to_bytes());
    let auth = |k: &str| format!("Bearer {k}");
    let (st, body) = http(
        api,
        "POST",
        "/api/v1/devices/import",
        &[
            ("Authorization", &auth(&acme)),
            ("X-Manifest-Signature", &sig),
            ("Content-Type", "text/csv"),
        ],
        manifest.as_bytes(),
    );
    assert_eq!(st, 201, "{body}");

    // 2. `qr labels` prints the codes.
    let manifest_file = tmp.path().join("devices.csv");
    std::fs::write(&manifest_file, &manifest).unwrap();
    let labels = tmp.path().join("labels");
    run(Command::new(&qr_bin)
        .arg("labels")
        .arg(&manifest_file)
        .arg("--out")
        .arg(&labels)
        .args(["--format", "png"]));
    let label = labels.join(format!("{DEV:016X}.png"));
    assert!(label.is_file() && labels.join(format!("{DEV2:016X}.png")).is_file());

    // Unclaimed: no network activates it.
    let mut tmst = 1_000_000u32;
    let mut next = || {
        tmst = tmst.wrapping_add(50_000_000);
        tmst
    };
    assert!(
        join(&gw_x, 1, next()).is_none(),
        "an unclaimed device joined"
    );

    // 3. `qr claim` on the label: owner A, home NetID X.
    let claim = |input: &str, key: &Path, net: u32| {
        Command::new(&qr_bin)
            .args(["claim", input, "--join-server", &format!("http://{api}")])
            .arg("--api-key-file")
            .arg(key)
            .args(["--home-net-id", &format!("{net:06X}")])
            .output()
            .unwrap()
    };
    let o = claim(label.to_str().unwrap(), &alice_file, NET_X);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("claimed {DEV:016X}")));

    // 4. It joins through X's network server; 5. Y's is refused.
    let tx = join(&gw_x, 2, next()).expect("a Join-accept through NetID X");
    assert_eq!(accepted_net_id(&tx), NetId::new(NET_X).unwrap());
    assert!(
        join(&gw_y, 3, next()).is_none(),
        "joined through a foreign network"
    );

    // 6. A releases it and passes on the fresh token; B claims it for Y with `qr claim`.
    let dev_path = format!("/api/v1/devices/{DEV:016X}");
    let (st, body) = http(
        api,
        "DELETE",
        &format!("{dev_path}/claim"),
        &[("Authorization", &auth(&alice))],
        b"",
    );
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let new_token = v["owner_token"].as_str().unwrap();
    let o = run(Command::new(&qr_bin).args([
        "encode",
        "--join-eui",
        &format!("{JOIN_EUI:016X}"),
        "--dev-eui",
        &format!("{DEV:016X}"),
        "--profile-id",
        "00000000",
        "--owner-token",
        new_token,
    ]));
    let code = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    let o = claim(&code, &bob_file, NET_Y);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tx = join(&gw_y, 4, next()).expect("a Join-accept through NetID Y");
    assert_eq!(accepted_net_id(&tx), NetId::new(NET_Y).unwrap());
    assert!(
        join(&gw_x, 5, next()).is_none(),
        "joined through the previous owner's network"
    );

    // 7. A can no longer see the device; B can.
    assert_eq!(
        http(
            api,
            "GET",
            &dev_path,
            &[("Authorization", &auth(&alice))],
            b""
        )
        .0,
        404
    );
    assert_eq!(
        http(
            api,
            "GET",
            &dev_path,
            &[("Authorization", &auth(&bob))],
            b""
        )
        .0,
        200
    );

    // The network servers counted the refusals.
    let (_, m) = http(ns_y.addr("metrics"), "GET", "/metrics", &[], b"");
    assert!(m.contains("ActivationDisallowed"), "{m}");
}
