//! The model registry in PostgreSQL (`model_versions`, `model_version_events`): every version
//! with what it is and where its artifacts are, and its status (candidate, serving, retired,
//! rejected). Promotions take a per-family advisory lock and retire the previous serving
//! version in the same transaction; a partial unique index keeps at most one serving version
//! per family whatever happens.
//!
//! The artifacts stay where the trainer wrote them (the local filesystem by default,
//! `artifact_uri`); this crate does not read them and does not link the model libraries: the
//! caller passes what a version's manifest says.

use sqlx::{PgPool, Row};

/// A version to register, from its manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct NewVersion {
    pub version: String,
    pub family: String,
    pub feature_schema: String,
    pub interval_ms: i64,
    pub horizons_slots: Vec<i32>,
    /// The neural families the version holds beside the primary one.
    pub neural: Vec<String>,
    pub training_from_ms: Option<i64>,
    pub training_to_ms: Option<i64>,
    pub training_rows: Option<i64>,
    pub entities: Option<i32>,
    pub artifact_uri: String,
    /// JSON texts.
    pub metrics: Option<String>,
    pub reference: Option<String>,
    pub manifest: String,
    pub created_ms: i64,
}

impl NewVersion {
    /// The row of a version from its `manifest.json` as written on disk (the artifact format's
    /// own field names) and where its artifacts are.
    pub fn from_manifest(json: &str, artifact_uri: &str) -> anyhow::Result<NewVersion> {
        let m: serde_json::Value = serde_json::from_str(json).map_err(|e| anyhow::anyhow!("manifest: {e}"))?;
        let text = |k: &str| {
            m.get(k)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("manifest: no `{k}`"))
        };
        let int = |k: &str| m.get(k).and_then(serde_json::Value::as_i64);
        let list = |k: &str| m.get(k).and_then(|v| v.as_array()).cloned().unwrap_or_default();
        let json_of = |k: &str| m.get(k).filter(|v| !v.is_null()).map(serde_json::Value::to_string);
        Ok(NewVersion {
            version: text("version")?,
            family: text("family")?,
            feature_schema: text("feature_schema")?,
            interval_ms: int("interval_ms").ok_or_else(|| anyhow::anyhow!("manifest: no `interval_ms`"))?,
            horizons_slots: list("horizons_slots").iter().filter_map(|v| v.as_i64()).map(|h| h as i32).collect(),
            neural: list("neural")
                .iter()
                .filter_map(|n| n.get("family").and_then(|f| f.as_str()).map(str::to_owned))
                .collect(),
            training_from_ms: int("training_from_ms"),
            training_to_ms: int("training_to_ms"),
            training_rows: int("training_rows"),
            entities: int("entities").map(|e| e as i32),
            artifact_uri: artifact_uri.to_owned(),
            metrics: json_of("metrics"),
            reference: json_of("reference"),
            manifest: json.to_owned(),
            created_ms: int("created_ms").unwrap_or(0),
        })
    }
}

/// Registers the version in directory `dir` (its `manifest.json`), its artifacts at
/// `file://<dir>`. Returns its name and whether it was new.
pub async fn register_dir(pool: &PgPool, dir: &std::path::Path) -> anyhow::Result<(String, bool)> {
    let path = dir.join("manifest.json");
    let json = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let v = NewVersion::from_manifest(&json, &format!("file://{}", abs.display()))?;
    let new = register(pool, &v).await?;
    Ok((v.version, new))
}

/// A registered version, as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionInfo {
    pub version: String,
    pub family: String,
    pub status: String,
    pub feature_schema: String,
    pub artifact_uri: String,
    pub created_ms: i64,
    pub promoted_ms: Option<i64>,
}

/// Registers `v` as a candidate. Registering a version again is a no-op (returns false).
pub async fn register(pool: &PgPool, v: &NewVersion) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO model_versions (version, family, status, feature_schema, interval_ms, horizons_slots, neural,
             training_from, training_to, training_rows, entities, artifact_uri, metrics, reference, manifest, created_at)
         VALUES ($1, $2, 'candidate', $3, $4, $5, $6,
             to_timestamp($7::float8 / 1000), to_timestamp($8::float8 / 1000), $9, $10, $11, $12::jsonb, $13::jsonb, $14::jsonb,
             to_timestamp($15::float8 / 1000))
         ON CONFLICT (version) DO NOTHING",
    )
    .bind(&v.version)
    .bind(&v.family)
    .bind(&v.feature_schema)
    .bind(v.interval_ms)
    .bind(&v.horizons_slots)
    .bind(&v.neural)
    .bind(v.training_from_ms)
    .bind(v.training_to_ms)
    .bind(v.training_rows)
    .bind(v.entities)
    .bind(&v.artifact_uri)
    .bind(&v.metrics)
    .bind(&v.reference)
    .bind(&v.manifest)
    .bind(v.created_ms)
    .execute(&mut *tx)
    .await
    .map_err(|e| anyhow::anyhow!("registering model version {}: {e}", v.version))?
    .rows_affected()
        == 1;
    if inserted {
        event(&mut tx, &v.version, &v.family, "candidate", Some("registered")).await?;
    }
    tx.commit().await?;
    Ok(inserted)
}

