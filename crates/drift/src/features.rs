//! Feature-distribution drift: live values of each watched feature are binned on the serving
//! version's reference deciles over a tumbling event-time window; when the window closes, PSI
//! and a binned two-sample KS test compare it with the reference. A window breaches when PSI
//! reaches the threshold *and* the KS test rejects at `ks_alpha`. Episodes: the first breaching
//! window opens an alert, each further one updates it, the first clean window resolves it.
//!
//! Counts are kept per partition, so that each partition's share of the open windows can be
//! written to a changelog ([`FeatureMonitor::track_changes`], [`FeatureMonitor::drain_due`], at
//! most once per interval) and read back by whichever instance is assigned the partition next
//! ([`FeatureMonitor::restore`]), which replays what the last record does not hold from the
//! partition's [`FeatureMonitor::replay_floor`]; a window is judged on the sum of its
//! partitions' counts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use headroom_schemas::drift::alert_id;
use headroom_schemas::drift_windows::WindowCounts;
use headroom_schemas::{AlertState, DriftAlert, DriftKind, FeatureWindowsState, Severity};

use crate::config::FeatureDrift;
use crate::reference::ModelReference;
use crate::stats::{ks_binned, psi};

#[derive(Debug, Clone)]
struct Watched {
    /// Index in the feature vector.
    index: usize,
    /// Index in the reference.
    reference: usize,
    /// The open episode's alert id.
    open: Option<String>,
}

/// One window's counts, per watched feature: bins, then missing values.
#[derive(Debug, Clone)]
struct Window {
    counts: Vec<Vec<u64>>,
    missing: Vec<u64>,
}

impl Window {
    fn empty(watched: &[Watched], reference: &ModelReference) -> Window {
        Window {
            counts: watched.iter().map(|w| vec![0; reference.features[w.reference].shares.len()]).collect(),
            missing: vec![0; watched.len()],
        }
    }

    fn add(&mut self, other: &Window) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        for (x, y) in self.missing.iter_mut().zip(&other.missing) {
            *x += y;
        }
    }
}

/// Why a changelog record was not read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreSkip {
    #[error("counts binned on version `{found}`, the references are `{serving}`'s")]
    OtherVersion { found: String, serving: String },
    #[error("window of {found} ms, this monitor's is {configured} ms")]
    OtherWindow { found: i64, configured: i64 },
}

/// Windows of live feature values against one reference. One per drift-monitor instance: the
/// values of all its partitions (a hash sample of the fleet) go into the same windows, and a
/// window closes when every active partition's event time has passed its end: the watermark is
/// the slowest active partition's newest event time. A partition is active while it delivered
/// a record (or was assigned) within the last `idle_partition_grace` of wall-clock time, or its event
/// time is within two windows of the newest; so a backlog consumed partition by partition is
/// still windowed exactly, and a partition without entities does not hold windows open.
#[derive(Debug)]
pub struct FeatureMonitor {
    cfg: FeatureDrift,
    reference: Arc<ModelReference>,
    watched: Vec<Watched>,
    window_ms: i64,
    /// Open windows by start: each partition's counts.
    windows: BTreeMap<i64, FxHashMap<i32, Window>>,
    partitions: FxHashMap<i32, PartitionClock>,
    /// Per partition, the offset of the last record added (records at or below it are already
    /// counted: they are skipped, as after a restore ahead of the committed offset).
    applied: FxHashMap<i32, i64>,
    /// Windows ending at or before this were judged by this instance.
    closed_until: i64,
    /// This instance's name in its changelog records (random per monitor).
    writer: String,
    /// Whether this instance has counted or judged anything itself (restores aside): until it
    /// has, it continues the instances whose records it reads.
    started: bool,
    /// The closed mark this instance took over from the records it restored while it had not
    /// started (a restart): its own partitions' vectors before it are late.
    own_floor: i64,
    /// Per writer of restored records (another instance, or an earlier run of this one), the
    /// newest closed mark of its records.
    lineages: FxHashMap<String, i64>,
    /// Per partition restored from another writer's record, that writer: the partition's
    /// vectors are late against that writer's mark (another replica's mark never closes this
    /// instance's windows).
    origin: FxHashMap<i32, String>,
    /// Per watched feature, the writer whose record its open episode was taken from.
    adopted_from: Vec<Option<String>>,
    /// Partitions whose changelog record changed since the last drain (when tracking).
    changed: BTreeSet<i32>,
    /// Per partition, the offset through which the changelog holds its counts (that of the last
    /// record written or read back).
    saved_to: FxHashMap<i32, i64>,
    /// Per partition, the first offset seen since it was assigned (before anything was saved).
    first_seen: FxHashMap<i32, i64>,
    /// Per partition, the wall clock of its last changelog record.
    written_ms: FxHashMap<i32, i64>,
    track: bool,
    /// Vectors of another feature set than the reference's (not judged).
    pub schema_mismatches: u64,
    /// Vectors for a window that had already closed.
    pub late: u64,
    /// Records at or below their partition's restored offset (already counted).
    pub already_applied: u64,
}

