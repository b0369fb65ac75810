//! GWMP codec throughput. Goal: at least 1,000,000 PUSH_DATA parses per second on one core for a
//! realistic single-rxpk datagram of about 250 bytes, base64 decode of `data` included.
//!
//! `cargo bench -p protocol --bench gwmp -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
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

criterion_group!(benches, bench);
criterion_main!(benches, floors);

fn floor(c: &mut Criterion) {
    let dg = push_data();
    let body = dg[12..].to_vec();
    c.bench_function("floor_json_ignored_any", |b| {
        b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&body)).is_ok())
    });
    c.bench_function("floor_json_value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).is_ok())
    });
}
criterion_group!(floors, floor);
