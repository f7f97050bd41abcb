//! Model-error drift: each forecast's p50 waits (per entity) for the actual that arrives with a
//! later forecast's observation at its target time; each joined error feeds, per entity and
//! head (metric, horizon), a Page-Hinkley test for an increase of the error and an EWMA of it.
//! Errors are in units of the reference error: the larger of the version's validation MAE for
//! that head (when its manifest has one) and the entity's own baseline, its mean error over the
//! `baseline` errors after the first `warmup`. Nothing is judged before the baseline is known:
//! a new entity's feature windows are still filling, and it has no level of its own yet.
//!
//! An alert opens when Page-Hinkley has fired within the last `alarm_memory` errors and the live
//! MAE is at least `ratio_warning` times the reference; it is updated at most every `update_interval` while the ratio stays above
//! `resolve_ratio`, and resolved when it drops below, or when the entity's forecasts come from
//! another model version (the episode belonged to the old one).
//!
//! With change tracking on, each entity's detectors go to a changelog: every entity a partition
//! changed, at most once per interval per partition ([`ErrorMonitor::drain_due`]); a restart reads
//! them back ([`ErrorMonitor::restore`]) and replays the partition from its
//! [`ErrorMonitor::replay_floor`], skipping the forecasts a restored entity already holds.

use std::collections::VecDeque;
use std::sync::Arc;

use headroom_schemas::drift::alert_id;
use headroom_schemas::drift_state::{EpisodeState, HeadState, PendingPoint};
use headroom_schemas::{AlertState, DriftAlert, DriftEntityState, DriftKind, Forecast, Metric, Severity};
use rustc_hash::FxHashMap;

use crate::config::ModelError;
use crate::reference::ModelReference;
use crate::stats::{Ewma, PageHinkley};

/// One head of one entity.
#[derive(Debug, Clone)]
struct Head {
    metric: Metric,
    horizon_min: i32,
    ph: PageHinkley,
    live: Ewma,
    /// The version's validation MAE for the head.
    validation: Option<f64>,
    /// The entity's baseline error, once measured.
    baseline: Option<f64>,
    base_sum: f64,
    n: u64,
    /// Error count at the last Page-Hinkley alarm.
    alarm_at: Option<u64>,
    /// Event time of the first error of the current Page-Hinkley run.
    run_start_ms: i64,
    open: Option<Episode>,
}

#[derive(Debug, Clone)]
struct Episode {
    id: String,
    opened_ms: i64,
    last_emit_ms: i64,
    ph_statistic: f64,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    target_slot: i64,
    head: usize,
    p50: f64,
}

#[derive(Debug, Clone)]
struct EntityState {
    version: String,
    partition: i32,
    heads: Vec<Head>,
    pending: VecDeque<Pending>,
    last_ts: i64,
    /// Offset of the last forecast applied (records at or below it are already in the state:
    /// a restored state can be ahead of the committed offset).
    applied: i64,
    /// Changed since the last [`ErrorMonitor::drain_changes`].
    dirty: bool,
}

impl Default for EntityState {
    fn default() -> EntityState {
        EntityState {
            version: String::new(),
            partition: 0,
            heads: Vec::new(),
            pending: VecDeque::new(),
            last_ts: 0,
            applied: -1,
            dirty: false,
        }
    }
}

/// What the changelog holds of one input partition.
#[derive(Debug, Clone, Copy)]
struct PartitionOffsets {
    /// The first record of the partition this monitor saw (a replay starts there).
    first_seen: i64,
    /// The last record of the partition this monitor saw.
    seen_to: i64,
    /// The last record whose changes the partition's last drain handed out.
    saved_to: Option<i64>,
    /// Wall clock of that drain.
    written_ms: Option<i64>,
}

/// What a partition's changelog holds since its last complete rewrite.
#[derive(Debug, Clone, Copy, Default)]
struct Rewrites {
    /// Records of the last rewrite (entities written whole), or entities read back.
    base: u64,
    /// Records written (or read back) after them.
    since: u64,
    /// No rewrite until the partition is assigned again: its read-back was incomplete, and a
    /// rewrite would make the unread entities' records unreachable.
    held: bool,
}

