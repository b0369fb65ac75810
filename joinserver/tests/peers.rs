//! Per-network-server link keys over real UDP on 127.0.0.1: a NetID spoofed with another peer's
//! key is refused and counted; a key rotates with an overlap (old and new both accepted, each
//! answer sealed with its request's key); a clock skew that drops datagrams is a metric.

mod common;

use std::time::Duration;

use common::*;
use joinserver::config::{Config, PeerConfig};
use joinserver::server::Server;
use protocol::keys::LinkKey;
use protocol::link;
use protocol::ts002::{JoinAns, ResultCode};

const NET_Y: u32 = 0x000042;
const NO_ANSWER: Duration = Duration::from_millis(300);

/// `joinserver_link_drops_total{reason}` in a metrics text.
fn drops(text: &str, reason: &str) -> u64 {
    metric(
        text,
        &format!("joinserver_link_drops_total{{reason=\"{reason}\"}}"),
    )
}

/// `joinserver ARGS --data-dir DIR`, which must succeed: its standard output.
fn joinserver_cli(dir: &std::path::Path, args: &[&str]) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_joinserver"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn write_key(path: &std::path::Path, key: [u8; 16]) -> LinkKey {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    writeln!(f, "{}", hex::encode(key)).unwrap();
    LinkKey::new(key)
}

#[test]
fn per_peer_keys_refuse_a_spoofed_net_id_and_rotate_with_an_overlap() {
    let tmp = tempfile::tempdir().unwrap();
    provision_devices(tmp.path());
    let secrets = tmp.path().join("secrets");
    let x_new = write_key(&secrets.join("link-000013.key"), [0x13; 16]);
    let x_old = write_key(&secrets.join("link-000013.old.key"), [0x31; 16]);
    let y = write_key(&secrets.join("link-000042.key"), [0x42; 16]);
    let mut c = Config::default();
    c.link.listen = "127.0.0.1:0".parse().unwrap();
    c.metrics.listen = "127.0.0.1:0".into();
    c.link.peers = vec![
        PeerConfig {
            net_id: "000013".into(),
            key_file: "secrets/link-000013.key".into(),
            ns_kek_file: None,
            old_key_files: vec!["secrets/link-000013.old.key".into()],
        },
        PeerConfig {
            net_id: "000042".into(),
            key_file: "secrets/link-000042.key".into(),
            ns_kek_file: None,
            old_key_files: vec![],
        },
    ];
    let server = Server::start(tmp.path(), &c).unwrap();
    let metrics = server.metrics_addr().unwrap();

    // NetID 000013 with its new key, then with its old one: both answered, each sealed with
    // the key of its request.
    let x = Client::new(server.link_addr(), x_new.clone());
    let ans = JoinAns::parse(&x.join(1, 1, &phy(1, 1), 11).1).unwrap();
    assert_eq!(ans.result.result_code, ResultCode::Success);
    let x_rotating = Client::new(server.link_addr(), x_old.clone());
    let ans = JoinAns::parse(&x_rotating.join(2, 2, &phy(2, 1), 12).1).unwrap();
    assert_eq!(ans.result.result_code, ResultCode::Success);

    // NetID 000042's server claims NetID 000013 with its own key: no answer, counted.
    let spoof = datagram(
        &y,
        NET_ID,
        now_ms(),
        13,
        &join_req_json(3, NET_ID, 1, &phy(1, 2)),
    );
    assert!(x.exchange_raw(&spoof, NO_ANSWER).is_none());
    // Nor with the shared secrets/link.key that every network server had before.
    let legacy = Client::new(server.link_addr(), provision_link_key(tmp.path()));
    let d = datagram(
        &legacy.key,
        NET_ID,
        now_ms(),
        14,
        &join_req_json(4, NET_ID, 1, &phy(1, 3)),
    );
    assert!(legacy.exchange_raw(&d, NO_ANSWER).is_none());
    // Its own NetID works.
    let own = datagram(
        &y,
        NET_Y,
        now_ms(),
        15,
        &join_req_json(5, NET_Y, 5, &phy(5, 1)),
    );
    let raw = x
        .exchange_raw(&own, Duration::from_secs(5))
        .expect("an answer");
    assert!(link::open(&y, &raw).is_ok());

    // A datagram ten minutes behind: dropped, and the skew is a metric.
    let stale = datagram(
        &x_new,
        NET_ID,
        now_ms() - 600_000,
        16,
        &join_req_json(6, NET_ID, 1, &phy(1, 4)),
    );
    assert!(x.exchange_raw(&stale, NO_ANSWER).is_none());
    let (_, text) = http_get(metrics, "/metrics");
    // The spoof authenticates under NetID 000042's key: its own reason. The shared link.key
    // is no peer's key here (peers are listed without NetID 000000): a bad tag.
    assert_eq!(drops(&text, "net_id_not_sender"), 1, "{text}");
    assert_eq!(drops(&text, "bad_tag"), 1, "{text}");
    assert_eq!(drops(&text, "stale"), 1);
    let skew = text
        .lines()
        .find_map(|l| l.strip_prefix("joinserver_link_clock_skew_ms "))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap();
    assert!((-601_000..=-599_000).contains(&skew), "{skew}");
    server.shutdown();
}

