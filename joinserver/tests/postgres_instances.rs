//! Several `joinserver serve` processes on one PostgreSQL database (a real PostgreSQL 15 from
//! `testkit::postgres`), provisioned and served through the real binary's `--store-url`, spoken
//! to over the real link on 127.0.0.1; and the commands that set such a database up (`migrate`,
//! `store copy`).

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::ts002;
use common::*;
use ed25519_dalek::{Signer, SigningKey};
use joinserver::store::postgres::PgStore;
use joinserver::store::Store;
use protocol::ids::DevEui;
use protocol::keys::LinkKey;
use protocol::link;
use protocol::ts002::{JoinAns, ResultCode};

/// Devices 0x100.. : LoRaWAN 1.0.4 (DevNonce is a counter), home NetID 000013.
const FIRST: u64 = 0x100;

fn csv(devices: std::ops::Range<u64>) -> String {
    let mut s = String::from("dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id\n");
    for d in devices {
        s.push_str(&format!(
            "{d:016X},{JOIN_EUI:016X},1.0.4,{APP_KEY},,{NET_ID:06X}\n"
        ));
    }
    s
}

/// Runs `joinserver ARGS` and returns its stdout; panics with its stderr if it fails.
fn cli(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_joinserver"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "joinserver {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `joinserver devices import --store-url URL` of `devices`.
fn import(dir: &Path, url: &str, devices: std::ops::Range<u64>) {
    let file = dir.join(format!("manifest-{}.csv", devices.start));
    std::fs::write(&file, csv(devices.clone())).unwrap();
    let d = dir.to_str().unwrap();
    cli(&[
        "devices",
        "import",
        "--data-dir",
        d,
        "--store-url",
        url,
        "--owner-tokens",
        dir.join(format!("tokens-{}.csv", devices.start))
            .to_str()
            .unwrap(),
        file.to_str().unwrap(),
    ]);
}

/// A data directory initialised on the database at `url` (`init --store-url`), the network
/// server of NetID 000013 added as a peer, and `n` devices imported; its link key.
fn setup(dir: &Path, url: &str, n: u64) -> LinkKey {
    let d = dir.to_str().unwrap();
    let out = cli(&["init", "--data-dir", d, "--store-url", url]);
    assert!(out.contains("(PostgreSQL)"), "{out}");
    assert!(!out.contains("joinserver.db"), "{out}");
    let out = peers_add(d, url, &format!("{NET_ID:06X}"));
    assert!(out.status.success(), "{out:?}");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("added   NetID 000013 to the store"), "{out}");
    import(dir, url, FIRST..FIRST + n);
    joinserver::secrets::read_hex_key(
        &joinserver::secrets::peer_files(dir, protocol::ids::NetId::new(NET_ID).unwrap()).0,
    )
    .unwrap()
}

/// `joinserver peers token --store-url URL --net-id NET` on the data directory `d`: the token.
fn peers_token(d: &str, url: &str, net: &str) -> String {
    cli(&[
        "peers",
        "token",
        "--data-dir",
        d,
        "--store-url",
        url,
        "--net-id",
        net,
    ])
}

/// `joinserver peers add --store-url URL --net-id NET` on the data directory `d`.
fn peers_add(d: &str, url: &str, net: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_joinserver"))
        .args([
            "peers",
            "add",
            "--data-dir",
            d,
            "--store-url",
            url,
            "--net-id",
            net,
        ])
        .output()
        .unwrap()
}

fn serve(dir: &Path, url: &str) -> Running {
    spawn_with(dir, &["--store-url", url, "--metrics", "127.0.0.1:0"])
}

fn sample(r: &Running, name: &str) -> u64 {
    metric(&http_get(r.metrics.unwrap(), "/metrics").1, name)
}

/// Sends `(tid, dev, dev_nonce)` JoinReqs to a server from one socket without waiting, then
/// collects every answer that arrives within `wait` (by TransactionID).
fn storm(c: &Client, requests: &[(u32, u64, u16)], wait: Duration) -> HashMap<u32, JoinAns> {
    // A large receive buffer, and answers read while the requests go out: a burst of answers
    // would overflow the client socket's buffer on a busy machine.
    let _ = socket2::SockRef::from(&c.sock).set_recv_buffer_size(4 << 20);
    let mut answers = std::thread::scope(|s| {
        let answers = s.spawn(|| collect(c, requests.len(), wait));
        send(c, requests);
        answers.join().unwrap()
    });
    // What is still unanswered is sent again with its TransactionID, as a network server
    // retries: the join server answers a retry with the same answer (its cache, or the one
    // stored by the instance that committed the join).
    for _ in 0..3 {
        let missing: Vec<(u32, u64, u16)> = requests
            .iter()
            .filter(|r| !answers.contains_key(&r.0))
            .copied()
            .collect();
        if missing.is_empty() {
            break;
        }
        let again = std::thread::scope(|s| {
            let more = s.spawn(|| collect(c, missing.len(), Duration::from_secs(5)));
            send(c, &missing);
            more.join().unwrap()
        });
        answers.extend(again);
    }
    answers
}

/// Sends `(tid, dev, dev_nonce)` JoinReqs without waiting for answers.
fn send(c: &Client, requests: &[(u32, u64, u16)]) {
    for &(tid, dev, n) in requests {
        let d = datagram(
            &c.key,
            NET_ID,
            now_ms(),
            u64::from(tid),
            &join_req_json(tid, NET_ID, dev, &phy(dev, n)),
        );
        c.sock.send_to(&d, c.server).unwrap();
    }
}

/// Up to `n` answers arriving at `c` within `wait`.
fn collect(c: &Client, n: usize, wait: Duration) -> HashMap<u32, JoinAns> {
    let deadline = Instant::now() + wait;
    let mut out = HashMap::new();
    let mut buf = [0u8; 2048];
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        c.sock.set_read_timeout(Some(left)).unwrap();
        let Ok(len) = c.sock.recv(&mut buf) else {
            break;
        };
        let (_, body) = link::open(&c.key, &buf[..len]).expect("an authenticated answer");
        let a = JoinAns::parse(body).unwrap();
        out.insert(a.header.transaction_id, a);
    }
    out
}

