//! The memory bound of the session table (issue 4: ≤ 512 bytes per session), measured with a
//! counting global allocator.
//!
//! What is counted, per session: the heap the server keeps for it once it is restored or
//! joined — its `Arc<Session>`, its entries in the DevEUI and DevAddr indexes of
//! [`Sessions`] and in the DevAddr allocator, including the hash tables' spare capacity — and
//! what its uplinks add when run through the core steps of the data path against the table
//! (candidates, per-frame key expansion, MIC and decryption, counters, MAC commands, the 1.1
//! RekeyInd, the ADR history). Each live allocation is charged 16 bytes on top of its size
//! for glibc's chunk header and rounding.
//!
//! Not counted: the shell's bounded parts — redb's page caches (`RedbBackend::CACHE_BYTES`,
//! `CounterLog::CACHE_BYTES`), the de-duplication table (bounded by its retention), the
//! emitter's queue — and allocator fragmentation; the RSS figures of `docs/benchmarks.md`
//! include all of them.
//!
//! Runs as its own test binary: the global allocator counts every thread of the process.

use std::alloc::System;

use netserver::core::adr::{self, AdrConfig, LinkSettings};
use netserver::core::data::{self as steps, Auth, Candidate};
use netserver::core::devaddr::AddrAllocator;
use netserver::core::device::FrameCounters;
use netserver::keys::{LabeledKek, NetworkKeys};
use netserver::ops::config::Config;
use netserver::store::session::Session;
use netserver::store::stored::{RxParams, StoredSession, STORED_SESSION_VERSION};
use netserver::store::table::Sessions;
use protocol::data::{
    FramePayload, FrmPayload, NetworkSessionKeys, SessionCrypto, Uplink, UplinkMicParams,
};
use protocol::fcnt::FCntVerdict;
use protocol::ids::{DevAddr, DevEui, DevNonce, JoinEui};
use protocol::keys::{AppSKey, FNwkSIntKey, Kek, NwkSEncKey, NwkSKey, SNwkSIntKey};
use protocol::keywrap::KeyEnvelope;
use protocol::version::MacVersion;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Sessions in the table.
const SESSIONS: u32 = 10_000;
/// Of which this many send uplinks.
const ACTIVE: u32 = 2_000;
/// Uplinks per active session.
const UPLINKS: u32 = 3;
/// glibc's per-chunk cost charged to every live allocation (header and rounding).
const CHUNK_OVERHEAD: i64 = 16;

/// Heap bytes an idle session may hold (table entries and the session record).
const IDLE_BOUND: i64 = 384;
/// Heap bytes an active session may hold more than an idle one.
const ACTIVE_BOUND: i64 = 64;

const NS_KEK: [u8; 16] = [0x11; 16];
const AS_KEK: [u8; 16] = [0x22; 16];

fn kek(label: &str, k: [u8; 16]) -> LabeledKek {
    LabeledKek {
        label: label.into(),
        key: Kek::new(k),
    }
}

fn dev_addr(i: u32) -> DevAddr {
    DevAddr::new(0x2600_0000 | i)
}

/// Even devices are LoRaWAN 1.0.3, odd ones 1.1, each with its own keys.
fn network_keys(i: u32) -> NetworkSessionKeys {
    let b = |x: u32| -> [u8; 16] {
        let mut k = [x as u8; 16];
        k[..4].copy_from_slice(&i.to_le_bytes());
        k
    };
    if i % 2 == 0 {
        NetworkSessionKeys::V1_0 {
            nwk_s_key: NwkSKey::new(b(1)),
        }
    } else {
        NetworkSessionKeys::V1_1 {
            f_nwk_s_int_key: FNwkSIntKey::new(b(2)),
            s_nwk_s_int_key: SNwkSIntKey::new(b(3)),
            nwk_s_enc_key: NwkSEncKey::new(b(4)),
        }
    }
}

fn app_key(i: u32) -> AppSKey {
    let mut k = [0xA5; 16];
    k[..4].copy_from_slice(&i.to_le_bytes());
    AppSKey::new(k)
}

fn stored(i: u32, ns_kek: &LabeledKek) -> (StoredSession, NetworkKeys) {
    let keys = match network_keys(i) {
        NetworkSessionKeys::V1_0 { nwk_s_key } => NetworkKeys::V1_0(nwk_s_key),
        NetworkSessionKeys::V1_1 {
            f_nwk_s_int_key,
            s_nwk_s_int_key,
            nwk_s_enc_key,
        } => NetworkKeys::V1_1 {
            f_nwk_s_int_key,
            s_nwk_s_int_key,
            nwk_s_enc_key,
        },
    };
    let s = StoredSession {
        version: STORED_SESSION_VERSION,
        dev_eui: DevEui::new(0x0100_0000_0000_0000 | u64::from(i)),
        join_eui: JoinEui::new(0x70B3_D57E_D000_0001),
        dev_addr: dev_addr(i),
        mac_version: Some(if i % 2 == 0 {
            MacVersion::V1_0_3
        } else {
            MacVersion::V1_1
        }),
        dev_nonce: DevNonce(1),
        network_keys: keys.seal(ns_kek),
        app_s_key: Some(KeyEnvelope::seal("as-1", Some(&Kek::new(AS_KEK)), &app_key(i)).unwrap()),
        session_key_id: None,
        rx: RxParams::region_default(protocol::region::Region::Eu868),
        counters: FrameCounters::default(),
        created_at_ms: 1_700_000_000_000,
        lifetime_s: None,
        last_rj_count0: None,
        owner: None,
    };
    (s, keys)
}

