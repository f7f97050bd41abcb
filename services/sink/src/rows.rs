//! Turning consumed records into the rows of one batch: binary `COPY` payloads for the
//! append-only tables, and in-memory partial aggregates for the rollups (merged into their
//! tables on conflict when the batch is written).
//!
//! Every record is validated against what the tables accept before anything is written, so a
//! bad record is dead-lettered with its reason and never fails a batch.

use std::collections::{BTreeSet, HashMap};

use apache_avro::types::Value;
use headroom_schemas::{
    generic, DecodeError, DlqReason, FeaturesRecord, Forecast, ModelEvent, ModelEventKind,
    Telemetry, ValidationLimits,
};
use headroom_store::CopyBuf;

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;
/// Histogram bins for utilization (see the migration): 100 bins of 1 %, and one for >= 1.0.
pub const HIST_BINS: usize = 101;

/// Why a record is not written: the reason (a metric label) and a readable detail.
pub type Reject = (DlqReason, String);

/// The rollup statistics of one metric.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Agg {
    pub n: i32,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// Sum of squares (stored for CPU and memory: the standard deviations of the anomaly
    /// query's baseline).
    pub sumsq: f64,
}

impl Agg {
    fn add(&mut self, v: Option<f64>) {
        let Some(v) = v else { return };
        if self.n == 0 {
            self.min = v;
            self.max = v;
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.n += 1;
        self.sum += v;
        self.sumsq += v * v;
    }
}

/// The metrics that are rolled up, in column order.
pub const ROLLUP_METRICS: [&str; 7] = [
    "cpu", "mem", "net_in", "net_out", "disk_read", "disk_write", "cost",
];

/// One rollup row in the making: (entity, bucket) or (service, cluster, bucket).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rollup {
    pub service: Option<String>,
    pub cluster: Option<String>,
    pub n: i32,
    pub metrics: [Agg; 7],
    /// Dollars: each sample's hourly price times the hours one sample stands for.
    pub cost_usd: f64,
    pub cpu_cores_max: Option<f64>,
    pub mem_bytes_max: Option<f64>,
    pub replicas_max: Option<i32>,
    pub scale_events: i32,
    pub cpu_hist: Option<Box<[i32; HIST_BINS]>>,
    pub mem_hist: Option<Box<[i32; HIST_BINS]>>,
}

pub fn hist_bin(v: f64) -> usize {
    ((v * 100.0).floor().max(0.0) as usize).min(HIST_BINS - 1)
}

fn hist_add(h: &mut Option<Box<[i32; HIST_BINS]>>, v: Option<f64>) {
    if let Some(v) = v {
        h.get_or_insert_with(|| Box::new([0; HIST_BINS]))[hist_bin(v)] += 1;
    }
}

fn max_opt<T: PartialOrd + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y > x { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The q-quantile of a dense histogram as `hist_quantile` computes it from the stored form: the
/// middle of the first bin where the cumulative count reaches q of the total.
pub fn hist_quantile(h: &[i32; HIST_BINS], q: f64) -> Option<f64> {
    let total: i64 = h.iter().map(|c| i64::from(*c)).sum();
    if total == 0 {
        return None;
    }
    let mut cum = 0i64;
    for (b, c) in h.iter().enumerate() {
        cum += i64::from(*c);
        if *c > 0 && cum as f64 >= q * total as f64 {
            return Some((b as f64 + 0.5) / 100.0);
        }
    }
    None
}

/// A histogram in its stored form: one `bin << 32 | count` per non-empty bin.
pub fn sparse_hist(h: &[i32; HIST_BINS]) -> Vec<i64> {
    h.iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(b, c)| ((b as i64) << 32) | i64::from(*c))
        .collect()
}