/// Counters of what the join saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinStats {
    pub joined: u64,
    /// Predictions whose target time passed without an observation.
    pub unmatched: u64,
    /// Predictions dropped because an entity had too many waiting.
    pub overflow: u64,
    /// Forecasts without observations (v1 records) or with non-finite values.
    pub unusable: u64,
}

#[derive(Debug)]
pub struct ErrorMonitor {
    cfg: ModelError,
    interval_ms: i64,
    references: FxHashMap<String, Arc<ModelReference>>,
    entities: FxHashMap<String, EntityState>,
    /// Newest event time per input partition (idle expiry is judged on the entity's own
    /// partition's clock: partitions of a backlog are read at different paces).
    newest: FxHashMap<i32, i64>,
    /// Entities changed (or expired) since their partition's last drain, with their
    /// partition; kept only when `track_changes` is on.
    changed: Vec<(String, i32)>,
    track_changes: bool,
    /// Per input partition: the changelog position ([`ErrorMonitor::replay_floor`]).
    offsets: FxHashMap<i32, PartitionOffsets>,
    /// A partition is written whole once its changelog grew by this many times its last
    /// rewrite (0: never); see [`ErrorMonitor::rewrite_after`].
    rewrite_after: u64,
    rewrites: FxHashMap<i32, Rewrites>,
    pub stats: JoinStats,
    /// Forecasts skipped because a restored state already included them.
    pub already_applied: u64,
}

fn observed(f: &Forecast, m: Metric) -> Option<f64> {
    match m {
        Metric::Cpu => f.observed.cpu_util,
        Metric::Memory => f.observed.mem_util,
        Metric::Network => f.observed.net_bps,
        Metric::Disk => None,
    }
    .filter(|v| v.is_finite())
}

fn short(m: Metric) -> &'static str {
    match m {
        Metric::Cpu => "cpu",
        Metric::Memory => "mem",
        Metric::Network => "net",
        Metric::Disk => "disk",
    }
}

/// The version part of a point's `family/version` model tag.
fn version_of(tag: &str) -> &str {
    tag.split_once('/').map_or(tag, |(_, v)| v)
}

impl ErrorMonitor {
    /// `interval_ms` is the sampling interval the forecasts' horizons are multiples of.
    pub fn new(cfg: ModelError, interval_ms: i64) -> ErrorMonitor {
        ErrorMonitor {
            cfg,
            interval_ms: interval_ms.max(1),
            references: FxHashMap::default(),
            entities: FxHashMap::default(),
            newest: FxHashMap::default(),
            changed: Vec::new(),
            track_changes: false,
            offsets: FxHashMap::default(),
            rewrite_after: 0,
            rewrites: FxHashMap::default(),
            stats: JoinStats::default(),
            already_applied: 0,
        }
    }

    /// Keeps the list of changed entities that [`ErrorMonitor::drain_due`] hands out (for a
    /// state changelog), and each partition's [`ErrorMonitor::replay_floor`].
    pub fn track_changes(&mut self) {
        self.track_changes = true;
    }

    /// Bounds what a restore reads of a partition's changelog: once the records written after
    /// the partition's last complete rewrite reach `ratio` times that rewrite's size, its next
    /// drain writes every live entity of the partition (not only the changed ones) and lists
    /// it among the rewritten partitions, whose earlier records a restore no longer needs. A
    /// restore then reads at most about `ratio + 1` records per entity, whatever the topic's
    /// age, for about `1 / ratio` more records written. 0 (the default): never.
    pub fn rewrite_after(&mut self, ratio: u32) {
        self.rewrite_after = u64::from(ratio);
    }

    /// Makes a version's validation errors known (its forecasts are then judged against them).
    pub fn add_reference(&mut self, r: Arc<ModelReference>) {
        self.references.insert(r.version.clone(), r);
    }

