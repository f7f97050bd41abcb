//! Micro-batch scoring: records are decoded and buffered as they arrive; when the runtime
//! closes a batch, the buffered vectors become one Arrow record batch, every model head scores
//! it in one call (XGBoost, then each LSTM / GRU model on the windows read from the same
//! vectors), and one forecast per record is published. A batch is scored by exactly one
//! model version: a newly promoted version is swapped in between batches, so no event is
//! dropped or scored twice across a swap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, Int64Builder, StringBuilder};
use arrow_array::{Array, FixedSizeListArray, Float32Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use headroom_forecast::serving::Scores;
use headroom_forecast::TARGETS;
use headroom_neural::SlotFlags;
use headroom_runtime::{Emitter, Flush, InputRecord, Metrics, Processor};
use headroom_schemas::{DlqReason, FeaturesRecord, Forecast, ForecastPoint, Metric, Observed};
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntGaugeVec, Opts};

use crate::served::Served;

/// Where the model watcher leaves a newly loaded version for the next batch.
pub type NextModel = Arc<Mutex<Option<Served>>>;

/// What is kept of a buffered record until its batch is scored.
struct Pending {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    traceparent: Option<String>,
    timestamp_ms: Option<i64>,
    record: FeaturesRecord,
}

#[derive(Clone)]
pub struct ScorerMetrics {
    pub swaps: IntCounter,
    pub load_failures: IntCounter,
    /// Per model family (`xgboost`, `lstm`, `gru`: bounded).
    pub score_seconds: HistogramVec,
    pub scored: IntCounter,
    /// 1 for each model family of the serving version, labelled with the version (reset on a
    /// swap, so one version per family: bounded).
    pub serving: IntGaugeVec,
}

impl ScorerMetrics {
    pub fn new(m: &Metrics) -> ScorerMetrics {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(Opts::new(name, help)).expect("metric");
            let _ = m.registry.register(Box::new(c.clone()));
            c
        };
        let score_seconds = HistogramVec::new(
            HistogramOpts::new("scorer_batch_score_seconds", "Time to score one micro-batch with every head of a model family.")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
            &["model"],
        )
        .expect("metric");
        let _ = m.registry.register(Box::new(score_seconds.clone()));
        let serving = IntGaugeVec::new(
            Opts::new("scorer_serving_model", "The model version serving each model family (value 1)."),
            &["model", "version"],
        )
        .expect("metric");
        let _ = m.registry.register(Box::new(serving.clone()));
        ScorerMetrics {
            serving,
            swaps: counter("scorer_model_swaps_total", "Model versions swapped in without a restart."),
            load_failures: counter(
                "scorer_model_load_failures_total",
                "Announced model versions that could not be loaded (the previous one kept serving).",
            ),
            score_seconds,
            scored: counter("scorer_events_scored_total", "Feature events scored."),
        }
    }
}

/// Inputs and outputs of one neural model for a batch (reused across batches).
#[derive(Default)]
struct NeuralBatch {
    x: Vec<f32>,
    statics: Vec<f32>,
    out: Vec<(f32, f32)>,
}

pub struct Scorer {
    input_topic: String,
    output: String,
    model: Served,
    next: NextModel,
    threads: usize,
    device: headroom_forecast::device::Device,
    pending: Vec<Pending>,
    scores: Scores,
    /// Per input partition, per entity: which recent slots had samples (the neural windows'
    /// missing flags). Partition-local like the input; dropped on revoke.
    flags: HashMap<i32, HashMap<String, SlotFlags>>,
    /// Per input partition, the newest slot seen and the clock of its last eviction sweep.
    clocks: HashMap<i32, (i64, i64)>,
    /// Entities silent this long are forgotten (`models.idle_expiry`, the featurizer's too).
    idle_expiry_ms: i64,
    state_entities: prometheus::IntGauge,
    neural: Vec<NeuralBatch>,
    nows: Vec<[f32; headroom_forecast::dataset::N_TARGETS]>,
    buf: Vec<u8>,
    metrics: ScorerMetrics,
}

/// The Arrow schema of a scoring micro-batch.
pub fn batch_schema(width: usize) -> Schema {
    Schema::new(vec![
        Field::new("entity_id", DataType::Utf8, false),
        Field::new("ts_ms", DataType::Int64, false),
        Field::new(
            "features",
            DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, true)), width as i32),
            false,
        ),
    ])
}

