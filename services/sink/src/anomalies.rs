//! Anomalies scored at write time (`telemetry_anomalies`, sql/migrations/0008).
//!
//! In a batch's transaction, once the hourly rollup is merged, every CPU sample the batch
//! writes to `telemetry_raw` is compared with its entity's baseline: the mean and standard
//! deviation of the samples of the 24 hours before the sample's hour, from the hourly rows'
//! counts, sums and sums of squares. Samples more than [`THRESHOLD_SD`] deviations away, with
//! at least [`MIN_HISTORY`] samples behind them, are written with their score; the anomaly
//! panel reads them by time instead of scoring every raw sample of its range.
//!
//! The writer keeps the last day of hourly moments of the entities it writes
//! ([`BaselineCache`]), so that a steady stream scores without reading PostgreSQL; an entity
//! it does not know is read once, through the `(entity_id, bucket)` covering index. The
//! arithmetic is here. Doing the same in SQL (a join of the batch's (entity, hour) keys with
//! 24 hourly rows each) took 150–370 ms per 50,000-row batch; docs/design/sink.md has the
//! figures.

use std::collections::HashMap;

use headroom_store::CopyBuf;
use sqlx::PgConnection;

/// The baseline covers the hours before the sample's hour.
pub const BASELINE_HOURS: i64 = 24;
/// Samples the baseline must summarise before a point is scored.
pub const MIN_HISTORY: i64 = 30;
/// Standard deviations from the mean beyond which a sample is an anomaly.
pub const THRESHOLD_SD: f64 = 3.0;

/// Relative to the squared mean, the variance under which the deviation is taken as zero.
pub const VARIANCE_FLOOR: f64 = 1e-12;

const HOUR_MS: i64 = 3_600_000;

/// A CPU sample to score.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub entity_id: String,
    pub service: Option<String>,
    pub ts_ms: i64,
    pub cpu: f64,
}

impl Point {
    pub fn hour_ms(&self) -> i64 {
        self.ts_ms.div_euclid(HOUR_MS) * HOUR_MS
    }
}

/// One hourly rollup row's CPU moments, as `telemetry_1h` holds them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    pub bucket_ms: i64,
    pub n: i64,
    pub sum: f64,
    /// `None` with samples: a row written before sums of squares were kept (migration 0005);
    /// it stays unknown, and baselines leave it out, as the rollup merge does.
    pub sq: Option<f64>,
}

impl Moments {
    /// Adds a batch's share of the hour, as the rollup merge (`rollup_merge_sql`) does.
    fn merge(&mut self, n: i64, sum: f64, sq: f64) {
        self.sq = if self.n > 0 && self.sq.is_none() { None } else { Some(self.sq.unwrap_or(0.0) + sq) };
        self.n += n;
        self.sum += sum;
    }
}

/// The mean and population standard deviation of the samples before an hour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    pub mean: f64,
    pub sd: f64,
    pub history: i64,
}

/// The baseline of `hour_ms` from an entity's hourly rows sorted by bucket: the rows in
/// `[hour - 24 h, hour)`, summed in bucket order (as PostgreSQL's `sum` over the index does).
pub fn baseline(rows: &[Moments], hour_ms: i64) -> Option<Baseline> {
    let lo = hour_ms - BASELINE_HOURS * HOUR_MS;
    let start = rows.partition_point(|r| r.bucket_ms < lo);
    let (mut n, mut sum, mut sq) = (0i64, 0.0f64, 0.0f64);
    for r in rows[start..].iter().take_while(|r| r.bucket_ms < hour_ms) {
        if let (true, Some(s)) = (r.n > 0, r.sq) {
            n += r.n;
            sum += r.sum;
            sq += s;
        }
    }
    if n == 0 {
        return None;
    }
    let mean = sum / n as f64;
    // E[x²] - mean² cancels: a constant series leaves rounding noise of about mean² × 1e-16
    // (which would make every other value "infinitely" far off); below 1e-12 × mean² the
    // deviation is zero, as PostgreSQL's stddev_pop says of the same samples.
    let var = sq / n as f64 - mean * mean;
    let sd = if var <= VARIANCE_FLOOR * mean * mean { 0.0 } else { var.sqrt() };
    Some(Baseline { mean, sd, history: n })
}

