//! The drift stage: feature vectors go to the feature-distribution windows, forecasts to the
//! forecast / actual join and the error detectors; alerts are published keyed by entity (model
//! error) or by scope (feature distributions).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headroom_drift::{DriftConfig, ErrorMonitor, FeatureMonitor, JoinStats, ModelReference};
use headroom_runtime::{Emitter, Flush, InputRecord, KafkaConfig, Metrics, Processor};
use headroom_schemas::{DlqReason, DriftAlert, DriftEntityState, FeatureWindowsState, FeaturesRecord, Forecast};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts};

/// A newly promoted version's references, handed over by the model watcher.
pub type NextReference = Arc<Mutex<Option<Arc<ModelReference>>>>;

#[derive(Clone)]
pub struct DriftMetrics {
    /// By kind (2) and state (3).
    pub alerts: IntCounterVec,
    /// Open episodes by kind.
    pub open: IntGaugeVec,
    /// Forecast / actual join outcomes (joined, unmatched, overflow, unusable).
    pub join: IntCounterVec,
    /// Records not judged, by reason (feature_schema_mismatch).
    pub skipped: IntCounterVec,
    /// Reference versions loaded (startup, promoted) and failed loads.
    pub references: IntCounterVec,
    /// Changelog records written, by kind (state, tombstone).
    pub state_written: IntCounterVec,
    /// Changelog records read back at assignment, by outcome (restored, forgotten, skipped).
    pub state_restored: IntCounterVec,
    /// Feature-window changelog records read back, by outcome (restored, stale, skipped).
    pub windows_restored: IntCounterVec,
    /// Changelog partitions read back, by outcome (ok, failed).
    pub state_restores: IntCounterVec,
    /// Duration of one read-back of one changelog (all the partitions of a rebalance).
    pub state_restore_seconds: Histogram,
}

impl DriftMetrics {
    pub fn new(m: &Metrics) -> DriftMetrics {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
            let _ = m.registry.register(Box::new(c.clone()));
            c
        };
        let alerts = vec("drift_alerts_total", "Drift alert records published, by kind and state.", &["kind", "state"]);
        let join = vec("drift_join_total", "Forecast points by what the join with later actuals made of them.", &["outcome"]);
        let skipped = vec("drift_skipped_total", "Records not judged, by reason.", &["reason"]);
        let references = vec("drift_reference_loads_total", "Model references loaded, by outcome.", &["outcome"]);
        let state_written = vec("drift_state_records_written_total", "Model-error state changelog records written, by kind.", &["kind"]);
        let state_restored = vec(
            "drift_state_records_restored_total",
            "Model-error state changelog records read back at assignment, by outcome.",
            &["outcome"],
        );
        let windows_restored = vec(
            "drift_window_records_restored_total",
            "Feature-window changelog records read back at assignment, by outcome.",
            &["outcome"],
        );
        let state_restores = vec("drift_state_restores_total", "Changelog partitions read back at assignment, by outcome.", &["outcome"]);
        for o in ["restored", "stale", "skipped"] {
            let _ = windows_restored.with_label_values(&[o]);
        }
        for k in ["state", "tombstone", "windows"] {
            let _ = state_written.with_label_values(&[k]);
        }
        for o in ["restored", "forgotten", "skipped"] {
            let _ = state_restored.with_label_values(&[o]);
        }
        for o in ["ok", "failed"] {
            let _ = state_restores.with_label_values(&[o]);
        }
        let state_restore_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "drift_state_restore_seconds",
                "Time to read a changelog back at an assignment (all its partitions in one read; one read per changelog).",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]),
        )
        .expect("metric");
        let _ = m.registry.register(Box::new(state_restore_seconds.clone()));
        let open = IntGaugeVec::new(Opts::new("drift_open_alerts", "Open drift episodes, by kind."), &["kind"]).expect("metric");
        let _ = m.registry.register(Box::new(open.clone()));
        for k in ["FEATURE_DISTRIBUTION", "MODEL_ERROR"] {
            for s in ["OPEN", "UPDATE", "RESOLVED"] {
                let _ = alerts.with_label_values(&[k, s]);
            }
            let _ = open.with_label_values(&[k]);
        }
        for o in ["joined", "unmatched", "overflow", "unusable"] {
            let _ = join.with_label_values(&[o]);
        }
        let _ = skipped.with_label_values(&["feature_schema_mismatch"]);
        DriftMetrics {
            alerts,
            open,
            join,
            skipped,
            references,
            state_written,
            state_restored,
            windows_restored,
            state_restores,
            state_restore_seconds,
        }
    }
}

