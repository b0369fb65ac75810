//! Shared helpers for the socket tests: a provisioned data directory and a link client that
//! speaks the real datagram format over UDP on 127.0.0.1.
#![allow(dead_code)]

pub mod ts002;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use joinserver::devices::{self, Format};
use joinserver::secrets::{self, Secrets};
use joinserver::store::SqliteStore;
use protocol::ids::{DevEui, DevNonce, JoinEui, NetId};
use protocol::join::{JoinRequest, JoinRootKey};
use protocol::keys::{AppKey, KeyCipher, LinkKey, NwkKey};
use protocol::link::{self, Header, MessageType, PeerId};
use protocol::ts002::JoinAns;

pub const APP_KEY: &str = "2B7E151628AED2A6ABF7158809CF4F3C";
pub const NWK_KEY: &str = "000102030405060708090A0B0C0D0E0F";
pub const JOIN_EUI: u64 = 0x70B3_D57E_D000_0001;
pub const NET_ID: u32 = 0x000013;

/// Device 1: 1.0.3; 2: 1.0.4; 3: 1.1; 4: 1.0.4 with owner token OWNER0000004; all with home NetID 000013
/// (an operator's own fleet). 5: home NetID 000042. 6: 1.0.4, unclaimed (no home NetID). The
/// network server of NetID 000013 ([`NET_ID`]) is a peer ([`add_peer`]); the returned secrets
/// are the join server's, with the link key and network KEK of that network server's (what a
/// [`Client`] of [`NET_ID`] uses, what its JoinAns are sealed and wrapped under). Start the
/// server with [`config`].
pub fn provision(dir: &Path) -> Secrets {
    let mut s = provision_devices(dir);
    let peer = add_peer(dir, NET_ID);
    s.link = peer.link;
    s.ns_kek = peer.ns_kek;
    s
}

/// The devices of [`provision`] on a fresh `joinserver init` of `dir`, without adding any peer:
/// only the network server of NetID 000000 is on the link, with `secrets/link.key`. Returns the
/// join server's secrets.
pub fn provision_devices(dir: &Path) -> Secrets {
    secrets::init(dir).unwrap();
    let s = Secrets::load(dir).unwrap();
    let mut store = SqliteStore::open(dir).unwrap();
    let csv = format!(
        "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token\n\
         0000000000000001,{JOIN_EUI:016X},1.0.3,{APP_KEY},,000013,\n\
         0000000000000002,{JOIN_EUI:016X},1.0.4,{APP_KEY},,000013,\n\
         0000000000000003,{JOIN_EUI:016X},1.1,{APP_KEY},{NWK_KEY},000013,\n\
         0000000000000004,{JOIN_EUI:016X},1.0.4,{APP_KEY},,000013,OWNER0000004\n\
         0000000000000005,{JOIN_EUI:016X},1.0.4,{APP_KEY},,000042,\n\
         0000000000000006,{JOIN_EUI:016X},1.0.4,{APP_KEY},,,\n"
    );
    devices::import(&mut store, &s.master, &csv, Format::Csv).unwrap();
    s
}

/// What the network server of a NetID holds once `joinserver peers add --net-id` added it: its
/// own link key and network KEK.
pub struct Peer {
    /// Its link key.
    pub link: LinkKey,
    /// Its network KEK.
    pub ns_kek: secrets::LabeledKek,
}

/// Adds the network server of `net_id` as a peer of the join server in `dir` (the library call
/// behind `joinserver peers add`), and reads the secrets it printed.
pub fn add_peer(dir: &Path, net_id: u32) -> Peer {
    let added = joinserver::peers::add(dir, NetId::new(net_id).unwrap()).unwrap();
    Peer {
        link: secrets::read_hex_key(&added.link_key_file).unwrap(),
        ns_kek: secrets::read_kek(&added.ns_kek_file).unwrap(),
    }
}

/// The configuration `joinserver serve` reads in `dir` (`joinserver.toml`, where
/// [`add_peer`] lists the peers), or the default when there is none.
pub fn config(dir: &Path) -> joinserver::config::Config {
    match std::fs::read_to_string(dir.join(joinserver::peers::CONFIG_FILE)) {
        Ok(text) => joinserver::config::Config::from_toml(&text).unwrap(),
        Err(_) => joinserver::config::Config::default(),
    }
}

/// Creates API keys as `joinserver api-keys create` does; returns them in the order asked.
pub fn api_keys(
    dir: &Path,
    master: &secrets::MasterKey,
    keys: &[(joinserver::onboarding::db::Role, &str)],
) -> Vec<String> {
    use joinserver::onboarding::db::{Actor, OnboardStore};
    use joinserver::onboarding::{manifest_sig::TrustedKeys, service::Onboarding};
    let cli = Onboarding::new(
        OnboardStore::open(dir).unwrap(),
        None,
        master.clone(),
        TrustedKeys::default(),
        Default::default(),
    );
    keys.iter()
        .map(|&(role, name)| {
            let (k, _) = cli.create_api_key(&Actor::cli(), role, name).unwrap();
            k.expose().to_owned()
        })
        .collect()
}