/// A name for this monitor's changelog records, different for every monitor of every process.
fn new_writer() -> String {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:016x}", std::collections::hash_map::RandomState::new().hash_one((std::process::id(), nanos)))
}

/// At most this many windows are open at once (the oldest is closed first).
const MAX_OPEN_WINDOWS: usize = 168;

#[derive(Debug, Clone, Copy)]
struct PartitionClock {
    /// Newest event time seen (`i64::MIN` before the first record).
    newest: i64,
    /// Wall clock of the last record or of the assignment.
    active_ms: i64,
}

impl FeatureMonitor {
    pub fn new(cfg: FeatureDrift, reference: Arc<ModelReference>) -> FeatureMonitor {
        let watched: Vec<Watched> = reference
            .feature_names
            .iter()
            .enumerate()
            .filter(|(_, n)| cfg.features.is_empty() || cfg.features.iter().any(|f| f == *n))
            .filter_map(|(index, name)| {
                let r = reference.features.iter().position(|f| &f.feature == name)?;
                Some(Watched {
                    index,
                    reference: r,
                    open: None,
                })
            })
            .collect();
        let adopted_from = vec![None; watched.len()];
        FeatureMonitor {
            window_ms: cfg.window.as_millis().max(1) as i64,
            cfg,
            reference,
            watched,
            windows: BTreeMap::new(),
            partitions: FxHashMap::default(),
            applied: FxHashMap::default(),
            closed_until: i64::MIN,
            writer: new_writer(),
            started: false,
            own_floor: i64::MIN,
            lineages: FxHashMap::default(),
            origin: FxHashMap::default(),
            adopted_from,
            changed: BTreeSet::new(),
            saved_to: FxHashMap::default(),
            first_seen: FxHashMap::default(),
            written_ms: FxHashMap::default(),
            track: false,
            schema_mismatches: 0,
            late: 0,
            already_applied: 0,
        }
    }

    /// Keeps the set of partitions whose changelog record changed, for
    /// [`FeatureMonitor::drain_changes`]; a revoked partition's counts then leave with it (its
    /// next owner reads them back from the changelog).
    pub fn track_changes(&mut self) {
        self.track = true;
    }

    pub fn reference(&self) -> &ModelReference {
        &self.reference
    }

    /// Names of the watched features.
    pub fn watched(&self) -> Vec<&str> {
        self.watched.iter().map(|w| self.reference.features[w.reference].feature.as_str()).collect()
    }

    /// A partition was assigned at wall-clock `now_ms`: windows wait for it (for a grace).
    pub fn assign_partition(&mut self, partition: i32, now_ms: i64) {
        self.partitions.entry(partition).or_insert(PartitionClock {
            newest: i64::MIN,
            active_ms: now_ms,
        });
    }