impl DriftMetrics {
    /// Counts one changelog read-back: its records by outcome (into `records`), its partitions
    /// as read or failed, and its duration.
    fn read_back(&self, records: &IntCounterVec, outcomes: [(&str, u64); 3], partitions: usize, started: Instant, ok: bool) {
        for (outcome, n) in outcomes {
            records.with_label_values(&[outcome]).inc_by(n);
        }
        self.state_restore_seconds.observe(started.elapsed().as_secs_f64());
        self.state_restores.with_label_values(&[if ok { "ok" } else { "failed" }]).inc_by(partitions as u64);
    }
}

/// The changelogs the detectors are kept in across restarts and rebalances.
#[derive(Debug, Clone)]
pub struct StateStore {
    pub kafka: KafkaConfig,
    /// The model-error detectors' (per entity, co-partitioned with `forecasts`).
    pub topic: String,
    /// The feature windows' (per features partition, co-partitioned with `features`).
    pub windows_topic: String,
    pub restore_timeout: Duration,
    /// A features partition's windows record is written at most this often.
    pub windows_every: Duration,
    /// A forecasts partition's changed entities are written at most this often.
    pub detectors_every: Duration,
    /// A changelog partition is rewritten whole once it grew by this ratio (0: never).
    pub rewrite_after: u32,
}

pub struct DriftStage {
    cfg: DriftConfig,
    features_topic: String,
    forecasts_topic: String,
    output: String,
    features: Option<FeatureMonitor>,
    errors: Option<ErrorMonitor>,
    next: NextReference,
    /// Assigned partitions of the features topic: the scope of the feature windows.
    partitions: BTreeSet<i32>,
    scope: String,
    reported: JoinStats,
    reported_mismatches: u64,
    metrics: DriftMetrics,
    alerts: Vec<DriftAlert>,
    buf: Vec<u8>,
    state: Option<StateStore>,
    /// Forecasts partitions assigned and not yet read back from the changelog.
    pending_restore: BTreeSet<i32>,
    /// Features partitions assigned and not yet read back from the windows changelog.
    pending_windows: BTreeSet<i32>,
    /// Per features partition: windows records written since the last one marked as a
    /// rewrite (each record is whole; every `rewrite_after`-th is marked).
    windows_since_rewrite: BTreeMap<i32, u32>,
}

impl DriftStage {
    pub fn new(
        cfg: DriftConfig,
        reference: Arc<ModelReference>,
        topics: (String, String, String),
        next: NextReference,
        metrics: DriftMetrics,
        state: Option<StateStore>,
    ) -> DriftStage {
        let (features_topic, forecasts_topic, output) = topics;
        let features = cfg.features.enabled.then(|| {
            let mut f = FeatureMonitor::new(cfg.features.clone(), reference.clone());
            if state.is_some() {
                f.track_changes();
            }
            f
        });
        let errors = cfg.model_error.enabled.then(|| {
            let mut e = ErrorMonitor::new(cfg.model_error.clone(), reference.interval_ms);
            e.add_reference(reference.clone());
            if let Some(st) = &state {
                e.track_changes();
                e.rewrite_after(st.rewrite_after);
            }
            e
        });
        DriftStage {
            cfg,
            features_topic,
            forecasts_topic,
            output,
            features,
            errors,
            next,
            partitions: BTreeSet::new(),
            scope: String::new(),
            reported: JoinStats::default(),
            reported_mismatches: 0,
            metrics,
            alerts: Vec::new(),
            buf: Vec::with_capacity(512),
            state,
            pending_restore: BTreeSet::new(),
            pending_windows: BTreeSet::new(),
            windows_since_rewrite: BTreeMap::new(),
        }
    }

