//! The `simulator` binary as a user runs it.

use std::process::Command;

fn simulator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_simulator"))
}

/// `simulator run` with a manifest and network server that are never reached, then `extra`.
fn run_with(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = vec![
        "run",
        "--manifest",
        "x.csv",
        "--netserver",
        "127.0.0.1:1700",
    ];
    v.extend_from_slice(extra);
    v
}

/// A manifest of `devices` devices in a new temporary directory.
fn manifest(devices: u32) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.csv");
    let out = simulator()
        .args(["manifest", "--devices", &devices.to_string(), "--out"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(out.status.success());
    (dir, manifest)
}

/// Runs `simulator demo ARGS --quiet --report-json DIR/demo.json` to success; its standard
/// output and the temporary directory holding the reports.
fn run_demo(args: &[&str]) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = simulator()
        .arg("demo")
        .args(args)
        .arg("--quiet")
        .arg("--report-json")
        .arg(dir.path().join("demo.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (stdout, dir)
}

/// A JSON report the demo wrote.
fn read_report(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Runs `simulator demo` with 300 devices, without its city part, and `extra` options; its JSON
/// report.
fn demo(extra: &[&str]) -> serde_json::Value {
    // Devices report from their Join-accept on (5 s after their Join-request).
    let mut args = vec![
        "--devices",
        "300",
        "--join-window",
        "2s",
        "--steady",
        "8s",
        "--uplink-interval",
        "2s",
        "--city-meters",
        "0",
    ];
    args.extend_from_slice(extra);
    let (stdout, dir) = run_demo(&args);
    assert!(stdout.contains("accepted (RX1 / RX2)"), "{stdout}");
    let r = read_report(&dir.path().join("demo.json"));
    assert_eq!(r["joins"]["accepted"], 300);
    assert_eq!(r["joins"]["missed_window"], 0);
    assert_eq!(r["downlinks"]["wrong_radio"], 0, "{r}");
    assert_eq!(r["devices"], 300);
    assert!(r["uplinks"]["sent"].as_u64().unwrap() > 0);
    // The kernel's count for the simulator's own sockets is read (0, not null) and nothing
    // stood out.
    assert_eq!(r["simulator_socket_drops"]["gateways"], 0, "{r}");
    assert_eq!(r["simulator_socket_drops"]["event_sink"], 0, "{r}");
    assert_eq!(r["warnings"], serde_json::json!([]), "{r}");
    r
}

#[test]
fn demo_runs_with_nothing_set_up() {
    let r = demo(&[]);
    assert_eq!(r["region"], "EU868");
    assert_eq!(
        r["radio"], "ideal",
        "the demo's radio is the ideal one: {r}"
    );
}

/// The demo's second part: a small city's power cut over the modelled radio, through a second
/// pair of servers whose network server schedules each downlink where a gateway can transmit it.
/// Its report goes beside the first part's, and no gateway refuses a downlink.
#[test]
fn demo_runs_a_city_over_the_modelled_radio() {
    let (stdout, dir) = run_demo(&[
        "--devices",
        "50",
        "--join-window",
        "1s",
        "--steady",
        "1s",
        "--city-meters",
        "40",
        "--city-gateways",
        "4",
        "--city-limit",
        "60s",
    ]);
    let fleet = read_report(&dir.path().join("demo.json"));
    assert_eq!(
        (fleet["radio"].as_str(), fleet["devices"].as_u64()),
        (Some("ideal"), Some(50))
    );
    let r = read_report(&dir.path().join("demo-city.json"));
    assert_eq!(r["radio"], "realistic", "{r}");
    assert_eq!(r["scenario"], "storm", "{r}");
    assert_eq!(
        (r["devices"].as_u64(), r["gateways"].as_u64()),
        (Some(40), Some(4)),
        "{r}"
    );
    assert_eq!(
        r["gateways_tx_refused"],
        serde_json::json!({"collision": 0, "too_late": 0, "duty_cycle": 0}),
        "{r}"
    );
    assert_eq!(r["gwmp"]["tx_ack_errors"], 0, "{r}");
    assert_eq!(r["joins"]["missed_window"], 0, "{r}");
    // At least half the city is back (a meter whose first Join-request is lost waits out its
    // join duty cycle: at SF12 that is past the part's limit).
    let (p50, bound) = (
        r["storm"]["joined_p50_s"]
            .as_f64()
            .expect("half the city joined"),
        r["storm"]["airtime_bound_s"].as_f64().unwrap(),
    );
    assert!(bound > 0.0 && p50 > 0.0, "{r}");
    // Both parts' tables are printed.
    assert_eq!(
        stdout.matches("accepted (RX1 / RX2)").count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("airtime bound s (99%"), "{stdout}");
}

/// The demo in US915 (sub-band 2 by default): the network server answers on the 500 kHz RX1
/// channels, or the devices would count every Join-accept as wrong radio and none would join.
#[test]
fn demo_runs_in_us915() {
    let r = demo(&["--region", "US915"]);
    assert_eq!(r["region"], "US915");
    assert_eq!(r["joins"]["accepted_rx1"], 300, "{r}");
}

#[test]
fn manifest_command_writes_the_manifest_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("m.csv");
    let out = simulator()
        .args([
            "manifest",
            "--devices",
            "5",
            "--seed",
            "3",
            "--mac-version",
            "1.1",
            "--home-net-id",
            "000013",
            "--out",
        ])
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&out_path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token"
    );
    assert_eq!(lines.len(), 6);
    assert!(lines[1..]
        .iter()
        .all(|l| l.split(',').nth(2) == Some("1.1") && l.split(',').nth(5) == Some("000013")));
    let state = std::fs::read_to_string(dir.path().join("m.csv.state")).unwrap();
    assert_eq!(state.lines().count(), 6);
}

#[test]
fn bad_options_are_refused_with_a_reason() {
    for (args, needle) in [
        (
            vec![
                "run",
                "--manifest",
                "x.csv",
                "--netserver",
                "127.0.0.1:1700",
                "--duration",
                "5x",
            ],
            "invalid duration",
        ),
        (
            vec![
                "run",
                "--manifest",
                "x.csv",
                "--netserver",
                "127.0.0.1:1700",
                "--loss",
                "2",
            ],
            "--loss",
        ),
        (
            vec![
                "run",
                "--manifest",
                "x.csv",
                "--netserver",
                "127.0.0.1:1700",
                "--gateways",
                "2",
                "--heard-by",
                "3",
            ],
            "--heard-by",
        ),
        (
            vec![
                "manifest",
                "--devices",
                "1",
                "--mac-version",
                "1.2",
                "--out",
                "x",
            ],
            "1.2",
        ),
        (
            vec!["manifest", "--devices", "0", "--out", "x"],
            "'--devices <DEVICES>'",
        ),
        (
            vec!["run", "--manifest", "x.csv", "--netserver", "localhost"],
            "--netserver \"localhost\": expected HOST:PORT",
        ),
        (
            run_with(&["--region", "US915", "--data-rate", "0"]),
            "--payload-size 12 exceeds DR0's maximum of 11 bytes in US915",
        ),
        (
            run_with(&["--region", "US915", "--data-rate", "5"]),
            "--data-rate 5 is not a LoRa uplink data rate of US915",
        ),
        (
            run_with(&["--region", "AS923", "--data-rate", "1"]),
            "DR1 is not allowed in AS923-1 under its dwell time",
        ),
        (
            run_with(&["--sub-bands", "2"]),
            "--sub-bands applies to US915 and AU915 only",
        ),
        (
            run_with(&["--region", "AU915", "--sub-bands", "9"]),
            "sub-band 9",
        ),
        (run_with(&["--region", "XX123"]), "unknown region"),
        (
            run_with(&["--radio", "perfect"]),
            "invalid value 'perfect' for '--radio <RADIO_MODEL>'",
        ),
        (
            run_with(&["--radio", "realistic", "--capture-margin", "99"]),
            "--capture-margin must be between 0 and 60 dB",
        ),
        (
            run_with(&["--gateway-max-rxpk", "0"]),
            "invalid value '0' for '--gateway-max-rxpk <GATEWAY_MAX_RXPK>'",
        ),
        (
            run_with(&["--gateway-max-rxpk", "256"]),
            "invalid value '256' for '--gateway-max-rxpk <GATEWAY_MAX_RXPK>'",
        ),
        (
            run_with(&["--gateway-fetch-interval", "10x"]),
            "invalid value '10x' for '--gateway-fetch-interval <GATEWAY_FETCH_INTERVAL>'",
        ),
    ] {
        let out = simulator().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// Pointed at a UDP port where nothing answers, a run says so instead of only counting
/// timeouts; a host name is resolved (to the IPv4 address, with the default `--bind`).
#[test]
fn a_silent_network_server_is_named() {
    let (dir, manifest) = manifest(3);
    // Bound, so no ICMP error comes back, and never read.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let out = simulator()
        .arg("run")
        .arg("--manifest")
        .arg(&manifest)
        .args(["--netserver", &format!("localhost:{port}")])
        .args(["--join-window", "1s", "--duration", "4s", "--quiet"])
        .arg("--report-json")
        .arg(dir.path().join("r.json"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "warning: no PUSH_ACK or PULL_ACK from 127.0.0.1:{port} after "
        )),
        "{err}"
    );
    assert_eq!(err.matches("warning: no PUSH_ACK").count(), 1, "{err}");
    // The end of the table and the JSON report say it again.
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!(
            "warning: no PUSH_ACK or PULL_ACK from 127.0.0.1:{port}"
        )),
        "{table}"
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("r.json")).unwrap()).unwrap();
    let w = r["warnings"].as_array().unwrap();
    assert_eq!(w.len(), 1, "{r}");
    assert!(w[0].as_str().unwrap().starts_with("no PUSH_ACK"), "{r}");
}