    /// A partition left this instance: it no longer holds the watermark back. When tracking
    /// changes, its counts leave too (the changelog has them as of the last committed batch);
    /// otherwise they stay in the windows.
    pub fn forget_partition(&mut self, partition: i32) {
        self.partitions.remove(&partition);
        self.applied.remove(&partition);
        self.saved_to.remove(&partition);
        self.first_seen.remove(&partition);
        self.written_ms.remove(&partition);
        self.origin.remove(&partition);
        if self.track {
            self.changed.remove(&partition);
            self.drop_counts(partition);
        }
    }

    /// A record of `partition` at `offset` reached the monitor (whether or not it could be
    /// decoded): the replay floor of a partition with nothing saved yet starts there. The
    /// service calls it for every features record, before [`FeatureMonitor::add`].
    pub fn saw(&mut self, partition: i32, offset: i64) {
        self.first_seen.entry(partition).or_insert(offset);
    }

    /// A record of `partition` at `offset` that could not be counted (dead-lettered): the
    /// partition's offset moves past it all the same, so that its next changelog record
    /// includes it and a restart does not replay it (a partition receiving nothing but bad
    /// records would otherwise keep its replay floor at the first of them).
    pub fn skip(&mut self, partition: i32, offset: i64) {
        self.started = true;
        let applied = self.applied.entry(partition).or_insert(-1);
        if offset > *applied {
            *applied = offset;
            if self.track {
                self.changed.insert(partition);
            }
        }
    }

    /// The smallest offset of `partition` whose counts the changelog may not hold yet: a
    /// restart replays the partition from there (the runtime keeps it with each commit). It
    /// only grows, so a floor read earlier is still a safe one. `None` before any record of
    /// the partition was seen or read back, and when not tracking changes.
    pub fn replay_floor(&self, partition: i32) -> Option<i64> {
        if !self.track {
            return None;
        }
        self.saved_to
            .get(&partition)
            .map(|o| o + 1)
            .or_else(|| self.first_seen.get(&partition).copied())
    }

    /// Drops what this monitor holds of `partition` (its counts and offset) but keeps it
    /// assigned: a changelog record that cannot be used makes the partition start afresh.
    pub fn reset_partition(&mut self, partition: i32) {
        self.applied.remove(&partition);
        self.saved_to.remove(&partition);
        self.origin.remove(&partition);
        self.drop_counts(partition);
    }

    /// The mark `partition`'s vectors are late against: this instance's own, or that of the
    /// writer its restored record came from, whichever is further.
    fn late_before(&self, partition: i32) -> i64 {
        let inherited = match self.origin.get(&partition) {
            Some(w) => self.lineages.get(w).copied().unwrap_or(i64::MIN),
            None => self.own_floor,
        };
        self.closed_until.max(inherited)
    }

    /// The writer's name in this monitor's changelog records.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// Names this monitor's changelog records (tests: two replicas, or one restarted).
    pub fn set_writer(&mut self, writer: &str) {
        self.writer = writer.to_owned();
    }

    fn drop_counts(&mut self, partition: i32) {
        for parts in self.windows.values_mut() {
            parts.remove(&partition);
        }
        self.windows.retain(|_, parts| !parts.is_empty());
    }