/// Builds the record batch of `rows` (all of one feature width).
pub fn to_record_batch<'a>(
    rows: impl Iterator<Item = &'a FeaturesRecord>,
    width: usize,
) -> anyhow::Result<RecordBatch> {
    let mut ids = StringBuilder::new();
    let mut ts = Int64Builder::new();
    let mut feats = FixedSizeListBuilder::new(Float32Builder::new(), width as i32)
        .with_field(Arc::new(Field::new("item", DataType::Float32, true)));
    for r in rows {
        anyhow::ensure!(r.values.len() == width, "vector of {} values, expected {width}", r.values.len());
        ids.append_value(&r.entity_id);
        ts.append_value(r.ts_ms);
        feats.values().append_slice(&r.values);
        feats.append(true);
    }
    Ok(RecordBatch::try_new(
        Arc::new(batch_schema(width)),
        vec![Arc::new(ids.finish()), Arc::new(ts.finish()), Arc::new(feats.finish())],
    )?)
}

/// The features column of a batch as one contiguous row-major slice.
pub fn feature_values(batch: &RecordBatch) -> anyhow::Result<&[f32]> {
    let col = batch
        .column_by_name("features")
        .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
        .ok_or_else(|| anyhow::anyhow!("batch has no fixed-size-list `features` column"))?;
    let values = col
        .values()
        .as_any()
        .downcast_ref::<Float32Array>()
        .ok_or_else(|| anyhow::anyhow!("features are not float32"))?;
    let w = col.value_length() as usize;
    let off = col.offset() * w;
    Ok(&values.values()[off..off + col.len() * w])
}

fn show_serving(metrics: &ScorerMetrics, model: &Served) {
    metrics.serving.reset();
    for family in model.families() {
        metrics.serving.with_label_values(&[family, model.version()]).set(1);
    }
}

impl Scorer {
    pub fn new(
        input_topic: String,
        output: String,
        mut model: Served,
        next: NextModel,
        threads: usize,
        device: headroom_forecast::device::Device,
        idle_expiry_ms: i64,
        state_entities: prometheus::IntGauge,
        metrics: ScorerMetrics,
    ) -> anyhow::Result<Scorer> {
        model.xgb.set_threads(threads)?;
        model.xgb.set_device(device)?;
        show_serving(&metrics, &model);
        Ok(Scorer {
            input_topic,
            output,
            model,
            next,
            threads,
            device,
            pending: Vec::new(),
            scores: Scores::default(),
            flags: HashMap::new(),
            clocks: HashMap::new(),
            idle_expiry_ms,
            state_entities,
            neural: Vec::new(),
            nows: Vec::new(),
            buf: Vec::new(),
            metrics,
        })
    }

    fn swap_if_announced(&mut self) {
        let next = match self.next.lock() {
            Ok(mut slot) => slot.take(),
            Err(_) => None,
        };
        if let Some(mut m) = next {
            if let Err(e) = m.xgb.set_threads(self.threads).and_then(|()| m.xgb.set_device(self.device)) {
                tracing::error!(error = %e, version = %m.version(), "cannot configure the new model; keeping the current one");
                self.metrics.load_failures.inc();
                return;
            }
            tracing::info!(from = %self.model.version(), to = %m.version(), models = ?m.families(), "model version swapped");
            self.model = m;
            show_serving(&self.metrics, &self.model);
            self.metrics.swaps.inc();
        }
    }

    /// Scores the batch's rows with each neural model: records each event's slot in its
    /// entity's flags (in arrival order), builds its windows from its vector, then runs every
    /// model on the whole batch.
    fn score_neural(&mut self, ok: &[Pending]) {
        let m = &self.model;
        if m.neural.is_empty() {
            return;
        }
        let started = Instant::now();
        let keep = m.history_slots();
        let interval = m.xgb.interval_ms;
        self.neural.resize_with(m.neural.len(), NeuralBatch::default);
        for b in &mut self.neural {
            b.x.clear();
            b.statics.clear();
        }
        self.nows.clear();
        let first = &m.neural[0].model;
        for (i, p) in ok.iter().enumerate() {
            let r = &p.record;
            let slot = r.ts_ms.div_euclid(interval);
            let entities = self.flags.entry(p.partition).or_default();
            if !entities.contains_key(&r.entity_id) {
                entities.insert(r.entity_id.clone(), SlotFlags::default());
            }
            let flags = entities.get_mut(&r.entity_id).expect("entity just ensured");
            flags.record(slot, first.observed_bits(&r.values), keep);
            let clock = self.clocks.entry(p.partition).or_insert((slot, slot));
            clock.0 = clock.0.max(slot);
            for (n, b) in m.neural.iter().zip(&mut self.neural) {
                n.model.push_window(&r.values, slot, flags, &mut b.x);
                n.model.push_statics(self.scores.anchors[i], &mut b.statics);
            }
            self.nows.push(first.nows(&r.values));
        }
        let prepared = started.elapsed();
        for (n, b) in m.neural.iter().zip(&mut self.neural) {
            let t = Instant::now();
            n.model.predict(&b.x, &b.statics, &self.scores.anchors, &self.nows, self.threads, &mut b.out);
            self.metrics
                .score_seconds
                .with_label_values(&[n.model.family()])
                .observe((t.elapsed() + prepared / m.neural.len() as u32).as_secs_f64());
        }
        self.evict_idle(keep as i64, interval);
    }