/// A scored sample beyond the threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly<'a> {
    pub point: &'a Point,
    pub baseline: Baseline,
    pub z: f64,
}

/// The anomalies among `points`, given each entity's hourly rows (sorted by bucket).
pub fn score<'a>(points: &'a [Point], history: &HashMap<String, Vec<Moments>>) -> Vec<Anomaly<'a>> {
    let mut cache: HashMap<(&str, i64), Option<Baseline>> = HashMap::new();
    let mut out = Vec::new();
    for p in points {
        let hour = p.hour_ms();
        let b = *cache
            .entry((p.entity_id.as_str(), hour))
            .or_insert_with(|| history.get(&p.entity_id).and_then(|rows| baseline(rows, hour)));
        let Some(b) = b else { continue };
        if b.history >= MIN_HISTORY && b.sd > 0.0 && (p.cpu - b.mean).abs() > THRESHOLD_SD * b.sd {
            out.push(Anomaly { point: p, baseline: b, z: (p.cpu - b.mean) / b.sd });
        }
    }
    out
}

/// The hourly rows of `entities` from `from_ms` on (all of them: the cache keeps an entity's
/// hours complete from there), sorted by bucket.
pub async fn load_history(
    conn: &mut PgConnection,
    entities: &[&str],
    from_ms: i64,
) -> Result<HashMap<String, Vec<Moments>>, sqlx::Error> {
    let rows: Vec<(String, i64, i64, f64, Option<f64>)> = sqlx::query_as(
        "SELECT entity_id, (extract(epoch FROM bucket) * 1000)::int8, cpu_n::int8, coalesce(cpu_sum, 0), cpu_sq \
         FROM telemetry_1h WHERE entity_id = ANY($1) AND bucket >= to_timestamp($2::float8 / 1000)",
    )
    .bind(entities)
    .bind(from_ms as f64)
    // Planned with this batch's bound and entities every time: a generic plan (what a cached
    // statement turns into after five runs) does not know the range is about a day and took
    // the BRIN bitmap over the whole partition, about 3 x slower at 2,000 entities.
    .persistent(false)
    .fetch_all(conn)
    .await?;
    let mut history: HashMap<String, Vec<Moments>> = entities.iter().map(|e| ((*e).to_owned(), Vec::new())).collect();
    for (entity, bucket_ms, n, sum, sq) in rows {
        history.entry(entity).or_default().push(Moments { bucket_ms, n, sum, sq });
    }
    for rows in history.values_mut() {
        rows.sort_unstable_by_key(|r| r.bucket_ms);
    }
    Ok(history)
}

/// What the writer knows of its entities' hourly CPU moments, so that a steady stream scores
/// without reading PostgreSQL: an entity is read once (its hours from 24 hours before its
/// earliest sample in the batch), then kept up to date with what each committed batch merged
/// into `telemetry_1h`. That is exact while this sink is the only writer of the entity, which
/// Kafka's keying by entity guarantees between two rebalances: every rebalance (and every
/// failed write) forgets everything, and the entities are read again.
///
/// Memory: about 1 KB per entity (the hours of the last day), for the entities of the
/// partitions this instance owns.
#[derive(Debug, Default)]
pub struct BaselineCache {
    entities: HashMap<String, Known>,
    epoch: u64,
}

#[derive(Debug)]
struct Known {
    /// Every hour from here on that has samples is in `hours`.
    from_ms: i64,
    hours: Vec<Moments>,
}

/// One batch's use of the cache: which entities to read, and the history to score with.
#[derive(Debug, Default)]
pub struct Plan {
    /// Entities to read from PostgreSQL, from `from_ms` on.
    pub missing: Vec<String>,
    pub from_ms: i64,
    epoch: u64,
}

/// A batch's CPU share of each (entity, hour): what the hourly merge adds to `telemetry_1h`.
pub type Deltas<'a> = HashMap<&'a str, Vec<(i64, i64, f64, f64)>>;