    /// Reads the changelog partitions of the forecasts partitions just assigned back into the
    /// detectors, all with one reader. A failed read keeps what it read and says so: the
    /// remaining entities warm up again, as without a changelog.
    fn restore(&mut self) {
        let partitions: Vec<i32> = std::mem::take(&mut self.pending_restore).into_iter().collect();
        let (Some(st), Some(em)) = (&self.state, &mut self.errors) else { return };
        if partitions.is_empty() {
            return;
        }
        let started = Instant::now();
        let m = &self.metrics;
        let (mut restored, mut forgotten, mut skipped) = (0u64, 0u64, 0u64);
        let res = headroom_runtime::changelog::restore(&st.kafka, &st.topic, &partitions, st.restore_timeout, |partition, key, value, offset| {
            match value.map(DriftEntityState::decode) {
                Some(Ok(s)) if s.partition == partition => {
                    em.restore(&s);
                    restored += 1;
                }
                Some(Ok(s)) => {
                    tracing::warn!(entity = %s.entity_id, partition, found = s.partition, offset, "changelog record of another partition skipped");
                    skipped += 1;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, partition, offset, "undecodable changelog record skipped; the entity warms up again");
                    skipped += 1;
                }
                None => {
                    em.remove(&String::from_utf8_lossy(key), partition);
                    forgotten += 1;
                }
            }
        });
        let outcomes = [("restored", restored), ("forgotten", forgotten), ("skipped", skipped)];
        m.read_back(&m.state_restored, outcomes, partitions.len(), started, res.is_ok());
        em.restored(&partitions, res.is_ok());
        match res {
            Ok(r) => {
                tracing::info!(
                    topic = %st.topic, partitions = ?partitions, records = r.records, from_rewrites = r.from_start,
                    before_rewrites = r.skipped, entities = em.entities(), open = em.open_alerts(),
                    ms = started.elapsed().as_millis() as u64, "model-error state restored"
                );
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), topic = %st.topic, partitions = ?partitions, restored, "model-error state only partly restored");
            }
        }
    }

    /// Reads the windows changelog partitions of the features partitions just assigned back
    /// into the feature windows, with one reader. A partition whose record cannot be used (another
    /// version's deciles, another window length, undecodable) starts its windows afresh.
    fn restore_windows(&mut self) {
        let partitions: Vec<i32> = std::mem::take(&mut self.pending_windows).into_iter().collect();
        let (Some(st), Some(fm)) = (&self.state, &mut self.features) else { return };
        if partitions.is_empty() {
            return;
        }
        let started = Instant::now();
        let m = &self.metrics;
        let topic = &self.features_topic;
        let now = headroom_runtime::observe::now_ms();
        let (mut restored, mut stale, mut skipped) = (0u64, 0u64, 0u64);
        let res = headroom_runtime::changelog::restore(&st.kafka, &st.windows_topic, &partitions, st.restore_timeout, |partition, _key, value, offset| {
            match value.map(FeatureWindowsState::decode) {
                Some(Ok(s)) if s.partition == partition && &s.topic == topic => match fm.restore(&s, now) {
                    Ok(()) => restored += 1,
                    Err(e) => {
                        tracing::debug!(reason = %e, partition, offset, "feature-window record not used; the partition's windows start afresh");
                        stale += 1;
                    }
                },
                Some(Ok(s)) => {
                    tracing::warn!(topic = %s.topic, partition, found = s.partition, offset, "feature-window record of another partition or topic skipped");
                    skipped += 1;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, partition, offset, "undecodable feature-window record; the partition's windows start afresh");
                    fm.reset_partition(partition);
                    skipped += 1;
                }
                None => {
                    fm.reset_partition(partition);
                    skipped += 1;
                }
            }
        });
        let outcomes = [("restored", restored), ("stale", stale), ("skipped", skipped)];
        m.read_back(&m.windows_restored, outcomes, partitions.len(), started, res.is_ok());
        match res {
            Ok(r) => {
                tracing::info!(
                    topic = %st.windows_topic, partitions = ?partitions, records = r.records, from_rewrites = r.from_start,
                    before_rewrites = r.skipped, stale, windows = fm.open_windows(), open = fm.open_alerts(), ms = started.elapsed().as_millis() as u64,
                    "feature windows restored"
                );
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), topic = %st.windows_topic, partitions = ?partitions, restored, "feature windows only partly restored");
            }
        }
    }

    /// What the feature windows cover: `features:partitions:0,1,2`.
    fn rescope(&mut self) {
        let list: Vec<String> = self.partitions.iter().map(i32::to_string).collect();
        self.scope = format!("{}:partitions:{}", self.features_topic, list.join(","));
    }

    fn swap_reference(&mut self) {
        let Some(r) = self.next.lock().ok().and_then(|mut n| n.take()) else { return };
        tracing::info!(version = %r.version, "drift references switched to the promoted version");
        if let Some(f) = &mut self.features {
            *f = FeatureMonitor::new(self.cfg.features.clone(), r.clone());
            if self.state.is_some() {
                f.track_changes();
            }
            let now = headroom_runtime::observe::now_ms();
            for p in &self.partitions {
                f.assign_partition(*p, now);
            }
        }
        if let Some(e) = &mut self.errors {
            e.add_reference(r);
        }
    }

    fn publish(&mut self, out: &mut Emitter<'_>) {
        for a in self.alerts.drain(..) {
            self.buf.clear();
            a.encode_framed(&mut self.buf);
            let key = a.entity_id.as_deref().or(a.scope.as_deref()).unwrap_or("");
            out.emit(&self.output, key.as_bytes(), &self.buf);
            self.metrics.alerts.with_label_values(&[a.kind.as_str(), a.state.as_str()]).inc();
            tracing::info!(
                alert = %a.alert_id, kind = a.kind.as_str(), state = a.state.as_str(), subject = %a.subject,
                entity = a.entity_id.as_deref().unwrap_or("-"), value = a.value, severity = a.severity.as_str(),
                "drift alert"
            );
        }
    }
}