/// The Join-request PHYPayload of test device `dev` (1.1 for device 3).
pub fn phy(dev: u64, dev_nonce: u16) -> Vec<u8> {
    let jr = if dev == 3 {
        let k = KeyCipher::new(&NWK_KEY.parse::<NwkKey>().unwrap());
        JoinRequest::build(
            JoinEui::new(JOIN_EUI),
            DevEui::new(dev),
            DevNonce(dev_nonce),
            JoinRootKey::NwkKey(&k),
        )
    } else {
        let k = KeyCipher::new(&APP_KEY.parse::<AppKey>().unwrap());
        JoinRequest::build(
            JoinEui::new(JOIN_EUI),
            DevEui::new(dev),
            DevNonce(dev_nonce),
            JoinRootKey::AppKey(&k),
        )
    };
    jr.to_bytes().to_vec()
}

/// A TS002 JoinReq body.
pub fn join_req_json(tid: u32, net_id: u32, dev: u64, phy: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ProtocolVersion": "1.0",
        "SenderID": format!("{net_id:06X}"),
        "ReceiverID": format!("{JOIN_EUI:016X}"),
        "TransactionID": tid,
        "MessageType": "JoinReq",
        "MACVersion": "1.0.3",
        "PHYPayload": hex::encode(phy),
        "DevEUI": format!("{dev:016X}"),
        "DevAddr": "26011BDA",
        "DLSettings": "12",
        "RxDelay": 1,
    }))
    .unwrap()
}

pub fn now_ms() -> u64 {
    joinserver::link::now_ms()
}

/// Seals a datagram as the network server `net_id` would.
pub fn datagram(key: &LinkKey, net_id: u32, ts: u64, nonce: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    link::seal(
        key,
        &Header {
            msg_type: MessageType::JoinReq,
            sender: PeerId::from_net_id(NetId::new(net_id).unwrap()),
            timestamp_ms: ts,
            nonce,
        },
        body,
        &mut out,
    )
    .unwrap();
    out
}

pub struct Client {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    pub key: LinkKey,
}

impl Client {
    pub fn new(server: SocketAddr, key: LinkKey) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Self { sock, server, key }
    }

    /// Sends raw bytes; returns the raw answer, if one comes within `wait`.
    pub fn exchange_raw(&self, d: &[u8], wait: Duration) -> Option<Vec<u8>> {
        self.sock.set_read_timeout(Some(wait)).unwrap();
        self.sock.send_to(d, self.server).unwrap();
        let mut buf = [0u8; 2048];
        match self.sock.recv_from(&mut buf) {
            Ok((n, _)) => Some(buf[..n].to_vec()),
            Err(_) => None,
        }
    }

    /// Sends a JoinReq; returns the authenticated answer's header and JoinAns JSON body.
    pub fn join(&self, tid: u32, dev: u64, phy: &[u8], nonce: u64) -> (Header, Vec<u8>) {
        let d = datagram(
            &self.key,
            NET_ID,
            now_ms(),
            nonce,
            &join_req_json(tid, NET_ID, dev, phy),
        );
        let raw = self
            .exchange_raw(&d, Duration::from_secs(5))
            .expect("an answer");
        let (h, body) = link::open(&self.key, &raw).expect("authenticated answer");
        assert_eq!(h.msg_type, MessageType::JoinAns);
        assert_eq!(h.nonce, nonce, "the answer echoes the request nonce");
        (h, body.to_vec())
    }

    pub fn join_ans(&self, tid: u32, dev: u64, phy: &[u8]) -> JoinAns {
        let (_, body) = self.join(tid, dev, phy, u64::from(tid) * 7 + 1);
        JoinAns::parse(&body).unwrap()
    }
}

/// GET on the metrics listener.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// The value of one sample line in a Prometheus text exposition, 0 if absent.
pub fn metric(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|r| r.trim().parse::<f64>().ok())
        })
        .map_or(0, |v| v as u64)
}

/// A `joinserver serve` process, killed (SIGKILL) when dropped so a failed assertion does not
/// leave it behind.
pub struct Running {
    pub child: Child,
    pub link: SocketAddr,
    /// `/metrics`, when started with `--metrics ADDR`.
    pub metrics: Option<SocketAddr>,
    /// The management API, when started with `--api-listen ADDR`.
    pub api: Option<SocketAddr>,
    /// The Backend Interfaces listener, when started with `--bi-listen ADDR`.
    pub bi: Option<SocketAddr>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `joinserver serve` on `dir`, the link on an ephemeral 127.0.0.1 port, with `extra` arguments;
/// returns once it printed its addresses.
pub fn spawn_with(dir: &Path, extra: &[&str]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_joinserver"))
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let link = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("link="))
        .unwrap_or_else(|| panic!("no link address in {line:?}"))
        .parse()
        .unwrap();
    let addr = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|m| m.parse().ok())
    };
    Running {
        child,
        link,
        metrics: addr("metrics="),
        api: addr("api="),
        bi: addr("bi="),
    }
}
