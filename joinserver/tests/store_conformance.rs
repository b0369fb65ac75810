//! One behavioural suite for every join server store: the embedded SQLite store and the
//! PostgreSQL store (a real PostgreSQL 15 started by `testkit::postgres`, a fresh database per
//! case). What only a shared store does (answers kept for other instances, change signals,
//! instances racing, the database going away) is tested on PostgreSQL below the suite.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use joinserver::store::postgres::PgStore;
use joinserver::store::{
    AnswerKey, DeviceChanges, JoinCommit, JoinCommitted, LastJoin, NonceState, NonceUpdate,
    SqliteStore, Store, StoreError, StoredDevice, StoredPeer,
};
use protocol::ids::{DevEui, JoinEui, NetId};
use protocol::version::MacVersion;

type Make<'a> = dyn FnMut() -> Box<dyn Store> + 'a;

fn device(n: u64) -> StoredDevice {
    StoredDevice {
        dev_eui: DevEui::new(n),
        join_eui: JoinEui::new(0x70B3_D57E_D000_0000),
        mac_version: if n % 2 == 0 {
            MacVersion::V1_0_3
        } else {
            MacVersion::V1_0_4
        },
        app_key_wrapped: vec![n as u8; 24],
        nwk_key_wrapped: None,
        home_net_id: NetId::new(0x13),
        owner_token: Some("AABB".into()),
        owner: None,
        nonces: NonceState::default(),
        last_join: None,
    }
}

const JOINED: LastJoin = LastJoin {
    at_ms: 1_796_000_000_123,
    net_id: match NetId::new(0x13) {
        Some(n) => n,
        None => panic!(),
    },
};

/// The join of `dev` with DevNonce `dev_nonce` from state `previous` (as the pipeline makes it).
fn join(dev: u64, previous: &NonceState, dev_nonce: u16) -> JoinCommit {
    let mut state = previous.clone();
    state.last_dev_nonce = Some(dev_nonce);
    state.used_dev_nonces.push(dev_nonce);
    state.last_join_nonce += 1;
    JoinCommit {
        update: NonceUpdate {
            dev_eui: DevEui::new(dev),
            state,
            joined: JOINED,
        },
        previous: previous.clone(),
        answer: Some((
            AnswerKey {
                sender: 0x13,
                transaction_id: u32::from(dev_nonce) + 1000 * dev as u32,
                request: vec![dev as u8, dev_nonce as u8],
            },
            format!("answer {dev} {dev_nonce}").into_bytes().into(),
        )),
    }
}

fn suite(make: &mut Make<'_>) {
    rejoin_counts_commit_with_the_join_nonce(&mut *make());
    insert_is_all_or_nothing_and_eui_bits_survive(&mut *make());
    changes_since_lists_the_changed_devices(&mut *make());
    joins_commit_only_from_the_stored_state(&mut *make());
    a_device_joining_twice_in_one_batch_commits_both_in_order(&mut *make());
    a_reinserted_device_never_moves_its_join_nonce_backwards(&mut *make());
    master_check_detects_a_different_master_key(&mut *make());
    unconditional_nonce_commits_survive(&mut *make());
    link_peers_are_added_once_and_listed_by_net_id(&mut *make());
}

fn link_peers_are_added_once_and_listed_by_net_id(s: &mut dyn Store) {
    let peer = |net_id: u32, b: u8| StoredPeer {
        net_id,
        link_key: vec![b; 24],
        ns_kek: vec![b + 1; 24],
        kek_label: format!("ns-{net_id:06X}"),
        created_ms: 1_700_000_000_000 + u64::from(b),
    };
    assert_eq!(s.link_peers().unwrap(), vec![]);
    assert!(s.add_link_peer(&peer(0x13, 1)).unwrap());
    assert!(s.add_link_peer(&peer(0x00_0A_00, 3)).unwrap());
    // A NetID stored already keeps its keys.
    assert!(!s.add_link_peer(&peer(0x13, 9)).unwrap());
    assert_eq!(
        s.link_peers().unwrap(),
        vec![peer(0x13, 1), peer(0x00_0A_00, 3)]
    );
}

fn insert_is_all_or_nothing_and_eui_bits_survive(s: &mut dyn Store) {
    let g0 = s.generation().unwrap();
    s.insert_devices(&[device(1), device(u64::MAX)]).unwrap();
    assert_eq!(s.generation().unwrap(), g0 + 1);
    let e = s.insert_devices(&[device(2), device(1)]).unwrap_err();
    assert!(
        matches!(e, StoreError::Duplicate(d) if d == DevEui::new(1)),
        "{e:?}"
    );
    let all = s.load_devices().unwrap();
    assert_eq!(all.len(), 2, "device 2 must not be inserted");
    assert_eq!(all[0], device(u64::MAX), "u64::MAX sorts as -1");
    assert_eq!(all[1], device(1));
    assert_eq!(s.get_device(DevEui::new(1)).unwrap(), Some(device(1)));
    assert!(s.remove_device(DevEui::new(1)).unwrap());
    assert!(!s.remove_device(DevEui::new(1)).unwrap());
    assert!(s.get_device(DevEui::new(1)).unwrap().is_none());
}