    pub fn entities(&self) -> usize {
        self.entities.len()
    }

    pub fn open_alerts(&self) -> usize {
        self.entities.values().flat_map(|e| &e.heads).filter(|h| h.open.is_some()).count()
    }

    fn slot(&self, ts_ms: i64) -> i64 {
        (ts_ms + self.interval_ms / 2).div_euclid(self.interval_ms)
    }

    /// Handles one forecast of input `partition` at `offset`: joins the entity's waiting
    /// predictions with what it observed, then queues its own points. Alerts go to `out`. A
    /// forecast at or below the offset the entity's (restored) state already includes is
    /// skipped.
    pub fn add(&mut self, partition: i32, offset: i64, f: &Forecast, out: &mut Vec<DriftAlert>) {
        self.saw(partition, offset);
        let newest = self.newest.entry(partition).or_insert(i64::MIN);
        *newest = (*newest).max(f.ts_ms);
        let Some(first) = f.points.first() else {
            self.stats.unusable += 1;
            return;
        };
        // No allocation and no copy of the settings per forecast: borrow them, and key the
        // entity by an owned id only when it is new.
        let version = version_of(&first.model);
        let slot = self.slot(f.ts_ms);
        let cfg = &self.cfg;
        let reference = self.references.get(version);
        let interval = self.interval_ms;
        if !self.entities.contains_key(&f.entity_id) {
            self.entities.insert(f.entity_id.clone(), EntityState::default());
        }
        let e = self.entities.get_mut(&f.entity_id).expect("entity just ensured");
        // A new entity's default partition is 0 and applied offset -1: neither test holds.
        let moved = e.partition != partition;
        if !moved && offset <= e.applied {
            self.already_applied += 1;
            return;
        }
        if e.version != version {
            // Another model: the old episodes end, the detectors start again.
            for h in &mut e.heads {
                if let Some(ep) = h.open.take() {
                    out.push(alert(&f.entity_id, &e.version, h, &ep, AlertState::Resolved, f.ts_ms, cfg, true));
                }
            }
            *e = EntityState {
                version: version.to_owned(),
                dirty: e.dirty,
                ..EntityState::default()
            };
        }
        e.partition = partition;
        e.last_ts = e.last_ts.max(f.ts_ms);
        e.applied = offset;
        // Listed once per batch, and again under its new partition when it moved (the entry
        // of the old one is skipped by the drain, or dropped with that partition).
        if self.track_changes && (!e.dirty || moved) {
            e.dirty = true;
            self.changed.push((f.entity_id.clone(), partition));
        }

        // 1. Join: predictions for this slot meet their actuals.
        while let Some(p) = e.pending.front().copied() {
            if p.target_slot > slot {
                break;
            }
            e.pending.pop_front();
            if p.target_slot < slot {
                self.stats.unmatched += 1;
                continue;
            }
            let h = &mut e.heads[p.head];
            let Some(actual) = observed(f, h.metric) else {
                self.stats.unusable += 1;
                continue;
            };
            self.stats.joined += 1;
            let err = (p.p50 - actual).abs();
            update_head(&f.entity_id, version, h, err, f.ts_ms, cfg, out);
        }

        // 2. Queue this forecast's points (kept sorted by target slot).
        if f.observed.cpu_util.is_none() && f.observed.mem_util.is_none() && f.observed.net_bps.is_none() {
            self.stats.unusable += 1;
        }
        // The primary model's points: the others (LSTM, GRU) are compared offline, in the
        // forecasts table, not monitored per head here.
        for p in f.primary_points() {
            if !p.p50.is_finite() || p.horizon_min <= 0 || observed_kind(p.metric).is_none() {
                continue;
            }
            let head = match e.heads.iter().position(|h| h.metric == p.metric && h.horizon_min == p.horizon_min) {
                Some(i) => i,
                None => {
                    let slots = (i64::from(p.horizon_min) * 60_000 + interval / 2) / interval;
                    let validation = reference
                        .as_ref()
                        .and_then(|r| r.validation_mae.get(&(short(p.metric).to_owned(), slots as usize)).copied());
                    e.heads.push(Head {
                        metric: p.metric,
                        horizon_min: p.horizon_min,
                        ph: PageHinkley::new(cfg.ph_delta, cfg.ph_lambda),
                        live: Ewma::new(cfg.ewma_half_life),
                        validation,
                        baseline: None,
                        base_sum: 0.0,
                        n: 0,
                        alarm_at: None,
                        run_start_ms: f.ts_ms,
                        open: None,
                    });
                    e.heads.len() - 1
                }
            };
            let target_slot = slot + (i64::from(p.horizon_min) * 60_000 + interval / 2) / interval;
            let at = e.pending.partition_point(|q| q.target_slot <= target_slot);
            e.pending.insert(at, Pending { target_slot, head, p50: p.p50 });
        }
        while e.pending.len() > cfg.max_pending {
            e.pending.pop_front();
            self.stats.overflow += 1;
        }
    }

