//! The time-partitioned tables: their partition span, creating partitions ahead of and on
//! demand for the data, and dropping those past retention.
//!
//! Retention runs on the *data clock*: the newest event time written to a table, capped at
//! the wall clock. On a live fleet that is "now"; on a replayed trace (a month of 2013, say) it
//! follows the trace, so a replay is not dropped the moment it lands.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::PgConnection;

const DAY_MS: i64 = 86_400_000;

/// How much time one partition covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Day,
    Month,
}

impl Span {
    /// The partition `[lo, hi)` (ms since the epoch, UTC) that holds `ts_ms`.
    pub fn bounds(self, ts_ms: i64) -> (i64, i64) {
        match self {
            Span::Day => {
                let lo = ts_ms.div_euclid(DAY_MS) * DAY_MS;
                (lo, lo + DAY_MS)
            }
            Span::Month => {
                let (y, m, _) = civil_from_days(ts_ms.div_euclid(DAY_MS));
                let lo = days_from_civil(y, m, 1) * DAY_MS;
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (lo, days_from_civil(ny, nm, 1) * DAY_MS)
            }
        }
    }
}

/// A partitioned table of the migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSpec {
    pub name: &'static str,
    pub span: Span,
}

/// Every time-partitioned table.
pub const TABLES: &[TableSpec] = &[
    TableSpec { name: "telemetry_raw", span: Span::Day },
    TableSpec { name: "telemetry_1m", span: Span::Day },
    TableSpec { name: "telemetry_1h", span: Span::Month },
    TableSpec { name: "telemetry_service_1h", span: Span::Month },
    TableSpec { name: "features_1h", span: Span::Month },
    TableSpec { name: "forecasts", span: Span::Day },
    TableSpec { name: "recommendations", span: Span::Day },
    TableSpec { name: "drift_alerts", span: Span::Month },
    TableSpec { name: "dead_letters", span: Span::Day },
    TableSpec { name: "telemetry_anomalies", span: Span::Day },
];

pub fn spec(name: &str) -> Option<TableSpec> {
    TABLES.iter().copied().find(|t| t.name == name)
}

/// The partitions known to exist, so the hot path asks PostgreSQL only for new ones.
#[derive(Debug, Default)]
pub struct PartitionCache {
    known: HashSet<(&'static str, i64)>,
}

impl PartitionCache {
    /// Forgets everything (after a reconnect, or when another process may have dropped some).
    pub fn clear(&mut self) {
        self.known.clear();
    }

    /// Makes sure the partitions of `table` holding every time in `ts_ms` exist. Returns how
    /// many were created.
    pub async fn ensure(
        &mut self,
        conn: &mut PgConnection,
        table: TableSpec,
        ts_ms: impl IntoIterator<Item = i64>,
    ) -> Result<usize, sqlx::Error> {
        let mut wanted: Vec<(i64, i64)> = ts_ms
            .into_iter()
            .map(|t| table.span.bounds(t))
            .filter(|(lo, _)| !self.known.contains(&(table.name, *lo)))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut created = 0;
        for (lo, hi) in wanted {
            let made: bool = sqlx::query_scalar(
                "SELECT headroom_ensure_partition($1::regclass, to_timestamp($2::float8 / 1000), to_timestamp($3::float8 / 1000))",
            )
            .bind(table.name)
            .bind(lo as f64)
            .bind(hi as f64)
            .fetch_one(&mut *conn)
            .await?;
            if made {
                created += 1;
                tracing::info!(table = table.name, from_ms = lo, "partition created");
            }
            self.known.insert((table.name, lo));
        }
        Ok(created)
    }

    /// Drops the partitions of `table` entirely older than `clock_ms - retention`; a zero
    /// retention keeps everything. Returns how many were dropped.
    pub async fn drop_expired(
        &mut self,
        conn: &mut PgConnection,
        table: TableSpec,
        clock_ms: i64,
        retention: Duration,
    ) -> Result<i32, sqlx::Error> {
        if retention.is_zero() {
            return Ok(0);
        }
        let before = clock_ms - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX / 2);
        let n: i32 = sqlx::query_scalar(
            "SELECT headroom_drop_partitions($1::regclass, to_timestamp($2::float8 / 1000))",
        )
        .bind(table.name)
        .bind(before as f64)
        .fetch_one(&mut *conn)
        .await?;
        if n > 0 {
            self.known.retain(|(t, lo)| *t != table.name || *lo >= before);
            tracing::info!(table = table.name, dropped = n, before_ms = before, "partitions dropped past retention");
        }
        Ok(n)
    }
}

/// `ms` since the epoch as `YYYY-MM-DD HH:MM:SS.mmm+00` (PostgreSQL's timestamptz input).
pub fn format_utc_ms(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(DAY_MS), ms.rem_euclid(DAY_MS));
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}.{milli:03}+00")
}

// Gregorian calendar <-> days since 1970-01-01 (H. Hinnant's civil algorithms).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_and_month_bounds() {
        // 2013-08-15T12:00:00Z
        let t = 1_376_568_000_000;
        let (lo, hi) = Span::Day.bounds(t);
        assert_eq!(lo, 1_376_524_800_000);
        assert_eq!(hi - lo, DAY_MS);
        let (lo, hi) = Span::Month.bounds(t);
        assert_eq!(lo, 1_375_315_200_000); // 2013-08-01
        assert_eq!(hi, 1_377_993_600_000); // 2013-09-01
        // December rolls over into the next year; February of a leap year has 29 days.
        let (lo, hi) = Span::Month.bounds(1_703_980_800_000); // 2023-12-31
        assert_eq!((lo, hi), (1_701_388_800_000, 1_704_067_200_000));
        let (lo, hi) = Span::Month.bounds(1_709_164_800_000); // 2024-02-29
        assert_eq!(hi - lo, 29 * DAY_MS);
    }

    #[test]
    fn formats_utc() {
        assert_eq!(format_utc_ms(1_376_568_000_123), "2013-08-15 12:00:00.123+00");
        assert_eq!(format_utc_ms(0), "1970-01-01 00:00:00.000+00");
    }

    #[test]
    fn civil_roundtrip() {
        for z in (-800_000..800_000).step_by(37) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }
}
