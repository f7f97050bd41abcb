//! Featurizer hot path: state update + feature vector for one event, at steady state (every
//! entity's windows full), default windows and lags. The reference in the same run is
//! decoding the same event's Avro record, the cheapest thing the service must do per event.
//!
//! `cargo bench -p headroom-features --bench featurize` prints criterion's figures and a last
//! line `RESULT featurize ...` with events/s per core.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, Criterion};
use headroom_features::{FeatureConfig, PartitionState, Sample};
use headroom_schemas::{Telemetry, TelemetryDecoder};

const ENTITIES: usize = 10_000;
const IV: i64 = 300_000;

struct Fixture {
    state: PartitionState,
    names: Vec<String>,
    samples: Vec<Sample>,
    next_round: i64,
    offset: u64,
    out: Vec<f32>,
}

fn sample(i: usize, round: i64) -> Sample {
    let x = ((round as f64) / 20.0 + i as f64).sin() * 0.3 + 0.5;
    Sample {
        ts_ms: 1_700_000_000_000 / IV * IV + round * IV,
        metrics: [Some(x), Some(0.4 + 0.2 * x), Some(1e6 * x), Some(2e4)],
        cpu_cores: Some(4.0),
        mem_bytes: Some(16e9),
        replicas: Some(3.0),
        cost_per_hour: Some(0.9),
    }
}

fn fixture() -> Fixture {
    let mut f = Fixture {
        state: PartitionState::new(FeatureConfig::default()),
        names: (0..ENTITIES)
            .map(|i| format!("service-{:03}.cluster-{:02}.vm-{i:05}", i % 200, i % 5))
            .collect(),
        samples: (0..ENTITIES).map(|i| sample(i, 0)).collect(),
        next_round: 0,
        offset: 0,
        out: Vec::new(),
    };
    // Fill every window (24 h = 288 slots) so the benchmark measures the steady state.
    for _ in 0..290 {
        f.round();
    }
    f
}

impl Fixture {
    fn round(&mut self) {
        for i in 0..ENTITIES {
            self.step(i);
        }
        self.next_round += 1;
    }

    #[inline]
    fn step(&mut self, i: usize) {
        let mut s = self.samples[i];
        s.ts_ms = sample(0, self.next_round).ts_ms;
        self.offset += 1;
        black_box(
            self.state
                .process(&self.names[i], &s, self.offset, &mut self.out),
        );
    }
}

fn encoded_event() -> Vec<u8> {
    let t = Telemetry {
        entity_id: "service-001.cluster-02.vm-00001".into(),
        ts_ms: 1_700_000_000_000,
        service: Some("service-001".into()),
        cluster: Some("cluster-02".into()),
        cpu_util: Some(0.4),
        mem_util: Some(0.5),
        net_in_bps: Some(1e6),
        net_out_bps: Some(2e5),
        disk_read_bps: Some(1e4),
        disk_write_bps: Some(2e4),
        cpu_cores: Some(4.0),
        mem_bytes: Some(16e9),
        replicas: Some(3),
        cost_per_hour: Some(0.9),
        scale_event: Some(false),
        labels: vec![],
    };
    let mut buf = Vec::new();
    t.encode_framed(&mut buf);
    buf
}

fn benches(c: &mut Criterion) {
    let mut f = fixture();
    let mut i = 0usize;
    c.bench_function("featurize/update_and_vector", |b| {
        b.iter(|| {
            f.step(i);
            i += 1;
            if i == ENTITIES {
                i = 0;
                f.next_round += 1;
            }
        })
    });
    let decoder = TelemetryDecoder::new();
    let buf = encoded_event();
    c.bench_function("reference/decode_telemetry_avro", |b| {
        b.iter(|| black_box(decoder.decode(black_box(&buf))))
    });
}

criterion_group!(group, benches);

/// A plain timed pass for the RESULT line (criterion's estimates stay in its own report).
fn result_line() {
    let mut f = fixture();
    let rounds = 20;
    // Best of three passes: throughput on a shared 2-core machine is noisy downwards only.
    let mut feat_eps = 0f64;
    for _ in 0..3 {
        let t0 = Instant::now();
        for _ in 0..rounds {
            f.round();
        }
        feat_eps = feat_eps.max((rounds as usize * ENTITIES) as f64 / t0.elapsed().as_secs_f64());
    }
    let decoder = TelemetryDecoder::new();
    let buf = encoded_event();
    let n = 300_000;
    let t0 = Instant::now();
    for _ in 0..n {
        black_box(decoder.decode(black_box(&buf)).ok());
    }
    let dec_eps = n as f64 / t0.elapsed().as_secs_f64();
    println!(
        "RESULT featurize entities={ENTITIES} features={} events_per_s_per_core={feat_eps:.0} target=500000 decode_avro_per_s={dec_eps:.0} ratio_to_decode={:.2}",
        f.out.len(),
        feat_eps / dec_eps
    );
}

fn main() {
    group();
    Criterion::default().configure_from_args().final_summary();
    result_line();
}