fn changes_since_lists_the_changed_devices(s: &mut dyn Store) {
    let d = DevEui::new;
    let g0 = s.generation().unwrap();
    assert_eq!(
        s.changes_since(g0).unwrap(),
        (g0, DeviceChanges::Devices(vec![]))
    );
    s.insert_devices(&[device(1), device(u64::MAX)]).unwrap();
    s.insert_devices(&[device(2)]).unwrap();
    assert!(s.remove_device(d(1)).unwrap());
    let listed = |s: &mut dyn Store, seen| match s.changes_since(seen).unwrap() {
        (g, DeviceChanges::Devices(mut v)) => {
            v.sort();
            (g, v)
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(listed(s, g0), (g0 + 3, vec![d(1), d(2), d(u64::MAX)]));
    assert_eq!(listed(s, g0 + 2), (g0 + 3, vec![d(1)]));
    assert_eq!(listed(s, g0 + 3), (g0 + 3, vec![]));
    // A reader ahead of the store (another database) reloads everything.
    assert_eq!(s.changes_since(g0 + 10).unwrap().1, DeviceChanges::All);
}

/// A LoRaWAN 1.1 Rejoin-request type 1 records its RJcount1 with the new JoinNonce, in the same
/// conditional commit as a join; a racing commit sees it in the stored state.
fn rejoin_counts_commit_with_the_join_nonce(s: &mut dyn Store) {
    s.insert_devices(&[device(1)]).unwrap();
    let joined = join(1, &NonceState::default(), 7);
    s.commit_joins(std::slice::from_ref(&joined)).unwrap();
    let mut rejoin = join(1, &joined.update.state, 8);
    rejoin.update.state.used_dev_nonces = joined.update.state.used_dev_nonces.clone();
    rejoin.update.state.last_dev_nonce = joined.update.state.last_dev_nonce;
    rejoin.update.state.last_rj_count1 = Some(41);
    assert_eq!(
        s.commit_joins(std::slice::from_ref(&rejoin)).unwrap(),
        vec![JoinCommitted::Applied]
    );
    let stored = s.get_device(DevEui::new(1)).unwrap().unwrap();
    assert_eq!(stored.nonces.last_rj_count1, Some(41));
    assert_eq!(stored.nonces, rejoin.update.state);
    let racing = join(1, &joined.update.state, 9);
    assert_eq!(
        s.commit_joins(&[racing]).unwrap(),
        vec![JoinCommitted::Stale(rejoin.update.state.clone())]
    );
}

fn joins_commit_only_from_the_stored_state(s: &mut dyn Store) {
    s.insert_devices(&[device(1), device(2)]).unwrap();
    let fresh = NonceState::default();
    let first = join(1, &fresh, 7);
    assert_eq!(
        s.commit_joins(std::slice::from_ref(&first)).unwrap(),
        vec![JoinCommitted::Applied]
    );
    let stored = s.get_device(DevEui::new(1)).unwrap().unwrap();
    assert_eq!(stored.nonces, first.update.state);
    assert_eq!(stored.last_join, Some(JOINED));
    // Another instance checked a join of the same device against the same (now old) state:
    // not committed, and the store says what it holds.
    let racing = join(1, &fresh, 9);
    assert_eq!(
        s.commit_joins(&[racing]).unwrap(),
        vec![JoinCommitted::Stale(first.update.state.clone())]
    );
    // The same JoinNonce from a diverged history (another DevNonce accepted at that count) is
    // refused too: the whole state is compared, not only the JoinNonce.
    let mut diverged = first.update.state.clone();
    diverged.last_dev_nonce = Some(8);
    diverged.used_dev_nonces = vec![8];
    assert_eq!(
        s.commit_joins(&[join(1, &diverged, 10)]).unwrap(),
        vec![JoinCommitted::Stale(first.update.state.clone())]
    );
    // An unknown device, and a batch mixing all three.
    assert_eq!(
        s.commit_joins(&[join(5, &fresh, 1)]).unwrap(),
        vec![JoinCommitted::Gone]
    );
    let next = join(1, &first.update.state, 11);
    assert_eq!(
        s.commit_joins(&[join(2, &fresh, 3), join(6, &fresh, 1), next.clone()])
            .unwrap(),
        vec![
            JoinCommitted::Applied,
            JoinCommitted::Gone,
            JoinCommitted::Applied
        ]
    );
    let d1 = s.get_device(DevEui::new(1)).unwrap().unwrap().nonces;
    assert_eq!(d1, next.update.state);
    assert_eq!((d1.last_join_nonce, d1.used_dev_nonces), (2, vec![7, 11]));
}

fn a_device_joining_twice_in_one_batch_commits_both_in_order(s: &mut dyn Store) {
    s.insert_devices(&[device(3), device(4)]).unwrap();
    let a = join(3, &NonceState::default(), 1);
    let b = join(3, &a.update.state, 2);
    let c = join(3, &b.update.state, 3);
    let other = join(4, &NonceState::default(), 1);
    assert_eq!(
        s.commit_joins(&[a, b, other, c.clone()]).unwrap(),
        vec![JoinCommitted::Applied; 4]
    );
    assert_eq!(
        s.get_device(DevEui::new(3)).unwrap().unwrap().nonces,
        c.update.state
    );
}

fn a_reinserted_device_never_moves_its_join_nonce_backwards(s: &mut dyn Store) {
    s.insert_devices(&[device(1)]).unwrap();
    let j = join(1, &NonceState::default(), 4);
    s.commit_joins(std::slice::from_ref(&j)).unwrap();
    assert!(s.remove_device(DevEui::new(1)).unwrap());
    s.insert_devices(&[device(1)]).unwrap();
    let again = s.get_device(DevEui::new(1)).unwrap().unwrap();
    assert_eq!(again.nonces.last_join_nonce, 1);
    assert_eq!(again.nonces.last_dev_nonce, None, "DevNonces start afresh");
    s.insert_devices(&[device(2)]).unwrap();
    assert_eq!(
        s.get_device(DevEui::new(2))
            .unwrap()
            .unwrap()
            .nonces
            .last_join_nonce,
        0
    );
}

fn master_check_detects_a_different_master_key(s: &mut dyn Store) {
    s.check_master(&[1; 24]).unwrap();
    s.check_master(&[1; 24]).unwrap();
    assert!(matches!(
        s.check_master(&[2; 24]),
        Err(StoreError::MasterKeyMismatch)
    ));
}

fn unconditional_nonce_commits_survive(s: &mut dyn Store) {
    s.insert_devices(&[device(1)]).unwrap();
    let state = NonceState {
        last_dev_nonce: Some(7),
        used_dev_nonces: vec![3, 9, 7],
        last_join_nonce: 5,
        last_rj_count1: Some(300),
    };
    s.commit_nonces(&[NonceUpdate {
        dev_eui: DevEui::new(1),
        state: state.clone(),
        joined: JOINED,
    }])
    .unwrap();
    let d = s.get_device(DevEui::new(1)).unwrap().unwrap();
    assert_eq!((d.nonces, d.last_join), (state, Some(JOINED)));
}

#[test]
fn the_suite_on_sqlite() {
    let dirs = std::cell::RefCell::new(Vec::new());
    suite(&mut || {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(d.path()).unwrap();
        dirs.borrow_mut().push(d);
        Box::new(s)
    });
}

#[test]
fn the_suite_on_postgres() {
    let pg = testkit::postgres::Postgres::start();
    suite(&mut || Box::new(PgStore::connect(&pg.create_database(), 4).unwrap()));
}

/// SQLite keeps no answers for other instances (its one instance's cache is in memory).
#[test]
fn sqlite_keeps_no_shared_answers() {
    let d = tempfile::tempdir().unwrap();
    let mut s = SqliteStore::open(d.path()).unwrap();
    s.insert_devices(&[device(1)]).unwrap();
    let j = join(1, &NonceState::default(), 1);
    s.commit_joins(std::slice::from_ref(&j)).unwrap();
    assert_eq!(s.find_answers(&[j.answer.unwrap().0]).unwrap(), vec![None]);
}

/// The answer of an accepted join is kept with it: found by the same request through another
/// handle (instance), not by another request under the same TransactionID; a refused (stale)
/// join's answer is not kept; expired answers are deleted.
#[test]
fn postgres_shares_answers_and_signals_changes() {
    let pg = testkit::postgres::Postgres::start();
    let url = pg.create_database();
    let mut a = PgStore::connect(&url, 4).unwrap();
    let mut b = PgStore::connect(&url, 4).unwrap();
    a.insert_devices(&[device(1)]).unwrap();
    let j = join(1, &NonceState::default(), 1);
    let (key, body) = j.answer.clone().unwrap();
    a.commit_joins(&[j]).unwrap();
    let mut other_request = key.clone();
    other_request.request.push(0);
    let mut unknown = key.clone();
    unknown.transaction_id += 1;
    assert_eq!(
        b.find_answers(&[key.clone(), other_request, unknown])
            .unwrap(),
        vec![Some(body.to_vec()), None, None]
    );
    // Two devices' joins under one (sender, TransactionID) in one batch (a peer reusing it):
    // both commit, the first answer is kept, and the batch does not fail.
    a.insert_devices(&[device(7), device(8)]).unwrap();
    let (mut x, mut y) = (
        join(7, &NonceState::default(), 1),
        join(8, &NonceState::default(), 1),
    );
    x.answer.as_mut().unwrap().0.transaction_id = 77;
    y.answer.as_mut().unwrap().0.transaction_id = 77;
    assert_eq!(
        a.commit_joins(&[x.clone(), y]).unwrap(),
        vec![JoinCommitted::Applied; 2]
    );
    let (xk, xa) = x.answer.unwrap();
    assert_eq!(b.find_answers(&[xk]).unwrap(), vec![Some(xa.to_vec())]);

    let stale = join(1, &NonceState::default(), 2);
    let stale_key = stale.answer.clone().unwrap().0;
    assert!(matches!(
        b.commit_joins(&[stale]).unwrap()[0],
        JoinCommitted::Stale(_)
    ));
    assert_eq!(b.find_answers(&[stale_key]).unwrap(), vec![None]);
    // Answers older than the TTL go at the next housekeeping.
    b.set_answer_ttl_ms(0);
    std::thread::sleep(Duration::from_millis(5));
    b.maintain().unwrap();
    assert_eq!(a.find_answers(&[key]).unwrap(), vec![None]);

    // A change made through one handle wakes a waiter on another at once (NOTIFY), well
    // before its timeout; with no change, the wait lasts its timeout.
    b.wait_for_change(Duration::from_millis(10)).unwrap(); // connects and LISTENs
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        b.wait_for_change(Duration::from_secs(30)).unwrap();
        started.elapsed()
    });
    std::thread::sleep(Duration::from_millis(200));
    a.insert_devices(&[device(2)]).unwrap();
    let waited = waiter.join().unwrap();
    assert!(
        waited < Duration::from_secs(10),
        "the change was not signalled ({waited:?})"
    );
}

