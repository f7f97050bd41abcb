use std::sync::Arc;
use std::time::Duration;

use headroom_schemas::{AlertState, DriftAlert, DriftEntityState, DriftKind, Forecast, ForecastPoint, Metric, Observed, Severity};
use proptest::prelude::*;

use crate::config::DriftConfig;
use crate::errors::ErrorMonitor;
use crate::features::FeatureMonitor;
use crate::reference::{FeatureReference, ModelReference};
use crate::stats::{kolmogorov_q, ks_binned, psi, PageHinkley};

const MIN: i64 = 60_000;

/// Deterministic noise in [-1, 1) (a small LCG: the tests must not depend on a seed crate).
struct Noise(u64);
impl Noise {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

fn uniform_reference(version: &str, with_validation: bool) -> ModelReference {
    // One feature uniform on [0, 1): deciles at 0.1 … 0.9.
    let edges: Vec<f32> = (1..10).map(|k| k as f32 / 10.0).collect();
    let mut validation = rustc_hash::FxHashMap::default();
    if with_validation {
        validation.insert(("cpu".to_owned(), 3), 0.05);
    }
    ModelReference {
        version: version.into(),
        family: "xgboost".into(),
        feature_schema: "fs1".into(),
        feature_names: vec!["cpu_now".into(), "other".into()],
        interval_ms: 5 * MIN,
        reference_rows: 100_000,
        features: vec![FeatureReference {
            feature: "cpu_now".into(),
            edges,
            shares: vec![0.1; 10],
            missing_share: 0.0,
        }],
        validation_mae: validation,
    }
}

#[test]
fn psi_and_ks_separate_same_from_shifted() {
    let shares = vec![0.1f32; 10];
    let same = vec![100u64; 10];
    assert!(psi(&shares, &same).abs() < 1e-9);
    let (d, p) = ks_binned(&shares, &same, 100_000);
    assert!(d < 1e-9 && p > 0.99, "d={d} p={p}");
    // Everything in the top two bins.
    let mut shifted = vec![0u64; 10];
    shifted[8] = 500;
    shifted[9] = 500;
    assert!(psi(&shares, &shifted) > 2.0);
    let (d, p) = ks_binned(&shares, &shifted, 100_000);
    assert!((d - 0.8).abs() < 1e-9 && p < 1e-12, "d={d} p={p}");
    // A small window with a mild shift is not significant.
    let mild = vec![3u64, 2, 2, 2, 2, 2, 2, 2, 2, 1];
    assert!(ks_binned(&shares, &mild, 100_000).1 > 0.5);
}

#[test]
fn kolmogorov_tail_matches_the_tables() {
    // Critical values of the asymptotic distribution: Q(1.358) = 0.05, Q(1.628) = 0.01.
    assert!((kolmogorov_q(1.358) - 0.05).abs() < 1e-3);
    assert!((kolmogorov_q(1.628) - 0.01).abs() < 5e-4);
    assert_eq!(kolmogorov_q(0.0), 1.0);
}

#[test]
fn page_hinkley_ignores_noise_and_catches_a_step() {
    let mut ph = PageHinkley::new(0.5, 20.0);
    let mut noise = Noise(1);
    for _ in 0..5_000 {
        assert!(!ph.update(1.0 + 0.8 * noise.next()), "false alarm on stationary noise");
    }
    let mut fired_after = None;
    for i in 0..200 {
        if ph.update(3.0 + 0.8 * noise.next()) {
            fired_after = Some(i);
            break;
        }
    }
    let k = fired_after.expect("a step from 1 to 3 must be detected");
    assert!(k < 30, "detected only after {k} samples");
}

/// 600 vectors of hour `hour`, from two partitions; partition 1 runs 10 minutes behind
/// partition 0, so its vectors of an hour arrive after partition 0 entered the next one.
fn feed(m: &mut FeatureMonitor, hour: i64, gen: impl Fn(usize) -> f32, out: &mut Vec<DriftAlert>) {
    for i in 0..600 {
        let minute = i as i64 / 10;
        let (p, ts) = if i % 2 == 0 {
            (0, hour * 60 * MIN + minute * MIN)
        } else {
            (1, hour * 60 * MIN + minute * MIN - 10 * MIN)
        };
        m.add(p, hour * 1_000 + i as i64, "fs1", &[gen(i), 0.0], ts, 0, "partitions:0,1", out);
    }
}

#[test]
fn feature_windows_open_update_and_resolve_one_episode() {
    let cfg = DriftConfig::default().features;
    let mut m = FeatureMonitor::new(cfg, Arc::new(uniform_reference("v1", false)));
    assert_eq!(m.watched(), vec!["cpu_now"]);
    let mut out = Vec::new();
    let uniform = |i: usize| ((i * 7919) % 600) as f32 / 600.0;
    for h in 0..3 {
        feed(&mut m, h, uniform, &mut out);
    }
    assert!(out.is_empty(), "no drift on the reference distribution: {out:?}");
    // Shifted: everything above 0.7.
    for h in 3..6 {
        feed(&mut m, h, |i| 0.7 + 0.3 * uniform(i), &mut out);
    }
    for h in 6..8 {
        feed(&mut m, h, uniform, &mut out);
    }
    feed(&mut m, 8, uniform, &mut out);
    feed(&mut m, 9, uniform, &mut out);
    assert_eq!(m.late, 0, "the watermark waits for the slower partition");
    let states: Vec<AlertState> = out.iter().map(|a| a.state).collect();
    assert_eq!(states, vec![AlertState::Open, AlertState::Update, AlertState::Update, AlertState::Resolved], "{out:?}");
    assert!(out.iter().all(|a| a.alert_id == out[0].alert_id), "one episode, one id");
    let open = &out[0];
    assert_eq!(open.kind, DriftKind::FeatureDistribution);
    assert_eq!(open.subject, "cpu_now");
    assert_eq!(open.window_start_ms, 3 * 60 * MIN);
    assert_eq!(open.window_end_ms, 4 * 60 * MIN);
    assert_eq!(open.severity, Severity::Critical);
    assert!(open.value > 0.5 && open.detail("ks_p").unwrap() < 1e-6);
    assert_eq!(open.detail("live_n"), Some(600.0));
    // Another feature set is not judged.
    m.add(0, 1_000_000, "fs2", &[5.0], 9 * 60 * MIN, 0, "p", &mut out);
    assert_eq!(m.schema_mismatches, 1);
}

#[test]
fn a_backlog_read_partition_by_partition_is_windowed_exactly() {
    let cfg = DriftConfig::default().features;
    let mut m = FeatureMonitor::new(cfg, Arc::new(uniform_reference("v1", false)));
    let mut out = Vec::new();
    m.assign_partition(0, 0);
    m.assign_partition(1, 0);
    m.assign_partition(2, 0); // never delivers anything
    // Partition 0's whole backlog (hours 0-5, shifted in hour 2) arrives before partition 1's.
    for p in [0, 1] {
        for hour in 0..6 {
            for i in 0..300 {
                let u = ((i * 7919) % 300) as f32 / 300.0;
                let v = if hour == 2 { 0.8 + 0.2 * u } else { u };
                m.add(p, hour * 300 + i as i64, "fs1", &[v, 0.0], hour * 60 * MIN + (i as i64 / 5) * MIN, 1_000 + i as i64, "s", &mut out);
            }
        }
    }
    assert_eq!(m.late, 0);
    assert!(out.is_empty(), "nothing closes while partition 2 may still deliver: {out:?}");
    // Past the grace, the silent partition no longer holds the windows.
    m.add(1, 1_000_000, "fs1", &[0.5, 0.0], 6 * 60 * MIN, 1_000 + 30_001, "s", &mut out);
    let states: Vec<AlertState> = out.iter().map(|a| a.state).collect();
    assert_eq!(states, vec![AlertState::Open, AlertState::Resolved], "{out:?}");
    assert_eq!(out[0].detail("live_n"), Some(600.0), "both partitions' values in one window");
}

/// Ten hours of vectors from two partitions (partition 1 ten minutes behind), shifted in
/// hours 3-5: `(partition, offset, event time, value)` in arrival order.
fn feature_stream() -> Vec<(i32, i64, i64, f32)> {
    let uniform = |i: usize| ((i * 7919) % 600) as f32 / 600.0;
    let mut next = [0i64; 2];
    let mut recs = Vec::new();
    for hour in 0..10 {
        for i in 0..600 {
            let minute = i as i64 / 10;
            let p = i % 2;
            let ts = hour * 60 * MIN + minute * MIN - if p == 1 { 10 * MIN } else { 0 };
            let v = if (3..6).contains(&hour) { 0.7 + 0.3 * uniform(i) } else { uniform(i) };
            recs.push((p as i32, next[p], ts, v));
            next[p] += 1;
        }
    }
    recs
}

/// Through the wire format, as the drift monitor writes and reads its changelog.
fn through_the_wire(s: &headroom_schemas::FeatureWindowsState) -> headroom_schemas::FeatureWindowsState {
    let mut buf = Vec::new();
    s.encode_framed(&mut buf);
    headroom_schemas::FeatureWindowsState::decode(&buf).expect("decodes")
}

/// The alerts of one monitor reading `recs` without interruption.
fn uninterrupted(cfg: &crate::config::FeatureDrift, reference: &Arc<ModelReference>, recs: &[(i32, i64, i64, f32)], scope: &str) -> Vec<DriftAlert> {
    let mut whole = FeatureMonitor::new(cfg.clone(), reference.clone());
    let mut expected = Vec::new();
    for &(p, off, ts, v) in recs {
        whole.add(p, off, "fs1", &[v, 0.0], ts, 0, scope, &mut expected);
    }
    expected
}

/// What a crash and a restart from the feature windows' changelog give. Batches end at `ends`;
/// the changelog holds the batches up to `written`, the offsets are committed up to `committed`
/// (the changelog can be ahead: the crash came between a changelog's acknowledgement and the
/// offset commit), and the monitor dies at `died`, in a batch it never finished. Returns the
/// alerts sent before the crash (those of the batches the changelog holds: the runtime sends a
/// batch's changelog once its alerts are acknowledged), the same followed by the restarted
/// monitor's, the uninterrupted run's alerts, and the restarted monitor.
type Restart = (Vec<DriftAlert>, Vec<DriftAlert>, Vec<DriftAlert>, FeatureMonitor);
fn crash_and_restore(ends: &[usize], committed: usize, written: usize, died: usize) -> Restart {
    let cfg = DriftConfig::default().features;
    let reference = Arc::new(uniform_reference("v1", false));
    let recs = feature_stream();
    let scope = "features:partitions:0,1";
    let expected = uninterrupted(&cfg, &reference, &recs, scope);
    let mut first = FeatureMonitor::new(cfg.clone(), reference.clone());
    first.track_changes();
    let mut changelog = Vec::new();
    let mut alerts = Vec::new();
    let mut sent = 0;
    for (n, &(p, off, ts, v)) in recs[..died].iter().enumerate() {
        first.add(p, off, "fs1", &[v, 0.0], ts, 0, scope, &mut alerts);
        if ends.contains(&(n + 1)) && n < written {
            first.drain_changes("features", |_, s| changelog.push(through_the_wire(s)));
        }
        if n + 1 == written {
            sent = alerts.len();
        }
    }
    let mut second = FeatureMonitor::new(cfg, reference);
    second.track_changes();
    second.assign_partition(0, 0);
    second.assign_partition(1, 0);
    for s in &changelog {
        second.restore(s, 0).expect("same version and window");
    }
    let resume = |p: i32| recs[..committed].iter().filter(|r| r.0 == p).map(|r| r.1).max().unwrap_or(-1);
    let (r0, r1) = (resume(0), resume(1));
    let before = alerts[..sent].to_vec();
    let mut joined = before.clone();
    for &(p, off, ts, v) in &recs {
        if off > if p == 0 { r0 } else { r1 } {
            second.add(p, off, "fs1", &[v, 0.0], ts, 0, scope, &mut joined);
        }
    }
    (before, joined, expected, second)
}

/// A monitor restarted from its changelog mid-window and mid-episode continues exactly like an
/// uninterrupted one: the same alerts, ids and figures, with its changelog two batches ahead of
/// the committed offsets and a batch it never finished.
#[test]
fn a_restored_feature_monitor_continues_exactly_like_an_uninterrupted_one() {
    let (committed, written, died) = (2_870, 3_370, 3_470);
    let ends: Vec<usize> = (1..=11).map(|k| k * 250).chain([committed, 3_120, written]).collect();
    let (before, joined, expected, second) = crash_and_restore(&ends, committed, written, died);
    // The crash falls inside the episode (hours 3 and 4 closed, shifted) and half-way through hour 5.
    assert_eq!(before.iter().map(|a| a.state).collect::<Vec<_>>(), vec![AlertState::Open, AlertState::Update]);
    let states: Vec<AlertState> = expected.iter().map(|a| a.state).collect();
    assert_eq!(states, vec![AlertState::Open, AlertState::Update, AlertState::Update, AlertState::Resolved]);
    assert_eq!(second.already_applied, (written - committed) as u64, "vectors the changelog holds are not counted twice");
    assert_eq!(second.late, 0);
    assert_eq!(joined, expected);
}

/// A crash with the changelog written at most every `every` batches per partition
/// (`state.windows_every`), as the runtime replays it. Batches of `batch` records end once a
/// second (the wall clock of the changelog's interval); the offsets committed at batch end
/// `committed` carry the replay floors read at batch end `floors_at` (the runtime keeps a floor
/// read at an earlier commit: never a later one); every batch up to `acked` had its alerts and
/// changelog records acknowledged; the monitor dies at `died`. The restarted monitor reads the
/// changelog back and each partition is replayed from its floor, the alerts of records below
/// the committed offset suppressed (the runtime's replay). Returns the alerts sent before the
/// crash followed by the restarted monitor's, the uninterrupted run's alerts, and the
/// restarted monitor.
fn crash_and_replay(batch: usize, every: i64, floors_at: usize, committed: usize, acked: usize, died: usize) -> Restart {
    let cfg = DriftConfig::default().features;
    let reference = Arc::new(uniform_reference("v1", false));
    let recs = feature_stream();
    let scope = "features:partitions:0,1";
    let expected = uninterrupted(&cfg, &reference, &recs, scope);
    let mut first = FeatureMonitor::new(cfg.clone(), reference.clone());
    first.track_changes();
    let (mut changelog, mut alerts, mut sent, mut floors) = (Vec::new(), Vec::new(), 0, [None, None]);
    for (n, &(p, off, ts, v)) in recs[..died].iter().enumerate() {
        first.saw(p, off);
        first.add(p, off, "fs1", &[v, 0.0], ts, 0, scope, &mut alerts);
        let end = n + 1;
        if end % batch == 0 {
            let now = (end / batch) as i64 * 1_000;
            first.drain_due("features", now, every * 1_000, |_, s| {
                if end <= acked {
                    changelog.push(through_the_wire(s));
                }
            });
            if end == floors_at {
                floors = [first.replay_floor(0), first.replay_floor(1)];
            }
            if end == acked {
                sent = alerts.len();
            }
        }
    }
    let next = |p: i32| recs[..committed].iter().filter(|r| r.0 == p).map(|r| r.1 + 1).max().unwrap_or(0);
    let committed_at = [next(0), next(1)];
    let mut second = FeatureMonitor::new(cfg, reference);
    second.track_changes();
    second.assign_partition(0, 0);
    second.assign_partition(1, 0);
    for s in &changelog {
        second.restore(s, 0).expect("same version and window");
    }
    let from = |p: usize| floors[p].map_or(committed_at[p], |f: i64| f.min(committed_at[p]));
    let resume = [from(0), from(1)];
    let mut joined = alerts[..sent].to_vec();
    let mut suppressed = Vec::new();
    for &(p, off, ts, v) in &recs {
        let p_ = p as usize;
        if off < resume[p_] {
            continue;
        }
        let out = if off < committed_at[p_] { &mut suppressed } else { &mut joined };
        second.add(p, off, "fs1", &[v, 0.0], ts, 0, scope, out);
    }
    (suppressed, joined, expected, second)
}

/// What a consumer that de-duplicates by content keeps: at-least-once outputs after the
/// committed offsets may repeat, with the same ids and figures.
fn deduplicated(alerts: Vec<DriftAlert>) -> Vec<DriftAlert> {
    let mut out: Vec<DriftAlert> = Vec::new();
    for a in alerts {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// With the changelog written every 10th batch only, a crash mid-window and mid-episode
/// (the changelog behind the committed offsets) is made exact by the replay floors.
#[test]
fn feature_windows_written_every_few_batches_are_made_exact_by_the_replay_floor() {
    let (batch, every) = (50, 10);
    let (committed, died) = (3_350, 3_470);
    let (suppressed, joined, expected, second) = crash_and_replay(batch, every, committed, committed, committed, died);
    assert_eq!(expected.len(), 4);
    assert_eq!(joined, expected, "the same alerts, ids and figures, none twice");
    assert!(second.already_applied == 0, "nothing the changelog holds is replayed");
    assert!(suppressed.is_empty() || expected.contains(&suppressed[0]), "{suppressed:?}");
    // The floor was needed: without it the restarted monitor misses the unsaved vectors.
    let (_, without, _, _) = crash_and_replay(batch, every, 0, committed, committed, died);
    assert_ne!(without, expected, "a replay from the committed offsets alone loses counts");
}

/// A partition that receives nothing but records the monitor cannot count still moves its
/// floor on: a restart does not replay them again and again.
#[test]
fn records_that_cannot_be_counted_move_the_replay_floor_on() {
    let mut m = FeatureMonitor::new(DriftConfig::default().features, Arc::new(uniform_reference("v1", false)));
    m.track_changes();
    for off in 0..100 {
        m.saw(3, off);
        m.skip(3, off);
    }
    assert_eq!(m.replay_floor(3), Some(0), "nothing written yet");
    let mut records = Vec::new();
    m.drain_due("features", 1_000, 10_000, |_, s| records.push(s.clone()));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].applied_offset, 99);
    assert!(records[0].windows.is_empty());
    assert_eq!(m.replay_floor(3), Some(100));
    // A skipped offset is never counted afterwards, and a counted one is not skipped back.
    let mut out = Vec::new();
    m.add(3, 99, "fs1", &[0.5, 0.0], 0, 0, "s", &mut out);
    assert_eq!(m.already_applied, 1);
    m.skip(3, 50);
    assert_eq!(m.snapshot("features", 3).applied_offset, 99);
}

#[test]
fn the_replay_floor_only_grows_and_writes_wait_for_their_interval() {
    let cfg = DriftConfig::default().features;
    let mut m = FeatureMonitor::new(cfg.clone(), Arc::new(uniform_reference("v1", false)));
    assert_eq!(m.replay_floor(0), None, "nothing tracked");
    m.track_changes();
    assert_eq!(m.replay_floor(0), None, "nothing seen");
    let (mut out, mut written, mut floors) = (Vec::new(), 0, Vec::new());
    for (n, &(p, off, ts, v)) in feature_stream().iter().enumerate() {
        if p == 0 && n == 0 {
            m.saw(0, off);
        }
        m.add(p, off, "fs1", &[v, 0.0], ts, 0, "s", &mut out);
        if (n + 1) % 50 == 0 {
            m.drain_due("features", (n as i64 + 1) / 50 * 1_000, 10_000, |_, _| written += 1);
            floors.push(m.replay_floor(0).expect("seen"));
        }
    }
    assert!(floors.windows(2).all(|w| w[0] <= w[1]), "{floors:?}");
    // A partition's first record is written at once (partition 0 has 25 of the first 50
    // vectors), then every 10 batches: the floor moves by 250 of its offsets at a time.
    assert_eq!(floors[0], 25, "{floors:?}");
    assert_eq!(floors[10] - floors[9], 250, "{floors:?}");
    assert_eq!(floors[11], floors[10], "{floors:?}");
    // 120 batches: every partition at most once per 10 batches (window closes included).
    assert!(written <= 2 * 12 + 2, "{written} records");
    let mut every_batch = FeatureMonitor::new(cfg, Arc::new(uniform_reference("v1", false)));
    every_batch.track_changes();
    let mut all = 0;
    for (n, &(p, off, ts, v)) in feature_stream().iter().enumerate() {
        every_batch.add(p, off, "fs1", &[v, 0.0], ts, 0, "s", &mut out);
        if (n + 1) % 50 == 0 {
            every_batch.drain_changes("features", |_, _| all += 1);
        }
    }
    assert_eq!(all, 240, "both partitions in every batch");
    assert_eq!(every_batch.replay_floor(0), Some(3_000), "all saved: the next offset");
}

#[test]
fn a_windows_record_of_another_version_or_window_is_not_used_and_the_newest_record_wins() {
    let cfg = DriftConfig::default().features;
    let recs = feature_stream();
    let mut old = FeatureMonitor::new(cfg.clone(), Arc::new(uniform_reference("v1", false)));
    old.track_changes();
    let mut out = Vec::new();
    let mut records = Vec::new();
    for &(p, off, ts, v) in &recs[..900] {
        old.add(p, off, "fs1", &[v, 0.0], ts, 0, "s", &mut out);
        if off % 100 == 99 {
            old.drain_changes("features", |_, s| records.push(through_the_wire(s)));
        }
    }
    old.drain_changes("features", |_, s| records.push(through_the_wire(s)));
    let last0 = records.iter().rposition(|s| s.partition == 0).unwrap();
    // A promoted version's monitor does not take counts binned on the old deciles.
    let mut promoted = FeatureMonitor::new(cfg.clone(), Arc::new(uniform_reference("v2", false)));
    let e = promoted.restore(&records[last0], 0).unwrap_err();
    assert!(e.to_string().contains("v1") && e.to_string().contains("v2"), "{e}");
    assert_eq!(promoted.open_windows(), 0);
    assert_eq!(promoted.snapshot("features", 0).applied_offset, -1, "the partition starts afresh");
    // Another window length neither.
    let mut hourly = cfg.clone();
    hourly.window = Duration::from_secs(1800);
    let mut other = FeatureMonitor::new(hourly, Arc::new(uniform_reference("v1", false)));
    assert!(matches!(other.restore(&records[last0], 0), Err(crate::features::RestoreSkip::OtherWindow { .. })));
    // Read in offset order, the newest record of a partition is what the monitor holds.
    let mut same = FeatureMonitor::new(cfg, Arc::new(uniform_reference("v1", false)));
    for s in &records {
        same.restore(s, 0).unwrap();
    }
    // (Each monitor names its own records.)
    let unnamed = |s: headroom_schemas::FeatureWindowsState| headroom_schemas::FeatureWindowsState { writer: String::new(), ..s };
    for p in [0, 1] {
        assert_eq!(unnamed(same.snapshot("features", p)), unnamed(old.snapshot("features", p)), "partition {p}");
    }
    assert_ne!(same.writer(), old.writer());
    // An older record read after a newer one replaces it too (a rejected one empties it).
    let first0 = records.iter().position(|s| s.partition == 0).unwrap();
    same.restore(&records[first0], 0).unwrap();
    assert_eq!(same.snapshot("features", 0).applied_offset, records[first0].applied_offset);
}

/// Two replicas share the features partitions: A holds partition 0 and B partition 1, and B is
/// an hour ahead (it has closed hour 4, A has not; hour 4 is shifted on A's partition). B
/// leaves and A takes partition 1 over from B's record: A still judges its own hour 4 (OPEN, on
/// its 600 vectors), and hour 5 with both partitions' counts (RESOLVED, 1,200). A monitor C that
/// starts from both replicas' records (both gone), in either order, judges the same. With one
/// closed mark for all records (before the records named their writer), B's mark closed A's
/// open hour unjudged and neither alert came.
#[test]
fn another_replicas_closed_mark_does_not_close_this_ones_open_window() {
    let cfg = DriftConfig::default().features;
    let reference = Arc::new(uniform_reference("v1", false));
    let uniform = |i: usize| ((i * 7919) % 600) as f32 / 600.0;
    // Hour `h` of partition `p`: 600 vectors, shifted in hour 4 of partition 0.
    let hour = |p: i32, h: i64| -> Vec<(i32, i64, i64, f32)> {
        (0..600)
            .map(|i| {
                let v = if p == 0 && h == 4 { 0.7 + 0.3 * uniform(i) } else { uniform(i) };
                (p, h * 600 + i as i64, h * 60 * MIN + (i as i64 / 10) * MIN, v)
            })
            .collect()
    };
    let feed = |m: &mut FeatureMonitor, p: i32, hours: std::ops::Range<i64>, out: &mut Vec<DriftAlert>| {
        for h in hours {
            for (p, off, ts, v) in hour(p, h) {
                m.add(p, off, "fs1", &[v, 0.0], ts, 0, "s", out);
            }
        }
    };
    let judged = |out: &[DriftAlert]| -> Vec<(i64, AlertState, f64)> {
        out.iter().map(|a| (a.window_start_ms / (60 * MIN), a.state, a.detail("live_n").unwrap_or(0.0))).collect()
    };
    let mut a = FeatureMonitor::new(cfg.clone(), reference.clone());
    let mut b = FeatureMonitor::new(cfg.clone(), reference.clone());
    a.track_changes();
    b.track_changes();
    a.assign_partition(0, 0);
    b.assign_partition(1, 0);
    let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
    feed(&mut a, 0, 0..5, &mut out_a);
    feed(&mut b, 1, 0..6, &mut out_b);
    assert!(out_a.is_empty() && out_b.is_empty(), "hours 0-3 are unshifted: {out_a:?} {out_b:?}");
    let (mut rec_a, mut rec_b) = (None, None);
    a.drain_changes("features", |_, s| rec_a = Some(through_the_wire(s)));
    b.drain_changes("features", |_, s| rec_b = Some(through_the_wire(s)));
    let (rec_a, rec_b) = (rec_a.unwrap(), rec_b.unwrap());
    assert_eq!((rec_a.closed_until_ms, rec_b.closed_until_ms), (Some(4 * 60 * MIN), Some(5 * 60 * MIN)));
    assert_ne!(rec_a.writer, rec_b.writer);
    let want = vec![(4, AlertState::Open, 600.0), (5, AlertState::Resolved, 1_200.0)];

    // B leaves; A takes partition 1 over.
    a.assign_partition(1, 0);
    a.restore(&rec_b, 0).unwrap();
    feed(&mut a, 0, 5..7, &mut out_a);
    feed(&mut a, 1, 6..7, &mut out_a);
    assert_eq!(judged(&out_a), want, "{out_a:?}");
    assert_eq!(a.late, 0);

    // Both gone: C starts from their records.
    for order in [[&rec_a, &rec_b], [&rec_b, &rec_a]] {
        let mut c = FeatureMonitor::new(cfg.clone(), reference.clone());
        c.track_changes();
        c.assign_partition(0, 0);
        c.assign_partition(1, 0);
        for r in order {
            c.restore(r, 0).unwrap();
        }
        // Its records say what it has judged: not past A's open hour.
        assert_eq!(c.snapshot("features", 1).closed_until_ms, Some(4 * 60 * MIN));
        let mut out_c = Vec::new();
        feed(&mut c, 0, 5..7, &mut out_c);
        feed(&mut c, 1, 6..7, &mut out_c);
        assert_eq!(judged(&out_c), want, "{out_c:?}");
        assert_eq!(c.late, 0);
    }
}

/// A revoked partition's counts leave with it when the changelog is kept (the next owner reads
/// them back); without a changelog they stay.
#[test]
fn a_revoked_partition_takes_its_counts_along_only_with_a_changelog() {
    let cfg = DriftConfig::default().features;
    let recs = feature_stream();
    for track in [true, false] {
        let mut m = FeatureMonitor::new(cfg.clone(), Arc::new(uniform_reference("v1", false)));
        if track {
            m.track_changes();
        }
        let mut out = Vec::new();
        for &(p, off, ts, v) in &recs[..400] {
            m.add(p, off, "fs1", &[v, 0.0], ts, 0, "s", &mut out);
        }
        let mut changed = Vec::new();
        m.forget_partition(1);
        m.drain_changes("features", |p, _| changed.push(p));
        let held: u64 = m.snapshot("features", 1).windows.iter().flat_map(|w| w.counts[0].iter()).sum();
        // Partition 1 runs ten minutes behind: its vectors before hour 0 are in a closed window.
        let open1 = recs[..400].iter().filter(|r| r.0 == 1 && r.2 >= 0).count() as u64;
        assert_eq!(held, if track { 0 } else { open1 }, "track {track}");
        if track {
            assert_eq!(changed, vec![0], "only the partition kept is written");
        } else {
            assert!(changed.is_empty(), "nothing tracked without a changelog");
        }
        let all: u64 = m.snapshot("features", 0).windows.iter().flat_map(|w| w.counts[0].iter()).sum();
        assert_eq!(all, 200, "partition 0's own counts stay");
    }
}

fn forecast(entity: &str, ts: i64, version: &str, p50: f64, observed_cpu: f64) -> Forecast {
    Forecast {
        event_id: format!("{entity}-{ts}"),
        entity_id: entity.into(),
        ts_ms: ts,
        points: vec![ForecastPoint {
            metric: Metric::Cpu,
            horizon_min: 15,
            p50,
            p90: p50 * 1.2,
            model: format!("xgboost/{version}"),
        }],
        observed: Observed {
            cpu_util: Some(observed_cpu),
            ..Observed::default()
        },
        ..Forecast::default()
    }
}

/// Runs `steps` forecasts per entity; entity `shifted` sees its actual jump by `jump` from step
/// `shift_at` while the forecasts keep predicting the old level.
fn run_errors(m: &mut ErrorMonitor, steps: i64, shift_at: i64, jump: f64, version: &str, start: i64) -> Vec<DriftAlert> {
    let mut noise = Noise(7);
    let mut out = Vec::new();
    for s in start..start + steps {
        for (i, e) in ["stable", "shifted"].into_iter().enumerate() {
            let level = 0.5;
            let actual = level + 0.05 * noise.next() + if e == "shifted" && s >= shift_at { jump } else { 0.0 };
            m.add(0, s * 2 + i as i64, &forecast(e, s * 5 * MIN, version, level, actual), &mut out);
        }
    }
    out
}

#[test]
fn a_shifted_entity_alerts_once_and_a_stable_one_never() {
    let cfg = DriftConfig::default().model_error;
    let mut m = ErrorMonitor::new(cfg.clone(), 5 * MIN);
    m.add_reference(Arc::new(uniform_reference("v1", true)));
    let out = run_errors(&mut m, 900, 500, 0.5, "v1", 0);
    assert!(m.stats.joined > 1_000, "{:?}", m.stats);
    assert!(out.iter().all(|a| a.entity_id.as_deref() == Some("shifted")), "{out:?}");
    let opens: Vec<&DriftAlert> = out.iter().filter(|a| a.state == AlertState::Open).collect();
    assert_eq!(opens.len(), 1, "one episode: {out:?}");
    let open = opens[0];
    // The shift is at step 500; its first error joins 3 steps (15 min) later.
    let delay_steps = (open.ts_ms / (5 * MIN)) - 503;
    assert!((0..24).contains(&delay_steps), "detected {delay_steps} steps after the shift");
    assert_eq!(open.subject, "cpu@15m");
    assert_eq!(open.statistic, "page_hinkley");
    // The reference is the larger of the validation MAE (0.05) and the entity's baseline (0.025).
    assert_eq!(open.detail("reference_mae"), Some(0.05));
    assert!((open.detail("baseline_mae").unwrap() - 0.025).abs() < 0.005);
    assert!(open.detail("ratio").unwrap() >= cfg.ratio_warning);
    assert!(open.severity >= Severity::Warning);
    // Error 0.5 against a reference of 0.05: the live ratio climbs past the critical 8.
    assert!(out.iter().any(|a| a.state == AlertState::Update && a.severity == Severity::Critical));
    // Updates: at most one per update interval (15 min = 3 steps) over the ~390 remaining steps.
    let updates = out.iter().filter(|a| a.state == AlertState::Update).count();
    assert!((110..=133).contains(&updates), "{updates} updates");
    assert!(out.iter().all(|a| a.alert_id == open.alert_id));

    // A new model version for the entity ends the episode (superseded) and, fitting the new
    // level, raises nothing.
    let mut out2 = Vec::new();
    let ts = 900 * 5 * MIN;
    m.add(0, 1_800, &forecast("shifted", ts, "v2", 0.8, 0.8), &mut out2);
    assert_eq!(out2.len(), 1);
    assert_eq!(out2[0].state, AlertState::Resolved);
    assert_eq!(out2[0].detail("superseded"), Some(1.0));
    assert_eq!(out2[0].model_version.as_deref(), Some("v1"));
}

#[test]
fn without_validation_errors_the_entity_baseline_is_the_reference() {
    let cfg = DriftConfig::default().model_error;
    let mut m = ErrorMonitor::new(cfg, 5 * MIN);
    let out = run_errors(&mut m, 900, 500, 0.4, "v9", 0);
    let open = out.iter().find(|a| a.state == AlertState::Open).expect("shift detected");
    assert!(open.detail("validation_mae").unwrap().is_nan());
    assert_eq!(open.detail("reference_mae"), open.detail("baseline_mae"));
    assert!(out.iter().all(|a| a.entity_id.as_deref() == Some("shifted")));
}

#[test]
fn resolves_when_the_error_returns() {
    let cfg = DriftConfig {
        ..DriftConfig::default()
    }
    .model_error;
    let mut m = ErrorMonitor::new(cfg, 5 * MIN);
    m.add_reference(Arc::new(uniform_reference("v1", true)));
    let mut out = run_errors(&mut m, 600, 400, 0.4, "v1", 0);
    // The actual comes back to the predicted level.
    out.extend(run_errors(&mut m, 300, i64::MAX, 0.0, "v1", 600));
    let last = out.last().unwrap();
    assert_eq!(last.state, AlertState::Resolved, "{out:?}");
    assert_eq!(out.iter().filter(|a| a.state == AlertState::Open).count(), 1);
}

/// Every entity's changelog record, through the wire format, into a fresh monitor.
fn restart(m: &mut ErrorMonitor, version: &str) -> ErrorMonitor {
    let mut next = ErrorMonitor::new(DriftConfig::default().model_error, 5 * MIN);
    next.add_reference(Arc::new(uniform_reference(version, true)));
    next.track_changes();
    let mut n = 0;
    m.drain_changes(|id, partition, s| {
        let s = s.expect("no entity expired");
        assert_eq!((s.entity_id.as_str(), s.partition), (id, partition));
        let mut buf = Vec::new();
        s.encode_framed(&mut buf);
        next.restore(&DriftEntityState::decode(&buf).unwrap());
        n += 1;
    });
    assert_eq!(n, 2, "both entities changed");
    next
}

#[test]
fn a_restored_monitor_continues_exactly_like_an_uninterrupted_one() {
    let cfg = DriftConfig::default().model_error;
    let mut whole = ErrorMonitor::new(cfg.clone(), 5 * MIN);
    whole.add_reference(Arc::new(uniform_reference("v1", true)));
    let mut expected = run_errors(&mut whole, 560, 500, 0.5, "v1", 0);
    expected.extend(run_errors(&mut whole, 440, i64::MAX, 0.0, "v1", 560));

    // Restarted at step 560: after the baseline (day one) and with an episode open.
    let mut first = ErrorMonitor::new(cfg, 5 * MIN);
    first.add_reference(Arc::new(uniform_reference("v1", true)));
    first.track_changes();
    let mut got = run_errors(&mut first, 560, 500, 0.5, "v1", 0);
    assert_eq!(first.open_alerts(), 1, "an episode is open at the restart: {got:?}");
    let mut second = restart(&mut first, "v1");
    assert_eq!(second.open_alerts(), 1);
    got.extend(run_errors(&mut second, 440, i64::MAX, 0.0, "v1", 560));
    // Same alerts, ids and figures: the episode opened before the restart resolves after it.
    assert_eq!(format!("{got:?}"), format!("{expected:?}"));
    assert_eq!(got.last().map(|a| a.state), Some(AlertState::Resolved));
    assert_eq!(got.iter().filter(|a| a.state == AlertState::Open).count(), 1);
    assert_eq!(format!("{:?}", second.snapshot("shifted")), format!("{:?}", whole.snapshot("shifted")));

    // Without the restored state the episode is lost: the second half alerts nothing and the
    // entity would wait a day for a new baseline.
    let mut cold = ErrorMonitor::new(DriftConfig::default().model_error, 5 * MIN);
    cold.add_reference(Arc::new(uniform_reference("v1", true)));
    assert!(run_errors(&mut cold, 440, i64::MAX, 0.0, "v1", 560).is_empty());
}

#[test]
fn forecasts_a_restored_state_already_holds_are_skipped() {
    // A crash after the changelog was written but before the offsets were committed: the
    // records since the commit come again and must not count twice.
    let mut m = ErrorMonitor::new(DriftConfig::default().model_error, 5 * MIN);
    m.add_reference(Arc::new(uniform_reference("v1", true)));
    m.track_changes();
    run_errors(&mut m, 560, 500, 0.5, "v1", 0);
    let before = format!("{:?}", m.snapshot("shifted"));
    let mut restored = restart(&mut m, "v1");
    let again = run_errors(&mut restored, 10, 500, 0.5, "v1", 550);
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(restored.already_applied, 20);
    assert_eq!(format!("{:?}", restored.snapshot("shifted")), before);
    let mut changed = 0;
    restored.drain_changes(|_, _, _| changed += 1);
    assert_eq!(changed, 0, "skipped records change nothing");
}

#[test]
fn the_changelog_gets_changes_once_tombstones_for_expired_entities_and_nothing_for_revoked_ones() {
    let mut m = ErrorMonitor::new(DriftConfig::default().model_error, 5 * MIN);
    m.track_changes();
    let mut out = Vec::new();
    for (i, e) in ["a", "a", "b"].into_iter().enumerate() {
        m.add(if e == "a" { 0 } else { 1 }, i as i64, &forecast(e, 0, "v1", 0.5, 0.5), &mut out);
    }
    let mut seen = Vec::new();
    m.drain_changes(|id, p, s| seen.push((id.to_owned(), p, s.map(|s| s.applied_offset))));
    assert_eq!(seen, vec![("a".to_owned(), 0, Some(1)), ("b".to_owned(), 1, Some(2))]);
    m.drain_changes(|_, _, _| panic!("nothing changed since"));
    // "a" idles for longer than idle_expiry on its partition's clock: a tombstone.
    m.add(0, 3, &forecast("c", 1_000 * 86_400_000, "v1", 0.5, 0.5), &mut out);
    assert_eq!(m.expire(), 1);
    let mut seen = Vec::new();
    m.drain_changes(|id, p, s| seen.push((id.to_owned(), p, s.is_some())));
    seen.sort();
    assert_eq!(seen, vec![("a".to_owned(), 0, false), ("c".to_owned(), 0, true)]);
    // Changes of a revoked partition are not written: its records are processed again by
    // the next owner, from the changelog as it stands.
    m.add(1, 4, &forecast("b", 5 * MIN, "v1", 0.5, 0.5), &mut out);
    m.forget_partition(1);
    m.drain_changes(|id, _, _| panic!("{id} was revoked"));
    // An entity whose forecasts move to another partition (the topic was repartitioned) is
    // written under the new one, even when it moved within a batch.
    m.add(2, 0, &forecast("d", 0, "v1", 0.5, 0.5), &mut out);
    m.add(3, 0, &forecast("d", 5 * MIN, "v1", 0.5, 0.5), &mut out);
    let mut seen = Vec::new();
    m.drain_changes(|id, p, s| seen.push((id.to_owned(), p, s.map(|s| s.partition))));
    assert_eq!(seen, vec![("d".to_owned(), 3, Some(3))]);
}

#[test]
fn unusable_forecasts_are_counted_not_fatal() {
    let mut m = ErrorMonitor::new(DriftConfig::default().model_error, 5 * MIN);
    let mut out = Vec::new();
    let mut f = forecast("e", 0, "v1", f64::NAN, f64::NAN);
    f.observed = Observed::default();
    m.add(0, 0, &f, &mut out);
    m.add(0, 1, &Forecast::default(), &mut out);
    let mut g = forecast("e", 15 * MIN, "v1", 0.5, f64::INFINITY);
    g.points[0].horizon_min = -5;
    m.add(0, 2, &g, &mut out);
    assert!(out.is_empty());
    assert!(m.stats.unusable >= 2, "{:?}", m.stats);
    assert_eq!(m.expire(), 0, "the partition's clock has not moved on");
    // Partition 1 racing ahead (a backlog) does not expire partition 0's entity…
    m.add(1, 0, &forecast("other", 1_000 * 86_400_000, "v1", 0.5, 0.5), &mut out);
    assert_eq!(m.expire(), 0);
    // …its own partition's clock does.
    m.add(0, 3, &forecast("late", 1_000 * 86_400_000, "v1", 0.5, 0.5), &mut out);
    assert_eq!(m.expire(), 1);
    m.forget_partition(1);
    assert_eq!(m.entities(), 1);
}

#[test]
fn defaults_validate_and_bad_values_name_the_key() {
    let mut c = DriftConfig::default();
    c.validate().unwrap();
    c.model_error.resolve_ratio = 9.0;
    assert!(c.validate().unwrap_err().contains("model_error.resolve_ratio"));
    let mut c = DriftConfig::default();
    c.features.window = Duration::from_secs(1);
    assert!(c.validate().unwrap_err().contains("features.window"));
    let mut c = DriftConfig::default();
    c.features.ks_alpha = f64::NAN;
    assert!(c.validate().unwrap_err().contains("features.ks_alpha"));
}

#[test]
fn manifests_parse_and_bad_ones_are_named() {
    let json = br#"{"version":"v1","family":"xgboost","feature_schema":"fs1","feature_names":["a"],
        "interval_ms":300000,"training_rows":5000,
        "reference":[{"feature":"a","edges":[1.0],"shares":[0.5,0.5],"missing_share":0.0}],
        "metrics":{"rows":[{"model":"xgboost","target":"cpu","horizon_slots":3,"mae":0.04},
                           {"model":"naive","target":"cpu","horizon_slots":3,"mae":0.09}]}}"#;
    let r = ModelReference::from_manifest_json(json, "d").unwrap();
    assert_eq!(r.validation_mae.get(&("cpu".to_owned(), 3)), Some(&0.04));
    assert_eq!(r.reference_rows, 5000);
    let bad = br#"{"version":"v1","family":"xgboost","feature_schema":"fs1","interval_ms":300000,
        "reference":[{"feature":"a","edges":[1.0],"shares":[1.0]}]}"#;
    assert!(ModelReference::from_manifest_json(bad, "d").unwrap_err().to_string().contains("reference of a"));
    assert!(ModelReference::from_manifest_json(b"{", "d").is_err());
}

