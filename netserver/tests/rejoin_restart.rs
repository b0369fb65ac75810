//! A replaced session survives `kill -9` (LoRaWAN: after a rejoin the network keeps the old
//! session until the first uplink under the new one, since the device may have missed the
//! Join-accept).
//!
//! The store is left as the join path leaves it at a rejoin (`SessionStore::put_replacing`:
//! the new session and the one it replaces, in one commit), in real files; then the real
//! `netserver` binary is started, killed with SIGKILL and restarted around uplinks under both
//! sessions.

mod common;

use std::path::{Path, PathBuf};

use common::{
    events, metric, netserver_serve, wait_events, wait_metric, write_secrets, Gateway, Proc,
    UPLINK_MIC,
};
use netserver::core::device::FrameCounters;
use netserver::keys::{LabeledKek, NetworkKeys};
use netserver::store::commit::SessionStore;
use netserver::store::session_journal::SessionJournal;
use netserver::store::stored::{RxParams, StoredSession, STORED_SESSION_VERSION};
use protocol::data::{FramePayload, FrmPayload, NetworkSessionKeys, SessionCrypto, Uplink};
use protocol::ids::{DevAddr, DevEui, DevNonce, JoinEui};
use protocol::keys::{AppSKey, Kek, NwkSKey};
use protocol::keywrap::KeyEnvelope;
use protocol::version::MacVersion;

const NS_KEK: [u8; 16] = [0x11; 16];
const AS_KEK: [u8; 16] = [0x22; 16];
const DEV_EUI: u64 = 0x0100_0000_0000_0042;
const OLD_ADDR: u32 = 0x2600_0001;
const NEW_ADDR: u32 = 0x2600_0002;

/// One of the device's two sessions: (DevAddr, key byte, DevNonce).
#[derive(Clone, Copy)]
struct Sess(u32, u8, u16);

const OLD: Sess = Sess(OLD_ADDR, 0x0A, 1);
const NEW: Sess = Sess(NEW_ADDR, 0x0B, 2);

impl Sess {
    fn crypto(self) -> SessionCrypto {
        SessionCrypto::new(
            &NetworkSessionKeys::V1_0 {
                nwk_s_key: NwkSKey::new([self.1; 16]),
            },
            Some(&AppSKey::new([self.1 ^ 0xF0; 16])),
        )
    }

    fn stored(self, ns_kek: &LabeledKek) -> StoredSession {
        StoredSession {
            version: STORED_SESSION_VERSION,
            dev_eui: DevEui::new(DEV_EUI),
            join_eui: JoinEui::new(0x70B3_D57E_D000_0001),
            dev_addr: DevAddr::new(self.0),
            mac_version: Some(MacVersion::V1_0_3),
            dev_nonce: DevNonce(self.2),
            network_keys: NetworkKeys::V1_0(NwkSKey::new([self.1; 16])).seal(ns_kek),
            app_s_key: Some(
                KeyEnvelope::seal(
                    "as-1",
                    Some(&Kek::new(AS_KEK)),
                    &AppSKey::new([self.1 ^ 0xF0; 16]),
                )
                .unwrap(),
            ),
            session_key_id: None,
            rx: RxParams::region_default(protocol::region::Region::Eu868),
            counters: FrameCounters::default(),
            created_at_ms: 1_700_000_000_000 + u64::from(self.2),
            lifetime_s: None,
            last_rj_count0: None,
            owner: None,
        }
    }

    fn uplink(self, fcnt: u32) -> Vec<u8> {
        Uplink {
            confirmed: false,
            dev_addr: DevAddr::new(self.0),
            fcnt,
            adr: false,
            adr_ack_req: false,
            ack: false,
            class_b: false,
            fopts: vec![],
            payload: FramePayload::Application {
                f_port: 1,
                payload: FrmPayload(b"meter".to_vec()),
            },
        }
        .build(&self.crypto(), &UPLINK_MIC)
        .unwrap()
    }
}

struct Files {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

/// The secrets, and the store as a rejoin leaves it: the new session and the replaced one.
fn provision() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    write_secrets(&root, NS_KEK, AS_KEK);
    let ns_kek = LabeledKek {
        label: "ns-1".into(),
        key: Kek::new(NS_KEK),
    };
    std::fs::write(
        root.join("netserver.toml"),
        "[gwmp]\nworkers = 1\n[data]\ncollect_window_ms = 0\n",
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let (store, _, thread) = SessionStore::start(
            SessionJournal::open(&root.join("ns")).unwrap(),
            8,
            netserver::ops::metrics::Metrics::new(),
        )
        .unwrap();
        store
            .put_replacing(NEW.stored(&ns_kek), OLD.stored(&ns_kek))
            .await
            .unwrap();
        drop(store);
        thread.join();
    });
    Files { _dir: dir, root }
}

