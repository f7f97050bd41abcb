//! The recommender stage: decode a forecast, update its entity's policy state, decide, and
//! publish the decision keyed by entity.

use std::collections::HashMap;

use headroom_policy::{
    Action, Decision, EntityState, ForecastView, HoldReason, Horizon, Observation, Recommender,
};
use headroom_runtime::{Emitter, InputRecord, Metrics, Processor};
use headroom_schemas::recommendations::recommendation_id;
use headroom_schemas::{DlqReason, Forecast, Metric, Recommendation};
use prometheus::{IntCounterVec, Opts};

use crate::config::PublishHolds;

#[derive(Clone)]
pub struct RecommenderMetrics {
    /// By action (a closed set of 5).
    pub decisions: IntCounterVec,
    /// By hold reason (a closed set of 9).
    pub holds: IntCounterVec,
}

impl RecommenderMetrics {
    pub fn new(m: &Metrics) -> RecommenderMetrics {
        let vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("metric");
            let _ = m.registry.register(Box::new(c.clone()));
            c
        };
        let decisions = vec(
            "recommender_decisions_total",
            "Decisions made, by action.",
            "action",
        );
        let holds = vec(
            "recommender_holds_total",
            "HOLD decisions, by reason.",
            "reason",
        );
        for a in headroom_schemas::recommendations::ACTIONS {
            let _ = decisions.with_label_values(&[a]);
        }
        for r in HoldReason::ALL {
            let _ = holds.with_label_values(&[r.as_str()]);
        }
        RecommenderMetrics { decisions, holds }
    }
}

/// Per partition: per entity, the policy state.
#[derive(Default)]
struct PartitionState {
    entities: HashMap<String, EntityState>,
    newest_ts: i64,
}

pub struct RecommenderStage {
    engine: Recommender,
    output: String,
    holds: PublishHolds,
    idle_expiry_ms: i64,
    partitions: HashMap<i32, PartitionState>,
    metrics: RecommenderMetrics,
    cpu: Vec<Horizon>,
    mem: Vec<Horizon>,
    buf: Vec<u8>,
}

impl RecommenderStage {
    pub fn new(
        engine: Recommender,
        output: String,
        holds: PublishHolds,
        idle_expiry_ms: i64,
        metrics: RecommenderMetrics,
    ) -> Self {
        RecommenderStage {
            engine,
            output,
            holds,
            idle_expiry_ms,
            partitions: HashMap::new(),
            metrics,
            cpu: Vec::new(),
            mem: Vec::new(),
            buf: Vec::with_capacity(512),
        }
    }

    fn publishes(&self, d: &Decision) -> bool {
        match (d.hold, self.holds) {
            (None, _) | (Some(_), PublishHolds::All) => true,
            (Some(r), PublishHolds::BadInput) => r.is_bad_input(),
            (Some(_), PublishHolds::None) => false,
        }
    }
}

/// The record published for a decision.
pub fn to_record(f: &Forecast, d: &Decision, policy_version: &str) -> Recommendation {
    let id = match d.action {
        // One move per entity and window: a repeated proposal keeps its id.
        Action::Rebalance => recommendation_id(&f.entity_id, d.window_start_ms.unwrap_or(f.ts_ms), "rebalance", policy_version),
        _ => recommendation_id(&f.entity_id, f.ts_ms, "decision", policy_version),
    };
    Recommendation {
        recommendation_id: id,
        entity_id: f.entity_id.clone(),
        ts_ms: f.ts_ms,
        service: f.service.clone(),
        cluster: f.cluster.clone(),
        action: d.action.index(),
        target_replicas: d.target_replicas,
        target_cpu_cores: d.target_cpu_cores,
        target_mem_bytes: d.target_mem_bytes,
        from_cluster: d.from_cluster.clone(),
        to_cluster: d.to_cluster.clone(),
        forecast_event_id: Some(f.event_id.clone()),
        cost_change_per_hour: d.cost_change_per_hour,
        shortfall_prob: d.shortfall_prob,
        confidence: d.confidence,
        policy_version: policy_version.to_owned(),
        model_versions: f.model_versions.clone(),
        reason: d.reason.clone(),
    }
}

/// The CPU and memory points of a forecast's primary model, as the policy reads them.
pub fn horizons(f: &Forecast, cpu: &mut Vec<Horizon>, mem: &mut Vec<Horizon>) {
    cpu.clear();
    mem.clear();
    for p in f.primary_points() {
        let h = Horizon {
            minutes: p.horizon_min,
            p50: p.p50,
            p90: p.p90,
        };
        match p.metric {
            Metric::Cpu => cpu.push(h),
            Metric::Memory => mem.push(h),
            _ => {}
        }
    }
}

/// The observation the policy reads, from the forecast's `observed` fields.
pub fn observation(f: &Forecast) -> Observation<'_> {
    let o = &f.observed;
    Observation {
        ts_ms: f.ts_ms,
        service: f.service.as_deref(),
        cluster: f.cluster.as_deref(),
        cpu_util: o.cpu_util,
        mem_util: o.mem_util,
        cpu_cores: o.cpu_cores,
        mem_bytes: o.mem_bytes,
        replicas: o.replicas,
        cost_per_hour: o.cost_per_hour,
    }
}