/// Four entities on two forecasts partitions (`e0`, `e2` on 0; `e1`, `e3` on 1), 900 steps of
/// 5 minutes: `e1`'s actual jumps by 0.5 from step 500 and comes back at 700, `e2`'s by 0.4
/// from step 600. Records are (partition, offset, forecast), offsets counted per partition.
fn forecast_stream() -> Vec<(i32, i64, Forecast)> {
    let mut noise = Noise(11);
    let mut next = [0i64; 2];
    let mut recs = Vec::new();
    for s in 0..900i64 {
        for i in 0..4 {
            let jump = match i {
                1 if (500..700).contains(&s) => 0.5,
                2 if s >= 600 => 0.4,
                _ => 0.0,
            };
            let p = i % 2;
            let actual = 0.5 + 0.05 * noise.next() + jump;
            recs.push((p as i32, next[p], forecast(&format!("e{i}"), s * 5 * MIN, "v1", 0.5, actual)));
            next[p] += 1;
        }
    }
    recs
}

fn error_monitor() -> ErrorMonitor {
    let mut m = ErrorMonitor::new(DriftConfig::default().model_error, 5 * MIN);
    m.add_reference(Arc::new(uniform_reference("v1", true)));
    m
}

/// What a crash and a restart from the detectors' changelog give, with each forecasts
/// partition's changed entities written at most every `every` batches
/// (`state.detectors_every`), as the runtime replays it. Batches of `batch` records end once a
/// second; the offsets committed at batch end `committed` carry the floors read at batch end
/// `floors_at`; every batch up to `acked` had its alerts and changelog records acknowledged;
/// the monitor dies at `died`. The restarted monitor reads the changelog back, then each
/// partition is replayed from its floor, the alerts of records below the committed offset
/// suppressed. With `rewrite_after` above 0 the monitor rewrites a partition whole once its
/// changelog grew by that ratio, and the read-back starts at the partition's latest rewrite
/// whose records were all acknowledged (what the runtime stores as its restore start). Returns
/// the suppressed alerts, the alerts sent before the crash followed by the restarted monitor's,
/// the uninterrupted run's, the restarted monitor, and the records read back of those written.
type ErrorRestart = (Vec<DriftAlert>, Vec<DriftAlert>, Vec<DriftAlert>, ErrorMonitor, (usize, usize));
fn errors_crash_and_replay(batch: usize, every: i64, rewrite_after: u32, floors_at: usize, committed: usize, acked: usize, died: usize) -> ErrorRestart {
    let recs = forecast_stream();
    let mut whole = error_monitor();
    let mut expected = Vec::new();
    for (p, off, f) in &recs {
        whole.add(*p, *off, f, &mut expected);
    }
    let mut first = error_monitor();
    first.track_changes();
    first.rewrite_after(rewrite_after);
    let (mut changelog, mut alerts, mut sent, mut floors) = (Vec::new(), Vec::new(), 0, [None, None]);
    let mut starts = [0, 0];
    for (n, (p, off, f)) in recs[..died].iter().enumerate() {
        first.add(*p, *off, f, &mut alerts);
        let end = n + 1;
        if end % batch == 0 {
            let now = (end / batch) as i64 * 1_000;
            let before = changelog.len();
            let rewritten = first.drain_due(now, every * 1_000, |id, p, st| {
                if end <= acked {
                    let wire = st.map(|st| {
                        let mut buf = Vec::new();
                        st.encode_framed(&mut buf);
                        DriftEntityState::decode(&buf).expect("decodes")
                    });
                    changelog.push((id.to_owned(), p, wire));
                }
            });
            for p in rewritten {
                if let Some(i) = changelog[before..].iter().position(|r| r.1 == p) {
                    starts[p as usize] = before + i;
                }
            }
            if end == floors_at {
                floors = [first.replay_floor(0), first.replay_floor(1)];
            }
            if end == acked {
                sent = alerts.len();
            }
        }
    }
    let next = |p: i32| recs[..committed].iter().filter(|r| r.0 == p).map(|r| r.1 + 1).max().unwrap_or(0);
    let committed_at = [next(0), next(1)];
    let mut second = error_monitor();
    second.track_changes();
    second.rewrite_after(rewrite_after);
    let mut read = 0;
    for (i, (id, p, st)) in changelog.iter().enumerate() {
        if i < starts[*p as usize] {
            continue;
        }
        read += 1;
        match st {
            Some(st) => second.restore(st),
            None => second.remove(id, *p),
        }
    }
    let from = |p: usize| floors[p].map_or(committed_at[p], |f: i64| f.min(committed_at[p]));
    let resume = [from(0), from(1)];
    let mut joined = alerts[..sent].to_vec();
    let mut suppressed = Vec::new();
    for (p, off, f) in &recs {
        let p_ = *p as usize;
        if *off < resume[p_] {
            continue;
        }
        let out = if *off < committed_at[p_] { &mut suppressed } else { &mut joined };
        second.add(*p, *off, f, out);
    }
    (suppressed, joined, expected, second, (read, changelog.len()))
}

