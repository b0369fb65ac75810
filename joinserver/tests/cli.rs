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
             0000000000000001,70B3D57ED0000001,1.0.3,{KEY},,000013,TOKEN1\n\
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
