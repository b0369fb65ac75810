//! The real binary over Backend Interfaces: `joinserver peers token` prints a token and nothing
//! else, and after a SIGKILL between requests no DevNonce answered over HTTPS is accepted again.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::ts002::*;
use common::*;

struct Running {
    child: Child,
    bi_port: u16,
}

impl Drop for Running {
    fn drop(&mut self) {
        // SIGKILL: no signal handler runs, nothing is flushed.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_joinserver"))
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--metrics", ""])
        .args(["--bi-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let word = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
            .to_owned()
    };
    assert_eq!(word("bi_scheme="), "https");
    let bi: std::net::SocketAddr = word("bi=").parse().unwrap();
    Running {
        child,
        bi_port: bi.port(),
    }
}

#[test]
fn no_dev_nonce_answered_over_https_is_accepted_after_a_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    provision(tmp.path());
    httpsec::tls::ensure_self_signed(
        &server_cert(tmp.path()),
        &tmp.path().join("tls/api.key"),
        &["localhost".into()],
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_joinserver"))
        .args(["peers", "token", "--net-id", "000013", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "the token and nothing else: {stdout:?}");
    assert!(lines[0].starts_with("jsbi_"), "{stdout:?}");
    let authorization = format!("Bearer {}", lines[0]);
    // Not a peer: refused.
    let out = Command::new(env!("CARGO_BIN_EXE_joinserver"))
        .args(["peers", "token", "--net-id", "000077", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());

    let mut answered = Vec::new();
    let mut tid = 0;
    let mut server = spawn(tmp.path());
    for round in 0..3u16 {
        let c = Ts002::connect(
            server.bi_port,
            tmp.path(),
            Some(authorization.clone()),
            None,
        );
        for dev in [1u64, 2, 3] {
            let dn = 100 + round * 10 + dev as u16;
            let mac = if dev == 3 { "1.1" } else { "1.0.4" };
            tid += 1;
            let a = c.post(&cs_join_req(tid, NET_ID, dev, mac, &phy(dev, dn)));
            assert_eq!(a.result.code, CsResultCode::Success, "{:?}", a.result);
            answered.push((dev, dn, mac));
        }
        drop(server);
        server = spawn(tmp.path());
        let c = Ts002::connect(
            server.bi_port,
            tmp.path(),
            Some(authorization.clone()),
            None,
        );
        for &(dev, dn, mac) in &answered {
            tid += 1;
            let a = c.post(&cs_join_req(tid, NET_ID, dev, mac, &phy(dev, dn)));
            assert_eq!(
                a.result.code,
                CsResultCode::JoinReqFailed,
                "device {dev} DevNonce {dn} accepted again after kill -9"
            );
        }
    }
}
