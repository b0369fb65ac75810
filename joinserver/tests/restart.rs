//! The real binary, killed with SIGKILL mid-life and restarted on the same data directory:
//! every DevNonce it answered for must still be refused.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use common::*;
use protocol::join::{EncryptedJoinAccept, JoinAcceptEncKey, JoinAcceptMicKey, JoinRootKey};
use protocol::keys::{AppKey, KeyCipher};
use protocol::ts002::ResultCode;

struct Running {
    child: Child,
    link: SocketAddr,
}

impl Drop for Running {
    /// A failed assertion must not leave a server running behind the test.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &std::path::Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_joinserver"))
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--metrics", ""])
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
    Running { child, link }
}

#[test]
fn dev_nonces_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let s = provision(tmp.path());

    let mut first = spawn(tmp.path());
    let c = Client::new(first.link, s.link.clone());
    assert_eq!(
        c.join_ans(1, 2, &phy(2, 10)).result.result_code,
        ResultCode::Success
    );
    assert_eq!(
        c.join_ans(2, 1, &phy(1, 500)).result.result_code,
        ResultCode::Success
    );
    assert_eq!(
        c.join_ans(3, 3, &phy(3, 7)).result.result_code,
        ResultCode::Success
    );
    // Killed, not shut down: no signal handler runs, no checkpoint, no flush.
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let mut second = spawn(tmp.path());
    let c = Client::new(second.link, s.link.clone());
    // 1.0.4 and 1.1 counters: the same and smaller DevNonces are refused, larger ones accepted.
    assert_eq!(
        c.join_ans(10, 2, &phy(2, 10)).result.result_code,
        ResultCode::JoinReqFailed
    );
    assert_eq!(
        c.join_ans(11, 2, &phy(2, 9)).result.result_code,
        ResultCode::JoinReqFailed
    );
    assert_eq!(
        c.join_ans(12, 3, &phy(3, 7)).result.result_code,
        ResultCode::JoinReqFailed
    );
    // 1.0.3 history: the used DevNonce is refused.
    assert_eq!(
        c.join_ans(13, 1, &phy(1, 500)).result.result_code,
        ResultCode::JoinReqFailed
    );
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
    second.child.kill().unwrap();
    second.child.wait().unwrap();
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let s = provision(tmp.path());
    let mut r = spawn(tmp.path());
    let c = Client::new(r.link, s.link.clone());
    assert_eq!(
        c.join_ans(1, 2, &phy(2, 1)).result.result_code,
        ResultCode::Success
    );
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
    let mut first = spawn(tmp.path());
    let c = Client::new(first.link, s.link.clone());
    assert_eq!(
        c.join_ans(1, 2, &phy(2, 10)).result.result_code,
        ResultCode::Success
    );
    let out = Command::new(env!("CARGO_BIN_EXE_joinserver"))
        .args(["devices", "remove", "0000000000000006", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        c.join_ans(2, 2, &phy(2, 20)).result.result_code,
        ResultCode::Success
    );
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let mut second = spawn(tmp.path());
    let c = Client::new(second.link, s.link.clone());
    assert_eq!(
        c.join_ans(3, 2, &phy(2, 20)).result.result_code,
        ResultCode::JoinReqFailed,
        "DevNonce 20, answered after the CLI command, was forgotten"
    );
    assert_eq!(
        c.join_ans(4, 6, &phy(6, 1)).result.result_code,
        ResultCode::UnknownDevEui,
        "the removal was lost"
    );
    second.child.kill().unwrap();
    second.child.wait().unwrap();
}