/// With the detectors written every 10th batch only, a crash with episodes open (the changelog
/// behind the committed offsets) is made exact by the replay floors.
#[test]
fn detectors_written_every_few_batches_are_made_exact_by_the_replay_floor() {
    let (batch, every) = (40, 10);
    // Step 650 (four records a step): e1's episode and e2's are open.
    let (committed, died) = (2_600, 2_630);
    let (suppressed, joined, expected, second, _) = errors_crash_and_replay(batch, every, 0, committed, committed, committed, died);
    let opens: Vec<_> = expected.iter().filter(|a| a.state == AlertState::Open).collect();
    assert_eq!(opens.len(), 2, "e1 and e2 open an episode: {expected:?}");
    assert!(expected.iter().any(|a| a.state == AlertState::Resolved && a.entity_id.as_deref() == Some("e1")));
    assert!(expected.iter().filter(|a| a.ts_ms > 650 * 5 * MIN).count() > 10, "alerts after the crash");
    assert_eq!(joined, expected, "the same alerts, ids and figures, none twice");
    assert!(suppressed.iter().all(|a| expected.contains(a)), "a replay repeats alerts that were sent: {suppressed:?}");
    assert_eq!(second.already_applied, 0, "nothing the changelog holds is replayed");
    // A floor read at an older commit replays more: what the changelog holds is skipped.
    let older = committed - 12 * batch;
    let (_, joined, _, second, _) = errors_crash_and_replay(batch, every, 0, older, committed, committed, died);
    assert_eq!(joined, expected);
    assert!(second.already_applied > 0, "the older floor is below what the changelog holds");
    // The floor was needed: without it the restarted monitor misses the unsaved errors.
    let (_, without, _, _, _) = errors_crash_and_replay(batch, every, 0, 0, committed, committed, died);
    assert_ne!(without, expected, "a replay from the committed offsets alone loses errors");
}