impl Rollup {
    fn add(&mut self, t: &Telemetry, sample_hours: f64) {
        if t.service.is_some() {
            self.service.clone_from(&t.service);
        }
        if t.cluster.is_some() {
            self.cluster.clone_from(&t.cluster);
        }
        self.n += 1;
        let vals = [
            t.cpu_util,
            t.mem_util,
            t.net_in_bps,
            t.net_out_bps,
            t.disk_read_bps,
            t.disk_write_bps,
            t.cost_per_hour,
        ];
        for (a, v) in self.metrics.iter_mut().zip(vals) {
            a.add(v);
        }
        self.cpu_cores_max = max_opt(self.cpu_cores_max, t.cpu_cores);
        self.mem_bytes_max = max_opt(self.mem_bytes_max, t.mem_bytes);
        self.replicas_max = max_opt(self.replicas_max, t.replicas);
        self.scale_events += i32::from(t.scale_event == Some(true));
        self.cost_usd += t.cost_per_hour.unwrap_or(0.0) * sample_hours;
        hist_add(&mut self.cpu_hist, t.cpu_util);
        hist_add(&mut self.mem_hist, t.mem_util);
    }

    /// Columns of an entity stage row: entity, bucket, service, cluster, [`Self::TAIL`], then
    /// the CPU and memory p95 of the row's histograms (what a new row stores; a merge
    /// recomputes them from the merged histograms).
    pub const COLUMNS: i16 = 4 + Self::TAIL + 2;
    /// Columns of a service stage row: service, cluster, bucket, then [`Self::TAIL`].
    pub const SERVICE_COLUMNS: i16 = 3 + Self::TAIL;
    /// n, 4 x 7 metric columns, cost in dollars, cores, mem bytes, replicas, scale events, two
    /// histograms, the CPU and memory sums of squares.
    const TAIL: i16 = 1 + 28 + 1 + 4 + 2 + 2;

    fn encode(&self, entity: &str, bucket_ms: i64, c: &mut CopyBuf) {
        c.row()
            .text(entity)
            .timestamptz_ms(bucket_ms)
            .opt_text(self.service.as_deref())
            .opt_text(self.cluster.as_deref());
        self.encode_tail(c);
        let p95 = |h: &Option<Box<[i32; HIST_BINS]>>| h.as_deref().and_then(|h| hist_quantile(h, 0.95));
        c.opt_float8(p95(&self.cpu_hist)).opt_float8(p95(&self.mem_hist));
    }

    fn encode_service(&self, service: &str, cluster: &str, bucket_ms: i64, c: &mut CopyBuf) {
        c.row().text(service).text(cluster).timestamptz_ms(bucket_ms);
        self.encode_tail(c);
    }

    fn encode_tail(&self, c: &mut CopyBuf) {
        c.int4(self.n);
        for a in &self.metrics {
            c.int4(a.n);
            if a.n > 0 {
                c.float8(a.sum).float8(a.min).float8(a.max);
            } else {
                c.null().null().null();
            }
        }
        let cpu = self.cpu_hist.as_deref().map(sparse_hist);
        let mem = self.mem_hist.as_deref().map(sparse_hist);
        c.float8(self.cost_usd)
            .opt_float8(self.cpu_cores_max)
            .opt_float8(self.mem_bytes_max)
            .opt_int4(self.replicas_max)
            .int4(self.scale_events)
            .int8_array(cpu.as_deref())
            .int8_array(mem.as_deref());
        for a in &self.metrics[..2] {
            if a.n > 0 {
                c.float8(a.sumsq);
            } else {
                c.null();
            }
        }
    }
}

/// Per-hour summary of the feature stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureSummary {
    pub feature_set: String,
    pub n: i32,
    pub imputed_n: i32,
    pub scale_events: i32,
    pub first_ts: i64,
    pub last_ts: i64,
}

impl FeatureSummary {
    pub const COLUMNS: i16 = 8;
}

/// A model event and what it does to the registry.
#[derive(Debug, Clone)]
pub struct ModelRow {
    pub event: ModelEvent,
    pub partition: i32,
    pub offset: i64,
}