fn provision_link_key(dir: &std::path::Path) -> LinkKey {
    joinserver::secrets::Secrets::load(dir).unwrap().link
}

/// The AppSKey of a device claimed by a tenant with its own KEK (`[join] app_kek_files`) is
/// wrapped under that KEK, not under `secrets/as.kek`, from the claim on (the running server
/// learns the owner with the claim); other devices keep `as.kek`.
#[test]
fn the_app_s_key_is_wrapped_under_its_owner_tenants_kek() {
    use joinserver::onboarding::db::Role;
    use protocol::keys::{AppSKey, Kek};
    let tmp = tempfile::tempdir().unwrap();
    let s = provision(tmp.path());
    let keys = api_keys(tmp.path(), &s.master, &[(Role::Owner, "alice")]);
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp.path().join("secrets/as-alice.kek"))
            .unwrap();
        write!(
            f,
            "label = \"as-alice\"\nkey = \"{}\"\n",
            hex::encode([0xA1; 16])
        )
        .unwrap();
    }
    let alice_kek = Kek::new([0xA1; 16]);
    let mut c = config(tmp.path());
    c.link.listen = "127.0.0.1:0".parse().unwrap();
    c.metrics.listen = String::new();
    c.api.listen = "127.0.0.1:0".into();
    c.join
        .app_kek_files
        .insert("alice".into(), "secrets/as-alice.kek".into());
    // Device 7: unclaimed, with an owner token.
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
    let server = Server::start(tmp.path(), &c).unwrap();
    let api = server.api_addr().unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .put(&format!(
            "http://{api}/api/v1/devices/0000000000000007/claim"
        ))
        .header("Authorization", &format!("Bearer {}", keys[0]))
        .header("Content-Type", "application/json")
        .send(br#"{"owner_token": "ALICE0000007", "home_net_id": "000013"}"#.as_slice())
        .unwrap();
    let text = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status().as_u16(), 200, "{text}");

    let client = Client::new(server.link_addr(), s.link.clone());
    let ans = client.join_ans(1, 7, &phy(7, 1));
    assert_eq!(ans.result.result_code, ResultCode::Success);
    // The owner goes to the network server in the VSExtension (issue 15's applications).
    let ext = ans.header.vs_extension.clone().expect("a VSExtension");
    assert_eq!(ext["Owner"], "alice");
    let env = ans.app_s_key.expect("an AppSKey");
    assert_eq!(env.kek_label, "as-alice");
    let _: AppSKey = env.open(Some(&alice_kek)).expect("opens under alice's KEK");
    assert!(
        env.open::<AppSKey>(Some(&s.as_kek.key)).is_err(),
        "not under secrets/as.kek"
    );
    // A device without an owner: secrets/as.kek, and no owner named.
    let ans = client.join_ans(2, 2, &phy(2, 1));
    assert!(ans
        .header
        .vs_extension
        .as_ref()
        .unwrap()
        .get("Owner")
        .is_none());
    let env = ans.app_s_key.expect("an AppSKey");
    assert_eq!(env.kek_label, s.as_kek.label);
    let _: AppSKey = env.open(Some(&s.as_kek.key)).unwrap();
    server.shutdown();
}