/// The same Join-request, with the same TransactionID (a network server's retry reaching the
/// other instance) or another (two network servers), into both instances at once: one session
/// per device. With the same TransactionID both answers are the same answer; with another, the
/// second instance refuses. Every device's JoinNonce moved by exactly one.
#[test]
fn the_same_join_request_into_both_instances_gives_one_session() {
    let pg = testkit::postgres::Postgres::start();
    let url = pg.create_database();
    let tmp = tempfile::tempdir().unwrap();
    const N: u64 = 300;
    let key = setup(tmp.path(), &url, N);
    let (a, b) = (serve(tmp.path(), &url), serve(tmp.path(), &url));
    let (ca, cb) = (
        Client::new(a.link, key.clone()),
        Client::new(b.link, key.clone()),
    );

    // Round 1: same TransactionID into both. Round 2 (DevNonce 2): other TransactionIDs.
    for (round, same_tid) in [(1u16, true), (2, false)] {
        let reqs_a: Vec<(u32, u64, u16)> = (0..N)
            .map(|i| (u32::from(round) * 10_000 + i as u32, FIRST + i, round))
            .collect();
        let reqs_b: Vec<(u32, u64, u16)> = reqs_a
            .iter()
            .map(|&(t, d, n)| (if same_tid { t } else { t + 5_000 }, d, n))
            .collect();
        // Interleaved sends, so both instances work on the same devices at the same moment.
        let (ans_a, ans_b) = std::thread::scope(|s| {
            let ha = s.spawn(|| storm(&ca, &reqs_a, Duration::from_secs(20)));
            let hb = s.spawn(|| storm(&cb, &reqs_b, Duration::from_secs(20)));
            (ha.join().unwrap(), hb.join().unwrap())
        });
        assert_eq!((ans_a.len(), ans_b.len()), (N as usize, N as usize));
        for i in 0..N as usize {
            let (x, y) = (&ans_a[&reqs_a[i].0], &ans_b[&reqs_b[i].0]);
            let ok = |a: &JoinAns| a.result.result_code == ResultCode::Success;
            let accepts: HashSet<&Vec<u8>> = [x, y]
                .into_iter()
                .filter(|a| ok(a))
                .map(|a| a.phy_payload.as_ref().unwrap())
                .collect();
            assert_eq!(accepts.len(), 1, "device {i} round {round}: one session");
            if same_tid {
                assert!(ok(x) && ok(y), "a retry anywhere gets the answer");
                assert_eq!(x.app_s_key, y.app_s_key, "the identical answer");
            } else {
                assert!(ok(x) != ok(y), "exactly one Success");
                let refused = if ok(x) { y } else { x };
                assert_eq!(refused.result.result_code, ResultCode::JoinReqFailed);
            }
        }
        let success = |r: &Running| sample(r, "joinserver_joins_total{result=\"success\"}");
        assert_eq!(
            success(&a) + success(&b),
            N * u64::from(round),
            "one success counted per device and round"
        );
    }
    let shared = sample(&a, "joinserver_answers_shared_total")
        + sample(&b, "joinserver_answers_shared_total");
    assert!(shared > 0, "no retry was answered from the other instance");
    let mut store = PgStore::connect(&url, 2).unwrap();
    for d in store.load_devices().unwrap() {
        assert_eq!(d.nonces.last_join_nonce, 2, "{}", d.dev_eui);
        assert_eq!(d.nonces.last_dev_nonce, Some(2));
    }
}

