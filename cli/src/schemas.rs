//! `headroom schemas register`: puts the built-in catalogue into a Confluent-compatible schema
//! registry under the ids it pins, so that a consumer resolving headroom's records through the
//! registry reads the same writer schemas the services use.
//!
//! Each version missing from the registry is written in the subject's IMPORT mode (the only
//! way the registry accepts a chosen id), and the subject is put back to READWRITE. A version
//! the registry already has under its pinned id is left alone, so the command is idempotent;
//! one it holds under another id, or an id it gives to another schema, is an error that names
//! both: the registry and the records would disagree.

use std::time::Duration;

use headroom_schemas::catalogue::SchemaEntry;
use headroom_schemas::Catalogue;
use serde_json::{json, Value};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// What happened to each catalogue entry.
#[derive(Debug, Default)]
pub struct Report {
    pub registered: Vec<(String, u32, u32)>,
    pub present: Vec<(String, u32, u32)>,
}

struct Registry {
    http: reqwest::Client,
    url: String,
}

/// Confluent error codes the command tells apart.
const SUBJECT_NOT_FOUND: i64 = 40401;
const SCHEMA_NOT_FOUND: i64 = 40403;

impl Registry {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.url);
        let mut req = self.http.request(method.clone(), &url).header("Accept", CONTENT_TYPE);
        if let Some(b) = body {
            req = req.header("Content-Type", CONTENT_TYPE).body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("schema registry {method} {url}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, v))
    }

    fn error_code(v: &Value) -> i64 {
        v["error_code"].as_i64().unwrap_or(0)
    }

    /// The id and version the registry gives `e`'s schema under its subject, if it has it.
    async fn lookup(&self, e: &SchemaEntry) -> anyhow::Result<Option<(u32, u32)>> {
        let (status, v) = self
            .call(reqwest::Method::POST, &format!("/subjects/{}", e.subject), Some(json!({"schema": e.text})))
            .await?;
        match status {
            200 => Ok(Some((
                v["id"].as_u64().unwrap_or(0) as u32,
                v["version"].as_u64().unwrap_or(0) as u32,
            ))),
            404 if matches!(Self::error_code(&v), SUBJECT_NOT_FOUND | SCHEMA_NOT_FOUND) => Ok(None),
            _ => anyhow::bail!("schema registry: looking up {} v{}: HTTP {status}: {v}", e.subject, e.version),
        }
    }

    async fn set_mode(&self, subject: &str, mode: &str) -> anyhow::Result<()> {
        let (status, v) = self
            .call(reqwest::Method::PUT, &format!("/mode/{subject}?force=true"), Some(json!({"mode": mode})))
            .await?;
        anyhow::ensure!(status == 200, "schema registry: setting {subject} to {mode} mode: HTTP {status}: {v}");
        Ok(())
    }

    async fn register(&self, e: &SchemaEntry) -> anyhow::Result<()> {
        // The id must be free, or hold this very schema.
        let (status, v) = self.call(reqwest::Method::GET, &format!("/schemas/ids/{}", e.id), None).await?;
        if status == 200 {
            let theirs = v["schema"].as_str().unwrap_or("");
            let same = apache_avro::Schema::parse_str(theirs).map(|s| s.canonical_form()).ok()
                == Some(e.schema.canonical_form());
            anyhow::ensure!(
                same,
                "schema registry: id {} holds another schema than {} v{} ({}); the catalogue pins it",
                e.id,
                e.subject,
                e.version,
                e.file
            );
        }
        self.set_mode(&e.subject, "IMPORT").await?;
        let body = json!({"schema": e.text, "schemaType": "AVRO", "id": e.id, "version": e.version});
        let posted = self
            .call(reqwest::Method::POST, &format!("/subjects/{}/versions", e.subject), Some(body))
            .await;
        // Back to READWRITE whatever the outcome, so producers can register again.
        let restored = self.set_mode(&e.subject, "READWRITE").await;
        let (status, v) = posted?;
        anyhow::ensure!(status == 200, "schema registry: registering {} v{} as id {}: HTTP {status}: {v}", e.subject, e.version, e.id);
        let got = v["id"].as_u64().unwrap_or(0) as u32;
        anyhow::ensure!(got == e.id, "schema registry: {} v{} was given id {got}, not the pinned {}", e.subject, e.version, e.id);
        restored
    }
}

/// Registers every entry of `catalogue` (oldest version first per subject) at `url`.
pub async fn register(url: &str, catalogue: &Catalogue) -> anyhow::Result<Report> {
    let url = url.trim_end_matches('/');
    anyhow::ensure!(
        url.starts_with("http://") || url.starts_with("https://"),
        "--registry-url `{url}` is not an http:// or https:// URL"
    );
    let reg = Registry {
        http: reqwest::Client::builder().timeout(Duration::from_secs(15)).build()?,
        url: url.to_owned(),
    };
    let mut entries: Vec<&SchemaEntry> = catalogue.entries().iter().collect();
    entries.sort_by(|a, b| (&a.subject, a.version).cmp(&(&b.subject, b.version)));
    let mut report = Report::default();
    for e in entries {
        match reg.lookup(e).await? {
            Some((id, _)) if id == e.id => report.present.push((e.subject.clone(), e.version, e.id)),
            Some((id, version)) => anyhow::bail!(
                "schema registry: {} holds the schema of catalogue v{} as version {version} with id {id}, \
                 but the catalogue pins id {}: records and registry would disagree",
                e.subject,
                e.version,
                e.id
            ),
            None => {
                reg.register(e).await?;
                report.registered.push((e.subject.clone(), e.version, e.id));
            }
        }
    }
    Ok(report)
}
