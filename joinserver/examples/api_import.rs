//! Measures a bulk import through the management API: N devices (default 100,000) in one signed
//! manifest, one HTTP request.
//!
//! `cargo run --release -p joinserver --example api_import -- [N]` runs the join server in this
//! process, on a temporary data directory.
//!
//! `cargo run --release -p joinserver --example api_import -- N --serve target/release/joinserver`
//! runs the real binary as a child process instead (`init`, `api-keys create`, `serve`), and
//! reports its memory: the resident set before the request, and its peak (`VmHWM` from
//! `/proc/PID/status`) after it, so the server's memory can be compared across manifest sizes.
//! With `--refused`, the manifest's last line repeats its first DevEUI: the whole body is read,
//! verified and staged, then refused, so nothing is added to the server's device map and its
//! peak is the import's own memory. With `--cli` as well, it also times `joinserver devices import` of the same manifest (from a
//! file, unsigned and signed, on fresh data directories) and reports that process's peak
//! resident set (its `VmHWM`, polled every 5 ms until it exits).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ed25519_dalek::{Signer, SigningKey};
use joinserver::config::Config;
use joinserver::onboarding::db::{Actor, OnboardStore, Role};
use joinserver::onboarding::manifest_sig::TrustedKeys;
use joinserver::onboarding::service::Onboarding;
use joinserver::secrets::{self, Secrets};
use joinserver::server::Server;

fn manifest(n: u64) -> String {
    let mut manifest = String::from("dev_eui,join_eui,mac_version,app_key,nwk_key\n");
    for i in 0..n {
        manifest.push_str(&format!(
            "{:016X},70B3D57ED0000001,1.0.4,{:032X},\n",
            0x0004_A30B_0000_0000 + i,
            u128::from(i) * 0x9E37_79B9_7F4A_7C15
        ));
    }
    manifest
}

fn post(api: &str, key: &str, sig: &str, manifest: &str) -> anyhow::Result<(Duration, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    let started = Instant::now();
    let mut resp = agent
        .post(format!("http://{api}/api/v1/devices/import"))
        .header("Authorization", format!("Bearer {key}"))
        .header("X-Manifest-Signature", sig)
        .header("Content-Type", "text/csv")
        .send(manifest.as_bytes())?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_string()?;
    let took = started.elapsed();
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok((
        took,
        format!(
            "status {status}: imported {} devices ({} owner tokens generated, {:.1} MB manifest)",
            v["imported"],
            v["generated_owner_tokens"].as_array().map_or(0, Vec::len),
            manifest.len() as f64 / 1e6,
        ),
    ))
}

/// `VmRSS` and `VmHWM` of a process, in kB.
fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

fn in_process(n: u64) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    secrets::init(dir)?;
    let s = Secrets::load(dir)?;
    let signer = SigningKey::from_bytes(&[1; 32]);
    let mut config = Config::default();
    config.link.listen = "127.0.0.1:0".parse()?;
    config.metrics.listen = String::new();
    config.api.listen = "127.0.0.1:0".into();
    config.api.trusted_manifest_keys = vec![hex::encode(signer.verifying_key().as_bytes())];
    let cli = Onboarding::new(
        OnboardStore::open(dir)?,
        None,
        s.master.clone(),
        TrustedKeys::default(),
        Default::default(),
    );
    let (key, _) = cli.create_api_key(&Actor::cli(), Role::Manufacturer, "acme")?;
    let server = Server::start(dir, &config)?;
    let m = manifest(n);
    let sig = hex::encode(signer.sign(m.as_bytes()).to_bytes());
    let api = server.api_addr().expect("api enabled").to_string();
    let (took, what) = post(&api, key.expose(), &sig, &m)?;
    println!("{what} in {:.2} s", took.as_secs_f64());
    server.shutdown();
    Ok(())
}