async fn event(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    version: &str,
    family: &str,
    status: &str,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO model_version_events (version, family, status, reason) VALUES ($1, $2, $3, $4)")
        .bind(version)
        .bind(family)
        .bind(status)
        .bind(reason)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Makes `version` (registered) the serving version of its family and retires the one before;
/// returns that one. Promoting the serving version again changes nothing.
pub async fn promote(pool: &PgPool, version: &str, reason: &str) -> anyhow::Result<Option<String>> {
    let mut tx = pool.begin().await?;
    let family: String = sqlx::query_scalar("SELECT family FROM model_versions WHERE version = $1")
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| anyhow::anyhow!("model version {version} is not registered (headroom-train register {version})"))?;
    // One promotion per family at a time; the status is read under the lock.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('headroom.registry.' || $1))")
        .bind(&family)
        .execute(&mut *tx)
        .await?;
    let status: String = sqlx::query_scalar("SELECT status FROM model_versions WHERE version = $1")
        .bind(version)
        .fetch_one(&mut *tx)
        .await?;
    if status == "serving" {
        return Ok(Some(version.to_owned()));
    }
    let previous: Option<String> = sqlx::query_scalar(
        "UPDATE model_versions SET status = 'retired', retired_at = now()
         WHERE family = $1 AND status = 'serving' RETURNING version",
    )
    .bind(&family)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(p) = &previous {
        event(&mut tx, p, &family, "retired", Some(&format!("replaced by {version}"))).await?;
    }
    sqlx::query("UPDATE model_versions SET status = 'serving', promoted_at = now(), retired_at = NULL WHERE version = $1")
        .bind(version)
        .execute(&mut *tx)
        .await?;
    event(&mut tx, version, &family, "serving", Some(reason)).await?;
    tx.commit().await?;
    Ok(previous)
}

/// Marks a candidate rejected (it stays listed, with the reason in its events).
pub async fn reject(pool: &PgPool, version: &str, reason: &str) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let family: Option<String> = sqlx::query_scalar(
        "UPDATE model_versions SET status = 'rejected' WHERE version = $1 AND status = 'candidate' RETURNING family",
    )
    .bind(version)
    .fetch_optional(&mut *tx)
    .await?;
    let family = family.ok_or_else(|| anyhow::anyhow!("model version {version} is not a registered candidate"))?;
    event(&mut tx, version, &family, "rejected", Some(reason)).await?;
    tx.commit().await?;
    Ok(())
}

/// Serves `to` again, or the version that served before the current one; returns
/// `(from, to)`.
pub async fn rollback(pool: &PgPool, family: &str, to: Option<&str>) -> anyhow::Result<(String, String)> {
    let from: String = serving(pool, family)
        .await?
        .map(|(v, _)| v)
        .ok_or_else(|| anyhow::anyhow!("no serving `{family}` version to roll back from"))?;
    let to = match to {
        Some(t) => t.to_owned(),
        None => sqlx::query_scalar(
            "SELECT version FROM model_versions WHERE family = $1 AND status = 'retired'
             ORDER BY retired_at DESC NULLS LAST, promoted_at DESC NULLS LAST LIMIT 1",
        )
        .bind(family)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no earlier `{family}` version to roll back to"))?,
    };
    anyhow::ensure!(to != from, "{to} is already serving");
    promote(pool, &to, &format!("rolled back from {from}")).await?;
    Ok((from, to))
}

/// The serving version of `family` and its artifact location.
pub async fn serving(pool: &PgPool, family: &str) -> anyhow::Result<Option<(String, String)>> {
    Ok(sqlx::query_as::<_, (String, String)>(
        "SELECT version, artifact_uri FROM model_versions WHERE family = $1 AND status = 'serving'",
    )
    .bind(family)
    .fetch_optional(pool)
    .await?)
}

/// The serving version of `family` and its artifact location, read from the registry at `url`
/// over a short-lived connection (what a service does once at start-up). No serving version is
/// an error that says how to promote one; the URL is redacted in every message.
pub async fn serving_at(url: &str, family: &str) -> anyhow::Result<(String, String)> {
    let pool = crate::pool(url, 1, std::time::Duration::from_secs(10)).await?;
    let found = serving(&pool, family).await;
    pool.close().await;
    found
        .map_err(|e| anyhow::anyhow!("reading the model registry at {}: {e}", crate::redact(url)))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no serving `{family}` model in the registry at {}: promote one (headroom-train promote VERSION --registry-url URL)",
                crate::redact(url)
            )
        })
}

/// The versions of `family`, newest first.
pub async fn versions(pool: &PgPool, family: &str) -> anyhow::Result<Vec<VersionInfo>> {
    let rows = sqlx::query(
        "SELECT version, family, status, feature_schema, artifact_uri,
                (extract(epoch FROM created_at) * 1000)::int8,
                (extract(epoch FROM promoted_at) * 1000)::int8
         FROM model_versions WHERE family = $1 ORDER BY created_at DESC, version DESC",
    )
    .bind(family)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| VersionInfo {
            version: r.get(0),
            family: r.get(1),
            status: r.get(2),
            feature_schema: r.get(3),
            artifact_uri: r.get(4),
            created_ms: r.get(5),
            promoted_ms: r.get(6),
        })
        .collect())
}

/// The statuses a version went through, oldest first: `(status, reason)`.
pub async fn history(pool: &PgPool, version: &str) -> anyhow::Result<Vec<(String, Option<String>)>> {
    Ok(sqlx::query_as("SELECT status, reason FROM model_version_events WHERE version = $1 ORDER BY id")
        .bind(version)
        .fetch_all(pool)
        .await?)
}
