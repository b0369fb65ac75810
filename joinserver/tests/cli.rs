//! The `joinserver` command line: init, import, list/show/remove, config.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

fn js(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_joinserver"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const KEY: &str = "2B7E151628AED2A6ABF7158809CF4F3C";

#[test]
fn init_import_list_show_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let o = js(&["init"], &dir);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("The network server needs"), "{out}");
    assert!(out.contains("link.key") && out.contains("ns.kek"), "{out}");
    for f in ["master.key", "link.key", "ns.kek", "as.kek"] {
        let m = std::fs::metadata(dir.join("secrets").join(f)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{f}");
    }
    let link_key = std::fs::read(dir.join("secrets/link.key")).unwrap();
    let o = js(&["init"], &dir);
    assert!(o.status.success());
    assert!(text(&o).0.contains("kept"), "second init keeps the files");
    assert_eq!(
        std::fs::read(dir.join("secrets/link.key")).unwrap(),
        link_key
    );

    let good = tmp.path().join("good.csv");
    std::fs::write(
        &good,
        format!(
            "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token\n\
             0000000000000001,70B3D57ED0000001,1.0.3,{KEY},,000013,TOKEN1TOKEN1\n\
             0000000000000002,70B3D57ED0000001,1.1,{KEY},{KEY},,\n"
        ),
    )
    .unwrap();
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        format!(
            "{{\"dev_eui\":\"0000000000000003\",\"join_eui\":\"70B3D57ED0000001\",\"mac_version\":\"1.0.4\",\"app_key\":\"{KEY}\"}}\n\
             {{\"dev_eui\":\"0000000000000004\",\"join_eui\":\"70B3D57ED0000001\",\"mac_version\":\"2.0\",\"app_key\":\"{KEY}\"}}\n"
        ),
    )
    .unwrap();
    let o = js(&["devices", "import", bad.to_str().unwrap()], &dir);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("line 2, column mac_version: unsupported MAC version \"2.0\""),
        "{err}"
    );
    assert!(err.contains("nothing imported"), "{err}");

    let o = js(&["devices", "import", good.to_str().unwrap()], &dir);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.contains("imported 2 devices"));

    let o = js(&["devices", "list"], &dir);
    let (out, _) = text(&o);
    assert!(
        out.contains("0000000000000001") && out.contains("0000000000000002"),
        "{out}"
    );
    assert!(
        !out.contains("0000000000000003"),
        "the failed import left nothing"
    );
    let o = js(&["devices", "show", "0000000000000002"], &dir);
    let (out, _) = text(&o);
    assert!(out.contains("\"mac_version\": \"1.1\""), "{out}");
    assert!(out.contains("\"has_nwk_key\": true"), "{out}");
    for o in [&out, &text(&js(&["devices", "list", "--json"], &dir)).0] {
        assert!(!o.to_uppercase().contains(KEY), "a key was printed");
    }
    assert!(js(&["devices", "remove", "0000000000000001"], &dir)
        .status
        .success());
    assert!(!js(&["devices", "remove", "0000000000000001"], &dir)
        .status
        .success());
    assert!(!js(&["devices", "show", "0000000000000001"], &dir)
        .status
        .success());
}

#[test]
fn config_prints_the_default_file() {
    let o = Command::new(env!("CARGO_BIN_EXE_joinserver"))
        .arg("config")
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        joinserver::config::Config::from_toml(&out).unwrap(),
        joinserver::config::Config::default()
    );
}

/// Onboarding on the command line: `api-keys create` prints the key and nothing else and stores
/// only its hash; `devices import --signature` accepts a manifest only under a trusted key and
/// audits a refused one.
#[test]
fn api_keys_and_signed_imports() {
    use ed25519_dalek::{Signer, SigningKey};
    use joinserver::onboarding::backend::OnboardBackend;
    use joinserver::onboarding::db::{AuditFilter, OnboardStore};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    assert!(js(&["init"], &dir).status.success());

    let o = js(
        &["api-keys", "create", "--role", "owner", "--name", "alice"],
        &dir,
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let key = out.strip_suffix('\n').unwrap();
    assert!(
        key.starts_with("jsk_") && key.len() == 68 && !key.contains('\n'),
        "{out:?}"
    );
    let db = std::fs::read(dir.join("joinserver.db")).unwrap();
    let wal = std::fs::read(dir.join("joinserver.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(
            !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
            "the key is stored in clear"
        );
    }
    let o = js(
        &["api-keys", "create", "--role", "root", "--name", "x"],
        &dir,
    );
    assert!(!o.status.success(), "unknown role");

    let signer = SigningKey::from_bytes(&[9; 32]);
    std::fs::write(
        dir.join("joinserver.toml"),
        format!(
            "[api]\ntrusted_manifest_keys = [\"{}\"]\n",
            hex::encode(signer.verifying_key().as_bytes())
        ),
    )
    .unwrap();
    let manifest = format!(
        "dev_eui,join_eui,mac_version,app_key,nwk_key\n\
         0000000000000011,70B3D57ED0000001,1.0.4,{KEY},\n"
    );
    let m = tmp.path().join("m.csv");
    let sig = tmp.path().join("m.sig");
    let tokens = tmp.path().join("tokens.csv");
    std::fs::write(&m, manifest.replace("0011", "0012")).unwrap();
    std::fs::write(
        &sig,
        hex::encode(signer.sign(manifest.as_bytes()).to_bytes()),
    )
    .unwrap();
    let import = |extra: &[&str]| {
        let mut a = vec!["devices", "import", m.to_str().unwrap()];
        a.extend_from_slice(extra);
        js(&a, &dir)
    };
    let o = import(&["--signature", sig.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("does not verify"), "{err}");
    std::fs::write(&m, &manifest).unwrap();
    let o = import(&[
        "--signature",
        sig.to_str().unwrap(),
        "--owner-tokens",
        tokens.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("imported 1 devices") && out.contains("signed by trusted key"));
    let t = std::fs::read_to_string(&tokens).unwrap();
    assert!(
        t.starts_with("dev_eui,owner_token\n0000000000000011,"),
        "{t}"
    );
    assert_eq!(
        std::fs::metadata(&tokens).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let mut store = OnboardStore::open(&dir).unwrap();
    let all = store.audit(&AuditFilter::default(), None).unwrap();
    let seen: Vec<(&str, &str)> = all
        .iter()
        .map(|r| (r.action.as_str(), r.outcome.as_str()))
        .collect();
    for want in [
        ("api_key_create", "ok"),
        ("import", "refused:signature_invalid"),
        ("provision", "ok"),
        ("import", "ok"),
    ] {
        assert!(seen.contains(&want), "{want:?} not in {seen:?}");
    }
    assert!(all.iter().all(|r| r.actor == "cli"));
}
