//! Checks of the ring implementation against a naive model, and of the replay contract.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use crate::{FeatureConfig, FeatureLayout, Outcome, PartitionState, Sample};

const IV: i64 = 300_000;

/// A deliberately simple model of the same rules: every accepted sample kept in a map.
#[derive(Default)]
struct Naive {
    slots: HashMap<String, BTreeMap<i64, (i64, [Option<f64>; 4])>>,
    newest: HashMap<String, i64>,
}

impl Naive {
    fn process(&mut self, cfg: &FeatureConfig, entity: &str, s: &Sample) -> Option<Vec<f32>> {
        let slot = s.ts_ms.div_euclid(IV);
        let newest = *self.newest.entry(entity.into()).or_insert(slot);
        if slot < newest - cfg.lateness_slots() {
            return None;
        }
        let newest = newest.max(slot);
        self.newest.insert(entity.into(), newest);
        let lowest = newest - cfg.capacity() as i64 + 1;
        let slots = self.slots.entry(entity.into()).or_default();
        slots.retain(|k, _| *k >= lowest);
        match slots.get(&slot) {
            Some((ts, _)) if *ts == s.ts_ms => return None,
            Some((ts, _)) if *ts > s.ts_ms => {}
            _ => {
                slots.insert(slot, (s.ts_ms, s.metrics));
            }
        }
        let layout = FeatureLayout::new(cfg);
        let per = layout.per_metric();
        let mut out = vec![0f32; per * 4];
        for m in 0..4 {
            let val = |k: i64| slots.get(&k).and_then(|(_, v)| v[m]).map(|v| v as f32);
            let ffill = |from: i64| (lowest..=from).rev().find_map(val);
            let now = val(slot).or_else(|| ffill(slot - 1));
            let imputed = val(slot).is_none();
            let now = now.unwrap_or(0.0);
            let b = m * per;
            out[b] = now;
            for (i, w) in cfg.window_slots().into_iter().enumerate() {
                let xs: Vec<f64> = ((slot - w as i64 + 1).max(lowest)..=slot)
                    .filter_map(val)
                    .map(f64::from)
                    .collect();
                let o = b + 1 + 4 * i;
                if xs.is_empty() {
                    out[o..o + 4].copy_from_slice(&[now, 0.0, now, now]);
                } else {
                    let n = xs.len() as f64;
                    let mean = xs.iter().sum::<f64>() / n;
                    let var = (xs.iter().map(|x| x * x).sum::<f64>() / n - mean * mean).max(0.0);
                    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
                    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    out[o..o + 4].copy_from_slice(&[
                        mean as f32,
                        var.sqrt() as f32,
                        min as f32,
                        max as f32,
                    ]);
                }
            }
            let lag_base = b + 1 + 4 * cfg.windows.len();
            for k in 1..=cfg.lags as i64 {
                out[lag_base + k as usize - 1] = ffill(slot - k).unwrap_or(now);
            }
            out[b + per - 1] = if imputed { 1.0 } else { 0.0 };
        }
        Some(out)
    }
}

fn small_cfg() -> FeatureConfig {
    toml::from_str(
        "sampling_interval = \"5m\"\nwindows = [\"15m\", \"1h\", \"2h\"]\nlags = 6\nallowed_lateness = \"20m\"\nidle_expiry = \"1d\"",
    )
    .expect("cfg")
}

/// A ring of 216 slots, a multiple of the superblock: its long windows read superblocks.
fn super_cfg() -> FeatureConfig {
    let cfg: FeatureConfig = toml::from_str(
        "sampling_interval = \"5m\"\nwindows = [\"15m\", \"1h\", \"7h\", \"18h\"]\nlags = 6\nallowed_lateness = \"20m\"\nidle_expiry = \"2d\"",
    )
    .expect("cfg");
    assert_eq!(cfg.capacity() % crate::state::SUPER_SLOTS, 0);
    cfg
}

#[derive(Debug, Clone)]
struct Ev {
    entity: u8,
    ts_ms: i64,
    metrics: [Option<f64>; 4],
}

fn stream(max_len: usize) -> impl Strategy<Value = Vec<Ev>> {
    // Mostly in order with jitter, gaps, repeats and missing values.
    proptest::collection::vec(
        (
            0u8..3,
            -5i64..3,
            0i64..IV,
            proptest::collection::vec(proptest::option::weighted(0.9, 0.0f64..1.0), 4),
        ),
        1..max_len,
    )
    .prop_map(|steps| {
        let mut t = 1_700_000_000_000i64;
        steps
            .into_iter()
            .map(|(entity, dt, jitter, ms)| {
                t += dt.max(0) * IV;
                let ts = t + if dt < 0 { dt * IV } else { 0 } + jitter / 60_000 * 60_000;
                Ev {
                    entity,
                    ts_ms: ts,
                    metrics: [ms[0], ms[1], ms[2], ms[3]],
                }
            })
            .collect()
    })
}