/// Column counts of the append-only tables (must match the migrations).
pub const RAW_COLUMNS: i16 = 18;
pub const FORECAST_COLUMNS: i16 = 13;
pub const RECOMMENDATION_COLUMNS: i16 = 20;
pub const DRIFT_COLUMNS: i16 = 15;
pub const DLQ_COLUMNS: i16 = 11;

/// The rows of one batch, for every table.
#[derive(Debug)]
pub struct Batch {
    pub raw: CopyBuf,
    /// The raw rows' CPU samples, scored for anomalies once the hourly rollup is merged
    /// (`crate::anomalies`).
    pub points: Vec<crate::anomalies::Point>,
    pub rollup_1m: HashMap<(String, i64), Rollup>,
    pub rollup_1h: HashMap<(String, i64), Rollup>,
    /// (service, cluster, hour); '' where the sample has none.
    pub rollup_service: HashMap<(String, String, i64), Rollup>,
    /// Hours of running one sample stands for (the sampling interval), for cost in dollars.
    pub sample_hours: f64,
    pub features: HashMap<(String, i64), FeatureSummary>,
    pub forecasts: CopyBuf,
    pub recommendations: CopyBuf,
    pub drift: CopyBuf,
    pub dead_letters: CopyBuf,
    pub models: Vec<ModelRow>,
    /// Per table, the UTC days (ms) the batch has rows in: their partitions must exist.
    pub days: HashMap<&'static str, BTreeSet<i64>>,
    /// Per table, the newest event time in the batch (the data clock).
    pub newest: HashMap<&'static str, i64>,
    /// Records taken (rows or dead letters), for the batch-size trigger.
    pub records: usize,
    /// Raw rows not written because their day is already past the raw table's retention.
    pub expired: HashMap<&'static str, u64>,
    /// The UTC hours (ms) the batch writes raw rows in (what the Parquet archive cuts).
    pub raw_hours: BTreeSet<i64>,
    /// Whether the 1-minute rollup is kept (`rollups.minute`).
    pub minute: bool,
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new(std::time::Duration::from_secs(300))
    }
}

impl Batch {
    /// An empty batch for telemetry sampled every `sample_interval`.
    pub fn new(sample_interval: std::time::Duration) -> Batch {
        Batch {
            raw: CopyBuf::new(RAW_COLUMNS),
            points: Vec::new(),
            rollup_1m: HashMap::new(),
            rollup_1h: HashMap::new(),
            rollup_service: HashMap::new(),
            sample_hours: sample_interval.as_secs_f64() / 3600.0,
            features: HashMap::new(),
            forecasts: CopyBuf::new(FORECAST_COLUMNS),
            recommendations: CopyBuf::new(RECOMMENDATION_COLUMNS),
            drift: CopyBuf::new(DRIFT_COLUMNS),
            dead_letters: CopyBuf::new(DLQ_COLUMNS),
            models: Vec::new(),
            days: HashMap::new(),
            newest: HashMap::new(),
            records: 0,
            expired: HashMap::new(),
            raw_hours: BTreeSet::new(),
            minute: sample_interval < std::time::Duration::from_secs(60),
        }
    }

    /// Keeps the 1-minute rollup or not (by default: when samples are less than a minute apart).
    pub fn minute_rollup(mut self, on: bool) -> Batch {
        self.minute = on;
        self
    }
}

/// Checks of event times shared by every record type.
fn check_ts(ts_ms: i64, now_ms: i64, limits: &ValidationLimits, what: &str) -> Result<(), Reject> {
    if ts_ms < limits.min_ts_ms {
        return Err((
            DlqReason::TimestampPast,
            format!("{what} {ts_ms} is before {}", limits.min_ts_ms),
        ));
    }
    if ts_ms > now_ms.saturating_add(limits.max_future_ms) {
        return Err((
            DlqReason::TimestampFuture,
            format!("{what} {ts_ms} is more than {} s ahead of now", limits.max_future_ms / 1000),
        ));
    }
    Ok(())
}

