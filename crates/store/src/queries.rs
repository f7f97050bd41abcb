//! The analytical queries of `sql/queries/` (the dashboard's questions), each with the same
//! question asked of the raw table where there is one (for the OLAP benchmark). Every query
//! takes the time range `[$1, $2)` as timestamptz.

use sqlx::PgConnection;

use crate::partitions::format_utc_ms;

/// A named query: the rollup path, and the raw-table path when the question has one.
#[derive(Debug, Clone, Copy)]
pub struct Query {
    pub name: &'static str,
    pub about: &'static str,
    pub sql: &'static str,
    pub raw_sql: Option<&'static str>,
}

pub const QUERIES: &[Query] = &[
    Query {
        name: "hourly_by_service",
        about: "hourly mean/max/p95 of CPU and memory, samples and cost per service and cluster",
        sql: include_str!("../../../sql/queries/hourly_by_service.sql"),
        raw_sql: Some(include_str!("../../../sql/queries/raw/hourly_by_service.sql")),
    },
    Query {
        name: "percentiles_daily",
        about: "p50/p95/p99 of CPU and memory per service per day",
        sql: include_str!("../../../sql/queries/percentiles_daily.sql"),
        raw_sql: Some(include_str!("../../../sql/queries/raw/percentiles_daily.sql")),
    },
    Query {
        name: "anomalies",
        about: "CPU samples more than 3 standard deviations from the entity's mean over the 24 hours before the sample's hour (scored by the sink as it writes)",
        sql: include_str!("../../../sql/queries/anomalies.sql"),
        raw_sql: Some(include_str!("../../../sql/queries/raw/anomalies.sql")),
    },
    Query {
        name: "cost_daily",
        about: "cost in USD per service and cluster per day",
        sql: include_str!("../../../sql/queries/cost_daily.sql"),
        raw_sql: Some(include_str!("../../../sql/queries/raw/cost_daily.sql")),
    },
    Query {
        name: "savings",
        about: "hourly and 30-day cost change of the latest recommendation per entity, per service and cluster",
        sql: include_str!("../../../sql/queries/savings.sql"),
        raw_sql: None,
    },
];

pub fn find(name: &str) -> Option<&'static Query> {
    QUERIES.iter().find(|q| q.name == name)
}

fn body(sql: &str) -> &str {
    sql.trim().trim_end_matches(';')
}

/// Runs `sql` over `[from_ms, to_ms)` and returns every row as a JSON object (text).
pub async fn rows_as_json(
    conn: &mut PgConnection,
    sql: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<String>, sqlx::Error> {
    rows_as_json_between(conn, sql, &format_utc_ms(from_ms), &format_utc_ms(to_ms)).await
}

/// As [`rows_as_json`], with the bounds in any form PostgreSQL reads as a timestamptz
/// (`2013-08-01`, `2026-11-24 10:00+01`, `now`).
pub async fn rows_as_json_between(
    conn: &mut PgConnection,
    sql: &str,
    from: &str,
    to: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let wrapped = format!("SELECT row_to_json(q)::text FROM ({}) q", body(sql));
    sqlx::query_scalar::<_, String>(&wrapped)
        .bind(from)
        .bind(to)
        .fetch_all(&mut *conn)
        .await
}

/// Runs `sql` over `[from_ms, to_ms)` and returns how many rows came back (for timing).
pub async fn run_count(
    conn: &mut PgConnection,
    sql: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<usize, sqlx::Error> {
    let rows = sqlx::query(body(sql))
        .bind(format_utc_ms(from_ms))
        .bind(format_utc_ms(to_ms))
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_query_takes_the_range() {
        for q in QUERIES {
            assert!(q.sql.contains("$1") && q.sql.contains("$2"), "{}", q.name);
            if let Some(r) = q.raw_sql {
                assert!(r.contains("$1") && r.contains("$2"), "{} raw", q.name);
            }
        }
        assert!(find("savings").is_some());
        assert!(find("nope").is_none());
    }
}
