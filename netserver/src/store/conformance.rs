//! One behavioural suite for every store backend ([`SessionBackend`] and [`CounterBackend`]):
//! the embedded redb files and PostgreSQL (a real PostgreSQL 15, `testkit::postgres`), then
//! what only a shared store does (several writers on one database).

use std::sync::{Arc, Barrier, OnceLock};

use protocol::ids::{DevAddr, DevEui};
use r2d2_postgres::postgres::{self, NoTls};

use crate::core::device::FrameCounters;
use crate::store::backend::{SessionBackend, WriteOp};
use crate::store::copy::{copy, inventory, CopyError};
use crate::store::counters::{restore_counters, CounterBackend, CounterRecord};
use crate::store::journal::CounterJournal;
use crate::store::pg::{PgStore, SESSIONS_CHANNEL};
use crate::store::session_journal::SessionJournal;
use crate::store::stored::tests::stored;
use crate::store::stored::StoredSession;

/// Opens the backends of one store; called again, it opens the same store anew (a restart).
trait Fixture {
    fn open(&self) -> (Box<dyn SessionBackend>, Box<dyn CounterBackend>);
}

/// The embedded store: redb sessions and counters, their journals with segments of this many
/// bytes.
struct Redb(tempfile::TempDir, u64);

impl Fixture for Redb {
    fn open(&self) -> (Box<dyn SessionBackend>, Box<dyn CounterBackend>) {
        (
            Box::new(SessionJournal::open_with(self.0.path(), self.1).unwrap()),
            Box::new(CounterJournal::open_with(self.0.path(), self.1).unwrap()),
        )
    }
}

struct Pg(String);

impl Fixture for Pg {
    fn open(&self) -> (Box<dyn SessionBackend>, Box<dyn CounterBackend>) {
        let pg = pg_store(&self.0);
        (Box::new(pg.clone()), Box::new(pg))
    }
}

/// One PostgreSQL server for the whole test binary; each test gets a fresh database.
fn server() -> &'static testkit::postgres::Postgres {
    static PG: OnceLock<testkit::postgres::Postgres> = OnceLock::new();
    PG.get_or_init(testkit::postgres::Postgres::start)
}

fn pg_store(url: &str) -> PgStore {
    let pg = PgStore::connect(url, None, 4).unwrap();
    pg.migrate().unwrap();
    pg
}

fn fixtures() -> Vec<(&'static str, Box<dyn Fixture>)> {
    vec![
        (
            "redb",
            Box::new(Redb(
                tempfile::tempdir().unwrap(),
                CounterJournal::SEGMENT_BYTES,
            )),
        ),
        // Segments of one or two frames: every commit checkpoints.
        (
            "redb, small journal segments",
            Box::new(Redb(tempfile::tempdir().unwrap(), 64)),
        ),
        ("postgres", Box::new(Pg(server().create_database()))),
    ]
}

fn record(s: &StoredSession, f_cnt_up: u32, n_f_cnt_down: u32) -> CounterRecord {
    CounterRecord {
        counters: FrameCounters {
            f_cnt_up,
            n_f_cnt_down,
            a_f_cnt_down: 0,
        },
        ..CounterRecord::of_stored(s)
    }
}

/// Writes a session through the PostgreSQL store's session seam.
fn put(pg: &PgStore, s: &StoredSession) {
    SessionBackend::commit(&mut pg.clone(), &[WriteOp::Put(Box::new(s.clone()))]).unwrap();
}

fn sorted(mut v: Vec<StoredSession>) -> Vec<StoredSession> {
    v.sort_by_key(|s| s.dev_eui);
    v
}

#[test]
fn sessions_are_written_replaced_and_deleted_atomically() {
    for (name, f) in fixtures() {
        let (mut s, _) = f.open();
        assert!(s.load_all().unwrap().is_empty(), "{name}");
        assert!(s.load_previous().unwrap().is_empty(), "{name}");
        let (a, mut b, c) = (stored(1, 0x0100_0001), stored(2, 0x0100_0002), stored(3, 3));
        // The device's owner (the join server's `Owner`) is kept with its session.
        b.owner = Some("acme".into());
        let mut a2 = a.clone();
        a2.dev_addr = DevAddr::new(0x0100_00AA);
        a2.created_at_ms += 1;
        s.commit(&[
            WriteOp::Put(Box::new(a.clone())),
            WriteOp::Put(Box::new(b.clone())),
            WriteOp::Put(Box::new(c.clone())),
            // Later writes of a device in one batch win.
            WriteOp::Put(Box::new(a2.clone())),
            WriteOp::Delete(c.dev_eui),
            WriteOp::PutPrevious(Box::new(a.clone())),
        ])
        .unwrap();
        drop(s);
        let (mut s, _) = f.open();
        assert_eq!(
            sorted(s.load_all().unwrap()),
            vec![a2.clone(), b.clone()],
            "{name}"
        );
        assert_eq!(s.load_previous().unwrap(), vec![a.clone()], "{name}");
        s.commit(&[
            WriteOp::DeletePrevious(a.dev_eui),
            WriteOp::Delete(b.dev_eui),
        ])
        .unwrap();
        assert_eq!(s.load_all().unwrap(), vec![a2], "{name}");
        assert!(s.load_previous().unwrap().is_empty(), "{name}");
    }
}