    /// Forgets entities idle for `idle_expiry` of their partition's event time (with change
    /// tracking on, each is handed out by the next [`ErrorMonitor::drain_changes`] as gone).
    pub fn expire(&mut self) -> usize {
        let horizon = self.cfg.idle_expiry.as_millis() as i64;
        let before = self.entities.len();
        let newest = &self.newest;
        let (track, changed) = (self.track_changes, &mut self.changed);
        self.entities.retain(|id, e| {
            let keep = e.last_ts.saturating_add(horizon) >= newest.get(&e.partition).copied().unwrap_or(i64::MIN);
            if !keep && track && !e.dirty {
                changed.push((id.clone(), e.partition));
            }
            keep
        });
        before - self.entities.len()
    }

    /// A partition left this instance: its entities go (the next owner judges them, from the
    /// changelog when there is one; changes not yet drained belong to records the next owner
    /// processes again).
    pub fn forget_partition(&mut self, partition: i32) {
        self.entities.retain(|_, e| e.partition != partition);
        self.changed.retain(|(_, p)| *p != partition);
        self.newest.remove(&partition);
        self.offsets.remove(&partition);
        self.rewrites.remove(&partition);
    }

    /// A forecast of `partition` at `offset` reached the monitor, whether or not it could be
    /// decoded or used: the partition's replay floor starts at the first one, and its next
    /// drain covers everything seen. [`ErrorMonitor::add`] notes its own records; the service
    /// calls this for the records it dead-letters instead.
    pub fn saw(&mut self, partition: i32, offset: i64) {
        let o = self.offsets.entry(partition).or_insert(PartitionOffsets {
            first_seen: offset,
            seen_to: offset,
            saved_to: None,
            written_ms: None,
        });
        o.seen_to = o.seen_to.max(offset);
    }

    /// The smallest offset of `partition` whose changes the changelog may not hold yet: a
    /// restart replays the partition from there (the runtime keeps it with each commit). It
    /// only grows while the partition stays assigned. `None` before any record of the partition
    /// was seen, and when not tracking changes.
    pub fn replay_floor(&self, partition: i32) -> Option<i64> {
        if !self.track_changes {
            return None;
        }
        let o = self.offsets.get(&partition)?;
        Some(o.saved_to.map_or(o.first_seen, |s| s + 1))
    }

    /// Hands out every entity changed since the last call, with its partition: its state, or
    /// `None` when it expired (a tombstone for the changelog).
    pub fn drain_changes(&mut self, f: impl FnMut(&str, i32, Option<&DriftEntityState>)) -> Vec<i32> {
        self.drain_due(0, 0, f)
    }