/// `--region US915`: the gateways report Join-requests on sub-band 2 (channels 8–15,
/// 903.9–905.3 MHz) at DR3 (`SF7BW125`), to a UDP socket standing in for a network server.
#[test]
fn us915_run_transmits_on_sub_band_2() {
    use protocol::gwmp::{DataRate, Packet};
    let (dir, manifest) = manifest(20);
    let ns = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    ns.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let port = ns.local_addr().unwrap().port();
    let mut child = simulator()
        .arg("run")
        .arg("--manifest")
        .arg(&manifest)
        .args(["--netserver", &format!("127.0.0.1:{port}")])
        .args([
            "--region",
            "US915",
            "--join-window",
            "1s",
            "--duration",
            "3s",
            "--quiet",
        ])
        .arg("--report-json")
        .arg(dir.path().join("r.json"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut rxpk = Vec::new();
    let mut buf = [0u8; 2048];
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(5) && rxpk.len() < 20 {
        if let Ok(n) = ns.recv(&mut buf) {
            if let Ok(Packet::PushData(p)) = Packet::parse(&buf[..n]) {
                rxpk.extend(p.rxpk);
            }
        }
    }
    assert!(child.wait().unwrap().success());
    assert!(rxpk.len() >= 20, "{}", rxpk.len());
    for r in &rxpk {
        let ch = (r.freq_hz - 902_300_000) / 200_000;
        assert_eq!(902_300_000 + ch * 200_000, r.freq_hz);
        assert!((8..16).contains(&ch), "{} Hz", r.freq_hz);
        assert_eq!(r.datr, DataRate::lora(7, 125).unwrap());
        assert_eq!(r.chan, Some((ch % 8) as u8));
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("r.json")).unwrap()).unwrap();
    assert_eq!(report["region"], "US915");
}