#[test]
fn the_detectors_replay_floor_only_grows_and_writes_wait_for_their_interval() {
    let mut m = error_monitor();
    assert_eq!(m.replay_floor(0), None, "nothing tracked");
    m.track_changes();
    assert_eq!(m.replay_floor(0), None, "nothing seen");
    let (mut out, mut written, mut floors) = (Vec::new(), 0, Vec::new());
    for (n, (p, off, f)) in forecast_stream().iter().enumerate().take(2_000) {
        m.add(*p, *off, f, &mut out);
        if (n + 1) % 40 == 0 {
            m.drain_due((n as i64 + 1) / 40 * 1_000, 10_000, |_, _, _| written += 1);
            floors.push(m.replay_floor(0).expect("seen"));
        }
    }
    assert!(floors.windows(2).all(|w| w[0] <= w[1]), "{floors:?}");
    // A partition's first write is at once (partition 0 has 20 of the first 40 forecasts),
    // then every 10 batches: the floor moves by 200 of its offsets at a time.
    assert_eq!(floors[0], 20, "{floors:?}");
    assert_eq!(floors[10] - floors[9], 200, "{floors:?}");
    assert_eq!(floors[11], floors[10], "{floors:?}");
    // 50 batches (1 s apart): writes at batches 1, 11, 21, 31 and 41, each of the four entities.
    assert_eq!(written, 4 * 5, "{written} records");
    let mut every_batch = error_monitor();
    every_batch.track_changes();
    let mut all = 0;
    for (n, (p, off, f)) in forecast_stream().iter().enumerate().take(2_000) {
        every_batch.add(*p, *off, f, &mut out);
        if (n + 1) % 40 == 0 {
            every_batch.drain_changes(|_, _, _| all += 1);
        }
    }
    assert_eq!(all, 4 * 50, "every entity in every batch");
    assert_eq!(every_batch.replay_floor(0), Some(1_000), "all saved: the next offset");
}