    /// Like [`ErrorMonitor::drain_changes`], for the partitions whose last drain is at least
    /// `every_ms` old at wall-clock `now_ms` (0: every partition): each due partition hands out
    /// every entity it changed since then, and its replay floor moves past every record seen.
    /// The others wait; what they hold beyond their last drain is covered by their floor.
    /// Returns the partitions this drain rewrote whole ([`ErrorMonitor::rewrite_after`]): their
    /// records of this drain hold every live entity of the partition.
    pub fn drain_due(&mut self, now_ms: i64, every_ms: i64, mut f: impl FnMut(&str, i32, Option<&DriftEntityState>)) -> Vec<i32> {
        let due = |o: Option<&PartitionOffsets>| every_ms <= 0 || o.and_then(|o| o.written_ms).is_none_or(|w| now_ms - w >= every_ms);
        let offsets = &self.offsets;
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.changed).into_iter().partition(|(_, p)| due(offsets.get(p)));
        self.changed = later;
        let mut rewriting: Vec<i32> = Vec::new();
        if self.rewrite_after > 0 {
            for (_, p) in &now {
                let r = self.rewrites.entry(*p).or_default();
                if !rewriting.contains(p) && !r.held && r.since >= self.rewrite_after * r.base.max(1) {
                    rewriting.push(*p);
                }
            }
        }
        let mut written: FxHashMap<i32, u64> = FxHashMap::default();
        let mut snap = DriftEntityState::default();
        for (id, partition) in now {
            match self.entities.get_mut(&id) {
                // A partition being rewritten hands out all its entities below.
                Some(e) if e.partition == partition && e.dirty && rewriting.contains(&partition) => {}
                Some(e) if e.partition == partition && e.dirty => {
                    e.dirty = false;
                    snapshot_into(&id, e, &mut snap);
                    f(&id, partition, Some(&snap));
                    *written.entry(partition).or_default() += 1;
                }
                // Handed out by an earlier entry of this drain (an entity that expired and came
                // back is listed twice), or moved to another partition (the topic was
                // repartitioned): its new partition's entry hands it out.
                Some(_) => {}
                None => {
                    f(&id, partition, None);
                    *written.entry(partition).or_default() += 1;
                }
            }
        }
        for &p in &rewriting {
            let mut whole = 0;
            for (id, e) in self.entities.iter_mut().filter(|(_, e)| e.partition == p) {
                e.dirty = false;
                snapshot_into(id, e, &mut snap);
                f(id, p, Some(&snap));
                whole += 1;
            }
            self.rewrites.insert(p, Rewrites { base: whole, since: 0, held: false });
        }
        for (p, n) in written {
            if !rewriting.contains(&p) {
                self.rewrites.entry(p).or_default().since += n;
            }
        }
        for o in self.offsets.values_mut() {
            if due(Some(o)) && o.saved_to.is_none_or(|s| s < o.seen_to) {
                o.saved_to = Some(o.seen_to);
                o.written_ms = Some(now_ms);
            }
        }
        rewriting
    }

    /// A read-back of `partitions` ended: what it read (counted by [`ErrorMonitor::restore`]
    /// and [`ErrorMonitor::remove`]) beyond one record per live entity counts towards their
    /// next rewrite. After an incomplete read (`complete` false) the partitions are not
    /// rewritten while they stay assigned: the records not read would become unreachable.
    pub fn restored(&mut self, partitions: &[i32], complete: bool) {
        for &p in partitions {
            let live = self.entities.values().filter(|e| e.partition == p).count() as u64;
            let r = self.rewrites.entry(p).or_default();
            *r = Rewrites { base: live, since: r.since.saturating_sub(live), held: !complete };
        }
    }

    /// The state of `entity` as its changelog record holds it.
    pub fn snapshot(&self, entity: &str) -> Option<DriftEntityState> {
        let e = self.entities.get(entity)?;
        let mut snap = DriftEntityState::default();
        snapshot_into(entity, e, &mut snap);
        Some(snap)
    }

    /// Takes an entity's state back from its changelog record (the detectors' thresholds and
    /// half-life are the current configuration's).
    pub fn restore(&mut self, s: &DriftEntityState) {
        let cfg = &self.cfg;
        let heads = s
            .heads
            .iter()
            .map(|h| Head {
                metric: h.metric,
                horizon_min: h.horizon_min,
                ph: PageHinkley::from_parts(cfg.ph_delta, cfg.ph_lambda, h.ph_n, h.ph_mean, h.ph_cum, h.ph_min),
                live: Ewma::from_parts(cfg.ewma_half_life, h.live_mae, h.live_n),
                validation: h.validation_mae,
                baseline: h.baseline_mae,
                base_sum: h.baseline_sum,
                n: h.errors,
                alarm_at: h.alarm_at,
                run_start_ms: h.run_start_ms,
                open: h.episode.as_ref().map(|e| Episode {
                    id: e.alert_id.clone(),
                    opened_ms: e.opened_ms,
                    last_emit_ms: e.last_emit_ms,
                    ph_statistic: e.ph_statistic,
                }),
            })
            .collect();
        let pending = s
            .pending
            .iter()
            .map(|p| Pending { target_slot: p.target_slot, head: p.head as usize, p50: p.p50 })
            .collect();
        self.rewrites.entry(s.partition).or_default().since += 1;
        let newest = self.newest.entry(s.partition).or_insert(i64::MIN);
        *newest = (*newest).max(s.last_ts_ms);
        self.entities.insert(
            s.entity_id.clone(),
            EntityState {
                version: s.model_version.clone(),
                partition: s.partition,
                heads,
                pending,
                last_ts: s.last_ts_ms,
                applied: s.applied_offset,
                dirty: false,
            },
        );
    }

    /// Forgets one entity of `partition` (its changelog record was a tombstone).
    pub fn remove(&mut self, entity: &str, partition: i32) {
        self.rewrites.entry(partition).or_default().since += 1;
        if self.entities.get(entity).is_some_and(|e| e.partition == partition) {
            self.entities.remove(entity);
        }
    }
}

