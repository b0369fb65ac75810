//! Measures a bulk import through the management API: N devices (default 100,000) in one signed
//! manifest, one HTTP request, against an in-process join server on a temporary data directory.
//!
//! `cargo run --release -p joinserver --example api_import -- [N]`

use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use joinserver::config::Config;
use joinserver::onboarding::db::{Actor, OnboardStore, Role};
use joinserver::onboarding::manifest_sig::TrustedKeys;
use joinserver::onboarding::service::Onboarding;
use joinserver::secrets::{self, Secrets};
use joinserver::server::Server;

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args().nth(1).map_or(Ok(100_000), |a| a.parse())?;
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

    let mut manifest = String::from("dev_eui,join_eui,mac_version,app_key,nwk_key\n");
    for i in 0..n {
        manifest.push_str(&format!(
            "{:016X},70B3D57ED0000001,1.0.4,{:032X},\n",
            0x0004_A30B_0000_0000 + i,
            u128::from(i) * 0x9E37_79B9_7F4A_7C15
        ));
    }
    let sig = hex::encode(signer.sign(manifest.as_bytes()).to_bytes());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let started = Instant::now();
    let mut resp = agent
        .post(format!(
            "http://{}/api/v1/devices/import",
            server.api_addr().expect("api enabled")
        ))
        .header("Authorization", format!("Bearer {}", key.expose()))
        .header("X-Manifest-Signature", &sig)
        .header("Content-Type", "text/csv")
        .send(manifest.as_bytes())?;
    let status = resp.status();
    let body = resp.body_mut().read_to_string()?;
    let took = started.elapsed();
    let v: serde_json::Value = serde_json::from_str(&body)?;
    println!(
        "status {status}: imported {} devices ({} owner tokens generated, {:.1} MB manifest) in {:.2} s",
        v["imported"],
        v["generated_owner_tokens"].as_array().map_or(0, Vec::len),
        manifest.len() as f64 / 1e6,
        took.as_secs_f64()
    );
    server.shutdown();
    Ok(())
}