    /// Adds one feature vector of `partition` (its record at `offset`) at event time `ts_ms`,
    /// read at wall-clock `now_ms`; alerts of the windows this closes go to `out`. `scope`
    /// names what the windows cover (for ids and the alert's scope).
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        partition: i32,
        offset: i64,
        feature_set: &str,
        values: &[f32],
        ts_ms: i64,
        now_ms: i64,
        scope: &str,
        out: &mut Vec<DriftAlert>,
    ) {
        let applied = self.applied.entry(partition).or_insert(-1);
        if offset <= *applied {
            self.already_applied += 1;
            return;
        }
        *applied = offset;
        self.started = true;
        if self.track {
            self.changed.insert(partition);
        }
        if feature_set != self.reference.feature_schema {
            self.schema_mismatches += 1;
            return;
        }
        let start = ts_ms.div_euclid(self.window_ms) * self.window_ms;
        if start < self.late_before(partition) {
            self.late += 1;
        } else {
            let (watched, reference) = (&self.watched, &self.reference);
            let win = self
                .windows
                .entry(start)
                .or_default()
                .entry(partition)
                .or_insert_with(|| Window::empty(watched, reference));
            for (k, w) in self.watched.iter().enumerate() {
                match values.get(w.index) {
                    Some(x) if x.is_finite() => win.counts[k][self.reference.features[w.reference].bin(*x)] += 1,
                    _ => win.missing[k] += 1,
                }
            }
        }
        let clock = self.partitions.entry(partition).or_insert(PartitionClock {
            newest: i64::MIN,
            active_ms: now_ms,
        });
        clock.newest = clock.newest.max(ts_ms);
        clock.active_ms = now_ms;
        let global = self.partitions.values().map(|c| c.newest).max().unwrap_or(ts_ms);
        let near = global.saturating_sub(2 * self.window_ms);
        let grace = self.cfg.idle_partition_grace.as_millis() as i64;
        let watermark = self
            .partitions
            .values()
            .filter(|c| c.newest >= near || now_ms - c.active_ms < grace)
            .map(|c| c.newest)
            .min()
            .unwrap_or(global);
        while let Some((&ws, _)) = self.windows.first_key_value() {
            if ws + self.window_ms > watermark && self.windows.len() <= MAX_OPEN_WINDOWS {
                break;
            }
            let parts = self.windows.remove(&ws).expect("first window");
            let mut win = Window::empty(&self.watched, &self.reference);
            // Summed in partition order: the same counts whatever the order they arrived in.
            let mut ps: Vec<_> = parts.into_iter().collect();
            ps.sort_unstable_by_key(|(p, _)| *p);
            for (_, w) in &ps {
                win.add(w);
            }
            self.close(ws, win, scope, out);
            if self.track {
                // Every partition's record holds the closed mark and the episodes.
                self.changed.extend(self.partitions.keys().copied());
                self.changed.extend(ps.iter().map(|(p, _)| *p));
            }
        }
    }

    /// Hands out the changelog record of every partition changed since the last call.
    pub fn drain_changes(&mut self, topic: &str, f: impl FnMut(i32, &FeatureWindowsState)) {
        self.drain_due(topic, 0, 0, f);
    }

    /// Hands out the changelog record of every partition changed since its last record, if that
    /// record is at least `every_ms` old at wall-clock `now_ms` (0: every changed partition).
    /// The others wait: what they hold beyond their last record is covered by
    /// [`FeatureMonitor::replay_floor`].
    pub fn drain_due(&mut self, topic: &str, now_ms: i64, every_ms: i64, mut f: impl FnMut(i32, &FeatureWindowsState)) {
        let due: Vec<i32> = self
            .changed
            .iter()
            .copied()
            .filter(|p| every_ms <= 0 || self.written_ms.get(p).is_none_or(|w| now_ms - w >= every_ms))
            .collect();
        for p in due {
            self.changed.remove(&p);
            let s = self.snapshot(topic, p);
            self.saved_to.insert(p, s.applied_offset);
            self.written_ms.insert(p, now_ms);
            f(p, &s);
        }
    }

    /// `partition`'s changelog record: its counts in the open windows, its clock and offset, the
    /// instance's closed mark and open episodes.
    pub fn snapshot(&self, topic: &str, partition: i32) -> FeatureWindowsState {
        let names = self.watched();
        FeatureWindowsState {
            topic: topic.to_owned(),
            partition,
            model_version: self.reference.version.clone(),
            feature_schema: self.reference.feature_schema.clone(),
            window_ms: self.window_ms,
            applied_offset: self.applied.get(&partition).copied().unwrap_or(-1),
            newest_ts_ms: self.partitions.get(&partition).map(|c| c.newest).filter(|n| *n != i64::MIN),
            closed_until_ms: self.written_mark(),
            features: names.iter().map(|n| (*n).to_owned()).collect(),
            windows: self
                .windows
                .iter()
                .filter_map(|(ws, parts)| {
                    let w = parts.get(&partition)?;
                    Some(WindowCounts { start_ms: *ws, counts: w.counts.clone(), missing: w.missing.clone() })
                })
                .collect(),
            episodes: self
                .watched
                .iter()
                .zip(&names)
                .filter_map(|(w, n)| Some(((*n).to_owned(), w.open.clone()?)))
                .collect(),
            writer: self.writer.clone(),
        }
    }

    /// The closed mark the records say: the instance's, but never past a window still open
    /// here (one of a partition taken over from another writer, which closed less): every
    /// window before it was judged.
    fn written_mark(&self) -> Option<i64> {
        let mark = self.closed_until.max(self.own_floor);
        let mark = self.windows.first_key_value().map_or(mark, |(ws, _)| mark.min(*ws));
        (mark != i64::MIN).then_some(mark)
    }

    /// Reads one changelog record back (at wall-clock `now_ms`): it replaces whatever this
    /// monitor holds of its partition. The closed mark only moves forward; the open episodes
    /// are those of the records with the newest closed mark. A record of another version or window length is not
    /// used, and the partition starts afresh (the newest record of a partition is the one that
    /// counts).
    pub fn restore(&mut self, s: &FeatureWindowsState, now_ms: i64) -> Result<(), RestoreSkip> {
        let p = s.partition;
        self.reset_partition(p);
        if s.model_version != self.reference.version || s.feature_schema != self.reference.feature_schema {
            return Err(RestoreSkip::OtherVersion { found: s.model_version.clone(), serving: self.reference.version.clone() });
        }
        if s.window_ms != self.window_ms {
            return Err(RestoreSkip::OtherWindow { found: s.window_ms, configured: self.window_ms });
        }
        self.applied.insert(p, s.applied_offset);
        self.saved_to.insert(p, s.applied_offset);
        let clock = self.partitions.entry(p).or_insert(PartitionClock { newest: i64::MIN, active_ms: now_ms });
        clock.newest = clock.newest.max(s.newest_ts_ms.unwrap_or(i64::MIN));
        clock.active_ms = now_ms;
        // The record's features by name: a feature no longer watched is left out, one newly
        // watched starts at zero.
        let names: Vec<String> = self.watched().into_iter().map(str::to_owned).collect();
        // Closed marks are merged by writer: a newer record of a writer says its older ones'
        // windows are judged (a restart reads records of different ages), while another
        // replica's mark says nothing of this instance's windows. An instance that has not
        // started continues the writers it reads (their marks hold its own partitions too).
        let closed = s.closed_until_ms.unwrap_or(i64::MIN);
        if s.writer.is_empty() || s.writer != self.writer {
            let writer = s.writer.clone();
            self.origin.insert(p, writer.clone());
            let mark = self.lineages.entry(writer.clone()).or_insert(i64::MIN);
            if closed > *mark {
                *mark = closed;
                let theirs: Vec<i32> = self.origin.iter().filter(|(_, w)| **w == writer).map(|(q, _)| *q).collect();
                for (ws, parts) in self.windows.iter_mut() {
                    if *ws < closed {
                        for q in &theirs {
                            parts.remove(q);
                        }
                    }
                }
                self.windows.retain(|_, parts| !parts.is_empty());
                for (w, from) in self.watched.iter_mut().zip(&mut self.adopted_from) {
                    if from.as_deref() == Some(writer.as_str()) {
                        w.open = None;
                        *from = None;
                    }
                }
            }
            if !self.started {
                self.own_floor = self.own_floor.max(closed);
            }
            // Episodes change only when a window closes: those of a writer's newest records are
            // taken where this instance has none open.
            if closed == self.lineages[&writer] {
                for (f, id) in &s.episodes {
                    if let Some(k) = names.iter().position(|n| n == f) {
                        if self.watched[k].open.is_none() {
                            self.watched[k].open = Some(id.clone());
                            self.adopted_from[k] = Some(writer.clone());
                        }
                    }
                }
            }
        }
        let floor = self.late_before(p);
        let slot: Vec<Option<usize>> = s
            .features
            .iter()
            .map(|f| names.iter().position(|n| n == f))
            .collect();
        for wc in &s.windows {
            if wc.start_ms < floor || wc.start_ms.rem_euclid(self.window_ms) != 0 {
                continue;
            }
            let mut win = Window::empty(&self.watched, &self.reference);
            for (j, k) in slot.iter().enumerate() {
                let Some(k) = *k else { continue };
                if wc.counts[j].len() == win.counts[k].len() {
                    win.counts[k].copy_from_slice(&wc.counts[j]);
                    win.missing[k] = wc.missing[j];
                }
            }
            self.windows.entry(wc.start_ms).or_default().insert(p, win);
        }
        Ok(())
    }

    /// Windows open now (for tests and logs).
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// Judges one window.
    fn close(&mut self, ws: i64, win: Window, scope: &str, out: &mut Vec<DriftAlert>) {
        self.started = true;
        self.closed_until = self.closed_until.max(ws + self.window_ms);
        let we = ws + self.window_ms;
        for (k, w) in self.watched.iter_mut().enumerate() {
            let counts = &win.counts[k];
            let n: u64 = counts.iter().sum();
            if n < self.cfg.min_samples {
                continue;
            }
            let r = &self.reference.features[w.reference];
            let p = psi(&r.shares, counts);
            let (d, pv) = ks_binned(&r.shares, counts, self.reference.reference_rows);
            let breach = p >= self.cfg.psi_warning && pv < self.cfg.ks_alpha;
            let state = match (&w.open, breach) {
                (None, true) => {
                    w.open = Some(alert_id(DriftKind::FeatureDistribution, &r.feature, scope, &self.reference.version, ws));
                    AlertState::Open
                }
                (Some(_), true) => AlertState::Update,
                (Some(_), false) => AlertState::Resolved,
                (None, false) => continue,
            };
            let id = w.open.clone().unwrap_or_default();
            let missing_share = win.missing[k] as f64 / (n + win.missing[k]).max(1) as f64;
            out.push(DriftAlert {
                alert_id: id,
                entity_id: None,
                ts_ms: we,
                kind: DriftKind::FeatureDistribution,
                subject: r.feature.clone(),
                statistic: "psi".into(),
                value: p,
                threshold: self.cfg.psi_warning,
                severity: if state == AlertState::Resolved {
                    Severity::Info
                } else if p >= self.cfg.psi_critical {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                model_version: Some(self.reference.version.clone()),
                window_start_ms: ws,
                window_end_ms: we,
                state,
                scope: Some(scope.to_owned()),
                details: vec![
                    ("ks_alpha".into(), self.cfg.ks_alpha),
                    ("ks_d".into(), d),
                    ("ks_p".into(), pv),
                    ("live_missing_share".into(), missing_share),
                    ("live_n".into(), n as f64),
                    ("reference_missing_share".into(), f64::from(r.missing_share)),
                ],
            });
            if state == AlertState::Resolved {
                w.open = None;
            }
        }
    }

    /// Open episodes (for gauges).
    pub fn open_alerts(&self) -> usize {
        self.watched.iter().filter(|w| w.open.is_some()).count()
    }
}