    /// Forgets entities idle past `idle_expiry` in partitions whose clock moved by a window
    /// since their last sweep (so a sweep costs O(entities) once per `keep` slots, not per batch).
    fn evict_idle(&mut self, keep: i64, interval_ms: i64) {
        let idle_slots = (self.idle_expiry_ms / interval_ms.max(1)).max(keep);
        for (partition, (clock, swept)) in self.clocks.iter_mut() {
            if *clock - *swept < keep {
                continue;
            }
            *swept = *clock;
            if let Some(entities) = self.flags.get_mut(partition) {
                let dropped = headroom_neural::serve::evict_idle(entities, *clock, idle_slots);
                if dropped > 0 {
                    tracing::debug!(partition, dropped, "idle entities' missing flags forgotten");
                }
            }
        }
        self.state_entities.set(self.flags.values().map(|e| e.len() as i64).sum());
    }

    fn emit_forecast(&mut self, p: &Pending, i: usize, emitter: &mut Emitter<'_>) {
        let served = &self.model;
        let m = &served.xgb;
        let tag = &served.tag;
        let mut points: Vec<ForecastPoint> = m
            .heads
            .iter()
            .zip(&self.scores.heads)
            .map(|(h, preds)| ForecastPoint {
                metric: Metric::from_short(TARGETS[h.target]).unwrap_or(Metric::Cpu),
                horizon_min: h.horizon_min,
                p50: f64::from(preds[i].0),
                p90: f64::from(preds[i].1),
                model: tag.clone(),
            })
            .collect();
        let mut model_versions = vec![(m.family.clone(), m.version.clone())];
        // The other models' points follow the primary's (see `Forecast::primary_points`).
        for (n, b) in served.neural.iter().zip(&self.neural) {
            let k = n.heads.len();
            for (&(metric, horizon_min), &(p50, p90)) in n.heads.iter().zip(&b.out[i * k..(i + 1) * k]) {
                points.push(ForecastPoint {
                    metric,
                    horizon_min,
                    p50: f64::from(p50),
                    p90: f64::from(p90),
                    model: n.tag.clone(),
                });
            }
            model_versions.push((n.model.family().to_owned(), m.version.clone()));
        }
        let r = &p.record;
        let f = Forecast {
            event_id: r.event_id.clone(),
            entity_id: r.entity_id.clone(),
            ts_ms: r.ts_ms,
            service: r.service.clone(),
            cluster: r.cluster.clone(),
            points,
            scale_event_prob: self.scores.peak.get(i).map(|p| f64::from(*p)),
            model_versions,
            // What the forecast starts from, so that the recommender and the drift monitor
            // read capacity and actuals from this topic alone.
            observed: Observed {
                cpu_util: Some(r.cpu_util).filter(|v| v.is_finite()),
                mem_util: Some(r.mem_util).filter(|v| v.is_finite()),
                net_bps: Some(r.net_bps).filter(|v| v.is_finite()),
                cpu_cores: r.cpu_cores,
                mem_bytes: r.mem_bytes,
                replicas: r.replicas,
                cost_per_hour: r.cost_per_hour,
            },
        };
        self.buf.clear();
        f.encode_framed(&mut self.buf);
        let out = self.output.clone();
        emitter.emit(&out, r.entity_id.as_bytes(), &self.buf);
    }
}

