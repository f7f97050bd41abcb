//! Feature-distribution drift: live values of each watched feature are binned on the serving
//! version's reference deciles over a tumbling event-time window; when the window closes, PSI
//! and a binned two-sample KS test compare it with the reference. A window breaches when PSI
//! reaches the threshold *and* the KS test rejects at `ks_alpha`. Episodes: the first breaching
//! window opens an alert, each further one updates it, the first clean window resolves it.

use std::sync::Arc;

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
    counts: Vec<u64>,
    missing: u64,
    /// The open episode: (alert id, opened at window start).
    open: Option<String>,
}

/// Windows of live feature values against one reference. One per drift-monitor instance: the
/// values of all its partitions (a hash sample of the fleet) go into the same window.
#[derive(Debug)]
pub struct FeatureMonitor {
    cfg: FeatureDrift,
    reference: Arc<ModelReference>,
    watched: Vec<Watched>,
    window_ms: i64,
    window_start: Option<i64>,
    max_ts: i64,
    /// Vectors of another feature set than the reference's (not judged).
    pub schema_mismatches: u64,
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
                    counts: vec![0; reference.features[r].shares.len()],
                    missing: 0,
                    open: None,
                })
            })
            .collect();
        FeatureMonitor {
            window_ms: cfg.window.as_millis().max(1) as i64,
            cfg,
            reference,
            watched,
            window_start: None,
            max_ts: i64::MIN,
            schema_mismatches: 0,
        }
    }

    pub fn reference(&self) -> &ModelReference {
        &self.reference
    }

    /// Names of the watched features.
    pub fn watched(&self) -> Vec<&str> {
        self.watched.iter().map(|w| self.reference.features[w.reference].feature.as_str()).collect()
    }

    /// Adds one feature vector at event time `ts_ms`; returns the alerts of a window this
    /// closes. `scope` names what the window covers (for ids and the alert's scope).
    pub fn add(&mut self, feature_set: &str, values: &[f32], ts_ms: i64, scope: &str, out: &mut Vec<DriftAlert>) {
        if feature_set != self.reference.feature_schema {
            self.schema_mismatches += 1;
            return;
        }
        let start = ts_ms.div_euclid(self.window_ms) * self.window_ms;
        match self.window_start {
            None => self.window_start = Some(start),
            Some(ws) if start > ws => {
                self.close(scope, out);
                self.window_start = Some(start);
            }
            _ => {}
        }
        self.max_ts = self.max_ts.max(ts_ms);
        for w in &mut self.watched {
            match values.get(w.index) {
                Some(x) if x.is_finite() => w.counts[self.reference.features[w.reference].bin(*x)] += 1,
                _ => w.missing += 1,
            }
        }
    }

    /// Judges the current window and starts an empty one.
    fn close(&mut self, scope: &str, out: &mut Vec<DriftAlert>) {
        let Some(ws) = self.window_start else { return };
        let we = ws + self.window_ms;
        for w in &mut self.watched {
            let n: u64 = w.counts.iter().sum();
            let judged = n >= self.cfg.min_samples;
            if judged {
                let r = &self.reference.features[w.reference];
                let p = psi(&r.shares, &w.counts);
                let (d, pv) = ks_binned(&r.shares, &w.counts, self.reference.reference_rows);
                let breach = p >= self.cfg.psi_warning && pv < self.cfg.ks_alpha;
                let state = match (&w.open, breach) {
                    (None, true) => {
                        w.open = Some(alert_id(DriftKind::FeatureDistribution, &r.feature, scope, &self.reference.version, ws));
                        Some(AlertState::Open)
                    }
                    (Some(_), true) => Some(AlertState::Update),
                    (Some(_), false) => Some(AlertState::Resolved),
                    (None, false) => None,
                };
                if let (Some(state), Some(id)) = (state, w.open.clone()) {
                    let missing_share = w.missing as f64 / (n + w.missing).max(1) as f64;
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
            w.counts.iter_mut().for_each(|c| *c = 0);
            w.missing = 0;
        }
    }

    /// Open episodes (for gauges).
    pub fn open_alerts(&self) -> usize {
        self.watched.iter().filter(|w| w.open.is_some()).count()
    }
}