/// Instances racing: two handles (as two join servers) commit the same join of each of 200
/// devices at the same moment; for each device exactly one is applied.
#[test]
fn postgres_racing_instances_commit_each_join_once() {
    let pg = testkit::postgres::Postgres::start();
    let url = pg.create_database();
    let mut setup = PgStore::connect(&url, 2).unwrap();
    const N: u64 = 200;
    setup
        .insert_devices(&(0..N).map(device).collect::<Vec<_>>())
        .unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let racers: Vec<_> = (0..2u16)
        .map(|r| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut s = PgStore::connect(&url, 2).unwrap();
                let batch: Vec<JoinCommit> = (0..N)
                    .map(|d| join(d, &NonceState::default(), 10 + r))
                    .collect();
                barrier.wait();
                // In small batches, so the two interleave.
                batch
                    .chunks(10)
                    .flat_map(|c| s.commit_joins(c).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<Vec<JoinCommitted>> = racers.into_iter().map(|h| h.join().unwrap()).collect();
    for d in 0..N as usize {
        let applied = results
            .iter()
            .filter(|r| r[d] == JoinCommitted::Applied)
            .count();
        assert_eq!(
            applied, 1,
            "device {d}: {:?} / {:?}",
            results[0][d], results[1][d]
        );
        let stored = setup.get_device(DevEui::new(d as u64)).unwrap().unwrap();
        assert_eq!(stored.nonces.last_join_nonce, 1);
    }
}

/// The database goes away: every call fails with a PostgreSQL error (no panic, no hang past the
/// connect timeout); it comes back: the same store works again, nothing lost.
#[test]
fn postgres_gone_fails_calls_and_recovers() {
    let mut pg = testkit::postgres::Postgres::start();
    let url = pg.create_database();
    let mut s = PgStore::connect(&url, 2).unwrap();
    s.insert_devices(&[device(1)]).unwrap();
    let j = join(1, &NonceState::default(), 1);
    s.commit_joins(std::slice::from_ref(&j)).unwrap();
    pg.kill();
    let started = Instant::now();
    let e = s.commit_joins(&[join(1, &j.update.state, 2)]).unwrap_err();
    assert!(matches!(e, StoreError::Postgres(_)), "{e:?}");
    assert_eq!(e.kind(), "postgres");
    assert!(s.get_device(DevEui::new(1)).is_err());
    assert!(started.elapsed() < Duration::from_secs(30));
    pg.start_again();
    let d = s.get_device(DevEui::new(1)).unwrap().unwrap();
    assert_eq!(d.nonces, j.update.state, "the committed join survived");
    assert_eq!(
        s.commit_joins(&[join(1, &j.update.state, 2)]).unwrap(),
        vec![JoinCommitted::Applied]
    );
}

// ---------------------------------------------------------------------------------------------
// The onboarding state (API keys, tenants, ownership and claims, the audit log, imports) and the
// Backend Interfaces peer tokens: one suite over both backends.

use joinserver::bi::tokens::{self, PeerToken, PeerTokens, TokenStore};
use joinserver::manifest::Format;
use joinserver::onboarding::backend::OnboardBackend;
use joinserver::onboarding::db::{
    Actor, ApiKeyInfo, AuditEntry, AuditFilter, ClaimOutcome, OnboardStore, OwnershipColumn, Role,
};
use joinserver::onboarding::import::{Failure, Job, SliceSource};
use joinserver::onboarding::secret::{self, ApiKeySecret};
use joinserver::secrets::MasterKey;
use joinserver::store::pg_onboard::PgOnboard;
use protocol::keys::Kek;

/// One store's onboarding backend, a device-store handle and its peer tokens (writer and
/// reader).
struct Onboard {
    db: Box<dyn OnboardBackend>,
    devices: Box<dyn Store>,
    token_writer: Box<dyn PeerTokens>,
    tokens: TokenStore,
}

type MakeOnboard<'a> = dyn FnMut() -> Onboard + 'a;

fn master() -> MasterKey {
    MasterKey(Kek::new([5; 16]))
}

const OWNER_TOKEN: &str = "0123456789ABCDEF0123456789ABCDEF";

fn manufacturer() -> Actor {
    Actor {
        id: "key:00000000000000aa".into(),
        tenant: Some("acme".into()),
        role: Role::Manufacturer,
    }
}

fn owner() -> Actor {
    Actor {
        id: "key:00000000000000bb".into(),
        tenant: Some("city".into()),
        role: Role::Owner,
    }
}

/// Imports devices `devs` (1.0.4, owner token [`OWNER_TOKEN`], no home network) as `actor`.
fn import_as(
    o: &mut Onboard,
    actor: &Actor,
    devs: &[u64],
) -> Result<joinserver::onboarding::import::Imported, Failure> {
    let mut manifest = String::from("dev_eui,join_eui,mac_version,app_key,nwk_key,owner_token\n");
    for d in devs {
        manifest.push_str(&format!(
            "{d:016X},70B3D57ED0000000,1.0.4,2B7E151628AED2A6ABF7158809CF4F3C,,{OWNER_TOKEN}\n"
        ));
    }
    let master = master();
    let job = Job {
        actor,
        master: &master,
        format: Some(Format::Csv),
        verifier: None,
        commit_lock: None,
        min_owner_token_len: 16,
    };
    let mut seen = Vec::new();
    let mut on_device = |d: StoredDevice| seen.push(d.dev_eui);
    let r = o.db.importer().unwrap().run(
        job,
        &mut SliceSource::new(manifest.as_bytes()),
        Some(&mut on_device),
    );
    if let Ok(i) = &r {
        assert_eq!(seen.len(), i.imported);
    }
    r
}

fn onboard_suite(make: &mut MakeOnboard<'_>) {
    api_keys_are_found_by_hash_expire_and_revoke(&mut make());
    imports_are_all_or_nothing_and_record_the_manufacturer(&mut make());
    claims_bind_once_and_release_lock_and_deprovision(&mut make());
    nonce_resets_and_key_rotations_are_written_and_audited(&mut make());
    the_audit_log_filters_and_scopes(&mut make());
    peer_tokens_are_found_by_their_clear_text_only(&mut make());
}

fn api_keys_are_found_by_hash_expire_and_revoke(o: &mut Onboard) {
    let cli = Actor::cli();
    let (k1, k2) = (ApiKeySecret::generate(), ApiKeySecret::generate());
    let r1 =
        o.db.create_api_key(&cli, "acme", Role::Manufacturer, &k1.hash(), None)
            .unwrap();
    assert_eq!(r1.id, hex::encode(&k1.hash()[..8]));
    let r2 =
        o.db.create_api_key(&cli, "city", Role::Owner, &k2.hash(), Some(5_000))
            .unwrap();
    assert_eq!(
        o.db.find_api_key(&k1.hash(), 10_000).unwrap(),
        Some(r1.clone())
    );
    assert_eq!(
        o.db.find_api_key(&k2.hash(), 4_999).unwrap(),
        Some(r2.clone())
    );
    assert_eq!(
        o.db.find_api_key(&k2.hash(), 5_000).unwrap(),
        None,
        "expired"
    );
    assert_eq!(o.db.find_api_key(&[7; 32], 0).unwrap(), None);
    let listed = o.db.list_api_keys().unwrap();
    assert_eq!(listed.len(), 2);
    // Listed by creation time, then id: two keys made in the same millisecond come in the
    // order of their (random) ids, so each is found by its id.
    let by_id = |listed: &[ApiKeyInfo], id: &str| -> ApiKeyInfo {
        listed
            .iter()
            .find(|k| k.id == id)
            .cloned()
            .unwrap_or_else(|| panic!("key {id} listed"))
    };
    assert_eq!(by_id(&listed, &r2.id).expires_ms, Some(5_000));
    assert!(o.db.revoke_api_key(&cli, &r1.id).unwrap());
    assert!(!o.db.revoke_api_key(&cli, &r1.id).unwrap(), "revoked once");
    assert!(!o.db.revoke_api_key(&cli, "0000000000000000").unwrap());
    assert_eq!(o.db.find_api_key(&k1.hash(), 10_000).unwrap(), None);
    let listed = o.db.list_api_keys().unwrap();
    assert!(by_id(&listed, &r1.id).revoked_ms.is_some());
    assert!(by_id(&listed, &r2.id).revoked_ms.is_none());
    assert_eq!(o.db.tenants().unwrap(), vec!["acme", "city"]);
    let n = NetId::new(0x13).unwrap();
    assert_eq!(o.db.tenant_home_net_id("city").unwrap(), None);
    o.db.set_tenant_home_net_id(&cli, "city", Some(n)).unwrap();
    assert_eq!(o.db.tenant_home_net_id("city").unwrap(), Some(n));
    o.db.set_tenant_home_net_id(&cli, "newco", None).unwrap();
    assert_eq!(o.db.tenants().unwrap(), vec!["acme", "city", "newco"]);
    let actions: Vec<String> =
        o.db.audit(&AuditFilter::default(), None)
            .unwrap()
            .into_iter()
            .map(|r| r.action)
            .collect();
    assert_eq!(
        actions,
        [
            "api_key_create",
            "api_key_create",
            "api_key_revoke",
            "tenant_home_net_id",
            "tenant_home_net_id"
        ]
    );
}

fn imports_are_all_or_nothing_and_record_the_manufacturer(o: &mut Onboard) {
    let m = manufacturer();
    let r = import_as(o, &m, &[1, 2, u64::MAX]).unwrap();
    assert_eq!(r.imported, 3);
    assert!(r.generated.is_empty());
    let (d, own) = o.db.device(DevEui::new(u64::MAX)).unwrap().unwrap();
    assert_eq!(d.home_net_id, None);
    assert_eq!(own.manufacturer.as_deref(), Some("acme"));
    assert_eq!(
        own.token_hash.as_deref(),
        Some(&secret::owner_token_hash(DevEui::new(u64::MAX), OWNER_TOKEN)[..])
    );
    // In unsigned order, paged.
    let scope = Some((OwnershipColumn::Manufacturer, "acme"));
    let all = o.db.visible(scope, None, 10).unwrap();
    assert_eq!(all, [1, 2, u64::MAX].map(DevEui::new));
    assert_eq!(
        o.db.visible(None, Some(DevEui::new(1)), 1).unwrap(),
        [DevEui::new(2)]
    );
    assert!(o
        .db
        .visible(Some((OwnershipColumn::Manufacturer, "other")), None, 10)
        .unwrap()
        .is_empty());
    // One device already provisioned: nothing of the manifest is stored.
    match import_as(o, &m, &[3, 2]) {
        Err(Failure::Rows { rows, total, .. }) => {
            assert_eq!(total, 1);
            assert_eq!(rows[0].line, 3);
            assert!(rows[0].message.contains("already provisioned"), "{rows:?}");
        }
        other => panic!("{other:?}"),
    }
    // A DevEUI twice in one manifest.
    match import_as(o, &m, &[4, 4]) {
        Err(Failure::Rows { rows, .. }) => assert!(rows[0].message.contains("line 2")),
        other => panic!("{other:?}"),
    }
    assert!(o.db.stored_device(DevEui::new(3)).unwrap().is_none());
    assert!(o.db.stored_device(DevEui::new(4)).unwrap().is_none());
    let provisioned = AuditFilter {
        action: Some("provision".into()),
        ..AuditFilter::default()
    };
    assert_eq!(o.db.audit(&provisioned, None).unwrap().len(), 3);
}

fn claims_bind_once_and_release_lock_and_deprovision(o: &mut Onboard) {
    import_as(o, &manufacturer(), &[1, 2]).unwrap();
    let (a, home) = (owner(), NetId::new(0x13).unwrap());
    let dev = DevEui::new(1);
    let good = secret::owner_token_hash(dev, OWNER_TOKEN);
    let claim = |o: &mut Onboard, h: &[u8; 32]| o.db.claim(&a, dev, h, "city", home, "via test");
    assert_eq!(claim(o, &[0; 32]).unwrap(), ClaimOutcome::WrongToken);
    let missing =
        o.db.claim(&a, DevEui::new(9), &good, "city", home, "")
            .unwrap();
    assert_eq!(missing, ClaimOutcome::NotFound);
    assert_eq!(claim(o, &good).unwrap(), ClaimOutcome::Claimed);
    assert_eq!(claim(o, &good).unwrap(), ClaimOutcome::AlreadyClaimed);
    let (d, own) = o.db.device(dev).unwrap().unwrap();
    assert_eq!(d.home_net_id, Some(home));
    assert_eq!(
        (d.owner.as_deref(), own.owner.as_deref()),
        (Some("city"), Some("city"))
    );
    assert!(own.claimed_ms.is_some());
    let mine =
        o.db.visible(Some((OwnershipColumn::Owner, "city")), None, 10);
    assert_eq!(mine.unwrap(), [dev]);
    // The device store sees the claim too (what the join pipeline loads).
    let stored = o.devices.get_device(dev).unwrap().unwrap();
    assert_eq!(stored.home_net_id, Some(home));
    let new_hash = secret::owner_token_hash(dev, "a new token of 32 characters....");
    o.db.release(&a, dev, Some(&new_hash)).unwrap();
    let (d, own) = o.db.device(dev).unwrap().unwrap();
    assert_eq!((d.home_net_id, own.owner), (None, None));
    assert_eq!(
        claim(o, &good).unwrap(),
        ClaimOutcome::WrongToken,
        "old token"
    );
    o.db.set_locked(&a, dev, true).unwrap();
    assert_eq!(claim(o, &new_hash).unwrap(), ClaimOutcome::Locked);
    o.db.set_locked(&a, dev, false).unwrap();
    assert_eq!(claim(o, &new_hash).unwrap(), ClaimOutcome::Claimed);
    // Refused claims, as the service audits them, are what the failed-claim limits restore.
    o.db.audit_append(&AuditEntry {
        actor: &a,
        action: "claim",
        dev_eui: Some(DevEui::new(2)),
        outcome: "refused:wrong_token",
        detail: "",
    })
    .unwrap();
    let failures = o.db.claim_failures_since(0).unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].1, a.id);
    assert_eq!(failures[0].2.as_deref(), Some("0000000000000002"));
    assert!(o.db.deprovision(&Actor::cli(), dev).unwrap());
    assert!(!o.db.deprovision(&Actor::cli(), dev).unwrap());
    assert!(o.db.device(dev).unwrap().is_none());
    assert!(o.devices.get_device(dev).unwrap().is_none());
    let actions: Vec<String> =
        o.db.audit(
            &AuditFilter {
                dev_eui: Some("0000000000000001".into()),
                ..AuditFilter::default()
            },
            None,
        )
        .unwrap()
        .into_iter()
        .map(|r| r.action)
        .collect();
    assert_eq!(
        actions,
        [
            "provision",
            "claim",
            "release",
            "lock",
            "unlock",
            "claim",
            "deprovision"
        ]
    );
}