/// A device imported or removed through the command line (into PostgreSQL) while two instances
/// run is joined, then refused, through both, soon after (LISTEN/NOTIFY: no polling of every
/// device).
#[test]
fn provisioning_is_seen_by_every_instance() {
    let pg = testkit::postgres::Postgres::start();
    let url = pg.create_database();
    let tmp = tempfile::tempdir().unwrap();
    let key = setup(tmp.path(), &url, 1);
    let (a, b) = (serve(tmp.path(), &url), serve(tmp.path(), &url));
    let clients = [
        Client::new(a.link, key.clone()),
        Client::new(b.link, key.clone()),
    ];
    let new = FIRST + 50;
    let before = clients[0].join_ans(1, new, &phy(new, 1));
    assert_eq!(before.result.result_code, ResultCode::UnknownDevEui);
    let imported = Instant::now();
    import(tmp.path(), &url, new..new + 1);
    // Each instance answers Success once it has the device (then the other one's JoinNonce
    // moved, so each uses its own DevNonce, in order).
    let mut tid = 10;
    let mut nonce = 1;
    for c in &clients {
        loop {
            tid += 1;
            nonce += 1;
            let r = c.join_ans(tid, new, &phy(new, nonce)).result.result_code;
            if r == ResultCode::Success {
                break;
            }
            assert!(
                imported.elapsed() < Duration::from_secs(10),
                "the import was not seen: {r:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!(
        "import seen by both instances after {:?}",
        imported.elapsed()
    );
    assert_eq!(sample(&a, "joinserver_devices"), 2);
    assert_eq!(sample(&b, "joinserver_devices"), 2);

    let removed = Instant::now();
    let d = tmp.path().to_str().unwrap();
    let eui = DevEui::new(new).to_string();
    cli(&[
        "devices",
        "remove",
        "--data-dir",
        d,
        "--store-url",
        &url,
        &eui,
    ]);
    for c in &clients {
        loop {
            tid += 1;
            nonce += 1;
            let r = c.join_ans(tid, new, &phy(new, nonce)).result.result_code;
            if r == ResultCode::UnknownDevEui {
                break;
            }
            assert!(removed.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // `devices list --store-url` reads the same database.
    let list = cli(&[
        "devices",
        "list",
        "--data-dir",
        d,
        "--store-url",
        &url,
        "--json",
    ]);
    assert_eq!(list.lines().count(), 1, "{list}");
}

/// kill -9 of one instance in the middle of a storm through both: no DevNonce that either
/// instance answered with Success is accepted again by the survivor.
#[test]
fn kill9_of_one_instance_mid_storm_accepts_no_answered_dev_nonce_again() {
    let pg = testkit::postgres::Postgres::start();
    let url = pg.create_database();
    let tmp = tempfile::tempdir().unwrap();
    const N: u64 = 200;
    const ROUNDS: u16 = 6;
    let key = setup(tmp.path(), &url, N);
    let mut a = Some(serve(tmp.path(), &url));
    let b = serve(tmp.path(), &url);
    let ca = Client::new(a.as_ref().unwrap().link, key.clone());
    let cb = Client::new(b.link, key.clone());
    let mut accepted: Vec<(u64, u16)> = Vec::new();
    let mut tid = 0u32;
    for round in 1..=ROUNDS {
        // Each device's DevNonce `round`, to instance A or B by device and round.
        let mut to_a = Vec::new();
        let mut to_b = Vec::new();
        for i in 0..N {
            tid += 1;
            let r = (tid, FIRST + i, round);
            if a.is_some() && (i + u64::from(round)) % 2 == 0 {
                to_a.push(r);
            } else {
                to_b.push(r);
            }
        }
        let (ans_a, ans_b) = std::thread::scope(|s| {
            let ha = s.spawn(|| {
                if round == ROUNDS / 2 {
                    // Mid-storm: the requests go out, then A dies while answering them.
                    send(&ca, &to_a);
                    HashMap::new()
                } else {
                    storm(&ca, &to_a, Duration::from_secs(20))
                }
            });
            let hb = s.spawn(|| storm(&cb, &to_b, Duration::from_secs(20)));
            (ha.join().unwrap(), hb.join().unwrap())
        });
        let mut ans_a = ans_a;
        if round == ROUNDS / 2 {
            std::thread::sleep(Duration::from_millis(5));
            drop(a.take()); // SIGKILL
                            // Whatever A sent before it died.
            ans_a = collect(&ca, to_a.len(), Duration::from_millis(500));
        }
        for (reqs, ans) in [(&to_a, &ans_a), (&to_b, &ans_b)] {
            for &(t, d, n) in reqs {
                if ans
                    .get(&t)
                    .is_some_and(|x| x.result.result_code == ResultCode::Success)
                {
                    accepted.push((d, n));
                }
            }
        }
    }
    assert!(
        accepted.len() > (N as usize) * 3,
        "too few joins: {}",
        accepted.len()
    );
    // Every accepted DevNonce, replayed (as a new request) to the survivor: refused.
    let replays: Vec<(u32, u64, u16)> = accepted
        .iter()
        .enumerate()
        .map(|(i, &(d, n))| (1_000_000 + i as u32, d, n))
        .collect();
    let answers = storm(&cb, &replays, Duration::from_secs(30));
    assert_eq!(answers.len(), replays.len());
    for (t, d, n) in &replays {
        assert_ne!(
            answers[t].result.result_code,
            ResultCode::Success,
            "device {d:X} DevNonce {n} accepted twice"
        );
    }
    // And the store holds, for every device, at least the highest DevNonce answered.
    let mut store = PgStore::connect(&url, 2).unwrap();
    let mut highest: HashMap<u64, u16> = HashMap::new();
    for &(d, n) in &accepted {
        let h = highest.entry(d).or_default();
        *h = (*h).max(n);
    }
    for (d, n) in highest {
        let s = store.get_device(DevEui::new(d)).unwrap().unwrap();
        assert!(s.nonces.last_dev_nonce >= Some(n), "{d:X}");
    }
}

/// The database goes away under a running instance: joins get no answer (nothing is answered
/// before it is committed), the failures are counted, the process stays up; the database comes
/// back: joins succeed again, and the JoinNonce continues from the last committed one.
#[test]
fn a_database_that_goes_away_is_refused_counted_and_recovered() {
    let mut pg = testkit::postgres::Postgres::start();
    let url = pg.create_database();
    let tmp = tempfile::tempdir().unwrap();
    let key = setup(tmp.path(), &url, 1);
    let mut a = serve(tmp.path(), &url);
    let c = Client::new(a.link, key.clone());
    assert_eq!(
        c.join_ans(1, FIRST, &phy(FIRST, 1)).result.result_code,
        ResultCode::Success
    );
    pg.kill();
    let d = datagram(
        &key,
        NET_ID,
        now_ms(),
        2,
        &join_req_json(2, NET_ID, FIRST, &phy(FIRST, 2)),
    );
    assert!(
        c.exchange_raw(&d, Duration::from_secs(5)).is_none(),
        "an answer left without its commit"
    );
    assert!(sample(&a, "joinserver_store_errors_total") >= 1);
    assert!(a.child.try_wait().unwrap().is_none(), "the server died");
    pg.start_again();
    let started = Instant::now();
    let mut tid = 10;
    let accepted = loop {
        tid += 1;
        let ans = c.join_ans(tid, FIRST, &phy(FIRST, 3 + tid as u16));
        if ans.result.result_code == ResultCode::Success {
            break ans;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no recovery");
        std::thread::sleep(Duration::from_millis(200));
    };
    let app = protocol::keys::KeyCipher::new(&APP_KEY.parse::<protocol::keys::AppKey>().unwrap());
    let join_nonce =
        protocol::join::EncryptedJoinAccept::from_bytes(accepted.phy_payload.as_ref().unwrap())
            .unwrap()
            .open(
                protocol::join::JoinAcceptEncKey::AppKey(&app),
                protocol::join::JoinAcceptMicKey::Legacy(protocol::join::JoinRootKey::AppKey(&app)),
            )
            .unwrap()
            .join_nonce
            .as_u32();
    assert_eq!(
        join_nonce, 2,
        "the JoinNonce of the withheld answer was never used"
    );
    let _ = a.child.kill();
}

/// `joinserver migrate` applies the schema once; running it again applies nothing.
#[test]
fn migrate_applies_the_schema_once() {
    let pg = testkit::postgres::Postgres::start();
    let url = pg.create_database();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let first = cli(&["migrate", "--data-dir", d, "--store-url", &url]);
    assert!(first.contains("applied migration 1"), "{first}");
    assert!(first.contains("applied migration 2"), "{first}");
    assert!(first.contains("applied migration 3"), "{first}");
    assert!(first.contains("applied migration 4"), "{first}");
    assert!(first.contains("applied migration 5"), "{first}");
    assert!(first.contains("schema version 5"), "{first}");
    // The URL from the environment variable, this time.
    let out = Command::new(env!("CARGO_BIN_EXE_joinserver"))
        .args(["migrate", "--data-dir", d])
        .env("JOINSERVER_STORE_URL", &url)
        .output()
        .unwrap();
    let again = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(!again.contains("applied"), "{again}");
    assert!(again.contains("schema version 5"), "{again}");
}

/// `joinserver store copy` moves an embedded store (devices, nonce states, last joins, owner
/// token hashes, retired JoinNonces, link peers) into PostgreSQL and verifies it; a join server on the copy
/// refuses the DevNonces answered before and continues the JoinNonces; a second copy into the
/// same (no longer empty) database is refused.
#[test]
fn store_copy_moves_an_embedded_store_up() {
    let pg = testkit::postgres::Postgres::start();
    let url = pg.create_database();
    let tmp = tempfile::tempdir().unwrap();
    let s = provision(tmp.path());
    {
        let embedded = spawn_with(tmp.path(), &["--metrics", ""]);
        let c = Client::new(embedded.link, s.link.clone());
        for (tid, dev, n) in [(1, 2, 10), (2, 1, 500), (3, 3, 7)] {
            let r = c.join_ans(tid, dev, &phy(dev, n)).result.result_code;
            assert_eq!(r, ResultCode::Success);
        }
    }
    let d = tmp.path().to_str().unwrap();
    cli(&["devices", "remove", "--data-dir", d, "0000000000000006"]);
    // The onboarding state moves up too: an API key, a peer token, the audit log.
    let key = cli(&[
        "api-keys",
        "create",
        "--data-dir",
        d,
        "--role",
        "owner",
        "--name",
        "city",
    ]);
    let net = format!("{NET_ID:06X}");
    let token = cli(&["peers", "token", "--data-dir", d, "--net-id", &net]);
    // The link peers recorded in the embedded store (000013 by `provision`, 000042 here) move
    // up, still wrapped.
    cli(&["peers", "add", "--data-dir", d, "--net-id", "000042"]);
    let out = cli(&["store", "copy", "--data-dir", d, "--to", &url]);
    assert!(out.contains("copied 5 devices"), "{out}");
    assert!(out.contains("copied 2 link peers"), "{out}");
    assert!(out.contains("1 api_keys"), "{out}");
    assert!(out.contains("1 bi_peer_tokens"), "{out}");
    assert_eq!(
        out.matches("verified: counts and checksum match").count(),
        2,
        "{out}"
    );
    let sums: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split("sha256 ").nth(1))
        .collect();
    assert_eq!(sums.len(), 4);
    assert_eq!((sums[0], sums[2]), (sums[1], sums[3]));
    {
        use joinserver::bi::tokens::{PeerToken, TokenStore};
        use joinserver::onboarding::backend::OnboardBackend;
        use joinserver::onboarding::db::{AuditFilter, OnboardStore};
        use joinserver::onboarding::secret::ApiKeySecret;
        let mut on_pg =
            joinserver::store::pg_onboard::PgOnboard::new(PgStore::connect(&url, 2).unwrap());
        let hash = ApiKeySecret::from_text(&key).hash();
        let found = on_pg.find_api_key(&hash, 0).unwrap().unwrap();
        assert_eq!(found.name, "city");
        let all = AuditFilter::default();
        let embedded = OnboardStore::open(tmp.path())
            .unwrap()
            .audit(&all, None)
            .unwrap();
        assert!(embedded.len() >= 7, "{embedded:?}");
        assert_eq!(on_pg.audit(&all, None).unwrap(), embedded);
        // The audit log continues after the copied records.
        on_pg
            .set_tenant_home_net_id(&joinserver::onboarding::db::Actor::cli(), "city", None)
            .unwrap();
        let after = on_pg.audit(&all, None).unwrap();
        assert!(after.last().unwrap().seq > embedded.last().unwrap().seq);
        let mut tokens = TokenStore::new(Box::new(PgStore::connect(&url, 2).unwrap()));
        let t = PeerToken::from_authorization(token.trim());
        assert_eq!(tokens.find(&t).unwrap(), protocol::ids::NetId::new(NET_ID));
    }
    let mut embedded = joinserver::store::SqliteStore::open(tmp.path()).unwrap();
    let mut copy = PgStore::connect(&url, 2).unwrap();
    assert_eq!(
        copy.load_devices().unwrap(),
        embedded.load_devices().unwrap()
    );
    assert_eq!(copy.fingerprint().unwrap(), embedded.fingerprint().unwrap());
    assert_eq!(copy.fingerprint().unwrap().retired, 1);
    let peers = embedded.link_peers().unwrap();
    assert_eq!((peers.len(), copy.link_peers().unwrap()), (2, peers));
    assert!(
        copy.fingerprint().unwrap().ownership >= 1,
        "owner token hashes copied"
    );

    let on_pg = serve(tmp.path(), &url);
    let c = Client::new(on_pg.link, s.link.clone());
    let r = |tid, dev, n| c.join_ans(tid, dev, &phy(dev, n)).result.result_code;
    assert_eq!(r(10, 2, 10), ResultCode::JoinReqFailed);
    assert_eq!(r(11, 1, 500), ResultCode::JoinReqFailed);
    assert_eq!(r(12, 3, 7), ResultCode::JoinReqFailed);
    assert_eq!(r(13, 2, 11), ResultCode::Success);

    let again = Command::new(env!("CARGO_BIN_EXE_joinserver"))
        .args(["store", "copy", "--data-dir", d, "--to", &url])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// Polls `f` every 20 ms until it is true, for at most 10 s (a loaded machine); how long it
/// took.
fn until(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: not seen within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// An HTTPS client of a server's API or Backend Interfaces listener (the data directory's
/// self-signed certificate), sending `authorization`.
fn https(port: u16, dir: &Path, authorization: &str) -> ts002::Ts002 {
    ts002::Ts002::connect(port, dir, Some(authorization.to_owned()), None)
}

/// `method` `path` on an API client: (status, body).
fn api(c: &ts002::Ts002, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let url = format!("{}{}", c.url, path.trim_start_matches('/'));
    let auth = c.authorization.clone().unwrap();
    let mut r = match method {
        "POST" => c
            .agent
            .post(&url)
            .header("Authorization", &auth)
            .send(body.unwrap_or("").as_bytes()),
        "PUT" => c
            .agent
            .put(&url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(body.unwrap_or("").as_bytes()),
        "DELETE" => c.agent.delete(&url).header("Authorization", &auth).call(),
        _ => c.agent.get(&url).header("Authorization", &auth).call(),
    }
    .unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

/// Two `joinserver serve` processes on one database, each with its management API and Backend
/// Interfaces listener: a device imported, claimed and deleted through instance A's API joins
/// (or is unknown) through instance B within a second; an API key revoked at A is refused at B
/// from its next request on; a peer token created by `joinserver peers token --store-url` works
/// at both. The times each change took to reach B are printed.
#[test]
fn changes_through_one_instances_api_are_seen_by_the_other() {
    let pg = testkit::postgres::Postgres::start();
    let url = pg.create_database();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = dir.to_str().unwrap();
    let key = setup(dir, &url, 0);
    // The API takes signed manifests only.
    let signer = SigningKey::from_bytes(&[42; 32]);
    let mut toml =
        std::fs::read_to_string(dir.join(joinserver::peers::CONFIG_FILE)).unwrap_or_default();
    toml.push_str(&format!(
        "\n[api]\ntrusted_manifest_keys = [\"{}\"]\n",
        hex::encode(signer.verifying_key().as_bytes())
    ));
    std::fs::write(dir.join(joinserver::peers::CONFIG_FILE), toml).unwrap();
    let admin_key = cli(&[
        "api-keys",
        "create",
        "--data-dir",
        d,
        "--store-url",
        &url,
        "--role",
        "admin",
        "--name",
        "ops",
    ]);
    // The URL from the environment variable, this time.
    let out = Command::new(env!("CARGO_BIN_EXE_joinserver"))
        .args(["api-keys", "create", "--data-dir", d, "--role", "owner"])
        .args(["--name", "city", "--home-net-id", &format!("{NET_ID:06X}")])
        .env("JOINSERVER_STORE_URL", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let owner_key = String::from_utf8(out.stdout).unwrap();
    let token = peers_token(d, &url, &format!("{NET_ID:06X}"));
    let extra = [
        "--store-url",
        &url,
        "--api-listen",
        "127.0.0.1:0",
        "--bi-listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
    ];
    let (a, b) = (spawn_with(dir, &extra), spawn_with(dir, &extra));
    let (a_api, b_api) = (a.api.unwrap().port(), b.api.unwrap().port());
    let bearer = |k: &str| format!("Bearer {}", k.trim());
    let a_admin = https(a_api, dir, &bearer(&admin_key));
    let a_owner = https(a_api, dir, &bearer(&owner_key));
    let b_owner = https(b_api, dir, &bearer(&owner_key));
    let link_b = Client::new(b.link, key);
    let dev = FIRST + 7;
    let eui = DevEui::new(dev).to_string();
    let mut tid = 100;
    let mut join_at_b = || {
        tid += 1;
        link_b
            .join_ans(tid, dev, &phy(dev, tid as u16))
            .result
            .result_code
    };
    assert_eq!(join_at_b(), ResultCode::UnknownDevEui);

    // Created through A's API: B knows it (unclaimed: no home network, no Success).
    let manifest = format!(
        "dev_eui,join_eui,mac_version,app_key,nwk_key,owner_token\n\
         {dev:016X},{JOIN_EUI:016X},1.0.4,{APP_KEY},,{OWNER}\n"
    );
    let signature = hex::encode(signer.sign(manifest.as_bytes()).to_bytes());
    let mut r = a_admin
        .agent
        .post(&format!("{}api/v1/devices/import", a_admin.url))
        .header("Authorization", &bearer(&admin_key))
        .header("X-Manifest-Signature", &signature)
        .send(manifest.as_bytes())
        .unwrap();
    let body = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status().as_u16(), 201, "{body}");
    let created = until("the import at B", || {
        join_at_b() != ResultCode::UnknownDevEui
    });
    assert_ne!(join_at_b(), ResultCode::Success, "unclaimed");

    // Claimed through A's API: joins through B.
    let claim = format!(r#"{{"owner_token": "{OWNER}", "home_net_id": "{NET_ID:06X}"}}"#);
    let (st, body) = api(
        &a_owner,
        "PUT",
        &format!("/api/v1/devices/{eui}/claim"),
        Some(&claim),
    );
    assert_eq!(st, 200, "{body}");
    let claimed = until("the claim at B", || join_at_b() == ResultCode::Success);
    // B's API shows the device to its owner, claimed.
    let (st, body) = api(&b_owner, "GET", &format!("/api/v1/devices/{eui}"), None);
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(&format!("{NET_ID:06X}")), "{body}");

    // A DevNonce reset through A's API: B accepts the device's DevNonces from the start again.
    let (st, body) = api(
        &a_admin,
        "POST",
        &format!("/api/v1/devices/{eui}/dev-nonce-reset"),
        None,
    );
    assert_eq!(st, 200, "{body}");
    let mut restart = 0u16;
    let reset = until("the DevNonce reset at B", || {
        restart += 1;
        link_b
            .join_ans(5000 + u32::from(restart), dev, &phy(dev, restart))
            .result
            .result_code
            == ResultCode::Success
    });

    // The peer token from the command line works at both listeners.
    for r in [&a, &b] {
        let c = https(r.bi.unwrap().port(), dir, &bearer(&token));
        let body = format!(
            r#"{{"ProtocolVersion":"1.0","SenderID":"{NET_ID:06x}","ReceiverID":"{JOIN_EUI:016x}","TransactionID":7,"MessageType":"HomeNSReq","DevEUI":"{dev:016x}"}}"#
        );
        let ans = c.post(body.as_bytes());
        assert_eq!(ans.result.code, ts002::CsResultCode::Success);
        assert_eq!(
            ans.h_net_id.unwrap().to_uppercase(),
            format!("{NET_ID:06X}")
        );
    }

    // Deleted through A's API: unknown at B.
    let (st, body) = api(&a_admin, "DELETE", &format!("/api/v1/devices/{eui}"), None);
    assert!(st == 200 || st == 204, "{st} {body}");
    let deleted = until("the deletion at B", || {
        join_at_b() == ResultCode::UnknownDevEui
    });

    // An API key revoked at A authenticates nothing at B from the next request on.
    assert_eq!(api(&b_owner, "GET", "/api/v1/me", None).0, 200);
    let id = cli(&[
        "api-keys",
        "list",
        "--data-dir",
        d,
        "--store-url",
        &url,
        "--json",
    ])
    .lines()
    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
    .find(|k| k["name"] == "city")
    .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (st, body) = api(&a_admin, "DELETE", &format!("/api/v1/api-keys/{id}"), None);
    assert!(st == 200 || st == 204, "{st} {body}");
    assert_eq!(api(&b_owner, "GET", "/api/v1/me", None).0, 401);
    eprintln!(
        "seen at the other instance after: import {created:?}, claim {claimed:?}, \
         DevNonce reset {reset:?}, deletion {deleted:?}"
    );
    for t in [created, claimed, reset, deleted] {
        assert!(t < Duration::from_secs(1), "{t:?}");
    }
    // Both instances audited into the one log: the claim made at A is listed by B.
    let b_admin = https(b_api, dir, &bearer(&admin_key));
    let (st, body) = api(
        &b_admin,
        "GET",
        &format!("/api/v1/audit?dev_eui={eui}"),
        None,
    );
    assert_eq!(st, 200, "{body}");
    for action in ["provision", "claim", "deprovision"] {
        assert!(body.contains(&format!("\"{action}\"")), "{action}: {body}");
    }
    // SIGTERM: the instance drains and closes its database connections, and exits cleanly.
    for mut r in [a, b] {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(r.child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        assert!(r.child.wait().unwrap().success());
    }
}

/// An owner token of 32 characters, as a TR005 QR code carries it.
const OWNER: &str = "00112233445566778899AABBCCDDEEFF";

/// `peers add --store-url` while two instances run on the database: the new network server,
/// under its own link key, is answered by both within seconds, without a restart, and its
/// session keys come wrapped under its own network KEK; the database holds its keys only
/// wrapped. `peers token` knows it, and adding it again is refused.
#[test]
fn a_peer_added_at_one_instance_is_served_by_every_instance() {
    const NEW: u32 = 0x77;
    let pg = testkit::postgres::Postgres::start();
    let url = pg.create_database();
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path(), &url, 0);
    let d = tmp.path().to_str().unwrap();
    // Two devices whose home is the new peer's network (a join server refuses a device's join
    // through a network server of another NetID: ActivationDisallowed).
    let manifest = tmp.path().join("home-000077.csv");
    let mut text = String::from("dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id\n");
    for dev in FIRST..FIRST + 2 {
        text.push_str(&format!(
            "{dev:016X},{JOIN_EUI:016X},1.0.4,{APP_KEY},,{NEW:06X}\n"
        ));
    }
    std::fs::write(&manifest, text).unwrap();
    cli(&[
        "devices",
        "import",
        "--data-dir",
        d,
        "--store-url",
        &url,
        manifest.to_str().unwrap(),
    ]);
    let (a, b) = (serve(tmp.path(), &url), serve(tmp.path(), &url));
    let net = format!("{NEW:06X}");
    let added = Instant::now();
    let out = peers_add(d, &url, &net);
    assert!(out.status.success(), "{out:?}");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("apply it within a second"), "{out}");
    let (link_file, kek_file) =
        joinserver::secrets::peer_files(tmp.path(), protocol::ids::NetId::new(NEW).unwrap());
    let key: LinkKey = joinserver::secrets::read_hex_key(&link_file).unwrap();
    let kek = joinserver::secrets::read_kek(&kek_file).unwrap();
    for (i, r) in [&a, &b].into_iter().enumerate() {
        let c = Client::new(r.link, key.clone());
        let dev = FIRST + i as u64;
        let mut tid = 100 * (i as u32 + 1);
        let ans = loop {
            tid += 1;
            let d = datagram(
                &key,
                NEW,
                now_ms(),
                u64::from(tid),
                &join_req_json(tid, NEW, dev, &phy(dev, tid as u16)),
            );
            if let Some(raw) = c.exchange_raw(&d, Duration::from_millis(300)) {
                let (_, body) = link::open(&key, &raw).expect("sealed with the new peer's key");
                break JoinAns::parse(body).unwrap();
            }
            assert!(
                added.elapsed() < Duration::from_secs(10),
                "instance {i} did not take the new peer"
            );
        };
        assert_eq!(ans.result.result_code, ResultCode::Success, "instance {i}");
        match ans.network_keys.expect("network keys") {
            protocol::ts002::NetworkKeys::V1_0 { nwk_s_key } => {
                assert_eq!(nwk_s_key.kek_label, kek.label, "its own network KEK");
            }
            other => panic!("a 1.0.4 device: {other:?}"),
        }
    }
    eprintln!(
        "new peer served by both instances {:?} after peers add",
        added.elapsed()
    );
    // Only wrapped in the database: neither key's hex, nor its bytes, appears in the table.
    let mut store = PgStore::connect(&url, 2).unwrap();
    let stored = store.link_peers().unwrap();
    let row = stored.iter().find(|p| p.net_id == NEW).expect("stored");
    assert_eq!(row.link_key.len(), 24);
    assert!(!row
        .link_key
        .windows(16)
        .any(|w| w == key.expose().as_slice()));
    assert!(!row
        .ns_kek
        .windows(16)
        .any(|w| w == kek.key.expose().as_slice()));
    // A token for it; the same NetID again is refused.
    let token = peers_token(d, &url, &net);
    assert!(!token.trim().is_empty());
    let again = peers_add(d, &url, &net);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already a peer"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
