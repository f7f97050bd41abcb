//! State memory per entity with the default windows and lags, measured at 100,000 entities:
//! the resident memory the process gains (from /proc/self/statm) against the state's own
//! estimate, and the projection to a million entities.
//!
//! `cargo bench -p headroom-features --bench state_memory` prints `RESULT state_memory ...`.

use headroom_features::{FeatureConfig, PartitionState, Sample};

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let entities: usize = std::env::var("ENTITIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let before = rss_bytes();
    let mut state = PartitionState::new(FeatureConfig::default());
    let mut out = Vec::new();
    let iv = 300_000i64;
    let t0 = 1_700_000_000_000 / iv * iv;
    let mut offset = 0u64;
    for round in 0..12 {
        for i in 0..entities {
            let s = Sample {
                ts_ms: t0 + round * iv,
                metrics: [Some(0.5), Some(0.5), Some(1e6), Some(1e4)],
                ..Sample::default()
            };
            offset += 1;
            state.process(
                &format!("service-{:03}.vm-{i:06}", i % 100),
                &s,
                offset,
                &mut out,
            );
        }
    }
    let after = rss_bytes();
    let rss_per = (after.saturating_sub(before)) as f64 / entities as f64;
    let est_per = state.state_bytes() as f64 / entities as f64;
    let projected_gib = rss_per * 1e6 / (1u64 << 30) as f64;
    println!(
        "RESULT state_memory entities={entities} rss_bytes_per_entity={rss_per:.0} estimated_bytes_per_entity={est_per:.0} target_bytes_per_entity=16384 projected_1m_entities_gib={projected_gib:.2}"
    );
}