#[test]
fn counters_persist_and_apply_only_to_their_session() {
    for (name, f) in fixtures() {
        let (mut s, c) = f.open();
        let dev = stored(7, 0x0100_0007);
        s.commit(&[WriteOp::Put(Box::new(dev.clone()))]).unwrap();
        let verdicts = c
            .commit_checked(&[
                (dev.dev_eui, record(&dev, 1, 0)),
                (dev.dev_eui, record(&dev, 2, 1)),
                (dev.dev_eui, record(&dev, 5, 1)),
            ])
            .unwrap();
        assert!(verdicts.iter().all(|v| v.uplink), "{name}: {verdicts:?}");
        drop((s, c));
        let (_, c) = f.open();
        let records = c.load().unwrap();
        assert_eq!(records[&dev.dev_eui], record(&dev, 5, 1), "{name}");
        let mut restored = dev.clone();
        restore_counters(&records, &mut restored);
        assert_eq!(restored.counters.f_cnt_up, 5, "{name}");
        // A new join of the device (another DevNonce) starts from its own counters.
        let mut next = dev.clone();
        next.dev_nonce.0 += 1;
        restore_counters(&records, &mut next);
        assert_eq!(next.counters, FrameCounters::default(), "{name}");
    }
}

#[test]
fn copy_to_postgres_is_verified_by_counts_and_checksum() {
    let src = Redb(tempfile::tempdir().unwrap(), CounterJournal::SEGMENT_BYTES);
    let (mut s, c) = src.open();
    let mut ops = Vec::new();
    for i in 0..300u64 {
        ops.push(WriteOp::Put(Box::new(stored(i, 0x0100_0000 + i as u32))));
    }
    ops.push(WriteOp::PutPrevious(Box::new(stored(5, 0x0100_FFFF))));
    s.commit(&ops).unwrap();
    let records: Vec<_> = (0..100u64)
        .map(|i| {
            let st = stored(i, 0x0100_0000 + i as u32);
            (st.dev_eui, record(&st, i as u32 + 1, 0))
        })
        .collect();
    c.commit(&records).unwrap();
    let source = inventory(s.as_mut(), c.as_ref()).unwrap();
    assert_eq!((source.sessions, source.previous), (300, 1));
    assert_eq!(source.uplinks, (1..=100).sum::<u64>());

    let target_url = server().create_database();
    let target = pg_store(&target_url);
    let copied = copy(s.as_mut(), c.as_ref(), &target).unwrap();
    assert_eq!(copied, source);
    // Read back through fresh connections: the same counts and sum.
    let (mut ts, tc) = Pg(target_url).open();
    assert_eq!(inventory(ts.as_mut(), tc.as_ref()).unwrap(), source);
    // A second copy into the now non-empty target is refused.
    assert!(matches!(
        copy(s.as_mut(), c.as_ref(), &target),
        Err(CopyError::NotEmpty(_))
    ));
    // A changed counter changes the sum.
    target
        .put_counters(&[(DevEui::new(3), record(&stored(3, 0x0100_0003), 99, 0))])
        .unwrap();
    assert_ne!(inventory(ts.as_mut(), tc.as_ref()).unwrap(), source);
}