impl Processor for DriftStage {
    fn process(&mut self, rec: &InputRecord<'_>, out: &mut Emitter<'_>) {
        self.swap_reference();
        if rec.topic == self.features_topic {
            if let Some(fm) = &mut self.features {
                // Even a record that is dead-lettered below: the partition's replay floor
                // starts at the first record seen.
                fm.saw(rec.partition, rec.offset);
            }
        }
        let Some(payload) = rec.payload else {
            out.dead_letter(DlqReason::Truncated, "record has no value");
            if rec.topic == self.features_topic {
                if let Some(fm) = &mut self.features {
                    fm.skip(rec.partition, rec.offset);
                }
            } else if rec.topic == self.forecasts_topic {
                if let Some(em) = &mut self.errors {
                    em.saw(rec.partition, rec.offset);
                }
            }
            return;
        };
        if rec.topic == self.features_topic {
            let Some(fm) = self.features.as_mut() else { return };
            let f = match FeaturesRecord::decode(payload) {
                Ok(f) => f,
                Err(e) => {
                    out.dead_letter(e.reason(), &e.to_string());
                    fm.skip(rec.partition, rec.offset);
                    return;
                }
            };
            fm.add(rec.partition, rec.offset, &f.feature_set, &f.values, f.ts_ms, rec.now_ms, &self.scope, &mut self.alerts);
        } else if rec.topic == self.forecasts_topic {
            let Some(em) = self.errors.as_mut() else { return };
            let checked = Forecast::decode(payload).map_err(|e| (e.reason(), e.to_string())).and_then(|f| {
                if f.entity_id.is_empty() {
                    Err((DlqReason::EmptyEntity, "forecast without an entity id".to_owned()))
                } else if rec.key.is_some_and(|k| k != f.entity_id.as_bytes()) {
                    Err((DlqReason::KeyMismatch, "record key differs from entity_id".to_owned()))
                } else {
                    Ok(f)
                }
            });
            match checked {
                Ok(f) => em.add(rec.partition, rec.offset, &f, &mut self.alerts),
                Err((reason, why)) => {
                    out.dead_letter(reason, &why);
                    // The detectors' replay floor moves past it all the same (`add` notes the
                    // records it gets).
                    em.saw(rec.partition, rec.offset);
                }
            }
        }
        if !self.alerts.is_empty() {
            self.publish(out);
        }
    }

    fn on_assign(&mut self, topic: &str, partition: i32) {
        if topic == self.forecasts_topic && self.state.is_some() {
            self.pending_restore.insert(partition);
        }
        if topic == self.features_topic {
            if self.state.is_some() {
                self.pending_windows.insert(partition);
            }
            self.partitions.insert(partition);
            self.rescope();
            if let Some(f) = &mut self.features {
                f.assign_partition(partition, headroom_runtime::observe::now_ms());
            }
        }
    }

    /// A features partition replays what its windows counted since their last changelog record
    /// (`state.windows_every`), a forecasts partition what its entities' detectors saw since
    /// the partition's last write (`state.detectors_every`).
    fn replay_floor(&mut self, topic: &str, partition: i32) -> Option<i64> {
        if self.state.is_none() {
            None
        } else if topic == self.features_topic {
            self.features.as_ref()?.replay_floor(partition)
        } else if topic == self.forecasts_topic {
            self.errors.as_ref()?.replay_floor(partition)
        } else {
            None
        }
    }