fn finite(name: &str, v: f64) -> Result<f64, Reject> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err((DlqReason::NotFinite, format!("{name} is {v}")))
    }
}

fn prob(name: &str, v: f64) -> Result<f64, Reject> {
    let v = finite(name, v)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err((DlqReason::OutOfRange, format!("{name} = {v} is outside [0, 1]")))
    }
}

fn text_ok(name: &str, v: &str) -> Result<(), Reject> {
    if v.contains('\0') {
        Err((DlqReason::WrongType, format!("{name} contains a NUL character")))
    } else {
        Ok(())
    }
}

const DAY_MS: i64 = 86_400_000;

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    fn touch(&mut self, table: &'static str, ts_ms: i64) {
        self.days
            .entry(table)
            .or_default()
            .insert(ts_ms.div_euclid(DAY_MS) * DAY_MS);
        let n = self.newest.entry(table).or_insert(ts_ms);
        *n = (*n).max(ts_ms);
    }

    /// Adds a telemetry sample: a raw row (unless its day is past `raw_floor_ms`, the raw
    /// table's retention) and its share of the 1-minute and 1-hour rollups.
    pub fn add_telemetry(
        &mut self,
        t: &Telemetry,
        partition: i32,
        offset: i64,
        raw_floor_ms: i64,
    ) -> Result<(), Reject> {
        text_ok("entity_id", &t.entity_id)?;
        for (k, v) in &t.labels {
            text_ok("label", k)?;
            text_ok("label", v)?;
        }
        for s in [&t.service, &t.cluster].into_iter().flatten() {
            text_ok("service/cluster", s)?;
        }
        self.records += 1;
        if t.ts_ms.div_euclid(DAY_MS) * DAY_MS + DAY_MS > raw_floor_ms {
            self.touch("telemetry_raw", t.ts_ms);
            let c = &mut self.raw;
            c.row()
                .text(&t.entity_id)
                .timestamptz_ms(t.ts_ms)
                .opt_text(t.service.as_deref())
                .opt_text(t.cluster.as_deref());
            for v in [
                t.cpu_util,
                t.mem_util,
                t.net_in_bps,
                t.net_out_bps,
                t.disk_read_bps,
                t.disk_write_bps,
                t.cpu_cores,
                t.mem_bytes,
            ] {
                c.opt_float8(v);
            }
            c.opt_int4(t.replicas)
                .opt_float8(t.cost_per_hour)
                .opt_boolean(t.scale_event);
            if t.labels.is_empty() {
                c.null();
            } else {
                let obj: serde_json::Map<String, serde_json::Value> = t
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect();
                c.jsonb(&serde_json::Value::Object(obj).to_string());
            }
            c.int4(partition).int8(offset);
            self.raw_hours.insert(t.ts_ms.div_euclid(HOUR_MS) * HOUR_MS);
            if let Some(cpu) = t.cpu_util {
                self.touch("telemetry_anomalies", t.ts_ms);
                self.points.push(crate::anomalies::Point {
                    entity_id: t.entity_id.clone(),
                    service: t.service.clone(),
                    ts_ms: t.ts_ms,
                    cpu,
                });
            }
        } else {
            *self.expired.entry("telemetry_raw").or_default() += 1;
        }
        let m = t.ts_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        let h = t.ts_ms.div_euclid(HOUR_MS) * HOUR_MS;
        self.touch("telemetry_1h", h);
        self.touch("telemetry_service_1h", h);
        let hours = self.sample_hours;
        if self.minute {
            self.touch("telemetry_1m", m);
            self.rollup_1m
                .entry((t.entity_id.clone(), m))
                .or_default()
                .add(t, hours);
        }
        self.rollup_1h
            .entry((t.entity_id.clone(), h))
            .or_default()
            .add(t, hours);
        let key = (
            t.service.clone().unwrap_or_default(),
            t.cluster.clone().unwrap_or_default(),
            h,
        );
        self.rollup_service.entry(key).or_default().add(t, hours);
        Ok(())
    }

    pub fn add_features(&mut self, f: &FeaturesRecord, now_ms: i64, limits: &ValidationLimits) -> Result<(), Reject> {
        check_ts(f.ts_ms, now_ms, limits, "ts_ms")?;
        if f.entity_id.is_empty() {
            return Err((DlqReason::EmptyEntity, "entity_id is empty".into()));
        }
        text_ok("entity_id", &f.entity_id)?;
        text_ok("feature_set", &f.feature_set)?;
        self.records += 1;
        let h = f.ts_ms.div_euclid(HOUR_MS) * HOUR_MS;
        self.touch("features_1h", h);
        let s = self.features.entry((f.entity_id.clone(), h)).or_insert_with(|| FeatureSummary {
            feature_set: f.feature_set.clone(),
            first_ts: f.ts_ms,
            last_ts: f.ts_ms,
            ..Default::default()
        });
        s.n += 1;
        s.imputed_n += i32::from(f.imputed_mask != 0);
        s.scale_events += i32::from(f.scale_event);
        s.first_ts = s.first_ts.min(f.ts_ms);
        s.last_ts = s.last_ts.max(f.ts_ms);
        Ok(())
    }

    pub fn add_forecast(
        &mut self,
        f: &Forecast,
        partition: i32,
        offset: i64,
        now_ms: i64,
        limits: &ValidationLimits,
    ) -> Result<(), Reject> {
        check_ts(f.ts_ms, now_ms, limits, "ts_ms")?;
        if f.entity_id.is_empty() {
            return Err((DlqReason::EmptyEntity, "entity_id is empty".into()));
        }
        for s in [&f.event_id, &f.entity_id] {
            text_ok("id", s)?;
        }
        let p = f.scale_event_prob.map(|p| prob("scale_event_prob", p)).transpose()?;
        for pt in &f.points {
            finite("p50", pt.p50)?;
            finite("p90", pt.p90)?;
            if pt.horizon_min <= 0 {
                return Err((DlqReason::OutOfRange, format!("horizon_min = {} is not positive", pt.horizon_min)));
            }
            text_ok("model", &pt.model)?;
        }
        self.records += 1;
        self.touch("forecasts", f.ts_ms);
        for pt in &f.points {
            self.forecasts
                .row()
                .text(&f.event_id)
                .text(&f.entity_id)
                .timestamptz_ms(f.ts_ms)
                .opt_text(f.service.as_deref())
                .opt_text(f.cluster.as_deref())
                .text(pt.metric.symbol())
                .int4(pt.horizon_min)
                .float8(pt.p50)
                .float8(pt.p90)
                .opt_float8(p)
                .text(&pt.model)
                .int4(partition)
                .int8(offset);
        }
        Ok(())
    }

    pub fn add_recommendation(
        &mut self,
        payload: &[u8],
        partition: i32,
        offset: i64,
        now_ms: i64,
        limits: &ValidationLimits,
    ) -> Result<(), Reject> {
        let f = Fields::decode("recommendations-value", payload)?;
        let ts = f.long("ts_ms")?;
        check_ts(ts, now_ms, limits, "ts_ms")?;
        let entity = f.str("entity_id")?;
        if entity.is_empty() {
            return Err((DlqReason::EmptyEntity, "entity_id is empty".into()));
        }
        let cost = finite("cost_change_per_hour", f.double("cost_change_per_hour")?)?;
        let shortfall = prob("shortfall_prob", f.double("shortfall_prob")?)?;
        let confidence = prob("confidence", f.double("confidence")?)?;
        let target_cores = f.opt_double("target_cpu_cores")?.map(|v| finite("target_cpu_cores", v)).transpose()?;
        let target_mem = f.opt_double("target_mem_bytes")?.map(|v| finite("target_mem_bytes", v)).transpose()?;
        let strings = [
            f.str("recommendation_id")?,
            entity,
            f.str("policy_version")?,
            f.str("reason")?,
        ];
        for s in strings {
            text_ok("text field", s)?;
        }
        let versions = f.string_map("model_versions")?;
        self.records += 1;
        self.touch("recommendations", ts);
        self.recommendations
            .row()
            .text(f.str("recommendation_id")?)
            .text(entity)
            .timestamptz_ms(ts)
            .opt_text(f.opt_str("service")?)
            .opt_text(f.opt_str("cluster")?)
            .text(f.enum_sym("action")?)
            .opt_int4(f.opt_int("target_replicas")?)
            .opt_float8(target_cores)
            .opt_float8(target_mem)
            .opt_text(f.opt_str("from_cluster")?)
            .opt_text(f.opt_str("to_cluster")?)
            .opt_text(f.opt_str("forecast_event_id")?)
            .float8(cost)
            .float8(shortfall)
            .float8(confidence)
            .text(f.str("policy_version")?)
            .jsonb(&versions)
            .text(f.str("reason")?)
            .int4(partition)
            .int8(offset);
        Ok(())
    }

    pub fn add_drift(
        &mut self,
        payload: &[u8],
        partition: i32,
        offset: i64,
        now_ms: i64,
        limits: &ValidationLimits,
    ) -> Result<(), Reject> {
        let f = Fields::decode("drift.alerts-value", payload)?;
        let ts = f.long("ts_ms")?;
        check_ts(ts, now_ms, limits, "ts_ms")?;
        let ws = f.long("window_start_ms")?;
        let we = f.long("window_end_ms")?;
        check_ts(ws, now_ms, limits, "window_start_ms")?;
        check_ts(we, now_ms, limits, "window_end_ms")?;
        let value = finite("value", f.double("value")?)?;
        let threshold = finite("threshold", f.double("threshold")?)?;
        for s in [f.str("alert_id")?, f.str("subject")?, f.str("statistic")?] {
            text_ok("text field", s)?;
        }
        self.records += 1;
        self.touch("drift_alerts", ts);
        self.drift
            .row()
            .text(f.str("alert_id")?)
            .opt_text(f.opt_str("entity_id")?)
            .timestamptz_ms(ts)
            .text(f.enum_sym("kind")?)
            .text(f.str("subject")?)
            .text(f.str("statistic")?)
            .float8(value)
            .float8(threshold)
            .text(f.enum_sym("severity")?)
            .opt_text(f.opt_str("model_version")?)
            .timestamptz_ms(ws)
            .timestamptz_ms(we)
            .text(f.enum_sym("state")?)
            .int4(partition)
            .int8(offset);
        Ok(())
    }

    /// A dead letter of any service. An envelope that cannot be decoded is still kept (as
    /// `undecodable_envelope` with its bytes): the DLQ is the last stop, nothing is dropped.
    pub fn add_dead_letter(
        &mut self,
        payload: Option<&[u8]>,
        key: Option<&[u8]>,
        partition: i32,
        offset: i64,
        timestamp_ms: i64,
        now_ms: i64,
        limits: &ValidationLimits,
    ) {
        self.records += 1;
        let decoded = payload
            .ok_or_else(|| (DlqReason::Truncated, "empty payload".to_owned()))
            .and_then(|p| Fields::decode(headroom_schemas::dlq::SUBJECT, p));
        let mut at = timestamp_ms;
        let row = match &decoded {
            Ok(f) => {
                if let Ok(ms) = f.long("failed_at_ms") {
                    at = ms;
                }
                DlqRow {
                    reason: f.enum_or_str("reason").unwrap_or("unknown").to_owned(),
                    detail: f.opt_str("detail").ok().flatten().map(str::to_owned),
                    service: f.opt_str("service").ok().flatten().map(str::to_owned),
                    source_topic: f.opt_str("source_topic").ok().flatten().map(str::to_owned),
                    source_partition: f.opt_int("source_partition").ok().flatten(),
                    source_offset: f.long("source_offset").ok(),
                    key: f.opt_bytes("key").ok().flatten().map(<[u8]>::to_vec),
                    payload: f.opt_bytes("payload").ok().flatten().map(<[u8]>::to_vec),
                }
            }
            Err((_, detail)) => DlqRow {
                reason: "undecodable_envelope".into(),
                detail: Some(detail.clone()),
                service: None,
                source_topic: None,
                source_partition: None,
                source_offset: None,
                key: key.map(<[u8]>::to_vec),
                payload: payload.map(<[u8]>::to_vec),
            },
        };
        // An absurd failure time would create an absurd partition: use the record's time.
        if check_ts(at, now_ms, limits, "failed_at_ms").is_err() {
            at = timestamp_ms.clamp(limits.min_ts_ms, now_ms);
        }
        self.touch("dead_letters", at);
        let clean = |s: Option<String>| s.map(|s| s.replace('\0', "\u{fffd}"));
        self.dead_letters
            .row()
            .timestamptz_ms(at)
            .text(&row.reason.replace('\0', "\u{fffd}"))
            .opt_text(clean(row.detail).as_deref())
            .opt_text(clean(row.service).as_deref())
            .opt_text(clean(row.source_topic).as_deref())
            .opt_int4(row.source_partition)
            .opt_int8(row.source_offset)
            .opt_bytea(row.key.as_deref())
            .opt_bytea(row.payload.as_deref())
            .int4(partition)
            .int8(offset);
    }

    pub fn add_model_event(&mut self, e: ModelEvent, partition: i32, offset: i64, now_ms: i64, limits: &ValidationLimits) -> Result<(), Reject> {
        check_ts(e.ts_ms, now_ms, limits, "ts_ms")?;
        for s in [&e.event_id, &e.model_name, &e.version, &e.artifact_uri, &e.feature_set] {
            text_ok("text field", s)?;
        }
        for (k, v) in &e.metrics {
            text_ok("metric name", k)?;
            finite(k, *v)?;
        }
        self.records += 1;
        self.models.push(ModelRow { event: e, partition, offset });
        Ok(())
    }

    /// Encodes the rollups into stage payloads (1-minute, 1-hour, service-hour) and the
    /// feature summaries.
    pub fn encode_rollups(&self) -> (CopyBuf, CopyBuf, CopyBuf, CopyBuf) {
        let mut m = CopyBuf::new(Rollup::COLUMNS);
        for ((e, b), r) in &self.rollup_1m {
            r.encode(e, *b, &mut m);
        }
        let mut h = CopyBuf::new(Rollup::COLUMNS);
        for ((e, b), r) in &self.rollup_1h {
            r.encode(e, *b, &mut h);
        }
        let mut sv = CopyBuf::new(Rollup::SERVICE_COLUMNS);
        for ((svc, cl, b), r) in &self.rollup_service {
            r.encode_service(svc, cl, *b, &mut sv);
        }
        let mut f = CopyBuf::new(FeatureSummary::COLUMNS);
        for ((e, b), s) in &self.features {
            f.row()
                .text(e)
                .timestamptz_ms(*b)
                .text(&s.feature_set)
                .int4(s.n)
                .int4(s.imputed_n)
                .int4(s.scale_events)
                .timestamptz_ms(s.first_ts)
                .timestamptz_ms(s.last_ts);
        }
        (m, h, sv, f)
    }
}