fn nonce_resets_and_key_rotations_are_written_and_audited(o: &mut Onboard) {
    import_as(o, &manufacturer(), &[1]).unwrap();
    let dev = DevEui::new(1);
    let state = NonceState {
        last_dev_nonce: Some(7),
        used_dev_nonces: vec![],
        last_join_nonce: 40,
        last_rj_count1: None,
    };
    o.devices
        .commit_nonces(&[NonceUpdate {
            dev_eui: dev,
            state,
            joined: JOINED,
        }])
        .unwrap();
    let cleared = NonceState {
        last_dev_nonce: None,
        used_dev_nonces: vec![],
        last_join_nonce: 40,
        last_rj_count1: None,
    };
    let cli = Actor::cli();
    o.db.set_nonces_and_keys(&cli, "dev_nonce_reset", dev, &cleared, None, "")
        .unwrap();
    let d = o.db.stored_device(dev).unwrap().unwrap();
    assert_eq!(d.nonces, cleared);
    let app = vec![9u8; 24];
    o.db.set_nonces_and_keys(
        &cli,
        "root_key_rotation",
        dev,
        &cleared,
        Some((&app, None)),
        "",
    )
    .unwrap();
    let d = o.db.stored_device(dev).unwrap().unwrap();
    assert_eq!(d.app_key_wrapped, app);
    assert_eq!(d.nonces.last_join_nonce, 40);
    let f = AuditFilter {
        outcome: Some("ok".into()),
        since_ms: Some(0),
        ..AuditFilter::default()
    };
    let actions: Vec<String> =
        o.db.audit(&f, None)
            .unwrap()
            .into_iter()
            .map(|r| r.action)
            .collect();
    assert_eq!(
        actions,
        [
            "provision",
            "import",
            "dev_nonce_reset",
            "root_key_rotation"
        ]
    );
}