/// Two instances (two pools on one database) commit the same frames: each is accepted once.
#[test]
fn shared_counters_accept_each_frame_once_across_instances() {
    let url = server().create_database();
    let (a, b) = (pg_store(&url), pg_store(&url));
    let dev = stored(9, 0x0100_0009);
    put(&a, &dev);
    // Instance A delivers frames 0..=4 (next FCntUp 5).
    let v = a
        .commit_checked(&[(dev.dev_eui, record(&dev, 5, 0))])
        .unwrap();
    assert!(v[0].uplink);
    // B heard frame 4 too, and a replay of frame 2: both refused, and B learns the counters.
    let v = b
        .commit_checked(&[
            (dev.dev_eui, record(&dev, 5, 0)),
            (dev.dev_eui, record(&dev, 3, 0)),
        ])
        .unwrap();
    assert!(!v[0].uplink && !v[1].uplink, "{v:?}");
    assert_eq!(v[1].committed, Some(record(&dev, 5, 0)));
    // Frame 5 through B: accepted; with a downlink whose FCntDown A had not used.
    let v = b
        .commit_checked(&[(dev.dev_eui, record(&dev, 6, 1))])
        .unwrap();
    assert!(v[0].uplink && v[0].downlink, "{v:?}");
    // A, behind on the downlink counter, answers frame 6 with FCntDown 0 again: the uplink is
    // new, the downlink may not leave.
    let v = a
        .commit_checked(&[(dev.dev_eui, record(&dev, 7, 1))])
        .unwrap();
    assert!(v[0].uplink && !v[0].downlink, "{v:?}");
    assert_eq!(a.load().unwrap()[&dev.dev_eui], record(&dev, 7, 1));

    // Both instances commit the same 200 frames at the same moment: 200 accepted in all.
    let barrier = Arc::new(Barrier::new(2));
    let run = |pg: PgStore| {
        let barrier = Arc::clone(&barrier);
        let dev = dev.clone();
        std::thread::spawn(move || {
            barrier.wait();
            let mut accepted = Vec::new();
            for f in 8..208u32 {
                let v = pg
                    .commit_checked(&[(dev.dev_eui, record(&dev, f, 1))])
                    .unwrap();
                if v[0].uplink {
                    accepted.push(f);
                }
            }
            accepted
        })
    };
    let (ta, tb) = (run(a.clone()), run(b.clone()));
    let (mut xa, xb) = (ta.join().unwrap(), tb.join().unwrap());
    xa.extend(&xb);
    xa.sort_unstable();
    // Each frame at most once; and none lost, since each instance offers every frame in order.
    assert_eq!(xa, (8..208).collect::<Vec<_>>());
}

/// A session write resets the device's counter row to the new session and notifies the
/// other instances with its DevEUI.
#[test]
fn session_writes_notify_and_reset_the_counter_row() {
    let url = server().create_database();
    let pg = pg_store(&url);
    let mut listener = postgres::Client::connect(&url, NoTls).unwrap();
    listener
        .batch_execute(&format!("LISTEN {SESSIONS_CHANNEL}"))
        .unwrap();
    let old = stored(0x70B3_D57E_D000_0001, 0x0100_0001);
    put(&pg, &old);
    pg.commit_checked(&[(old.dev_eui, record(&old, 40, 3))])
        .unwrap();
    let mut new = old.clone();
    new.dev_nonce.0 += 1;
    new.created_at_ms += 10;
    new.dev_addr = DevAddr::new(0x0100_0002);
    put(&pg, &new);
    assert_eq!(pg.load().unwrap()[&new.dev_eui], record(&new, 0, 0));
    // An uplink of the replaced session (another instance still serves it) is accepted and
    // leaves the new session's row alone.
    let v = pg
        .commit_checked(&[(old.dev_eui, record(&old, 41, 3))])
        .unwrap();
    assert!(v[0].uplink);
    assert_eq!(pg.load().unwrap()[&new.dev_eui], record(&new, 0, 0));
    use postgres::fallible_iterator::FallibleIterator;
    let mut notes = listener.notifications();
    let got: Vec<String> = notes
        .timeout_iter(std::time::Duration::from_secs(5))
        .take(2)
        .map(|n| Ok(n.payload().to_owned()))
        .collect()
        .unwrap();
    let own = format!("{:016X}:70B3D57ED0000001", pg.writer());
    assert_eq!(got, vec![own; 2]);
}

/// The database goes away: commits fail (the caller counts and refuses), and work again once
/// it is back, through the same pool.
#[test]
fn a_database_that_goes_away_fails_commits_until_it_returns() {
    let mut server = testkit::postgres::Postgres::start();
    let url = server.create_database();
    let pg = pg_store(&url);
    let dev = stored(11, 0x0100_000B);
    put(&pg, &dev);
    assert!(
        pg.commit_checked(&[(dev.dev_eui, record(&dev, 1, 0))])
            .unwrap()[0]
            .uplink
    );
    server.kill();
    let e = pg
        .commit_checked(&[(dev.dev_eui, record(&dev, 2, 0))])
        .unwrap_err();
    assert_eq!(e.kind(), "backend");
    server.start_again();
    let mut ok = None;
    for _ in 0..50 {
        match pg.commit_checked(&[(dev.dev_eui, record(&dev, 2, 0))]) {
            Ok(v) => {
                ok = Some(v);
                break;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
    let v = ok.expect("commits work again once the database is back");
    assert!(v[0].uplink);
    assert_eq!(pg.load().unwrap()[&dev.dev_eui].counters.f_cnt_up, 2);
}
