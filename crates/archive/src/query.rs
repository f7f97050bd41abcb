//! DataFusion over the archive: the `telemetry` table is every hour file under the root, with
//! `date` and `hour` as partition columns taken from the directory names (a filter on them
//! skips whole directories).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use arrow_array::RecordBatch;
use arrow_schema::DataType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::prelude::SessionContext;

/// A named query of `sql/archive/`.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub name: &'static str,
    pub about: &'static str,
    pub sql: &'static str,
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "cpu-p95-7d",
        about: "CPU p95 per entity over the archive's last 7 days",
        sql: include_str!("../../../sql/archive/cpu_p95_7d.sql"),
    },
    Preset {
        name: "daily-volume",
        about: "samples, entities and hour files per day",
        sql: include_str!("../../../sql/archive/daily_volume.sql"),
    },
];

pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// A DataFusion session with the archive under `root` registered as `telemetry`.
pub async fn session(root: &Path) -> anyhow::Result<SessionContext> {
    let dir = root.join(crate::TELEMETRY_DIR);
    anyhow::ensure!(
        dir.is_dir(),
        "{} does not exist: no hour has been archived under {} yet (is the sink's archive.root set to it?)",
        dir.display(),
        root.display()
    );
    let dir = std::fs::canonicalize(&dir).with_context(|| format!("resolving {}", dir.display()))?;
    let url = format!("file://{}/", dir.display());
    let ctx = SessionContext::new();
    let opts = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![("date".to_owned(), DataType::Utf8), ("hour".to_owned(), DataType::Utf8)]);
    ctx.register_listing_table("telemetry", &url, opts, Some(crate::schema()), None)
        .await
        .with_context(|| format!("registering {url}"))?;
    Ok(ctx)
}

/// Runs `sql` over the archive under `root`.
pub async fn run(root: &Path, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
    let ctx = session(root).await?;
    let df = ctx.sql(sql).await.context("planning the query")?;
    df.collect().await.context("running the query")
}

/// The batches as a text table.
pub fn pretty(batches: &[RecordBatch]) -> anyhow::Result<String> {
    Ok(datafusion::arrow::util::pretty::pretty_format_batches(batches)?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HourWriter, Row};
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type};

    const HOUR: i64 = 3_600_000;

    /// Ten days of 4 entities, one sample every 10 minutes, CPU = entity index / 10 plus a
    /// ramp within the hour, written as hour files.
    fn archive(root: &Path, start: i64) -> Vec<Row> {
        let mut all = Vec::new();
        for h in 0..240 {
            let hour = start + h * HOUR;
            let mut w = HourWriter::create(root, hour).unwrap();
            for e in 0..4 {
                for k in 0..6 {
                    let r = Row {
                        entity_id: format!("vm-{e}"),
                        ts_ms: hour + k * 600_000,
                        values: [Some(e as f64 / 10.0 + k as f64 / 100.0), Some(0.5), None, None, None, None, None, None],
                        src_offset: all.len() as i64,
                        ..Row::default()
                    };
                    w.push(r.clone()).unwrap();
                    all.push(r);
                }
            }
            w.finish().unwrap();
        }
        all
    }

    #[tokio::test]
    async fn the_presets_answer_over_hour_files() {
        let root = std::env::temp_dir().join(format!("headroom-archive-q-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let start = 1_376_265_600_000; // 2013-08-12 00:00 UTC
        let rows = archive(&root, start);

        let vol = run(&root, preset("daily-volume").unwrap().sql).await.unwrap();
        let samples: i64 = vol.iter().map(|b| b.column(1).as_primitive::<Int64Type>().iter().flatten().sum::<i64>()).sum();
        assert_eq!(samples, rows.len() as i64, "every archived row is read once");
        assert_eq!(vol.iter().map(|b| b.num_rows()).sum::<usize>(), 10, "ten dates");

        let p95 = run(&root, preset("cpu-p95-7d").unwrap().sql).await.unwrap();
        assert_eq!(p95.iter().map(|b| b.num_rows()).sum::<usize>(), 4);
        let b = &p95[0];
        let ents = b.column(0).as_string::<i32>();
        assert_eq!(ents.value(0), "vm-3", "highest p95 first");
        // 7 days back from the newest sample: 7 * 24 hours of 6 samples, the boundary excluded.
        let n = b.column(1).as_primitive::<Int64Type>().value(0);
        assert_eq!(n, 7 * 24 * 6, "samples of vm-3 in the last 7 days");
        let p = b.column(2).as_primitive::<Float64Type>().value(0);
        assert!((p - 0.35).abs() <= 0.011, "vm-3's CPU lies in [0.30, 0.35]: p95 {p}");

        // Partition pruning by directory: one date.
        let one = run(&root, "SELECT count(*) AS n FROM telemetry WHERE date = '2013-08-13'").await.unwrap();
        assert_eq!(one[0].column(0).as_primitive::<Int64Type>().value(0), 24 * 4 * 6);
        assert!(pretty(&one).unwrap().contains("576"));

        let err = run(&root.join("nowhere"), "SELECT 1").await.unwrap_err();
        assert!(format!("{err:#}").contains("no hour has been archived"), "{err:#}");
        let bad = run(&root, "SELECT nope FROM telemetry").await.unwrap_err();
        assert!(format!("{bad:#}").contains("nope"), "{bad:#}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