fn the_audit_log_filters_and_scopes(o: &mut Onboard) {
    let (m, a) = (manufacturer(), owner());
    for (actor, outcome) in [(&m, "ok"), (&a, "refused:forbidden"), (&a, "ok")] {
        o.db.audit_append(&AuditEntry {
            actor,
            action: "lock",
            dev_eui: None,
            outcome,
            detail: "d",
        })
        .unwrap();
    }
    let all = o.db.audit(&AuditFilter::default(), None).unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let city = o.db.audit(&AuditFilter::default(), Some("city")).unwrap();
    assert_eq!(city.len(), 2);
    let refused = AuditFilter {
        outcome: Some("refused".into()),
        ..AuditFilter::default()
    };
    assert_eq!(o.db.audit(&refused, None).unwrap().len(), 1);
    let by_actor = AuditFilter {
        actor: Some(m.id.clone()),
        ..AuditFilter::default()
    };
    assert_eq!(o.db.audit(&by_actor, None).unwrap().len(), 1);
    let page = AuditFilter {
        after_seq: Some(all[0].seq),
        limit: Some(1),
        ..AuditFilter::default()
    };
    assert_eq!(o.db.audit(&page, None).unwrap(), vec![all[1].clone()]);
    let none = AuditFilter {
        until_ms: Some(0),
        ..AuditFilter::default()
    };
    assert!(o.db.audit(&none, None).unwrap().is_empty());
    // A `%` is not a wildcard.
    let wild = AuditFilter {
        outcome: Some("%".into()),
        ..AuditFilter::default()
    };
    assert!(o.db.audit(&wild, None).unwrap().is_empty());
}