fn snapshot_into(id: &str, e: &EntityState, s: &mut DriftEntityState) {
    s.entity_id.clear();
    s.entity_id.push_str(id);
    s.model_version.clone_from(&e.version);
    s.partition = e.partition;
    s.applied_offset = e.applied;
    s.last_ts_ms = e.last_ts;
    s.heads.clear();
    s.heads.extend(e.heads.iter().map(|h| {
        let (ph_n, ph_mean, ph_cum, ph_min) = h.ph.parts();
        HeadState {
            metric: h.metric,
            horizon_min: h.horizon_min,
            ph_n,
            ph_mean,
            ph_cum,
            ph_min,
            live_mae: h.live.value(),
            live_n: h.live.samples(),
            validation_mae: h.validation,
            baseline_mae: h.baseline,
            baseline_sum: h.base_sum,
            errors: h.n,
            alarm_at: h.alarm_at,
            run_start_ms: h.run_start_ms,
            episode: h.open.as_ref().map(|ep| EpisodeState {
                alert_id: ep.id.clone(),
                opened_ms: ep.opened_ms,
                last_emit_ms: ep.last_emit_ms,
                ph_statistic: ep.ph_statistic,
            }),
        }
    }));
    s.pending.clear();
    s.pending.extend(e.pending.iter().map(|p| PendingPoint { target_slot: p.target_slot, head: p.head as i32, p50: p.p50 }));
}

fn observed_kind(m: Metric) -> Option<()> {
    (m != Metric::Disk).then_some(())
}

impl Head {
    /// The error a live error is measured against.
    fn reference(&self) -> Option<f64> {
        match (self.validation, self.baseline) {
            (Some(v), Some(b)) => Some(v.max(b)),
            (v, b) => v.or(b),
        }
        .map(|r| r.max(1e-9))
    }
}

