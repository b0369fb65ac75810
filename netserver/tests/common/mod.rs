//! Helpers shared by the socket tests: child processes that print a `listening …` line, the
//! workspace's other binaries (built by a nested Cargo), a virtual GWMP gateway built on
//! `protocol::gwmp`, and HTTP/metrics probes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use protocol::data::{FramePayload, FrmPayload, SessionCrypto, Uplink, UplinkMicParams};
use protocol::gwmp::{
    CodingRate, CrcStatus, DataRate, Packet, PushData, RxPk, Token, TxAck, TxAckCode, TxPk,
};
use protocol::ids::{DevAddr, GatewayEui};

/// A child process killed on drop, and the `listening …` line it printed.
pub struct Proc {
    pub child: Child,
    pub addrs: HashMap<String, String>,
}

impl Proc {
    /// Spawns `cmd` with `NETSERVER_LOG=warn` and waits for its line starting with `prefix`.
    pub fn spawn(cmd: Command, prefix: &str) -> Self {
        Self::spawn_logging(cmd, prefix, "warn", None)
    }

    /// As [`Proc::spawn`], with `NETSERVER_LOG=netserver_log` and, if given, `RUST_LOG`.
    pub fn spawn_logging(
        mut cmd: Command,
        prefix: &str,
        netserver_log: &str,
        rust_log: Option<&str>,
    ) -> Self {
        if let Some(l) = rust_log {
            cmd.env("RUST_LOG", l);
        }
        let mut child = cmd
            .env("NETSERVER_LOG", netserver_log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning a server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let prefix = prefix.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with(&prefix) {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server did not report its addresses");
        let addrs = line
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self { child, addrs }
    }

    pub fn addr(&self, key: &str) -> SocketAddr {
        self.addrs
            .get(key)
            .unwrap_or_else(|| panic!("no {key}= in {:?}", self.addrs))
            .parse()
            .expect("socket address")
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "server ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A virtual gateway speaking GWMP.
pub struct Gateway {
    pub sock: UdpSocket,
    pub eui: GatewayEui,
    pub ns: SocketAddr,
    /// The channel its receptions report: `chan` index and frequency (Hz).
    pub channel: (u8, u32),
}

impl Gateway {
    /// A gateway whose receptions are on channel 1, 868.3 MHz.
    pub fn new(eui: u64, ns: SocketAddr) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Self {
            sock,
            eui: GatewayEui::new(eui),
            ns,
            channel: (1, 868_300_000),
        }
    }

    /// Receptions on channel 0, 868.1 MHz instead.
    pub fn on_868_1(mut self) -> Self {
        self.channel = (0, 868_100_000);
        self
    }

    pub fn send(&self, p: &Packet) {
        self.sock.send_to(&p.to_bytes().unwrap(), self.ns).unwrap();
    }

    /// Receives datagrams until `want` accepts one or `timeout` passes.
    pub fn recv_until<T>(
        &self,
        timeout: Duration,
        mut want: impl FnMut(Packet) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                if let Ok(p) = Packet::parse(&buf[..n]) {
                    if let Some(t) = want(p) {
                        return Some(t);
                    }
                }
            }
        }
        None
    }

    pub fn pull_data(&self) {
        let token = Token([0x5a, 0x01]);
        self.send(&Packet::PullData {
            token,
            gateway: self.eui,
        });
        let acked = self.recv_until(Duration::from_secs(5), |p| {
            matches!(p, Packet::PullAck { token: t } if t == token).then_some(())
        });
        assert!(acked.is_some(), "no PULL_ACK");
    }

    /// One `rxpk` on the gateway's channel, DR5 (SF7BW125), CRC ok; waits for the PUSH_ACK.
    pub fn push(&self, phy: &[u8], tmst: u32, snr: f64, rssi: i32) {
        self.push_with(phy, tmst, snr, rssi, CrcStatus::Ok);
    }

    /// [`Gateway::push`] with the given CRC status.
    pub fn push_with(&self, phy: &[u8], tmst: u32, snr: f64, rssi: i32, stat: CrcStatus) {
        let token = self.send_push(phy, tmst, snr, rssi, stat);
        self.wait_push_ack(token);
    }

    /// Sends one `rxpk` (as [`Gateway::push_with`]) without waiting for its PUSH_ACK.
    pub fn send_push(&self, phy: &[u8], tmst: u32, snr: f64, rssi: i32, stat: CrcStatus) -> Token {
        let token = Token([(tmst >> 8) as u8, tmst as u8]);
        self.send(&Packet::PushData(PushData {
            token,
            gateway: self.eui,
            rxpk: vec![rxpk(phy, tmst, self.channel, snr, rssi, stat)],
            stat: None,
        }));
        token
    }

    pub fn wait_push_ack(&self, token: Token) {
        let acked = self.recv_until(Duration::from_secs(5), |p| {
            matches!(p, Packet::PushAck { token: t } if t == token).then_some(())
        });
        assert!(acked.is_some(), "no PUSH_ACK");
    }

    pub fn tx_ack(&self, token: Token, error: Option<TxAckCode>) {
        self.send(&Packet::TxAck(TxAck {
            token,
            gateway: self.eui,
            error,
            warning: None,
        }));
    }

    pub fn pull_resp(&self, timeout: Duration) -> Option<(Token, TxPk)> {
        self.recv_until(timeout, |p| match p {
            Packet::PullResp(r) => Some((r.token, r.txpk)),
            _ => None,
        })
    }
}

/// `GET path`: the status and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, &[], b"")
}