fn peer_tokens_are_found_by_their_clear_text_only(o: &mut Onboard) {
    let net = NetId::new(0x13).unwrap();
    let t = tokens::create(&mut *o.token_writer, net, 1).unwrap();
    let header = format!("Bearer {}", t.expose());
    assert_eq!(
        o.tokens
            .find(&PeerToken::from_authorization(&header))
            .unwrap(),
        Some(net)
    );
    let other = PeerToken::generate();
    assert_eq!(o.tokens.find(&other).unwrap(), None);
}

#[test]
fn the_onboarding_suite_on_sqlite() {
    let dirs = std::cell::RefCell::new(Vec::new());
    onboard_suite(&mut || {
        let d = tempfile::tempdir().unwrap();
        let o = Onboard {
            db: Box::new(OnboardStore::open(d.path()).unwrap()),
            devices: Box::new(SqliteStore::open(d.path()).unwrap()),
            token_writer: Box::new(SqliteStore::open(d.path()).unwrap()),
            tokens: TokenStore::open(d.path()).unwrap(),
        };
        dirs.borrow_mut().push(d);
        o
    });
}

fn pg_onboard(url: &str) -> Onboard {
    Onboard {
        db: Box::new(PgOnboard::new(PgStore::connect(url, 2).unwrap())),
        devices: Box::new(PgStore::connect(url, 2).unwrap()),
        token_writer: Box::new(PgStore::connect(url, 2).unwrap()),
        tokens: TokenStore::new(Box::new(PgStore::connect(url, 2).unwrap())),
    }
}

