//! Helpers shared by the socket tests: child processes that print a `listening …` line, and a
//! virtual GWMP gateway built on `protocol::gwmp`. (The same shapes as in `otaa.rs`, which can
//! move to these once the join-path branch settles.)
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protocol::gwmp::{CodingRate, CrcStatus, DataRate, Packet, PushData, RxPk, Token, TxPk};
use protocol::ids::GatewayEui;

/// A child process killed on drop, and the `listening …` line it printed.
pub struct Proc {
    pub child: Child,
    pub addrs: HashMap<String, String>,
}

impl Proc {
    pub fn spawn(mut cmd: Command, prefix: &str) -> Self {
        let mut child = cmd
            .env("NETSERVER_LOG", "warn")
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
        self.addrs[key].parse().expect("socket address")
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
}

impl Gateway {
    pub fn new(eui: u64, ns: SocketAddr) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Self {
            sock,
            eui: GatewayEui::new(eui),
            ns,
        }
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

    /// One `rxpk` at 868.3 MHz, DR5 (SF7BW125); waits for the PUSH_ACK.
    pub fn push(&self, phy: &[u8], tmst: u32, snr: f64, rssi: i32) {
        let token = Token([(tmst >> 8) as u8, tmst as u8]);
        self.send(&Packet::PushData(PushData {
            token,
            gateway: self.eui,
            rxpk: vec![RxPk {
                tmst,
                time: None,
                tmms: None,
                chan: Some(1),
                rfch: Some(0),
                freq_hz: 868_300_000,
                stat: CrcStatus::Ok,
                datr: DataRate::lora(7, 125).unwrap(),
                codr: Some(CodingRate::Cr4_5),
                rssi: Some(rssi),
                lsnr: Some(snr),
                jver: None,
                rsig: Vec::new(),
                brd: None,
                aesk: None,
                data: phy.to_vec(),
            }],
            stat: None,
        }));
        let acked = self.recv_until(Duration::from_secs(5), |p| {
            matches!(p, Packet::PushAck { token: t } if t == token).then_some(())
        });
        assert!(acked.is_some(), "no PUSH_ACK");
    }

    pub fn pull_resp(&self, timeout: Duration) -> Option<(Token, TxPk)> {
        self.recv_until(timeout, |p| match p {
            Packet::PullResp(r) => Some((r.token, r.txpk)),
            _ => None,
        })
    }
}

pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
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

pub fn wait_metric(addr: SocketAddr, sample: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
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
pub fn write600(p: &std::path::Path, text: &str) {
    std::fs::write(p, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("netserver sits in the workspace")
        .to_owned()
}

/// Builds (if needed) and locates the real joinserver binary, next to this crate's binary
/// (as `otaa.rs` does).
pub fn joinserver_bin() -> std::path::PathBuf {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let ours = std::path::PathBuf::from(env!("CARGO_BIN_EXE_netserver"));
        let dir = ours.parent().expect("binary directory");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(workspace_root()).args([
            "build",
            "-j2",
            "-p",
            "joinserver",
            "--bin",
            "joinserver",
        ]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        cmd.env("CARGO_TARGET_DIR", dir.parent().expect("target directory"));
        let status = cmd.status().expect("running cargo build -p joinserver");
        assert!(status.success(), "cargo build -p joinserver failed");
        let bin = dir.join(format!("joinserver{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "{} missing after the build", bin.display());
        bin
    })
    .clone()
}

pub fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("running a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