    fn on_revoke(&mut self, topic: &str, partition: i32) {
        if topic == self.features_topic {
            self.pending_windows.remove(&partition);
            self.windows_since_rewrite.remove(&partition);
            self.partitions.remove(&partition);
            self.rescope();
            if let Some(f) = &mut self.features {
                f.forget_partition(partition);
            }
        } else if topic == self.forecasts_topic {
            self.pending_restore.remove(&partition);
            if let Some(e) = &mut self.errors {
                e.forget_partition(partition);
            }
        }
    }

    /// Every partition of the rebalance is read back from its changelog (forecasts partitions
    /// from the detectors', features partitions from the windows') in one pass each, before any
    /// of their records.
    fn on_assigned(&mut self) {
        self.restore();
        self.restore_windows();
    }

    /// The end of a batch: every features partition changed since its last record, if that
    /// record is `windows_every` old, and every entity changed since its forecasts partition's
    /// last write, if that is `detectors_every` old, go to their changelogs (sent once the
    /// batch's alerts are acknowledged, and acknowledged before the batch's offsets are
    /// committed; what waits is covered by the partition's replay floor).
    fn flush(&mut self, out: &mut Flush<'_>) {
        let Some(st) = &self.state else { return };
        let (buf, m) = (&mut self.buf, &self.metrics);
        let now = headroom_runtime::observe::now_ms();
        // The last batch before a clean stop writes every change: nothing to replay.
        let last = out.is_last();
        let every = |d: Duration| if last { 0 } else { d.as_millis() as i64 };
        if let Some(fm) = &mut self.features {
            let since = &mut self.windows_since_rewrite;
            fm.drain_due(&self.features_topic, now, every(st.windows_every), |partition, s| {
                buf.clear();
                s.encode_framed(buf);
                let key = FeatureWindowsState::key(&s.topic, partition);
                out.emit_state(&st.windows_topic, partition, key.as_bytes(), Some(buf));
                m.state_written.with_label_values(&["windows"]).inc();
                // A partition's first record from this instance, then every rewrite_after-th.
                let n = since.entry(partition).or_insert(st.rewrite_after);
                if st.rewrite_after > 0 && *n >= st.rewrite_after {
                    out.rewrote(&st.windows_topic, partition);
                    *n = 0;
                }
                *n += 1;
            });
        }
        let Some(em) = &mut self.errors else { return };
        let rewritten = em.drain_due(now, every(st.detectors_every), |entity, partition, state| match state {
            Some(s) => {
                buf.clear();
                s.encode_framed(buf);
                out.emit_state(&st.topic, partition, entity.as_bytes(), Some(buf));
                m.state_written.with_label_values(&["state"]).inc();
            }
            None => {
                out.emit_state(&st.topic, partition, entity.as_bytes(), None);
                m.state_written.with_label_values(&["tombstone"]).inc();
            }
        });
        for partition in rewritten {
            out.rewrote(&st.topic, partition);
        }
    }

    fn on_commit(&mut self, metrics: &Metrics) {
        let mut entities = 0;
        if let Some(e) = &mut self.errors {
            e.expire();
            entities = e.entities();
            let s = e.stats;
            let r = self.reported;
            for (name, now, before) in [
                ("joined", s.joined, r.joined),
                ("unmatched", s.unmatched, r.unmatched),
                ("overflow", s.overflow, r.overflow),
                ("unusable", s.unusable, r.unusable),
            ] {
                self.metrics.join.with_label_values(&[name]).inc_by(now - before);
            }
            self.reported = s;
            self.metrics.open.with_label_values(&["MODEL_ERROR"]).set(e.open_alerts() as i64);
        }
        if let Some(f) = &self.features {
            self.metrics
                .skipped
                .with_label_values(&["feature_schema_mismatch"])
                .inc_by(f.schema_mismatches.saturating_sub(self.reported_mismatches));
            self.reported_mismatches = f.schema_mismatches;
            self.metrics.open.with_label_values(&["FEATURE_DISTRIBUTION"]).set(f.open_alerts() as i64);
        }
        metrics.state_entities.set(entities as i64);
    }
}