#[test]
fn the_onboarding_suite_on_postgres() {
    let pg = testkit::postgres::Postgres::start();
    onboard_suite(&mut || pg_onboard(&pg.create_database()));
}

/// On PostgreSQL a claim, a release, a nonce reset and a deprovisioning through one instance are
/// signalled to the others (the change log lists the device, and only it), and of two instances
/// claiming one device with its token at the same moment exactly one wins.
#[test]
fn postgres_onboarding_changes_reach_other_instances_and_claims_race_once() {
    let pg = testkit::postgres::Postgres::start();
    let url = pg.create_database();
    let mut a = pg_onboard(&url);
    let mut b = PgStore::connect(&url, 2).unwrap();
    import_as(&mut a, &manufacturer(), &[1, 2, 3]).unwrap();
    let dev = DevEui::new(2);
    let hash = secret::owner_token_hash(dev, OWNER_TOKEN);
    let seen = b.generation().unwrap();
    let home = NetId::new(0x13).unwrap();
    let o = owner();
    assert_eq!(
        a.db.claim(&o, dev, &hash, "city", home, "").unwrap(),
        ClaimOutcome::Claimed
    );
    b.wait_for_change(Duration::from_secs(1)).unwrap();
    let (g, changes) = b.changes_since(seen).unwrap();
    assert_eq!(changes, DeviceChanges::Devices(vec![dev]));
    assert_eq!(b.get_device(dev).unwrap().unwrap().home_net_id, Some(home));
    a.db.release(&o, dev, None).unwrap();
    let (g2, changes) = b.changes_since(g).unwrap();
    assert_eq!(changes, DeviceChanges::Devices(vec![dev]));
    assert!(a.db.deprovision(&Actor::cli(), dev).unwrap());
    let (_, changes) = b.changes_since(g2).unwrap();
    assert_eq!(changes, DeviceChanges::Devices(vec![dev]));
    assert!(b.get_device(dev).unwrap().is_none());

    // Two instances, eight claims each of devices 1 and 3 at once: one success per device.
    let barrier = Arc::new(Barrier::new(16));
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut db = PgOnboard::new(PgStore::connect(&url, 1).unwrap());
                let dev = DevEui::new(if i % 2 == 0 { 1 } else { 3 });
                let hash = secret::owner_token_hash(dev, OWNER_TOKEN);
                let tenant = format!("tenant{i}");
                barrier.wait();
                (
                    dev,
                    db.claim(&owner(), dev, &hash, &tenant, home, "").unwrap(),
                )
            })
        })
        .collect();
    let outcomes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for d in [1, 3] {
        let wins = outcomes
            .iter()
            .filter(|(dev, c)| dev.as_u64() == d && *c == ClaimOutcome::Claimed)
            .count();
        assert_eq!(wins, 1, "{outcomes:?}");
    }
    assert!(outcomes
        .iter()
        .all(|(_, c)| matches!(c, ClaimOutcome::Claimed | ClaimOutcome::AlreadyClaimed)));
}