impl BaselineCache {
    pub fn len(&self) -> usize {
        self.entities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    pub fn clear(&mut self) {
        self.entities.clear();
    }

    /// Which entities of `points` must be read: those not known, or not known far enough back.
    /// `epoch` is the ownership epoch (bumped by every rebalance): a new one forgets all.
    pub fn plan(&mut self, points: &[Point], epoch: u64) -> Plan {
        if epoch != self.epoch {
            self.entities.clear();
            self.epoch = epoch;
        }
        let mut need: HashMap<&str, i64> = HashMap::new();
        for p in points {
            let lo = p.hour_ms() - BASELINE_HOURS * HOUR_MS;
            let e = need.entry(p.entity_id.as_str()).or_insert(lo);
            *e = (*e).min(lo);
        }
        let mut missing: Vec<String> = need
            .iter()
            .filter(|(e, lo)| self.entities.get(**e).is_none_or(|k| **lo < k.from_ms))
            .map(|(e, _)| (*e).to_owned())
            .collect();
        missing.sort_unstable();
        let from_ms = missing.iter().map(|e| need[e.as_str()]).min().unwrap_or(0);
        Plan { missing, from_ms, epoch }
    }

    /// The history to score `points` with: the entities read in this transaction as read
    /// (the batch's merge included), the others as known plus the batch's `deltas`.
    pub fn history(
        &self,
        points: &[Point],
        loaded: &HashMap<String, Vec<Moments>>,
        deltas: &Deltas<'_>,
    ) -> HashMap<String, Vec<Moments>> {
        let mut out: HashMap<String, Vec<Moments>> = HashMap::new();
        for p in points {
            if out.contains_key(&p.entity_id) {
                continue;
            }
            let rows = match (loaded.get(&p.entity_id), self.entities.get(&p.entity_id)) {
                (Some(rows), _) => rows.clone(),
                (None, Some(k)) => {
                    let mut rows = k.hours.clone();
                    apply(&mut rows, deltas.get(p.entity_id.as_str()).map_or(&[][..], Vec::as_slice));
                    rows
                }
                (None, None) => Vec::new(),
            };
            out.insert(p.entity_id.clone(), rows);
        }
        out
    }

    /// After the batch committed: keeps what was read and adds the batch's deltas to what was
    /// known. If a rebalance happened meanwhile (`epoch` moved), forgets everything instead.
    pub fn committed(&mut self, plan: Plan, loaded: HashMap<String, Vec<Moments>>, deltas: &Deltas<'_>, epoch: u64) {
        if epoch != plan.epoch || epoch != self.epoch {
            self.entities.clear();
            self.epoch = epoch;
            return;
        }
        for (entity, hours) in loaded {
            self.entities.insert(entity, Known { from_ms: plan.from_ms, hours });
        }
        for (entity, d) in deltas {
            if plan.missing.binary_search_by(|m| m.as_str().cmp(entity)).is_ok() {
                continue; // read after the merge: the deltas are in already
            }
            if let Some(k) = self.entities.get_mut(*entity) {
                apply(&mut k.hours, d);
                // The last day is all a baseline of a new hour needs; an older late sample
                // makes the entity be read again.
                if let Some(newest) = k.hours.last().map(|r| r.bucket_ms) {
                    let keep = newest - BASELINE_HOURS * HOUR_MS;
                    if keep > k.from_ms {
                        k.hours.retain(|r| r.bucket_ms >= keep);
                        k.from_ms = keep;
                    }
                }
            }
        }
    }
}

/// Adds `deltas` (hour, n, sum, sum of squares) to `rows`, kept sorted by bucket.
fn apply(rows: &mut Vec<Moments>, deltas: &[(i64, i64, f64, f64)]) {
    for &(hour, n, sum, sq) in deltas {
        match rows.binary_search_by_key(&hour, |r| r.bucket_ms) {
            Ok(i) => rows[i].merge(n, sum, sq),
            Err(i) => rows.insert(i, Moments { bucket_ms: hour, n, sum, sq: Some(sq) }),
        }
    }
}

/// Columns of `telemetry_anomalies` in [`encode`]'s order.
pub const COLUMNS: &str = "entity_id, ts, service, cpu, mean, sd, history, z";

/// The anomalies as `COPY` rows of [`COLUMNS`].
pub fn encode(anomalies: &[Anomaly<'_>]) -> CopyBuf {
    let mut c = CopyBuf::new(8);
    for a in anomalies {
        c.row()
            .text(&a.point.entity_id)
            .timestamptz_ms(a.point.ts_ms)
            .opt_text(a.point.service.as_deref())
            .float8(a.point.cpu)
            .float8(a.baseline.mean)
            .float8(a.baseline.sd)
            .int8(a.baseline.history)
            .float8(a.z);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hourly(samples: &[&[f64]], first_hour: i64) -> Vec<Moments> {
        samples
            .iter()
            .enumerate()
            .map(|(i, s)| Moments {
                bucket_ms: (first_hour + i as i64) * HOUR_MS,
                n: s.len() as i64,
                sum: s.iter().sum(),
                sq: Some(s.iter().map(|v| v * v).sum()),
            })
            .collect()
    }

    fn point(entity: &str, ts_ms: i64, cpu: f64) -> Point {
        Point { entity_id: entity.into(), service: Some("web".into()), ts_ms, cpu }
    }

    #[test]
    fn the_baseline_is_the_24_hours_before_the_points_hour() {
        // Hours 0..30, each with 12 samples of value h/100 (so the window's mean is known).
        let samples: Vec<Vec<f64>> = (0..30).map(|h| vec![h as f64 / 100.0; 12]).collect();
        let refs: Vec<&[f64]> = samples.iter().map(Vec::as_slice).collect();
        let rows = hourly(&refs, 0);
        let b = baseline(&rows, 28 * HOUR_MS).expect("baseline");
        // Hours 4..=27: mean of 0.04..0.27.
        assert_eq!(b.history, 24 * 12);
        assert!((b.mean - 0.155).abs() < 1e-12, "{b:?}");
        let var: f64 = (4..28).map(|h| (h as f64 / 100.0 - 0.155).powi(2)).sum::<f64>() / 24.0;
        assert!((b.sd - var.sqrt()).abs() < 1e-9, "{b:?} vs {}", var.sqrt());
        // Nothing before hour 0.
        assert_eq!(baseline(&rows, 0), None);
        // Rows without samples are left out.
        let mut gap = rows.clone();
        gap[27].n = 0;
        assert_eq!(baseline(&gap, 28 * HOUR_MS).expect("baseline").history, 23 * 12);
    }

    #[test]
    fn only_points_beyond_three_deviations_with_enough_history_are_anomalies() {
        // Alternating 0.4 / 0.6: mean 0.5, sd 0.1.
        let one: Vec<f64> = (0..12).map(|i| if i % 2 == 0 { 0.4 } else { 0.6 }).collect();
        let mut history = HashMap::new();
        history.insert("a".to_owned(), hourly(&[&one, &one, &one], 0));
        // Entity b has two hours: 24 samples, under the 30 needed.
        history.insert("b".to_owned(), hourly(&[&one, &one], 1));
        let h3 = 3 * HOUR_MS;
        let points = vec![
            point("a", h3 + 1, 0.85),  // z = 3.5
            point("a", h3 + 2, 0.79),  // z = 2.9: not beyond
            point("a", h3 + 3, 0.1),   // z = -4
            point("b", h3 + 4, 0.99),  // not enough history
            point("c", h3 + 5, 0.99),  // no history at all
        ];
        let found = score(&points, &history);
        let zs: Vec<(i64, f64)> = found.iter().map(|a| (a.point.ts_ms - h3, (a.z * 1e6).round() / 1e6)).collect();
        assert_eq!(zs, vec![(1, 3.5), (3, -4.0)]);
        assert_eq!(found[0].baseline.history, 36);
        // The encoded rows: one per anomaly.
        assert_eq!(encode(&found).rows(), 2);
    }

    #[test]
    fn a_constant_history_scores_nothing() {
        let flat = vec![0.3; 12];
        let mut history = HashMap::new();
        history.insert("a".to_owned(), hourly(&[&flat, &flat, &flat], 0));
        assert!(score(&[point("a", 3 * HOUR_MS, 0.9)], &history).is_empty(), "sd = 0 is not scored");
    }

    /// The deltas of hours `hours` of entity `e`, each with 12 samples of `v`.
    fn deltas<'a>(e: &'a str, hours: &[i64], v: f64) -> Deltas<'a> {
        let mut d: Deltas<'a> = HashMap::new();
        d.insert(e, hours.iter().map(|h| (h * HOUR_MS, 12, 12.0 * v, 12.0 * v * v)).collect());
        d
    }

    #[test]
    fn the_cache_reads_an_entity_once_then_follows_the_merges() {
        let mut cache = BaselineCache::default();
        let at = |h: i64| vec![point("a", h * HOUR_MS + 60_000, 0.5)];
        // First batch: hour 30, nothing known: read from hour 6 on.
        let plan = cache.plan(&at(30), 0);
        assert_eq!((plan.missing.clone(), plan.from_ms), (vec!["a".to_owned()], 6 * HOUR_MS));
        // What the read returned (the batch's own merge of hour 30 included).
        let one = vec![0.4; 12];
        let rows = hourly(&vec![one.as_slice(); 25], 6);
        let mut loaded = HashMap::new();
        loaded.insert("a".to_owned(), rows.clone());
        let d30 = deltas("a", &[30], 0.4);
        assert_eq!(cache.history(&at(30), &loaded, &d30)["a"], rows);
        cache.committed(plan, loaded, &d30, 0);
        assert_eq!(cache.len(), 1);
        // Next batch, hour 31: known, nothing to read; the history is the cache plus the
        // batch's merge, the same as reading the table after the merge would give.
        let plan = cache.plan(&at(31), 0);
        assert!(plan.missing.is_empty());
        let d31 = deltas("a", &[30, 31], 0.6);
        let h = cache.history(&at(31), &HashMap::new(), &d31);
        let mut expected = rows.clone();
        expected[24].merge(12, 12.0 * 0.6, 12.0 * 0.6 * 0.6);
        expected.push(Moments { bucket_ms: 31 * HOUR_MS, n: 12, sum: 12.0 * 0.6, sq: Some(12.0 * 0.6 * 0.6) });
        assert_eq!(h["a"], expected);
        cache.committed(plan, HashMap::new(), &d31, 0);
        // A late sample for hour 5 needs hours the cache does not have: read again.
        assert_eq!(cache.plan(&at(5), 0).missing, vec!["a".to_owned()]);
        // A rebalance (a new epoch) forgets everything.
        assert_eq!(cache.plan(&at(32), 1).missing, vec!["a".to_owned()]);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_rebalance_during_the_write_discards_what_the_batch_would_have_taught() {
        let mut cache = BaselineCache::default();
        let pts = vec![point("a", 30 * HOUR_MS, 0.5)];
        let plan = cache.plan(&pts, 0);
        let mut loaded = HashMap::new();
        loaded.insert("a".to_owned(), Vec::new());
        cache.committed(plan, loaded, &HashMap::new(), 1);
        assert!(cache.is_empty());
        assert_eq!(cache.plan(&pts, 1).missing, vec!["a".to_owned()]);
    }

    #[test]
    fn merges_follow_the_rollup_merge_for_rows_without_squares() {
        // A row written before sums of squares were kept stays unknown, and is left out.
        let mut legacy = Moments { bucket_ms: 0, n: 5, sum: 2.0, sq: None };
        legacy.merge(2, 1.0, 0.5);
        assert_eq!(legacy, Moments { bucket_ms: 0, n: 7, sum: 3.0, sq: None });
        // A row without CPU samples takes the batch's squares.
        let mut empty = Moments { bucket_ms: 0, n: 0, sum: 0.0, sq: None };
        empty.merge(2, 1.0, 0.5);
        assert_eq!(empty.sq, Some(0.5));
    }
}