/// A partition whose changelog grew by `rewrite_after` times its last rewrite is written whole
/// at its next drain (every live entity, changed or not); a restart reading from there only
/// gives the uninterrupted run's alerts, and reads a bounded number of records.
#[test]
fn detectors_are_rewritten_whole_once_their_changelog_grew_and_restored_from_there() {
    let mut m = error_monitor();
    m.track_changes();
    m.rewrite_after(2);
    let mut out = Vec::new();
    let mut offset = 0;
    let mut step = |m: &mut ErrorMonitor, ids: &[&str]| -> (Vec<String>, Vec<i32>) {
        for id in ids {
            m.add(0, offset, &forecast(id, offset * 5 * MIN, "v1", 0.5, 0.5), &mut out);
            offset += 1;
        }
        let mut written = Vec::new();
        let rewritten = m.drain_changes(|id, _, _| written.push(id.to_owned()));
        written.sort();
        (written, rewritten)
    };
    let both = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    // No rewrite yet: the changes only. Then 2 records since a rewrite of none: e2 too.
    assert_eq!(step(&mut m, &["e0", "e2"]), (both(&["e0", "e2"]), vec![]));
    assert_eq!(step(&mut m, &["e0"]), (both(&["e0", "e2"]), vec![0]));
    // Four records of e0 (2 × the rewrite's 2) before the next rewrite.
    for _ in 0..4 {
        assert_eq!(step(&mut m, &["e0"]), (both(&["e0"]), vec![]));
    }
    assert_eq!(step(&mut m, &["e0"]), (both(&["e0", "e2"]), vec![0]));
    // A read-back counts what it read beyond one record per entity: 5 records of 2 entities.
    let snap = |id: &str| m.snapshot(id).expect("known");
    let records = [snap("e0"), snap("e0"), snap("e2"), snap("e0"), snap("e0")];
    for complete in [true, false] {
        let mut r = error_monitor();
        r.track_changes();
        r.rewrite_after(2);
        for s in &records {
            r.restore(s);
        }
        r.restored(&[0], complete);
        let mut changed = |r: &mut ErrorMonitor, off: i64| {
            r.add(0, off, &forecast("e0", off * 5 * MIN, "v1", 0.5, 0.5), &mut out);
            r.drain_changes(|_, _, _| {})
        };
        assert_eq!(changed(&mut r, 100), Vec::<i32>::new(), "3 records past the base of 2");
        let expected: Vec<i32> = if complete { vec![0] } else { vec![] };
        assert_eq!(changed(&mut r, 101), expected, "complete read-back: {complete}");
    }
    // Through a crash: restored from the latest acknowledged rewrites, the same alerts; the
    // read-back holds a few records per entity instead of the whole changelog.
    let (batch, committed, died) = (40, 2_600, 2_630);
    let (_, joined, expected, _, (read, written)) = errors_crash_and_replay(batch, 0, 2, committed, committed, committed, died);
    assert_eq!(joined, expected);
    let (_, _, _, _, (read_all, written_all)) = errors_crash_and_replay(batch, 0, 0, committed, committed, committed, died);
    assert_eq!(read_all, written_all);
    assert!(read <= (2 + 1) * 4 + 4 && read_all > 50 * read, "{read} of {written}, {read_all} without rewrites");
    assert_eq!(written, written_all, "every entity changes in every batch: a rewrite costs nothing more");
}