/// One HTTP/1.1 request; the status and the body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (code, body)
}

/// The value of one sample, e.g. `netserver_uplinks_total{result="ok"}`.
pub fn metric(addr: SocketAddr, sample: &str) -> f64 {
    let (_, text) = http_get(addr, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits up to 30 s (a loaded machine) for the sample to reach `at_least`.
pub fn wait_metric(addr: SocketAddr, sample: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(addr, sample) < at_least {
        assert!(
            Instant::now() < deadline,
            "{sample} never reached {at_least} (is {})",
            metric(addr, sample)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes a secret file with mode 0600.
pub fn write600(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("netserver sits in the workspace")
        .to_owned()
}

/// Builds (if needed, once per test process) and locates the real binary of another crate of
/// the workspace, next to this crate's binary: a nested `cargo test --workspace --no-run` with
/// the same Cargo, profile and target directory. Cargo releases its build lock before it runs
/// tests, so this does not deadlock. It is what `cargo test --workspace` has just built, so then
/// it builds nothing: not `cargo build -p <package>`, whose dependencies' features differ from
/// the workspace's test build (their dev-dependencies are left out), which built ring, rustls
/// and the binary a second time while the tests ran; and without the variables Cargo sets for a
/// test process (`CARGO_MANIFEST_DIR`, ...): ring's build script reruns when
/// `CARGO_MANIFEST_DIR` changes, and the next outer build rebuilt everything above ring.
pub fn workspace_bin(package: &str) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(n, _)| n == package) {
        return p.clone();
    }
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_netserver"));
    let dir = ours.parent().expect("binary directory");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace_root())
        .args(["test", "--workspace", "--no-run", "--quiet", "-j2"]);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_for_tests = ["CARGO_PKG_", "CARGO_BIN_", "CARGO_MANIFEST_"]
            .iter()
            .any(|p| name.starts_with(p))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&name.as_ref());
        if set_for_tests {
            cmd.env_remove(name.as_ref());
        }
    }
    // Same target directory as this build (the binary's directory's parent).
    cmd.env("CARGO_TARGET_DIR", dir.parent().expect("target directory"));
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running cargo test --workspace --no-run: {e}"));
    assert!(
        status.success(),
        "cargo test --workspace --no-run failed (the end-to-end tests need the {package} crate in this workspace)"
    );
    let bin = dir.join(format!("{package}{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} missing after the build", bin.display());
    built.push((package.to_owned(), bin.clone()));
    bin
}

/// The real `joinserver` binary ([`workspace_bin`]).
pub fn joinserver_bin() -> PathBuf {
    workspace_bin("joinserver")
}

/// A provisioned join server: `joinserver init` of `dir/js`, `joinserver peers add --net-id`
/// for the network server of `net_id` (unless it is 000000, the peer `init` creates),
/// `joinserver devices import` of `manifest_csv` (written to `dir/devices.csv`), then
/// `joinserver serve` on 127.0.0.1 with an ephemeral link port and no metrics, spawned as
/// [`Proc::spawn_logging`] does. Returns its data directory and the process.
pub fn start_joinserver(
    dir: &Path,
    manifest_csv: &str,
    net_id: &str,
    netserver_log: &str,
    rust_log: Option<&str>,
) -> (PathBuf, Proc) {
    start_joinserver_with(dir, manifest_csv, net_id, &[], (netserver_log, rust_log))
}

/// [`start_joinserver`] with `extra` arguments for `joinserver serve` (e.g. `--bi-listen`).
pub fn start_joinserver_with(
    dir: &Path,
    manifest_csv: &str,
    net_id: &str,
    extra: &[&str],
    (netserver_log, rust_log): (&str, Option<&str>),
) -> (PathBuf, Proc) {
    let js_dir = dir.join("js");
    let js_bin = joinserver_bin();
    run_ok(
        Command::new(&js_bin)
            .arg("init")
            .arg("--data-dir")
            .arg(&js_dir),
    );
    if net_id != "000000" {
        add_peer(&js_dir, net_id);
    }
    let manifest = dir.join("devices.csv");
    std::fs::write(&manifest, manifest_csv).unwrap();
    run_ok(
        Command::new(&js_bin)
            .args(["devices", "import", "--data-dir"])
            .arg(&js_dir)
            .arg(&manifest),
    );
    let js = serve_joinserver(&js_dir, extra, netserver_log, rust_log);
    (js_dir, js)
}

/// `joinserver peers token --net-id NET_ID`: writes `Bearer <token>` to `file` (0600), what a
/// network server sends as its `Authorization` header.
pub fn peer_token(js_dir: &Path, net_id: &str, file: &Path) {
    let out = run_ok(
        Command::new(joinserver_bin())
            .args(["peers", "token", "--net-id", net_id, "--data-dir"])
            .arg(js_dir),
    );
    let token = String::from_utf8(out.stdout).unwrap();
    write600(file, &format!("Bearer {}", token.trim()));
}

/// `joinserver peers add --net-id NET_ID` on the join server's `js_dir`, as an operator adds the
/// network server of a NetID: returns the paths it printed, of that network server's link key
/// and network KEK (those [`peer_secret_files`] finds).
pub fn add_peer(js_dir: &Path, net_id: &str) -> (PathBuf, PathBuf) {
    let out = run_ok(
        Command::new(joinserver_bin())
            .args(["peers", "add", "--net-id", net_id, "--data-dir"])
            .arg(js_dir),
    );
    let out = String::from_utf8(out.stdout).unwrap();
    let printed = |what: &str| {
        let line = out
            .lines()
            .find(|l| l.trim_end().ends_with(what))
            .unwrap_or_else(|| panic!("no {what} in {out}"));
        PathBuf::from(line.trim().strip_suffix(what).unwrap().trim())
    };
    (printed("link key"), printed("network KEK"))
}

/// The link key and network KEK the network server of `net_id` uses from a join server's
/// `secrets` directory: those `joinserver peers add --net-id` created for it
/// (`link-NETID.key`, `ns-NETID.kek`) when it has them, else `link.key` and `ns.kek` (NetID
/// 000000's, or those [`write_secrets`] wrote for a network server without a join server).
pub fn peer_secret_files(secrets: &Path, net_id: &str) -> (PathBuf, PathBuf) {
    let own = (
        secrets.join(format!("link-{net_id}.key")),
        secrets.join(format!("ns-{net_id}.kek")),
    );
    if own.0.exists() {
        own
    } else {
        (secrets.join("link.key"), secrets.join("ns.kek"))
    }
}

/// `joinserver serve` of `js_dir` on 127.0.0.1 (ephemeral link port, no metrics) with `extra`
/// arguments, spawned as [`Proc::spawn_logging`] does.
pub fn serve_joinserver(
    js_dir: &Path,
    extra: &[&str],
    netserver_log: &str,
    rust_log: Option<&str>,
) -> Proc {
    let mut cmd = Command::new(joinserver_bin());
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(js_dir)
        .args(["--listen", "127.0.0.1:0", "--metrics", ""])
        .args(extra);
    Proc::spawn_logging(cmd, "joinserver listening", netserver_log, rust_log)
}

/// Runs `cmd`, asserts that it succeeded, and returns its output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("running a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Writes a network server's secrets into `root/secrets` (mode 0600): a link key of 0x55 bytes,
/// the network KEK `ns-1` and the application KEK `as-1`. Returns that directory.
pub fn write_secrets(root: &Path, ns_kek: [u8; 16], as_kek: [u8; 16]) -> PathBuf {
    let secrets = root.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    write600(&secrets.join("link.key"), &hex::encode([0x55u8; 16]));
    let kek_file =
        |label: &str, k: [u8; 16]| format!("label = \"{label}\"\nkey = \"{}\"\n", hex::encode(k));
    write600(&secrets.join("ns.kek"), &kek_file("ns-1", ns_kek));
    write600(&secrets.join("as.kek"), &kek_file("as-1", as_kek));
    secrets
}

/// The MIC parameters (LoRaWAN 1.1) of an uplink as the tests send it: DR5 on channel 1
/// (868.3 MHz, what [`Gateway`] reports), no confirmed downlink being acknowledged.
pub const UPLINK_MIC: UplinkMicParams = UplinkMicParams {
    conf_fcnt: 0,
    tx_dr: 5,
    tx_ch: 1,
};

/// An unconfirmed data uplink of `dev_addr` (its ACK bit `ack`) with `payload` on `f_port`,
/// under `crypto`, with the MIC parameters [`UPLINK_MIC`].
pub fn data_uplink(
    crypto: &SessionCrypto,
    dev_addr: DevAddr,
    (fcnt, ack): (u32, bool),
    f_port: u8,
    payload: &[u8],
) -> Vec<u8> {
    Uplink {
        confirmed: false,
        dev_addr,
        fcnt,
        adr: false,
        adr_ack_req: false,
        ack,
        class_b: false,
        fopts: vec![],
        payload: FramePayload::Application {
            f_port,
            payload: FrmPayload(payload.to_vec()),
        },
    }
    .build(crypto, &UPLINK_MIC)
    .unwrap()
}

/// `netserver serve` (this package's binary) with `config`, its data in `data_dir`, the join
/// server at `join_server`, the link key and network KEK of NetID `net_id` in a join server's
/// `secrets` directory ([`peer_secret_files`]), and GWMP and metrics on ephemeral 127.0.0.1
/// ports. Callers add the rest (the
/// application KEK, the event sink, the downlink inputs).
pub fn netserver_serve(
    config: &Path,
    data_dir: &Path,
    join_server: &str,
    secrets: &Path,
    net_id: &str,
) -> Command {
    let (link_key, ns_kek) = peer_secret_files(secrets, net_id);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_netserver"));
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--join-server", join_server])
        .arg("--link-key")
        .arg(link_key)
        .arg("--ns-kek")
        .arg(ns_kek)
        .args(["--net-id", net_id])
        .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]);
    cmd
}

/// The application events of an event file (JSON lines), none if it does not exist yet. Only
/// complete lines count: the server may be in the middle of appending the next ones.
pub fn events(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).expect("each complete event line is JSON"))
        .collect()
}

/// Waits (up to 10 s) until the event file holds at least `n` events.
pub fn wait_events(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = events(path);
        if e.len() >= n {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "{} events, expected {n}",
            e.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One LoRa SF7BW125 `rxpk` of `phy` on `(chan, freq_hz)`, as a gateway reports it.
pub fn rxpk(
    phy: &[u8],
    tmst: u32,
    (chan, freq_hz): (u8, u32),
    snr: f64,
    rssi: i32,
    stat: CrcStatus,
) -> RxPk {
    RxPk {
        tmst,
        time: None,
        tmms: None,
        chan: Some(chan),
        rfch: Some(0),
        freq_hz,
        stat,
        datr: DataRate::lora(7, 125).unwrap(),
        codr: Some(CodingRate::Cr4_5),
        rssi: Some(rssi),
        lsnr: Some(snr),
        jver: None,
        rsig: Vec::new(),
        brd: None,
        aesk: None,
        data: phy.to_vec(),
    }
}