#[allow(clippy::too_many_arguments)]
fn update_head(entity: &str, version: &str, h: &mut Head, err: f64, ts_ms: i64, cfg: &ModelError, out: &mut Vec<DriftAlert>) {
    h.n += 1;
    h.live.update(err);
    if h.n <= cfg.warmup {
        return;
    }
    if h.baseline.is_none() {
        h.base_sum += err;
        if h.n >= cfg.warmup + cfg.baseline.max(1) {
            h.baseline = Some(h.base_sum / cfg.baseline.max(1) as f64);
        }
    }
    // Judged once the entity's own baseline is known (a day of errors by default).
    if h.baseline.is_none() {
        return;
    }
    let Some(reference) = h.reference() else { return };
    if h.ph.samples() == 0 {
        h.run_start_ms = ts_ms;
    }
    let fired = h.ph.update(err / reference);
    if fired {
        h.alarm_at = Some(h.n);
    }
    let stat = if fired { cfg.ph_lambda.max(h.ph.statistic()) } else { h.ph.statistic() };
    let ratio = h.live.value() / reference;
    let alarmed = h.alarm_at.is_some_and(|at| h.n - at <= cfg.alarm_memory);
    match h.open.as_mut() {
        None if alarmed && ratio >= cfg.ratio_warning => {
            let subject = subject(h);
            let ep = Episode {
                id: alert_id(DriftKind::ModelError, &subject, entity, version, h.run_start_ms),
                opened_ms: h.run_start_ms,
                last_emit_ms: ts_ms,
                ph_statistic: stat.max(cfg.ph_lambda),
            };
            out.push(alert(entity, version, h, &ep, AlertState::Open, ts_ms, cfg, false));
            h.open = Some(ep);
            h.alarm_at = None;
        }
        None => {
            if fired {
                h.run_start_ms = ts_ms;
            }
        }
        Some(ep) if ratio < cfg.resolve_ratio => {
            let ep = ep.clone();
            out.push(alert(entity, version, h, &ep, AlertState::Resolved, ts_ms, cfg, false));
            h.open = None;
        }
        Some(ep) => {
            if ts_ms >= ep.last_emit_ms + cfg.update_interval.as_millis() as i64 {
                ep.last_emit_ms = ts_ms;
                let ep = ep.clone();
                out.push(alert(entity, version, h, &ep, AlertState::Update, ts_ms, cfg, false));
            }
        }
    }
}

fn subject(h: &Head) -> String {
    format!("{}@{}m", short(h.metric), h.horizon_min)
}

#[allow(clippy::too_many_arguments)]
fn alert(
    entity: &str,
    version: &str,
    h: &Head,
    ep: &Episode,
    state: AlertState,
    ts_ms: i64,
    cfg: &ModelError,
    superseded: bool,
) -> DriftAlert {
    let reference = h.reference().unwrap_or(f64::NAN);
    let ratio = h.live.value() / reference;
    let mut details = vec![
        ("baseline_mae".to_owned(), h.baseline.unwrap_or(f64::NAN)),
        ("live_mae".to_owned(), h.live.value()),
        ("n".to_owned(), h.n as f64),
        ("ratio".to_owned(), ratio),
        ("ratio_threshold".to_owned(), cfg.ratio_warning),
        ("reference_mae".to_owned(), reference),
        ("validation_mae".to_owned(), h.validation.unwrap_or(f64::NAN)),
    ];
    if superseded {
        details.push(("superseded".to_owned(), 1.0));
    }
    details.sort_by(|a, b| a.0.cmp(&b.0));
    DriftAlert {
        alert_id: ep.id.clone(),
        entity_id: Some(entity.to_owned()),
        ts_ms,
        kind: DriftKind::ModelError,
        subject: subject(h),
        statistic: "page_hinkley".into(),
        value: ep.ph_statistic,
        threshold: cfg.ph_lambda,
        severity: match state {
            AlertState::Resolved => Severity::Info,
            _ if ratio >= cfg.ratio_critical => Severity::Critical,
            _ => Severity::Warning,
        },
        model_version: Some(version.to_owned()),
        window_start_ms: ep.opened_ms,
        window_end_ms: ts_ms,
        state,
        scope: Some(entity.to_owned()),
        details,
    }
}