/// Forecasts that cannot be used (dead-lettered before the detectors, or without points) still
/// move the floor on at the partition's next write.
#[test]
fn forecasts_that_change_nothing_move_the_detectors_floor_on() {
    let mut m = error_monitor();
    m.track_changes();
    let mut out = Vec::new();
    for off in 0..10 {
        m.saw(4, off);
    }
    m.add(4, 10, &Forecast::default(), &mut out);
    assert_eq!(m.replay_floor(4), Some(0));
    let mut records = 0;
    m.drain_due(1_000, 10_000, |_, _, _| records += 1);
    assert_eq!(records, 0, "no entity changed");
    assert_eq!(m.replay_floor(4), Some(11));
    // Revoked: the partition's floor goes with it.
    m.forget_partition(4);
    assert_eq!(m.replay_floor(4), None);
}

/// Where a crash of a stream of `total` records in batches of `batch` falls, from a property
/// test's draws: the offsets are committed at a batch end (`committed`, rounded down), carrying
/// floors read `older` batches before (at a batch end: the first one at the latest, never after
/// the commit); `ahead` more batches were acknowledged; the monitor dies `tail` records into
/// the next. Returns (floors read at, committed, acknowledged, died).
fn crash_points(total: usize, batch: usize, committed: usize, older: usize, ahead: usize, tail: usize) -> (usize, usize, usize, usize) {
    let last = total / batch * batch;
    let committed = (committed / batch * batch).min(last);
    let floors_at = committed.saturating_sub(older * batch).max(batch);
    let acked = (committed + ahead * batch).min(last);
    let died = (acked + tail % batch).min(total);
    (floors_at, committed, acked, died)
}