/// An unconfirmed uplink on FPort 1 (1.1 devices carry the RekeyInd that confirms the session
/// in FOpts).
fn uplink(i: u32, fcnt: u32) -> Vec<u8> {
    let crypto = SessionCrypto::new(&network_keys(i), Some(&app_key(i)));
    let fopts = if i % 2 == 0 { vec![] } else { vec![0x0B, 0x01] };
    Uplink {
        confirmed: false,
        dev_addr: dev_addr(i),
        fcnt,
        adr: true,
        adr_ack_req: false,
        ack: false,
        class_b: false,
        fopts,
        payload: FramePayload::Application {
            f_port: 1,
            payload: FrmPayload(b"meter:012345".to_vec()),
        },
    }
    .build(
        &crypto,
        &UplinkMicParams {
            conf_fcnt: 0,
            tx_dr: 5,
            tx_ch: 1,
        },
    )
    .unwrap()
}

/// Net heap bytes held since `region` started, each live allocation charged its chunk overhead.
fn held(region: &Region<'_, System>) -> i64 {
    let c = region.change();
    let bytes = c.bytes_allocated as i64 - c.bytes_deallocated as i64 + c.bytes_reallocated as i64;
    let live = c.allocations as i64 - c.deallocations as i64;
    bytes + live * CHUNK_OVERHEAD
}

/// Runs `frames` through the core steps of the data path, against the session table as
/// `data_path::process` does (candidates by DevAddr, key schedules expanded per frame,
/// authentication and counters under the session's lock, MAC commands, the 1.1 RekeyInd,
/// the ADR history and decision); the heap held since.
fn uplinks(sessions: &Sessions, frames: &[Vec<u8>]) -> i64 {
    let region = Region::new(GLOBAL);
    for phy in frames {
        let frame = steps::parse(phy).unwrap();
        let candidates = sessions.candidates(frame.dev_addr());
        let session = &candidates[0];
        let crypto = session.crypto();
        let mut st = session.live.lock();
        let cand = Candidate {
            version: session.mac_version(),
            last_accepted: st.last_accepted(),
            crypto: &crypto,
            mic_params: UplinkMicParams {
                conf_fcnt: 0,
                tx_dr: 5,
                tx_ch: steps::tx_channel(
                    &protocol::region::ChannelPlan::new(protocol::region::Region::Eu868),
                    868_300_000,
                ),
            },
        };
        let Auth::Accepted {
            verdict: FCntVerdict::New { fcnt, .. },
            uplink,
            ..
        } = steps::authenticate(&frame, &[cand])
        else {
            panic!("uplink refused");
        };
        assert!(
            matches!(uplink.payload, FramePayload::Application { .. }),
            "decrypted"
        );
        let cmds = steps::mac_commands(&uplink).unwrap();
        let is_1_1 = session.mac_version().is_1_1();
        steps::rekey_gate(is_1_1, st.rekey_confirmed, &cmds).unwrap();
        st.rekey_confirmed |= is_1_1;
        st.counters.f_cnt_up = fcnt + 1;
        st.snr.push(7.5);
        let cur = LinkSettings {
            data_rate: 5,
            tx_power: st.tx_power,
        };
        st.adr_requested = adr::decide(
            &AdrConfig::default(),
            protocol::region::Region::Eu868,
            cur,
            &st.snr,
        );
        if sessions.is_current(session) {
            sessions.drop_previous(session.dev_eui);
        }
    }
    held(&region)
}

#[test]
fn heap_per_session_is_bounded() {
    let ns_kek = kek("ns-1", NS_KEK);
    let as_kek = kek("as-1", AS_KEK);
    let sessions = Sessions::new();
    let allocator = AddrAllocator::new(Config::default().validate().unwrap());
    // Frames are built before counting: they are the gateways' side.
    let frames: Vec<Vec<u8>> = (0..ACTIVE)
        .flat_map(|i| (0..UPLINKS).map(move |f| uplink(i, f)))
        .chain((0..ACTIVE).flat_map(|i| (UPLINKS..2 * UPLINKS).map(move |f| uplink(i, f))))
        .collect();

    // 1. The table, as a restart (or as many joins) leaves it.
    let region = Region::new(GLOBAL);
    for i in 0..SESSIONS {
        let (s, keys) = stored(i, &ns_kek);
        allocator.restore(s.dev_addr, s.dev_eui);
        let session = Session::new(&s, keys, sessions.labels(), Some(&as_kek)).unwrap();
        sessions.insert(session);
    }
    let idle = held(&region);
    assert_eq!(sessions.len(), SESSIONS as usize);

    // 2. Uplinks through the core for some of them, in two rounds.
    let split = (ACTIVE * UPLINKS) as usize;
    let first_round = uplinks(&sessions, &frames[..split]);
    let active = uplinks(&sessions, &frames[split..]);
    let idle_per = idle / i64::from(SESSIONS);
    let first_per = first_round / i64::from(ACTIVE);
    let active_per = active / i64::from(ACTIVE);
    println!(
        "heap per session: {idle_per} bytes idle (1.0 and 1.1, {SESSIONS} sessions); \
         {first_per} bytes more after the first {UPLINKS} uplinks of {ACTIVE} sessions, \
         {active_per} bytes more after {UPLINKS} more; \
         size_of::<Session>() = {}",
        size_of::<Session>()
    );
    assert!(idle_per <= IDLE_BOUND, "{idle_per} bytes per idle session");
    assert!(
        first_per <= ACTIVE_BOUND,
        "{first_per} bytes more per active session"
    );
    assert!(
        active_per <= ACTIVE_BOUND,
        "{active_per} bytes more per active session"
    );
    assert!(
        idle_per + first_per + active_per <= 512,
        "{} bytes per active session",
        idle_per + first_per + active_per
    );
}