fn sample(e: &Ev) -> Sample {
    Sample {
        ts_ms: e.ts_ms,
        metrics: e.metrics,
        ..Sample::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn ring_matches_naive_model(events in stream(300)) {
        ring_matches_naive(small_cfg(), &events)?;
    }

    /// Long streams that wrap a ring with superblocks several times.
    #[test]
    fn ring_with_superblocks_matches_naive_model(events in stream(1500)) {
        ring_matches_naive(super_cfg(), &events)?;
    }

    /// Replaying from the floor recorded at any cut point gives the same outputs afterwards.
    #[test]
    fn replay_from_floor_is_exact(events in stream(300), cut_frac in 0.0f64..1.0) {
        replay_is_exact(small_cfg(), &events, cut_frac)?;
    }

    #[test]
    fn replay_with_superblocks_is_exact(events in stream(1500), cut_frac in 0.0f64..1.0) {
        replay_is_exact(super_cfg(), &events, cut_frac)?;
    }
}

fn ring_matches_naive(cfg: FeatureConfig, events: &[Ev]) -> Result<(), TestCaseError> {
    let mut st = PartitionState::new(cfg.clone());
    let mut naive = Naive::default();
    let per = st.layout().per_metric();
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let name = format!("e{}", e.entity);
        let got = st.process(&name, &sample(e), i as u64, &mut out);
        let want = naive.process(&cfg, &name, &sample(e));
        match (got, want) {
            (Outcome::Emitted { .. }, Some(w)) => {
                for (j, (a, b)) in out[..4 * per].iter().zip(&w).enumerate() {
                    prop_assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "event {} feature {} ({}): ring {} naive {}",
                        i,
                        j,
                        st.layout().names()[j],
                        a,
                        b
                    );
                }
            }
            (Outcome::Duplicate | Outcome::TooLate { .. }, None) => {}
            (g, w) => prop_assert!(
                false,
                "event {}: ring {:?}, naive emitted {}",
                i,
                g,
                w.is_some()
            ),
        }
    }
    Ok(())
}

fn replay_is_exact(cfg: FeatureConfig, events: &[Ev], cut_frac: f64) -> Result<(), TestCaseError> {
    let cut = ((events.len() as f64) * cut_frac) as usize;
    let run = |st: &mut PartitionState, range: std::ops::Range<usize>, keep: bool| {
        let mut outs = Vec::new();
        let mut out = Vec::new();
        for i in range {
            let e = &events[i];
            let o = st.process(&format!("e{}", e.entity), &sample(e), i as u64, &mut out);
            if keep {
                outs.push((o, out.clone()));
            }
        }
        outs
    };
    let mut uninterrupted = PartitionState::new(cfg.clone());
    run(&mut uninterrupted, 0..cut, false);
    let floor = uninterrupted.replay_floor().map_or(cut, |f| f as usize);
    prop_assert!(floor <= cut);
    let mut restored = PartitionState::new(cfg);
    run(&mut restored, floor..cut, false);
    let a = run(&mut uninterrupted, cut..events.len(), true);
    let b = run(&mut restored, cut..events.len(), true);
    prop_assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        prop_assert_eq!(x.0, y.0, "outcome of event {}", cut + i);
        if matches!(x.0, Outcome::Emitted { .. }) {
            prop_assert_eq!(&x.1, &y.1, "features of event {}", cut + i);
        }
    }
    Ok(())
}

#[test]
fn late_duplicate_and_imputed_outcomes() {
    let cfg = small_cfg();
    let mut st = PartitionState::new(cfg);
    let mut out = Vec::new();
    let t0 = 1_700_000_100_000 - 1_700_000_100_000 % IV;
    let s = |ts: i64, cpu: Option<f64>| Sample {
        ts_ms: ts,
        metrics: [cpu, Some(0.5), Some(1.0), Some(2.0)],
        ..Sample::default()
    };
    assert_eq!(
        st.process("a", &s(t0, Some(0.2)), 0, &mut out),
        Outcome::Emitted { imputed_mask: 0 }
    );
    assert_eq!(
        st.process("a", &s(t0, Some(0.9)), 1, &mut out),
        Outcome::Duplicate
    );
    assert_eq!(
        st.process("a", &s(t0 + IV, None), 2, &mut out),
        Outcome::Emitted { imputed_mask: 1 }
    );
    assert_eq!(out[0], 0.2, "missing cpu is forward-filled");
    assert_eq!(
        st.process("a", &s(t0 + 30 * IV, Some(0.3)), 3, &mut out),
        Outcome::Emitted { imputed_mask: 0 }
    );
    assert_eq!(
        st.process("a", &s(t0 + 5 * IV, Some(0.3)), 4, &mut out),
        Outcome::TooLate { behind_ms: 25 * IV }
    );
    // Within the lateness: accepted. The first three records left the 2 h ring.
    assert!(matches!(
        st.process("a", &s(t0 + 27 * IV, Some(0.3)), 5, &mut out),
        Outcome::Emitted { .. }
    ));
    assert_eq!(st.replay_floor(), Some(3));
}

#[test]
fn idle_entities_expire_and_memory_is_bounded() {
    let cfg = FeatureConfig::default();
    let mut st = PartitionState::new(cfg);
    let mut out = Vec::new();
    let t0 = 1_700_000_000_000;
    for i in 0..100 {
        st.process(
            &format!("vm-{i}"),
            &Sample {
                ts_ms: t0,
                ..Sample::default()
            },
            i,
            &mut out,
        );
    }
    assert_eq!(st.entity_count(), 100);
    let per_entity = st.state_bytes() / 100;
    assert!(per_entity < 16_000, "per-entity state {per_entity} B");
    st.process(
        "vm-0",
        &Sample {
            ts_ms: t0 + 3 * 86_400_000,
            ..Sample::default()
        },
        100,
        &mut out,
    );
    assert_eq!(st.expire_idle(), 99);
}
