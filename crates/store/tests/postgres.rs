//! The migrations, partitions, histograms and fenced offsets against a real PostgreSQL
//! (started through the project's scripts when not running).

use std::time::Duration;

use headroom_store::offsets::{self, Advance, FenceError};
use headroom_store::partitions::{self, PartitionCache, Span};
use headroom_store::CopyBuf;
use sqlx::{Connection, Executor, PgConnection};

/// A fresh schema with the migrations applied; returns a URL whose sessions use it.
async fn fresh() -> String {
    let base = headroom_testkit::pg_url();
    let schema = headroom_testkit::unique("t").replace('-', "_");
    let mut c = PgConnection::connect(&base).await.expect("connect");
    c.execute(format!("CREATE SCHEMA {schema}").as_str()).await.expect("schema");
    let url = headroom_testkit::pg_url_in_schema(&base, &schema);
    let pool = headroom_store::pool(&url, 2, Duration::from_secs(10)).await.expect("pool");
    headroom_store::migrate(&pool).await.expect("migrate");
    // Applying again is a no-op (checksums match).
    headroom_store::migrate(&pool).await.expect("migrate twice");
    pool.close().await;
    url
}

async fn conn(url: &str) -> PgConnection {
    headroom_store::connect(url, Duration::from_secs(10)).await.expect("connect")
}

#[tokio::test]
async fn partitions_are_created_on_demand_and_dropped_past_retention() {
    let url = fresh().await;
    let mut c = conn(&url).await;
    let mut cache = PartitionCache::default();
    let raw = partitions::spec("telemetry_raw").expect("spec");
    let day = 86_400_000i64;
    let t0 = 1_376_568_000_000; // 2013-08-15T12:00Z
    let made = cache.ensure(&mut c, raw, [t0, t0 + 1000, t0 + day, t0 + 3 * day]).await.expect("ensure");
    assert_eq!(made, 3);
    assert_eq!(cache.ensure(&mut c, raw, [t0]).await.expect("again"), 0, "cached");
    let mut fresh_cache = PartitionCache::default();
    assert_eq!(fresh_cache.ensure(&mut c, raw, [t0]).await.expect("exists"), 0, "exists in the db");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM headroom_partitions('telemetry_raw')")
        .fetch_one(&mut c).await.expect("count");
    assert_eq!(n, 3);
    // A row lands in its day's partition.
    sqlx::query("INSERT INTO telemetry_raw (entity_id, ts, src_partition, src_offset) VALUES ('e', to_timestamp($1::float8/1000), 0, 0)")
        .bind(t0 as f64).execute(&mut c).await.expect("insert");
    // Retention of 1 day on a clock at t0 + 3 days drops the first two days only.
    let dropped = cache.drop_expired(&mut c, raw, t0 + 3 * day, Duration::from_secs(86_400)).await.expect("drop");
    assert_eq!(dropped, 2);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM headroom_partitions('telemetry_raw')")
        .fetch_one(&mut c).await.expect("count");
    assert_eq!(n, 1);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM telemetry_raw").fetch_one(&mut c).await.expect("rows");
    assert_eq!(rows, 0, "the row went with its partition");
    // Zero retention keeps everything.
    assert_eq!(cache.drop_expired(&mut c, raw, i64::MAX / 4, Duration::ZERO).await.expect("keep"), 0);
    // Monthly partitions for the hourly rollup.
    let h = partitions::spec("telemetry_1h").expect("spec");
    assert_eq!(h.span, Span::Month);
    assert_eq!(cache.ensure(&mut c, h, [t0, t0 + 10 * day]).await.expect("month"), 1);
}

#[tokio::test]
async fn histograms_merge_exactly_and_give_quantiles() {
    let url = fresh().await;
    let mut c = conn(&url).await;
    let a: Vec<i64> = (0..50).map(|b| (b << 32) | 1).collect(); // 0.00..0.49, one each
    let b: Vec<i64> = (50..100).map(|b| (b << 32) | 1).collect(); // 0.50..0.99
    let merged: Vec<i64> = sqlx::query_scalar("SELECT hist_merge($1, $2)")
        .bind(&a).bind(&b).fetch_one(&mut c).await.expect("merge");
    assert_eq!(merged.len(), 100);
    assert_eq!(merged.iter().map(|x| x & 0xffff_ffff).sum::<i64>(), 100);
    let (p50, p95): (f64, f64) = sqlx::query_as("SELECT hist_quantile($1, 0.5), hist_quantile($1, 0.95)")
        .bind(&merged).fetch_one(&mut c).await.expect("q");
    assert!((p50 - 0.495).abs() < 1e-9, "{p50}");
    assert!((p95 - 0.945).abs() < 1e-9, "{p95}");
    let empty: Option<f64> = sqlx::query_scalar("SELECT hist_quantile(NULL::int8[], 0.5)")
        .fetch_one(&mut c).await.expect("null");
    assert_eq!(empty, None);
}

