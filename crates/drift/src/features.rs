//! Feature-distribution drift: live values of each watched feature are binned on the serving
//! version's reference deciles over a tumbling event-time window; when the window closes, PSI
//! and a binned two-sample KS test compare it with the reference. A window breaches when PSI
//! reaches the threshold *and* the KS test rejects at `ks_alpha`. Episodes: the first breaching
//! window opens an alert, each further one updates it, the first clean window resolves it.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use headroom_schemas::drift::alert_id;
use headroom_schemas::{AlertState, DriftAlert, DriftKind, Severity};

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
    windows: BTreeMap<i64, Window>,
    partitions: FxHashMap<i32, PartitionClock>,
    closed_until: i64,
    /// Vectors of another feature set than the reference's (not judged).
    pub schema_mismatches: u64,
    /// Vectors for a window that had already closed.
    pub late: u64,
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
        let watched = reference
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
        FeatureMonitor {
            window_ms: cfg.window.as_millis().max(1) as i64,
            cfg,
            reference,
            watched,
            windows: BTreeMap::new(),
            partitions: FxHashMap::default(),
            closed_until: i64::MIN,
            schema_mismatches: 0,
            late: 0,
        }
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

    /// A partition left this instance: it no longer holds the watermark back.
    pub fn forget_partition(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Adds one feature vector of `partition` at event time `ts_ms`, read at wall-clock
    /// `now_ms`; alerts of the windows this closes go to `out`. `scope` names what the windows
    /// cover (for ids and the alert's scope).
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        partition: i32,
        feature_set: &str,
        values: &[f32],
        ts_ms: i64,
        now_ms: i64,
        scope: &str,
        out: &mut Vec<DriftAlert>,
    ) {
        if feature_set != self.reference.feature_schema {
            self.schema_mismatches += 1;
            return;
        }
        let start = ts_ms.div_euclid(self.window_ms) * self.window_ms;
        if start < self.closed_until {
            self.late += 1;
        } else {
            if !self.windows.contains_key(&start) {
                let counts = self.watched.iter().map(|w| vec![0; self.reference.features[w.reference].shares.len()]).collect();
                self.windows.insert(start, Window { counts, missing: vec![0; self.watched.len()] });
            }
            let win = self.windows.get_mut(&start).expect("window just ensured");
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
            let win = self.windows.remove(&ws).expect("first window");
            self.close(ws, win, scope, out);
        }
    }

    /// Judges one window.
    fn close(&mut self, ws: i64, win: Window, scope: &str, out: &mut Vec<DriftAlert>) {
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
