//! The real binary, killed with SIGKILL mid-life and restarted on the same data directory:
//! every DevNonce it answered for must still be refused.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use protocol::join::{EncryptedJoinAccept, JoinAcceptEncKey, JoinAcceptMicKey, JoinRootKey};
use protocol::keys::{AppKey, KeyCipher};
use protocol::ts002::ResultCode;

impl Running {
    /// SIGKILL (no signal handler runs, no checkpoint, no flush), then a new server on `dir`.
    fn kill9_and_restart(self, dir: &std::path::Path) -> Running {
        drop(self);
        spawn(dir)
    }
}

/// The join server's answer to device `dev`'s Join-request with `dev_nonce`.
fn result(c: &Client, tid: u32, dev: u64, dev_nonce: u16) -> ResultCode {
    c.join_ans(tid, dev, &phy(dev, dev_nonce))
        .result
        .result_code
}

fn spawn(dir: &std::path::Path) -> Running {
    spawn_with(dir, &["--metrics", ""])
}

#[test]
fn dev_nonces_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let s = provision(tmp.path());

    let first = spawn(tmp.path());
    let c = Client::new(first.link, s.link.clone());
    assert_eq!(result(&c, 1, 2, 10), ResultCode::Success);
    assert_eq!(result(&c, 2, 1, 500), ResultCode::Success);
    assert_eq!(result(&c, 3, 3, 7), ResultCode::Success);
    let second = first.kill9_and_restart(tmp.path());
    let c = Client::new(second.link, s.link.clone());
    // 1.0.4 and 1.1 counters: the same and smaller DevNonces are refused, larger ones accepted.
    assert_eq!(result(&c, 10, 2, 10), ResultCode::JoinReqFailed);
    assert_eq!(result(&c, 11, 2, 9), ResultCode::JoinReqFailed);
    assert_eq!(result(&c, 12, 3, 7), ResultCode::JoinReqFailed);
    // 1.0.3 history: the used DevNonce is refused.
    assert_eq!(result(&c, 13, 1, 500), ResultCode::JoinReqFailed);
    let ok = c.join_ans(14, 2, &phy(2, 11));
    assert_eq!(ok.result.result_code, ResultCode::Success);
    // The JoinNonce counter survived too: this is the device's second Join-accept.
    let app = KeyCipher::new(&APP_KEY.parse::<AppKey>().unwrap());
    let accept = EncryptedJoinAccept::from_bytes(ok.phy_payload.as_ref().unwrap())
        .unwrap()
        .open(
            JoinAcceptEncKey::AppKey(&app),
            JoinAcceptMicKey::Legacy(JoinRootKey::AppKey(&app)),
        )
        .unwrap();
    assert_eq!(accept.join_nonce.as_u32(), 2);
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let s = provision(tmp.path());
    let mut r = spawn(tmp.path());
    let c = Client::new(r.link, s.link.clone());
    assert_eq!(result(&c, 1, 2, 1), ResultCode::Success);
    let st = Command::new("kill")
        .args(["-TERM", &r.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = r.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// A `joinserver devices` command run beside the server (another process, which opens the store
/// and closes it) must not cost the server its durability: the DevNonces answered after it are
/// still refused after a SIGKILL. (When the server had dropped its own SQLite file locks, the
/// command's exit deleted the WAL the server went on committing to.)
#[test]
fn dev_nonces_answered_after_a_cli_command_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let s = provision(tmp.path());
    let first = spawn(tmp.path());
    let c = Client::new(first.link, s.link.clone());
    assert_eq!(result(&c, 1, 2, 10), ResultCode::Success);
    let out = Command::new(env!("CARGO_BIN_EXE_joinserver"))
        .args(["devices", "remove", "0000000000000006", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(result(&c, 2, 2, 20), ResultCode::Success);
    let second = first.kill9_and_restart(tmp.path());
    let c = Client::new(second.link, s.link.clone());
    assert_eq!(
        result(&c, 3, 2, 20),
        ResultCode::JoinReqFailed,
        "DevNonce 20, answered after the CLI command, was forgotten"
    );
    assert_eq!(
        result(&c, 4, 6, 1),
        ResultCode::UnknownDevEui,
        "the removal was lost"
    );
}

/// `joinserver_kernel_rx_drops` is the kernel's count for this server's link socket: stopped
/// (SIGSTOP) with a small receive buffer and sent more than it holds, the server reports the
/// datagrams the kernel dropped (at least 100) once it runs again, every other datagram of the
/// flood is read, and it goes on answering.
#[test]
fn a_full_link_socket_shows_in_the_drop_gauge() {
    let tmp = tempfile::tempdir().unwrap();
    let s = provision(tmp.path());
    let config = tmp.path().join("small-buffer.toml");
    // The data directory's configuration, if any, with a small buffer.
    let peers = std::fs::read_to_string(tmp.path().join("joinserver.toml")).unwrap_or_default();
    std::fs::write(
        &config,
        format!("[link]\nrecv_buffer_bytes = 4096\n{peers}"),
    )
    .unwrap();
    let r = spawn_with(
        tmp.path(),
        &[
            "--metrics",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let m = r.metrics.expect("metrics address");
    let sample = |name: &str| metric(&http_get(m, "/metrics").1, name);
    assert_eq!(sample("joinserver_kernel_rx_drops"), 0);
    let read_before = sample("joinserver_link_datagrams_total");
    let pid = r.child.id();
    let stopped = testkit::Stopped::stop(pid);
    let flood = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..500 {
        flood.send_to(&[0u8; 100], r.link).unwrap();
    }
    // The kernel may still hold the flood in its loopback backlog: wait until it has dropped
    // what the buffer could not take, before the server may read again.
    testkit::wait_receive_drops(pid, 100);
    stopped.resume();
    // Every datagram of the flood is either read by the server or dropped by the kernel.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (read, kernel) = loop {
        let read = sample("joinserver_link_datagrams_total") - read_before;
        let kernel = testkit::receive_drops(pid);
        if read + kernel >= 500 || Instant::now() > deadline {
            break (read, kernel);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        read + kernel,
        500,
        "{read} read, {kernel} dropped by the kernel"
    );
    assert!(kernel >= 100, "{kernel} drops");
    assert_eq!(sample("joinserver_kernel_rx_drops"), kernel);
    let c = Client::new(r.link, s.link.clone());
    assert_eq!(result(&c, 1, 2, 1), ResultCode::Success);
}