#[tokio::test]
async fn binary_copy_roundtrips_every_column_type() {
    let url = fresh().await;
    let mut c = conn(&url).await;
    let raw = partitions::spec("telemetry_raw").expect("spec");
    let ts = 1_700_000_000_123i64;
    PartitionCache::default().ensure(&mut c, raw, [ts]).await.expect("partition");
    let mut b = CopyBuf::new(18);
    b.row().text("vm-1").timestamptz_ms(ts).text("svc").null()
        .float8(0.25).float8(0.5).float8(1e6).null().null().null().float8(4.0).float8(8e9)
        .int4(3).float8(0.42).boolean(true).jsonb(r#"{"team":"a"}"#).int4(2).int8(77);
    let mut copy = c.copy_in_raw("COPY telemetry_raw FROM STDIN (FORMAT binary)").await.expect("copy");
    copy.send(b.finish()).await.expect("send");
    assert_eq!(copy.finish().await.expect("finish"), 1);
    let row: (String, f64, Option<String>, f64, i32, bool, String, i64) = sqlx::query_as(
        "SELECT entity_id, extract(epoch from ts)::float8 * 1000, cluster, cpu_util, replicas, scale_event, labels->>'team', src_offset FROM telemetry_raw",
    ).fetch_one(&mut c).await.expect("row");
    assert_eq!(row.0, "vm-1");
    assert!((row.1 - ts as f64).abs() < 0.5, "{}", row.1);
    assert_eq!(row.2, None);
    assert_eq!(row.3, 0.25);
    assert_eq!((row.4, row.5, row.6.as_str(), row.7), (3, true, "a", 77));
    // Array columns.
    let mut h = CopyBuf::new(2);
    h.row().int4_array(Some(&[1, 2, 3])).int8_array(Some(&[1 << 40, -5]));
    c.execute("CREATE TEMP TABLE arr (a int4[], b int8[])").await.expect("tmp");
    let mut copy = c.copy_in_raw("COPY arr FROM STDIN (FORMAT binary)").await.expect("copy");
    copy.send(h.finish()).await.expect("send");
    copy.finish().await.expect("finish");
    let got: (Vec<i32>, Vec<i64>) = sqlx::query_as("SELECT a, b FROM arr").fetch_one(&mut c).await.expect("arr");
    assert_eq!(got, (vec![1, 2, 3], vec![1 << 40, -5]));
}

#[tokio::test]
async fn offsets_are_fenced() {
    let url = fresh().await;
    let mut a = conn(&url).await;
    let mut b = conn(&url).await;
    let adv = |expected, next| vec![Advance { topic: "t".into(), partition: 0, expected, next }];
    // First writer creates the row.
    let mut tx = a.begin().await.expect("tx");
    offsets::lock_and_check(&mut tx, "g", &adv(None, 10)).await.expect("check");
    offsets::store(&mut tx, "g", &adv(None, 10)).await.expect("store");
    tx.commit().await.expect("commit");
    // A second writer that still believes the partition is new is fenced.
    let mut tx = b.begin().await.expect("tx");
    let e = offsets::lock_and_check(&mut tx, "g", &adv(None, 5)).await.expect_err("fenced");
    assert!(matches!(e, FenceError::Fenced { stored: Some(10), .. }), "{e}");
    tx.rollback().await.expect("rollback");
    // One that resumed from 10 advances; a stale one that also resumed from 10 is fenced after.
    let mut tx = b.begin().await.expect("tx");
    offsets::lock_and_check(&mut tx, "g", &adv(Some(10), 20)).await.expect("check");
    offsets::store(&mut tx, "g", &adv(Some(10), 20)).await.expect("store");
    tx.commit().await.expect("commit");
    let mut tx = a.begin().await.expect("tx");
    assert!(offsets::lock_and_check(&mut tx, "g", &adv(Some(10), 15)).await.is_err());
    tx.rollback().await.expect("rollback");
    let stored = offsets::load(&mut a, "g", &[("t".into(), 0), ("t".into(), 1)]).await.expect("load");
    assert_eq!(stored.get(&("t".to_owned(), 0)), Some(&20));
    assert_eq!(stored.len(), 1);
    // Other groups are independent.
    assert!(offsets::load(&mut a, "other", &[("t".into(), 0)]).await.expect("load").is_empty());
    // Forgetting a position is fenced on the value it must still hold: a stale 10 is kept, the
    // current 20 goes, and the partition then has no stored position (it starts at the beginning).
    let tp = ("t".to_owned(), 0);
    assert!(offsets::forget(&mut a, "g", &[(tp.clone(), 10)]).await.expect("forget").is_empty());
    assert_eq!(offsets::load(&mut a, "g", std::slice::from_ref(&tp)).await.expect("load").get(&tp), Some(&20));
    assert_eq!(offsets::forget(&mut a, "g", &[(tp.clone(), 20)]).await.expect("forget"), vec![tp.clone()]);
    assert!(offsets::load(&mut a, "g", &[tp]).await.expect("load").is_empty());
}

#[tokio::test]
async fn every_query_parses_and_runs_on_empty_tables() {
    use headroom_store::queries::{rows_as_json, run_count, QUERIES};
    let url = fresh().await;
    let mut c = conn(&url).await;
    let (from, to) = (1_700_000_000_000, 1_700_000_000_000 + 7 * 86_400_000);
    for q in QUERIES {
        let rows = rows_as_json(&mut c, q.sql, from, to).await.unwrap_or_else(|e| panic!("{}: {e}", q.name));
        assert!(rows.is_empty(), "{}", q.name);
        if let Some(raw) = q.raw_sql {
            let n = run_count(&mut c, raw, from, to).await.unwrap_or_else(|e| panic!("{} raw: {e}", q.name));
            assert_eq!(n, 0, "{} raw", q.name);
        }
    }
}

#[tokio::test]
async fn sparse_histograms_sum_across_rows() {
    let url = fresh().await;
    let mut c = conn(&url).await;
    let enc = |bins: &[(i64, i64)]| bins.iter().map(|(b, n)| (b << 32) | n).collect::<Vec<i64>>();
    let a = enc(&[(10, 3), (90, 1)]);
    let b = enc(&[(10, 2), (50, 4)]);
    let merged: Vec<i64> = sqlx::query_scalar("SELECT hist_merge($1, $2)").bind(&a).bind(&b).fetch_one(&mut c).await.expect("merge");
    assert_eq!(merged, enc(&[(10, 5), (50, 4), (90, 1)]));
    let q: (f64, f64, f64) = sqlx::query_as("SELECT hist_quantile(h, 0.5), hist_quantile(h, 0.9), hist_quantile(h, 1.0) FROM (SELECT hist_sum(x) h FROM (VALUES ($1::int8[]), ($2::int8[]), (NULL)) v(x)) s")
        .bind(&a).bind(&b).fetch_one(&mut c).await.expect("q");
    assert_eq!(q, (0.105, 0.505, 0.905));
}

fn new_version(version: &str, family: &str, created_ms: i64) -> headroom_store::registry::NewVersion {
    headroom_store::registry::NewVersion {
        version: version.into(),
        family: family.into(),
        feature_schema: "fs1-00000000000000aa".into(),
        interval_ms: 300_000,
        horizons_slots: vec![1, 3, 6],
        neural: vec!["lstm".into(), "gru".into()],
        training_from_ms: Some(created_ms - 86_400_000),
        training_to_ms: Some(created_ms),
        training_rows: Some(1234),
        entities: Some(5),
        artifact_uri: format!("file:///models/{version}"),
        metrics: Some(r#"{"cpu/h3": 0.8}"#.into()),
        reference: Some("[]".into()),
        manifest: format!(r#"{{"version": "{version}"}}"#),
        created_ms,
    }
}

#[tokio::test]
async fn the_registry_serves_one_version_per_family_and_keeps_its_history() {
    use headroom_store::registry;
    let url = fresh().await;
    let pool = headroom_store::pool(&url, 4, Duration::from_secs(10)).await.expect("pool");
    let t = 1_700_000_000_000;
    for (i, v) in ["v1", "v2", "v3"].iter().enumerate() {
        assert!(registry::register(&pool, &new_version(v, "xgboost", t + i as i64 * 1000)).await.unwrap());
    }
    assert!(!registry::register(&pool, &new_version("v1", "xgboost", t)).await.unwrap(), "registering again is a no-op");
    assert!(registry::register(&pool, &new_version("o1", "other", t)).await.unwrap());
    assert_eq!(registry::serving(&pool, "xgboost").await.unwrap(), None);
    assert!(registry::promote(&pool, "nope", "x").await.unwrap_err().to_string().contains("not registered"));

    assert_eq!(registry::promote(&pool, "v1", "first").await.unwrap(), None);
    assert_eq!(registry::promote(&pool, "o1", "first").await.unwrap(), None, "families are independent");
    assert_eq!(registry::promote(&pool, "v2", "better").await.unwrap().as_deref(), Some("v1"));
    assert_eq!(registry::serving(&pool, "xgboost").await.unwrap(), Some(("v2".into(), "file:///models/v2".into())));
    assert_eq!(registry::promote(&pool, "v2", "again").await.unwrap().as_deref(), Some("v2"), "no-op");
    registry::reject(&pool, "v3", "below the margin").await.unwrap();
    assert!(registry::reject(&pool, "v3", "twice").await.is_err(), "only a candidate can be rejected");

    // Concurrent promotions of one family: the advisory lock serialises them, one serves.
    let (a, b) = tokio::join!(registry::promote(&pool, "v1", "race a"), registry::rollback(&pool, "xgboost", Some("v1")));
    a.unwrap();
    let _ = b; // v1 may already serve when the rollback runs
    let list = registry::versions(&pool, "xgboost").await.unwrap();
    let statuses: Vec<(&str, &str)> = list.iter().map(|v| (v.version.as_str(), v.status.as_str())).collect();
    assert_eq!(statuses, [("v3", "rejected"), ("v2", "retired"), ("v1", "serving")]);
    assert_eq!(list[2].created_ms, t);
    assert!(list[2].promoted_ms.is_some() && list[0].promoted_ms.is_none());

    // Rollback without a target returns to the version that served before.
    assert_eq!(registry::rollback(&pool, "xgboost", None).await.unwrap(), ("v1".into(), "v2".into()));
    assert!(registry::rollback(&pool, "xgboost", Some("v2")).await.unwrap_err().to_string().contains("already serving"));
    let h: Vec<String> = registry::history(&pool, "v2").await.unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(h, ["candidate", "serving", "retired", "serving"]);

    // The database itself refuses a second serving version of a family.
    let mut c = conn(&url).await;
    let e = c.execute("UPDATE model_versions SET status = 'serving' WHERE version = 'v3'").await.unwrap_err();
    assert!(e.to_string().contains("model_versions_one_serving"), "{e}");
}

#[tokio::test]
async fn a_version_directory_registers_from_its_manifest() {
    use headroom_store::registry;
    let url = fresh().await;
    let pool = headroom_store::pool(&url, 2, Duration::from_secs(10)).await.expect("pool");
    let dir = std::env::temp_dir().join(headroom_testkit::unique("reg"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        r#"{"format": 1, "version": "v9", "family": "xgboost", "feature_schema": "fs1-ab", "interval_ms": 300000,
            "horizons_slots": [1, 3, 6], "training_from_ms": 1000, "training_to_ms": 2000, "training_rows": 10,
            "entities": 2, "created_ms": 1700000000000, "metrics": null, "reference": [{"name": "cpu_now"}],
            "neural": [{"family": "lstm"}, {"family": "gru"}]}"#,
    )
    .unwrap();
    assert_eq!(registry::register_dir(&pool, &dir).await.unwrap(), ("v9".into(), true));
    let v = registry::versions(&pool, "xgboost").await.unwrap().remove(0);
    assert!(v.artifact_uri.starts_with("file:///") && v.artifact_uri.ends_with(dir.file_name().unwrap().to_str().unwrap()), "{}", v.artifact_uri);
    assert_eq!((v.status.as_str(), v.feature_schema.as_str(), v.created_ms), ("candidate", "fs1-ab", 1_700_000_000_000));
    let row: (Vec<String>, Vec<i32>, Option<String>) =
        sqlx::query_as("SELECT neural, horizons_slots, reference->0->>'name' FROM model_versions WHERE version = 'v9'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(row, (vec!["lstm".to_owned(), "gru".to_owned()], vec![1, 3, 6], Some("cpu_now".to_owned())));
    // A manifest without the fields a row needs is refused with the field's name.
    std::fs::write(dir.join("manifest.json"), r#"{"version": "v10"}"#).unwrap();
    assert!(registry::register_dir(&pool, &dir).await.unwrap_err().to_string().contains("family"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sessions_run_without_jit_unless_the_url_asks_for_it() {
    let url = fresh().await;
    let mut c = conn(&url).await;
    let (jit, path): (String, String) = sqlx::query_as("SELECT current_setting('jit'), current_setting('search_path')")
        .fetch_one(&mut c)
        .await
        .expect("settings");
    assert_eq!(jit, "off");
    // The URL's own options still apply beside it.
    assert!(url.contains(&format!("search_path%3D{path}")), "{path} from {url}");
    let pooled = headroom_store::pool(&url, 1, Duration::from_secs(10)).await.expect("pool");
    let jit: String = sqlx::query_scalar("SELECT current_setting('jit')").fetch_one(&pooled).await.expect("jit");
    assert_eq!(jit, "off", "pooled sessions too");
    // An operator who wants JIT says so in the URL.
    let on = format!("{url}%20-c%20jit%3Don");
    let mut c = conn(&on).await;
    let jit: String = sqlx::query_scalar("SELECT current_setting('jit')").fetch_one(&mut c).await.expect("jit");
    assert_eq!(jit, "on");
}