/// `joinserver peers add --net-id N` creates the peer's link key and network KEK (0600), prints
/// their paths and adds the peer (and, as the first one, NetID 000000 for secrets/link.key and
/// secrets/ns.kek): that NetID's JoinAns are sealed with its key and carry its network KEK; the
/// shared link.key no longer passes for another NetID.
#[test]
fn peers_add_gives_a_net_id_its_own_link_key_and_network_kek() {
    use protocol::keys::NwkSKey;
    use protocol::ts002::NetworkKeys;
    let tmp = tempfile::tempdir().unwrap();
    let s = provision_devices(tmp.path());
    let out = joinserver_cli(tmp.path(), &["peers", "add", "--net-id", "000042"]);
    let (link_file, kek_file) = (
        tmp.path().join("secrets/link-000042.key"),
        tmp.path().join("secrets/ns-000042.kek"),
    );
    for f in [&link_file, &kek_file] {
        assert!(out.contains(&f.display().to_string()), "{out}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // Recorded in the store, not in a configuration file.
    assert!(out.contains("added   NetID 000042 to the store"), "{out}");
    assert!(!tmp.path().join("joinserver.toml").exists());
    let mut c = Config::default();
    c.link.listen = "127.0.0.1:0".parse().unwrap();
    c.metrics.listen = String::new();
    let server = Server::start(tmp.path(), &c).unwrap();
    let y_key = joinserver::secrets::read_hex_key::<LinkKey>(&link_file).unwrap();
    let y_kek = joinserver::secrets::read_kek(&kek_file).unwrap();
    let y = Client::new(server.link_addr(), y_key.clone());
    let d = datagram(
        &y_key,
        NET_Y,
        now_ms(),
        1,
        &join_req_json(1, NET_Y, 5, &phy(5, 1)),
    );
    let raw = y
        .exchange_raw(&d, Duration::from_secs(5))
        .expect("an answer");
    let (_, body) = link::open(&y_key, &raw).unwrap();
    let ans = JoinAns::parse(body).unwrap();
    assert_eq!(ans.result.result_code, ResultCode::Success);
    match ans.network_keys.expect("network keys") {
        NetworkKeys::V1_0 { nwk_s_key } => {
            assert_eq!(nwk_s_key.kek_label, y_kek.label);
            let _: NwkSKey = nwk_s_key.open(Some(&y_kek.key)).unwrap();
            assert!(nwk_s_key.open::<NwkSKey>(Some(&s.ns_kek.key)).is_err());
        }
        other => panic!("{other:?}"),
    }
    // secrets/link.key now stands for NetID 000000 only.
    let legacy = Client::new(server.link_addr(), s.link.clone());
    let d = datagram(
        &s.link,
        NET_ID,
        now_ms(),
        2,
        &join_req_json(2, NET_ID, 1, &phy(1, 1)),
    );
    assert!(legacy.exchange_raw(&d, NO_ANSWER).is_none());
    let d = datagram(&s.link, 0, now_ms(), 3, &join_req_json(3, 0, 1, &phy(1, 2)));
    assert!(legacy.exchange_raw(&d, Duration::from_secs(5)).is_some());
    server.shutdown();
}

/// Peers are on by default. After a plain `joinserver init`, the network server of NetID 000000
/// joins its device with `secrets/link.key`; a network server of NetID 000013 holding that key is
/// refused and counted (`net_id_not_sender`); after `joinserver peers add --net-id 000013`, that
/// network server, with the key and KEK whose paths were printed, joins its device through the
/// same running join server.
#[test]
fn after_a_plain_init_only_net_id_000000_uses_link_key_until_peers_add() {
    use protocol::keys::NwkSKey;
    use protocol::ts002::NetworkKeys;
    const HOME_0: u64 = 0x21;
    const HOME_13: u64 = 0x22;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = joinserver_cli(dir, &["init"]);
    assert!(out.contains("peer    NetID 000000"), "{out}");
    let s = joinserver::secrets::Secrets::load(dir).unwrap();
    let mut store = joinserver::store::SqliteStore::open(dir).unwrap();
    let csv = format!(
        "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token\n\
         {HOME_0:016X},{JOIN_EUI:016X},1.0.4,{APP_KEY},,000000,\n\
         {HOME_13:016X},{JOIN_EUI:016X},1.0.4,{APP_KEY},,000013,\n"
    );
    joinserver::devices::import(
        &mut store,
        &s.master,
        &csv,
        joinserver::devices::Format::Csv,
    )
    .unwrap();
    drop(store);
    let start = || {
        let mut c = config(dir);
        c.link.listen = "127.0.0.1:0".parse().unwrap();
        c.metrics.listen = "127.0.0.1:0".into();
        Server::start(dir, &c).unwrap()
    };
    let join = |server: &Server, key: &LinkKey, net: u32, tid: u32, dev: u64, dn: u16| {
        let c = Client::new(server.link_addr(), key.clone());
        let d = datagram(
            key,
            net,
            now_ms(),
            u64::from(tid),
            &join_req_json(tid, net, dev, &phy(dev, dn)),
        );
        let wait = if net == 0 || *key != s.link {
            Duration::from_secs(5)
        } else {
            NO_ANSWER
        };
        c.exchange_raw(&d, wait)
            .map(|raw| JoinAns::parse(link::open(key, &raw).unwrap().1).unwrap())
    };

    let server = start();
    // NetID 000000 with secrets/link.key: joins.
    let ans = join(&server, &s.link, 0, 1, HOME_0, 1).expect("an answer");
    assert_eq!(ans.result.result_code, ResultCode::Success);
    // NetID 000013 with secrets/link.key: refused, counted with its own reason.
    assert!(join(&server, &s.link, 0x13, 2, HOME_13, 1).is_none());
    let (_, text) = http_get(server.metrics_addr().unwrap(), "/metrics");
    assert_eq!(drops(&text, "net_id_not_sender"), 1, "{text}");
    assert_eq!(
        metric(&text, "joinserver_joins_total{result=\"success\"}"),
        1
    );

    // The operator adds NetID 000013 and copies the printed secrets to its network server; the
    // running join server applies it (its reload thread reads the store's peers).
    let out = joinserver_cli(dir, &["peers", "add", "--net-id", "000013"]);
    let printed = |what: &str| {
        let line = out
            .lines()
            .find(|l| l.trim_end().ends_with(what))
            .unwrap_or_else(|| panic!("{what} in {out}"));
        std::path::PathBuf::from(line.trim().strip_suffix(what).unwrap().trim())
    };
    let key = joinserver::secrets::read_hex_key::<LinkKey>(&printed("link key")).unwrap();
    let kek = joinserver::secrets::read_kek(&printed("network KEK")).unwrap();
    let ans = (2..5)
        .find_map(|n: u16| join(&server, &key, 0x13, u32::from(n) + 1, HOME_13, n))
        .expect("an answer without a restart");
    assert_eq!(ans.result.result_code, ResultCode::Success);
    match ans.network_keys.expect("network keys") {
        NetworkKeys::V1_0 { nwk_s_key } => {
            assert_eq!(nwk_s_key.kek_label, kek.label);
            let _: NwkSKey = nwk_s_key.open(Some(&kek.key)).unwrap();
        }
        other => panic!("{other:?}"),
    }
    // NetID 000000 keeps working with secrets/link.key and secrets/ns.kek.
    let ans = join(&server, &s.link, 0, 9, HOME_0, 2).expect("an answer");
    assert_eq!(ans.result.result_code, ResultCode::Success);
    server.shutdown();
}