/// Writes the replaced session's record again, as if its deletion had been lost in the crash.
fn put_previous(root: &Path) {
    let ns_kek = LabeledKek {
        label: "ns-1".into(),
        key: Kek::new(NS_KEK),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let (store, current, thread) = SessionStore::start(
            SessionJournal::open(&root.join("ns")).unwrap(),
            8,
            netserver::ops::metrics::Metrics::new(),
        )
        .unwrap();
        let new = current
            .into_iter()
            .next()
            .expect("the new session is stored");
        store.put_replacing(new, OLD.stored(&ns_kek)).await.unwrap();
        drop(store);
        thread.join();
    });
}

fn start(root: &Path) -> (Proc, Gateway) {
    let secrets = root.join("secrets");
    // The join server is never contacted: this test makes no joins.
    let mut cmd = netserver_serve(
        &root.join("netserver.toml"),
        &root.join("ns"),
        "127.0.0.1:9",
        &secrets,
        "000013",
    );
    cmd.arg("--as-kek")
        .arg(secrets.join("as.kek"))
        .arg("--events")
        .arg(root.join("events.jsonl"));
    let ns = Proc::spawn(cmd, "netserver listening");
    let gw = Gateway::new(0xAA55_0000_0000_0001, ns.addr("gwmp"));
    gw.pull_data();
    (ns, gw)
}

/// The (DevAddr, FCnt) of every uplink event delivered so far.
fn delivered(root: &Path) -> Vec<(String, u64)> {
    events(&root.join("events.jsonl"))
        .into_iter()
        .filter(|e| e["type"] == "uplink")
        .map(|e| {
            (
                e["dev_addr"].as_str().unwrap().to_owned(),
                e["f_cnt"].as_u64().unwrap(),
            )
        })
        .collect()
}

const OK: &str = "netserver_uplinks_total{result=\"ok\"}";

#[test]
fn a_replaced_session_survives_kill_9_until_the_new_one_is_used() {
    let f = provision();
    let old = format!("{OLD_ADDR:08x}");
    let new = format!("{NEW_ADDR:08x}");

    // The device missed the Join-accept: it goes on under its old session.
    let (ns, gw) = start(&f.root);
    let events = f.root.join("events.jsonl");
    gw.push(&OLD.uplink(0), 1, 7.0, -90);
    wait_metric(ns.addr("metrics"), OK, 1.0);
    // Counted `ok` is not yet delivered (the event is written and synced just after): wait for
    // the event before the kill.
    wait_events(&events, 1);
    ns.kill9();

    // After kill -9 the old session still works, with its counter restored (its last frame
    // again is a repeat, not delivered twice).
    let (ns, gw) = start(&f.root);
    let m = ns.addr("metrics");
    gw.push(&OLD.uplink(0), 2, 7.0, -90);
    wait_metric(m, "netserver_uplinks_total{result=\"duplicate\"}", 1.0);
    gw.push(&OLD.uplink(1), 3, 7.0, -90);
    wait_metric(m, OK, 1.0);
    // The device now gets a Join-accept and uses its new session: the old one is dropped.
    gw.push(&NEW.uplink(0), 4, 7.0, -90);
    wait_metric(m, OK, 2.0);
    wait_events(&events, 3);
    ns.kill9();

    // After another kill -9 only the new session is served, even if the replaced session's
    // deletion had not reached the disk: its successor's counters show it in use.
    put_previous(&f.root);
    let (ns, gw) = start(&f.root);
    let m = ns.addr("metrics");
    gw.push(&OLD.uplink(2), 5, 7.0, -90);
    wait_metric(
        m,
        "netserver_uplinks_total{result=\"unknown_devaddr\"}",
        1.0,
    );
    gw.push(&NEW.uplink(1), 6, 7.0, -90);
    wait_metric(m, OK, 1.0);
    assert_eq!(metric(m, OK), 1.0);
    wait_events(&events, 4);
    ns.kill9();

    assert_eq!(
        delivered(&f.root),
        vec![(old.clone(), 0), (old, 1), (new.clone(), 0), (new, 1)]
    );
}
