//! The feature-distribution windows' hot path with and without their changelog: every vector
//! binned into its partition's share of the open window, and, with the changelog, each changed
//! partition's record built and Avro-encoded at every batch's end (what the drift monitor
//! hands the runtime). The reference in the same run is the same monitor without the changelog.
//!
//! `cargo bench -p headroom-drift --bench feature_windows` prints criterion's figures and a last
//! line `RESULT feature_windows ...` with vectors/s per core both ways, their ratio, and the
//! changelog bytes written per vector.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, Criterion};
use headroom_drift::config::FeatureDrift;
use headroom_drift::{DriftConfig, FeatureMonitor, FeatureReference, ModelReference};

/// The featurizer's default vector: 4 metrics x (now, 4 windows x 4 statistics, 24 lags,
/// imputed) + 14 calendar and extra features.
const FEATURES: usize = 182;
const PARTITIONS: i32 = 6;
/// The runtime's default `max_batch`.
const BATCH: usize = 1024;
/// One vector per entity every 5 minutes, 10,000 entities: 33 vectors per second of event time.
const STEP_MS: i64 = 30;

fn reference() -> Arc<ModelReference> {
    let names: Vec<String> = (0..FEATURES).map(|k| format!("feature_{k:03}")).collect();
    Arc::new(ModelReference {
        version: "v1".into(),
        family: "xgboost".into(),
        feature_schema: "fs1".into(),
        feature_names: names.clone(),
        interval_ms: 300_000,
        reference_rows: 100_000,
        features: names
            .into_iter()
            .map(|feature| FeatureReference {
                feature,
                edges: (1..10).map(|k| k as f32 / 10.0).collect(),
                shares: vec![0.1; 10],
                missing_share: 0.0,
            })
            .collect(),
        validation_mae: Default::default(),
    })
}

struct Stream {
    monitor: FeatureMonitor,
    vectors: Vec<Vec<f32>>,
    n: usize,
    offsets: [i64; PARTITIONS as usize],
    alerts: Vec<headroom_schemas::DriftAlert>,
    buf: Vec<u8>,
    written: u64,
    track: bool,
}

impl Stream {
    fn new(track: bool) -> Stream {
        let cfg: FeatureDrift = DriftConfig::default().features;
        let mut monitor = FeatureMonitor::new(cfg, reference());
        if track {
            monitor.track_changes();
        }
        for p in 0..PARTITIONS {
            monitor.assign_partition(p, 0);
        }
        // 64 distinct vectors (values spread over the bins), reused round robin.
        let vectors = (0..64)
            .map(|v| (0..FEATURES).map(|k| ((v * 31 + k * 7) % 100) as f32 / 100.0).collect())
            .collect();
        Stream { monitor, vectors, n: 0, offsets: [0; PARTITIONS as usize], alerts: Vec::new(), buf: Vec::new(), written: 0, track }
    }

    #[inline]
    fn step(&mut self) {
        let p = (self.n % PARTITIONS as usize) as i32;
        let ts = 1_700_000_000_000 + self.n as i64 * STEP_MS;
        self.offsets[p as usize] += 1;
        let v = &self.vectors[self.n % self.vectors.len()];
        self.monitor.add(p, self.offsets[p as usize], "fs1", v, ts, 0, "features:partitions:0-5", &mut self.alerts);
        self.n += 1;
        if self.n.is_multiple_of(BATCH) {
            self.alerts.clear();
            if self.track {
                let (buf, written) = (&mut self.buf, &mut self.written);
                self.monitor.drain_changes("features", |_, s| {
                    buf.clear();
                    s.encode_framed(buf);
                    *written += buf.len() as u64;
                    black_box(&buf);
                });
            }
        }
    }
}

fn benches(c: &mut Criterion) {
    for track in [false, true] {
        let mut s = Stream::new(track);
        let name = if track { "feature_windows/with_changelog" } else { "reference/feature_windows_without_changelog" };
        c.bench_function(name, |b| b.iter(|| s.step()));
    }
}

criterion_group!(group, benches);

/// Plain timed passes for the RESULT line, alternating the two (best of five each: on a shared
/// 2-core machine throughput is noisy downwards only).
fn result_line() {
    let n = 400_000;
    let (mut off, mut on) = (0f64, 0f64);
    let mut per_vector = 0f64;
    let mut record = 0f64;
    for _ in 0..5 {
        for track in [false, true] {
            let mut s = Stream::new(track);
            let t0 = Instant::now();
            for _ in 0..n {
                s.step();
            }
            let rate = n as f64 / t0.elapsed().as_secs_f64();
            if track {
                on = on.max(rate);
                per_vector = s.written as f64 / n as f64;
                let snap = s.monitor.snapshot("features", 0);
                let mut buf = Vec::new();
                snap.encode_framed(&mut buf);
                record = buf.len() as f64;
            } else {
                off = off.max(rate);
            }
        }
    }
    println!(
        "RESULT feature_windows features={FEATURES} partitions={PARTITIONS} batch={BATCH} without_changelog_per_s={off:.0} with_changelog_per_s={on:.0} ratio={:.3} changelog_bytes_per_vector={per_vector:.1} record_bytes={record:.0}",
        on / off
    );
}

fn main() {
    group();
    Criterion::default().configure_from_args().final_summary();
    result_line();
}