impl Processor for RecommenderStage {
    fn process(&mut self, rec: &InputRecord<'_>, out: &mut Emitter<'_>) {
        let Some(payload) = rec.payload else {
            out.dead_letter(DlqReason::Truncated, "record has no value");
            return;
        };
        let f = match Forecast::decode(payload) {
            Ok(f) => f,
            Err(e) => {
                out.dead_letter(e.reason(), &e.to_string());
                return;
            }
        };
        if f.entity_id.is_empty() {
            out.dead_letter(DlqReason::EmptyEntity, "forecast without an entity id");
            return;
        }
        if rec.key.is_some_and(|k| k != f.entity_id.as_bytes()) {
            out.dead_letter(DlqReason::KeyMismatch, "record key differs from entity_id");
            return;
        }
        horizons(&f, &mut self.cpu, &mut self.mem);
        let part = self.partitions.entry(rec.partition).or_default();
        part.newest_ts = part.newest_ts.max(f.ts_ms);
        if !part.entities.contains_key(&f.entity_id) {
            part.entities
                .insert(f.entity_id.clone(), EntityState::default());
        }
        let Some(state) = part.entities.get_mut(&f.entity_id) else {
            return;
        };
        let view = ForecastView {
            cpu: &self.cpu,
            mem: &self.mem,
        };
        let d = self
            .engine
            .decide(state, &observation(&f), &view, rec.offset);
        if out.is_replay() {
            return;
        }
        self.metrics
            .decisions
            .with_label_values(&[d.action.symbol()])
            .inc();
        if let Some(r) = d.hold {
            self.metrics.holds.with_label_values(&[r.as_str()]).inc();
            if r.is_bad_input() {
                tracing::trace!(entity = %f.entity_id, reason = r.as_str(), detail = %d.reason, "held on bad input");
            }
        }
        if !self.publishes(&d) {
            return;
        }
        let r = to_record(&f, &d, self.engine.version());
        self.buf.clear();
        r.encode_framed(&mut self.buf);
        out.emit(&self.output, f.entity_id.as_bytes(), &self.buf);
    }

    fn on_revoke(&mut self, _topic: &str, partition: i32) {
        self.partitions.remove(&partition);
    }

    fn replay_floor(&mut self, _topic: &str, partition: i32) -> Option<i64> {
        self.partitions
            .get(&partition)?
            .entities
            .values()
            .filter_map(EntityState::floor)
            .min()
    }

    fn on_commit(&mut self, metrics: &Metrics) {
        let (mut entities, mut bytes) = (0usize, 0usize);
        for part in self.partitions.values_mut() {
            let horizon = part.newest_ts - self.idle_expiry_ms;
            part.entities
                .retain(|_, s| s.last_ts().is_none_or(|t| t >= horizon));
            entities += part.entities.len();
            bytes += part
                .entities
                .iter()
                .map(|(k, s)| k.capacity() + std::mem::size_of::<EntityState>() + s.heap_bytes())
                .sum::<usize>();
        }
        metrics.state_entities.set(entities as i64);
        metrics.state_bytes.set(bytes as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use headroom_policy::{PolicyFile, Recommender};

    fn stage(holds: PublishHolds) -> RecommenderStage {
        let pf = PolicyFile::load(None).unwrap();
        let m = Metrics::new("recommender");
        RecommenderStage::new(Recommender::new(pf.policy, pf.pricing).unwrap(), "out".into(), holds, 3_600_000, RecommenderMetrics::new(&m))
    }

    fn decision(hold: Option<HoldReason>) -> Decision {
        Decision {
            action: if hold.is_some() { Action::Hold } else { Action::ScaleOut },
            target_replicas: None,
            target_cpu_cores: None,
            target_mem_bytes: None,
            from_cluster: None,
            to_cluster: None,
            cost_change_per_hour: 0.0,
            shortfall_prob: 0.0,
            confidence: 0.0,
            reason: String::new(),
            hold,
            window_start_ms: None,
        }
    }

    #[test]
    fn the_publish_setting_filters_holds_only() {
        let act = decision(None);
        let steady = decision(Some(HoldReason::Steady));
        let bad = decision(Some(HoldReason::InvalidForecast));
        let all = stage(PublishHolds::All);
        assert!(all.publishes(&act) && all.publishes(&steady) && all.publishes(&bad));
        let some = stage(PublishHolds::BadInput);
        assert!(some.publishes(&act) && !some.publishes(&steady) && some.publishes(&bad));
        let none = stage(PublishHolds::None);
        assert!(none.publishes(&act) && !none.publishes(&steady) && !none.publishes(&bad));
    }

    #[test]
    fn rebalances_keep_one_id_per_window_and_decisions_one_per_event() {
        let f = Forecast { entity_id: "e".into(), ts_ms: 10, event_id: "ev".into(), ..Forecast::default() };
        let mut d = decision(None);
        let a = to_record(&f, &d, "p1");
        d.action = Action::Rebalance;
        d.window_start_ms = Some(0);
        let b = to_record(&f, &d, "p1");
        assert_ne!(a.recommendation_id, b.recommendation_id);
        // Another event of the same window: the same id.
        let later = Forecast { ts_ms: 99, ..f.clone() };
        assert_eq!(to_record(&later, &d, "p1").recommendation_id, b.recommendation_id);
        assert_eq!(a.recommendation_id, to_record(&f, &decision(None), "p1").recommendation_id);
        assert_eq!(a.forecast_event_id.as_deref(), Some("ev"));
        assert_eq!(b.action, 4);
    }
}