proptest! {
    #[test]
    fn statistics_are_bounded_for_any_counts(counts in proptest::collection::vec(0u64..10_000, 10), n_ref in 1u64..1_000_000) {
        let shares = vec![0.1f32; 10];
        let p = psi(&shares, &counts);
        let (d, pv) = ks_binned(&shares, &counts, n_ref);
        if counts.iter().sum::<u64>() > 0 {
            prop_assert!(p.is_finite() && p >= -1e-12);
            prop_assert!((0.0..=1.0 + 1e-12).contains(&d));
            prop_assert!((0.0..=1.0).contains(&pv));
        } else {
            prop_assert!(p.is_nan() && d.is_nan());
        }
    }

    /// Wherever the crash falls, and however far the changelog is ahead of the committed
    /// offsets, the restarted feature windows give the uninterrupted run's alerts.
    #[test]
    fn feature_windows_restored_anywhere_give_the_uninterrupted_alerts(
        batch in 40usize..400, committed in 0usize..6_000, ahead in 0usize..4, tail in 0usize..400,
    ) {
        let committed = committed / batch * batch;
        let written = (committed + ahead * batch).min(6_000 / batch * batch);
        let died = (written + tail % batch).min(6_000);
        let ends: Vec<usize> = (1..=6_000 / batch).map(|k| k * batch).collect();
        let (_, joined, expected, second) = crash_and_restore(&ends, committed, written, died);
        prop_assert_eq!(second.already_applied, (written - committed) as u64);
        prop_assert_eq!(joined, expected);
    }

    /// With the changelog written at most every few batches, wherever the crash falls, however
    /// old the committed floors and however far the acknowledged batches run past the commit,
    /// the restarted monitor gives the uninterrupted run's alerts (repeats after the committed
    /// offsets aside, which carry the same ids and figures).
    #[test]
    fn feature_windows_written_every_few_batches_and_replayed_give_the_uninterrupted_alerts(
        batch in 40usize..400, every in 1i64..20, committed in 0usize..6_000, older in 0usize..3,
        ahead in 0usize..4, tail in 0usize..400,
    ) {
        let (floors_at, committed, acked, died) = crash_points(6_000, batch, committed, older, ahead, tail);
        let (_, joined, expected, _) = crash_and_replay(batch, every, floors_at, committed, acked, died);
        prop_assert_eq!(deduplicated(joined), expected);
    }

    /// The detectors written at most every few batches: wherever the crash falls, however old
    /// the committed floors and however far the acknowledged batches run past the commit, the
    /// restarted monitor gives the uninterrupted run's alerts (repeats after the committed
    /// offsets aside, which carry the same ids and figures).
    #[test]
    fn detectors_written_every_few_batches_and_replayed_give_the_uninterrupted_alerts(
        batch in 20usize..300, every in 0i64..20, rewrite_after in 0u32..6, committed in 0usize..3_600,
        older in 0usize..3, ahead in 0usize..4, tail in 0usize..300,
    ) {
        let (floors_at, committed, acked, died) = crash_points(3_600, batch, committed, older, ahead, tail);
        let (_, joined, expected, _, _) = errors_crash_and_replay(batch, every, rewrite_after, floors_at, committed, acked, died);
        prop_assert_eq!(deduplicated(joined), expected);
    }

    #[test]
    fn error_monitor_never_panics(values in proptest::collection::vec((any::<f64>(), any::<f64>(), -100i32..100, 0i64..1_000), 1..200)) {
        let mut m = ErrorMonitor::new(DriftConfig::default().model_error, 5 * MIN);
        m.add_reference(Arc::new(uniform_reference("v1", true)));
        let mut out = Vec::new();
        for (i, (p50, obs, h, step)) in values.into_iter().enumerate() {
            let mut f = forecast("e", step * 5 * MIN, "v1", p50, obs);
            f.points[0].horizon_min = h;
            m.add(0, i as i64, &f, &mut out);
        }
        for a in &out {
            prop_assert_eq!(a.kind, DriftKind::ModelError);
        }
    }
}
