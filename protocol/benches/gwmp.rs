//! GWMP codec throughput. Goal: at least 1,000,000 PUSH_DATA parses per second on one core for a
//! realistic single-rxpk datagram of about 250 bytes, base64 decode of `data` included.
//!
//! `cargo bench -p protocol --bench gwmp -- --warm-up-time 1 --measurement-time 3`
//!
//! The `gwmp/*` results are wall-clock time, as criterion measures by default; on a machine
//! shared with other builds they include the time the thread waited for a core. The
//! `gwmp_cpu/*` results repeat the parse measured in CPU time of the benchmarking thread
//! (Linux `/proc/thread-self/schedstat`, updated at scheduler ticks, so each sample is long
//! enough for that granularity), which is what "per second on one core" means.

use std::hint::black_box;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use protocol::gwmp::Packet;

/// A PUSH_DATA as an EU868 lora_pkt_fwd with GPS sends it for a 23-byte Join-request.
fn push_data() -> Vec<u8> {
    let json = concat!(
        r#"{"rxpk":[{"tmst":3512348611,"time":"2024-03-31T16:21:17.528002Z","tmms":1395937295528,"#,
        r#""chan":2,"rfch":0,"freq":868.500000,"stat":1,"modu":"LORA","datr":"SF7BW125","#,
        r#""codr":"4/5","lsnr":9.5,"rssi":-57,"size":23,"data":"AAEAAAAAAAAAAQAAAAAAAABmRuBT6Ic="}]}"#
    );
    let mut d = vec![2, 0x5e, 0x52, 0, 0xaa, 0x55, 0x5a, 0, 0, 0, 0, 1];
    d.extend_from_slice(json.as_bytes());
    d
}

fn bench(c: &mut Criterion) {
    let dg = push_data();
    // Fail loudly rather than benchmark the error path.
    match Packet::parse(&dg) {
        Ok(Packet::PushData(p)) if p.rxpk.len() == 1 && p.rxpk[0].data.len() == 23 => {}
        other => panic!("benchmark datagram does not parse as expected: {other:?}"),
    }
    let mut g = c.benchmark_group("gwmp");
    g.throughput(Throughput::Elements(1));
    g.bench_function(format!("parse_push_data_{}B", dg.len()), |b| {
        b.iter(|| Packet::parse(black_box(&dg)))
    });
    let pkt = Packet::parse(&dg).ok();
    g.bench_function("serialize_push_data", |b| {
        b.iter(|| black_box(&pkt).as_ref().map(Packet::to_bytes))
    });
    g.finish();
}

/// CPU time consumed by the calling thread, in nanoseconds.
struct ThreadCpuTime;

static WALL: WallTime = WallTime;

fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Nanoseconds, like wall time.
        WALL.formatter()
    }
}

fn cpu(c: &mut Criterion<ThreadCpuTime>) {
    let dg = push_data();
    let mut g = c.benchmark_group("gwmp_cpu");
    g.throughput(Throughput::Elements(1));
    // Equal, long samples: the CPU clock advances at scheduler ticks only.
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function(format!("parse_push_data_{}B", dg.len()), |b| {
        b.iter(|| Packet::parse(black_box(&dg)))
    });
    g.finish();
}

criterion_group! {
    name = cpu_time;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = cpu
}
criterion_group!(benches, bench);
criterion_main!(benches, floors, cpu_time);

/// The cost of merely checking the body's JSON syntax with serde_json, for comparison.
fn floor(c: &mut Criterion) {
    let dg = push_data();
    let body = dg[12..].to_vec();
    c.bench_function("gwmp/floor_serde_json_syntax_only", |b| {
        b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&body)).is_ok())
    });
}

criterion_group!(floors, floor);