/// The database never holds an API key, a peer token, an owner token or a root key in clear:
/// every row of every table, as text, is searched for each of them; and the audit log refuses
/// UPDATE, DELETE and TRUNCATE.
#[test]
fn postgres_holds_no_secret_in_clear_and_the_audit_log_is_append_only() {
    let pg = testkit::postgres::Postgres::start();
    let url = pg.create_database();
    let mut o = pg_onboard(&url);
    let key = ApiKeySecret::generate();
    o.db.create_api_key(&Actor::cli(), "acme", Role::Admin, &key.hash(), None)
        .unwrap();
    let token = tokens::create(&mut *o.token_writer, NetId::new(0x13).unwrap(), 1).unwrap();
    import_as(&mut o, &manufacturer(), &[1]).unwrap();
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let tables: Vec<String> = c
        .query(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for t in [
        "api_keys",
        "tenants",
        "audit",
        "bi_peer_tokens",
        "ownership",
        "devices",
    ] {
        assert!(tables.iter().any(|x| x == t), "{t} in {tables:?}");
    }
    let app_key = "2B7E151628AED2A6ABF7158809CF4F3C";
    let secrets = [key.expose(), token.expose(), OWNER_TOKEN, app_key];
    for t in &tables {
        for row in c.query(&format!("SELECT t::text FROM {t} t"), &[]).unwrap() {
            let text: String = row.get(0);
            let upper = text.to_uppercase();
            for s in secrets {
                assert!(
                    !upper.contains(&s.to_uppercase()),
                    "{t} holds a secret: {text}"
                );
            }
        }
    }
    for sql in [
        "UPDATE audit SET detail = 'x'",
        "DELETE FROM audit",
        "TRUNCATE audit",
    ] {
        let e = c.batch_execute(sql).unwrap_err();
        assert!(
            e.to_string().contains("append-only") || format!("{e:?}").contains("append-only"),
            "{sql}: {e:?}"
        );
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM audit", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "api_key_create, provision, import");
}