fn js(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let o = Command::new(bin).args(args).output()?;
    if !o.status.success() {
        bail!(
            "joinserver {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8(o.stdout)?)
}

fn config_file(dir: &Path, signer: &SigningKey, max: usize) -> anyhow::Result<()> {
    std::fs::write(
        dir.join("joinserver.toml"),
        format!(
            "[api]\ntrusted_manifest_keys = [\"{}\"]\nmax_manifest_bytes = {max}\n",
            hex::encode(signer.verifying_key().as_bytes())
        ),
    )?;
    Ok(())
}

fn served(n: u64, bin: &Path, cli: bool, refused: bool) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("data");
    let d = dir.to_str().context("path")?;
    let signer = SigningKey::from_bytes(&[1; 32]);
    let mut m = manifest(n);
    if refused {
        // The first device again on the last line: read, verified and staged whole, then
        // refused (nothing stored, so the server's memory is the import's alone).
        let first = m.lines().nth(1).context("a row")?.to_owned();
        m.push_str(&first);
        m.push('\n');
    }
    let sig = hex::encode(signer.sign(m.as_bytes()).to_bytes());
    js(bin, &["init", "--data-dir", d])?;
    config_file(&dir, &signer, m.len() + 1024)?;
    let key = js(
        bin,
        &[
            "api-keys",
            "create",
            "--data-dir",
            d,
            "--role",
            "manufacturer",
            "--name",
            "acme",
        ],
    )?;
    let mut child = Command::new(bin)
        .args(["serve", "--data-dir", d, "--listen", "127.0.0.1:0"])
        .args(["--metrics", "", "--api-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let api = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("api="))
        .with_context(|| format!("no api address in {line:?}"))?
        .to_owned();
    let pid = child.id();
    let (rss0, _) = memory(pid)?;
    let (took, what) = post(&api, key.trim(), &sig, &m)?;
    let (rss1, hwm) = memory(pid)?;
    println!(
        "{what} in {:.2} s; joinserver (pid {pid}) RSS {:.1} MB before, {:.1} MB after, peak (VmHWM) {:.1} MB",
        took.as_secs_f64(),
        rss0 as f64 / 1e3,
        rss1 as f64 / 1e3,
        hwm as f64 / 1e3
    );
    // Let the reload thread run once more (it polls every 500 ms), then the final peak.
    std::thread::sleep(Duration::from_millis(1500));
    let (_, hwm2) = memory(pid)?;
    println!(
        "joinserver peak (VmHWM) {:.1} MB after its device reload",
        hwm2 as f64 / 1e3
    );
    // SIGTERM: a clean stop.
    Command::new("kill").arg(pid.to_string()).status()?;
    child.wait()?;

    if cli {
        let file = tmp.path().join("manifest.csv");
        let sig_file = tmp.path().join("manifest.sig");
        std::fs::File::create(&file)?.write_all(m.as_bytes())?;
        std::fs::write(&sig_file, &sig)?;
        drop(m);
        for signed in [false, true] {
            let dir: PathBuf = tmp.path().join(format!("cli-{signed}"));
            let d = dir.to_str().context("path")?;
            js(bin, &["init", "--data-dir", d])?;
            config_file(&dir, &signer, 1 << 30)?;
            let mut args = vec!["devices", "import", "--data-dir", d];
            let tokens = dir.join("tokens.csv");
            args.extend(["--owner-tokens", tokens.to_str().context("path")?]);
            if signed {
                args.extend(["--signature", sig_file.to_str().context("path")?]);
            }
            args.push(file.to_str().context("path")?);
            let started = Instant::now();
            let mut child = Command::new(bin)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            // The peak resident set, polled until the process ends (VmHWM only grows).
            let mut hwm = 0;
            let status = loop {
                if let Ok((_, h)) = memory(child.id()) {
                    hwm = hwm.max(h);
                }
                if let Some(st) = child.try_wait()? {
                    break st;
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            let took = started.elapsed();
            if !status.success() {
                bail!("joinserver devices import failed ({status})");
            }
            println!(
                "CLI devices import, {}: {n} devices in {:.2} s (wall, whole process), peak RSS {:.1} MB",
                if signed { "signed" } else { "unsigned" },
                took.as_secs_f64(),
                hwm as f64 / 1e3
            );
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .map_or(Ok(100_000), |a| a.parse())?;
    match args.iter().position(|a| a == "--serve") {
        Some(i) => {
            let bin = PathBuf::from(args.get(i + 1).context("--serve BIN")?);
            let flag = |f: &str| args.iter().any(|a| a == f);
            served(n, &bin, flag("--cli"), flag("--refused"))
        }
        None => in_process(n),
    }
}
