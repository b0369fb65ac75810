//! What a group commit of the counter journal costs, in a segment that grows with each commit
//! (the first one a journal opens) against one written over a spare of zeros prepared ahead
//! (every later one): docs/benchmarks.md, "Journal segments written over zeros".
//!
//! `cargo run --release -p netserver --example journal_commit -- DIR [ROUNDS]`: in DIR (emptied
//! first), commits of 100 counter records (3,608-byte frames) fill two 16 MiB segments; prints,
//! for the commits of each, the wall time per commit (median and 99th percentile) and the
//! process's CPU per commit (`/proc/self/stat`, 10 ms ticks over about 4,500 commits).

use std::path::Path;
use std::time::Instant;

use netserver::core::device::FrameCounters;
use netserver::store::counters::{CounterBackend, CounterRecord};
use netserver::store::journal::CounterJournal;
use protocol::ids::{DevAddr, DevEui};

/// The process's CPU time so far (user and system), µs.
fn cpu_us() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("reading /proc/self/stat");
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) * 10_000.0
}

/// Median and 99th percentile of `v`.
fn quantiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: journal_commit DIR [ROUNDS]");
    let rounds: usize = args.next().map_or(1, |r| r.parse().expect("ROUNDS"));
    let batch: Vec<(DevEui, CounterRecord)> = (0..100u64)
        .map(|d| {
            let record = CounterRecord {
                dev_addr: DevAddr::new(d as u32),
                dev_nonce: 1,
                created_at_ms: 1_700_000_000_000,
                counters: FrameCounters::default(),
                rekey_confirmed: false,
                pending: None,
            };
            (DevEui::new(d), record)
        })
        .collect();
    const SEGMENT: u64 = CounterJournal::SEGMENT_BYTES;
    let per_segment = (SEGMENT / (8 + 100 * 36)) as usize;
    // The commits measured in each segment: past its first hundred, before its last ten.
    let (grow, spare) = (
        100..per_segment - 10,
        per_segment + 100..2 * per_segment - 10,
    );
    for _ in 0..rounds {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating DIR");
        let j = CounterJournal::open(Path::new(&dir)).expect("opening the journal");
        let (mut wall, mut cpu) = (Vec::new(), [0.0; 4]);
        for i in 0..2 * per_segment {
            for (k, at) in [grow.start, grow.end, spare.start, spare.end]
                .iter()
                .enumerate()
            {
                if i == *at {
                    cpu[k] = cpu_us();
                }
            }
            let t = Instant::now();
            j.commit(&batch).expect("commit");
            wall.push(t.elapsed().as_secs_f64() * 1e6);
        }
        for (name, range, spent) in [
            ("growing", grow.clone(), cpu[1] - cpu[0]),
            ("spare", spare.clone(), cpu[3] - cpu[2]),
        ] {
            let n = range.len();
            let (p50, p99) = quantiles(wall[range].to_vec());
            println!(
                "{name:8} {n} commits: wall p50 {p50:.0} µs, p99 {p99:.0} µs; CPU {:.1} µs a commit",
                spent / n as f64
            );
        }
    }
}