fn input<'a>(topic: &'a str, p: &'a Pending) -> InputRecord<'a> {
    InputRecord {
        topic,
        partition: p.partition,
        offset: p.offset,
        key: p.key.as_deref(),
        payload: Some(&p.payload),
        timestamp_ms: p.timestamp_ms,
        traceparent: p.traceparent.as_deref(),
        now_ms: 0,
    }
}

impl Processor for Scorer {
    fn process(&mut self, rec: &InputRecord<'_>, out: &mut Emitter<'_>) {
        if out.is_replay() {
            return;
        }
        let Some(payload) = rec.payload else {
            out.dead_letter(DlqReason::Truncated, "record without a value");
            return;
        };
        match FeaturesRecord::decode(payload) {
            Ok(record) => self.pending.push(Pending {
                partition: rec.partition,
                offset: rec.offset,
                key: rec.key.map(<[u8]>::to_vec),
                payload: payload.to_vec(),
                traceparent: rec.traceparent.map(str::to_owned),
                timestamp_ms: rec.timestamp_ms,
                record,
            }),
            Err(e) => out.dead_letter(e.reason(), &e.to_string()),
        }
    }

    fn on_revoke(&mut self, _topic: &str, partition: i32) {
        // Not committed: the partition's next owner scores them (and keeps its entities'
        // flags from then on).
        self.pending.retain(|p| p.partition != partition);
        self.flags.remove(&partition);
        self.clocks.remove(&partition);
    }

    fn flush(&mut self, out: &mut Flush<'_>) {
        if self.pending.is_empty() {
            return;
        }
        self.swap_if_announced();
        let pending = std::mem::take(&mut self.pending);
        let schema = self.model.xgb.feature_schema.clone();
        let width = self.model.xgb.input_len();
        let topic = self.input_topic.clone();
        let (ok, bad): (Vec<Pending>, Vec<Pending>) = pending
            .into_iter()
            .partition(|p| p.record.feature_set == schema && p.record.values.len() == width);
        for p in &bad {
            let rec = input(&topic, p);
            let detail = format!(
                "feature set {} ({} values); the serving model {} expects {schema} ({width} values)",
                p.record.feature_set,
                p.record.values.len(),
                self.model.version()
            );
            out.emitter(&rec).dead_letter(DlqReason::FeatureSchemaMismatch, &detail);
        }
        // The featurizer emits finite vectors only (a missing value is forward-filled and
        // flagged). A NaN or infinity comes from another producer: the models were never
        // trained on it (XGBoost would read NaN as "missing", the LSTM / GRU would forecast
        // NaN), so the record is dead-lettered naming the feature, never scored.
        let (ok, not_finite): (Vec<Pending>, Vec<Pending>) =
            ok.into_iter().partition(|p| p.record.values.iter().all(|v| v.is_finite()));
        for p in &not_finite {
            let rec = input(&topic, p);
            let (i, v) = p
                .record
                .values
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite())
                .map_or((0, f32::NAN), |(i, v)| (i, *v));
            let name = self.model.xgb.base_names.get(i).map_or("?", String::as_str);
            let detail = format!(
                "feature {name} (index {i}) is {v}: feature vectors must be finite (the featurizer forward-fills and flags missing values)"
            );
            out.emitter(&rec).dead_letter(DlqReason::NotFinite, &detail);
        }
        if ok.is_empty() {
            return;
        }
        let started = Instant::now();
        let scored = to_record_batch(ok.iter().map(|p| &p.record), width).and_then(|batch| {
            let values = feature_values(&batch)?;
            self.model.xgb.score(values, batch.num_rows(), &mut self.scores)
        });
        self.metrics
            .score_seconds
            .with_label_values(&[self.model.xgb.family.as_str()])
            .observe(started.elapsed().as_secs_f64());
        match scored {
            Ok(()) => {
                self.score_neural(&ok);
                for (i, p) in ok.iter().enumerate() {
                    let rec = input(&topic, p);
                    let mut e = out.emitter(&rec);
                    self.emit_forecast(p, i, &mut e);
                }
                self.metrics.scored.inc_by(ok.len() as u64);
            }
            Err(err) => {
                tracing::error!(error = %err, version = %self.model.version(), rows = ok.len(), "scoring failed; records dead-lettered");
                for p in &ok {
                    let rec = input(&topic, p);
                    out.emitter(&rec)
                        .dead_letter(DlqReason::ScoringFailed, &err.to_string());
                }
            }
        }
    }
}