struct DlqRow {
    reason: String,
    detail: Option<String>,
    service: Option<String>,
    source_topic: Option<String>,
    source_partition: Option<i32>,
    source_offset: Option<i64>,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

pub fn model_kind(k: ModelEventKind) -> &'static str {
    match k {
        ModelEventKind::Registered => "REGISTERED",
        ModelEventKind::Promoted => "PROMOTED",
        ModelEventKind::Rejected => "REJECTED",
        ModelEventKind::RolledBack => "ROLLED_BACK",
        ModelEventKind::Retired => "RETIRED",
    }
}

/// A decoded record's top-level fields, with typed accessors that reject wrong types.
pub struct Fields(Vec<(String, Value)>);

fn wrong(name: &str, v: Option<&Value>) -> Reject {
    (
        DlqReason::WrongType,
        format!("field `{name}`: unexpected {}", v.map_or("absence".to_owned(), |v| format!("{v:?}").chars().take(60).collect())),
    )
}

impl Fields {
    pub fn decode(subject: &str, payload: &[u8]) -> Result<Fields, Reject> {
        generic::decode_fields(subject, payload)
            .map(Fields)
            .map_err(|e: DecodeError| (e.reason(), e.to_string()))
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub fn str(&self, name: &str) -> Result<&str, Reject> {
        match self.get(name) {
            Some(Value::String(s)) => Ok(s),
            v => Err(wrong(name, v)),
        }
    }

    pub fn opt_str(&self, name: &str) -> Result<Option<&str>, Reject> {
        match self.get(name) {
            Some(Value::String(s)) => Ok(Some(s)),
            None | Some(Value::Null) => Ok(None),
            v => Err(wrong(name, v)),
        }
    }

    pub fn enum_sym(&self, name: &str) -> Result<&str, Reject> {
        match self.get(name) {
            Some(Value::Enum(_, s)) => Ok(s),
            v => Err(wrong(name, v)),
        }
    }

    pub fn enum_or_str(&self, name: &str) -> Result<&str, Reject> {
        match self.get(name) {
            Some(Value::Enum(_, s)) | Some(Value::String(s)) => Ok(s),
            v => Err(wrong(name, v)),
        }
    }

    pub fn long(&self, name: &str) -> Result<i64, Reject> {
        match self.get(name) {
            Some(Value::Long(v)) | Some(Value::TimestampMillis(v)) => Ok(*v),
            Some(Value::Int(v)) => Ok(i64::from(*v)),
            v => Err(wrong(name, v)),
        }
    }

    pub fn opt_int(&self, name: &str) -> Result<Option<i32>, Reject> {
        match self.get(name) {
            Some(Value::Int(v)) => Ok(Some(*v)),
            None | Some(Value::Null) => Ok(None),
            v => Err(wrong(name, v)),
        }
    }

    pub fn double(&self, name: &str) -> Result<f64, Reject> {
        match self.get(name) {
            Some(Value::Double(v)) => Ok(*v),
            Some(Value::Float(v)) => Ok(f64::from(*v)),
            v => Err(wrong(name, v)),
        }
    }

    pub fn opt_double(&self, name: &str) -> Result<Option<f64>, Reject> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            _ => self.double(name).map(Some),
        }
    }

    pub fn opt_bytes(&self, name: &str) -> Result<Option<&[u8]>, Reject> {
        match self.get(name) {
            Some(Value::Bytes(b)) => Ok(Some(b)),
            None | Some(Value::Null) => Ok(None),
            v => Err(wrong(name, v)),
        }
    }

    /// A map of strings as JSON text.
    pub fn string_map(&self, name: &str) -> Result<String, Reject> {
        match self.get(name) {
            Some(Value::Map(m)) => {
                let mut obj = serde_json::Map::new();
                for (k, v) in m {
                    match v {
                        Value::String(s) => {
                            obj.insert(k.clone(), serde_json::Value::String(s.clone()));
                        }
                        other => return Err(wrong(name, Some(other))),
                    }
                }
                Ok(serde_json::Value::Object(obj).to_string())
            }
            None => Ok("{}".into()),
            v => Err(wrong(name, v)),
        }
    }
}
