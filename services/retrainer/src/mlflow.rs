//! MLflow tracking of retrain runs, over MLflow's REST API (the `/api/2.0/mlflow` endpoints,
//! served by MLflow 2 and 3), when `mlflow.tracking_url` is set.
//!
//! Each retrain run becomes an MLflow run of the experiment `mlflow.experiment` (created on
//! first use): started when the retrain run starts, with its parameters and trigger; finished
//! with the holdout metrics, the outcome, the data window, and the candidate's artifact location
//! (the model directory, as a tag; and, with a server that proxies artifacts, a copy of the
//! version's files in the run's own artifact store).
//!
//! MLflow is a side channel: a tracking server that is down, slow or refuses a request never
//! changes a run's outcome. The failure is logged, counted in
//! `headroom_retrain_mlflow_errors_total{op}`, and the run goes on.

use std::path::Path;
use std::time::Duration;

use headroom_store::percent_encode as encode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Mutex;

/// The `[mlflow]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlflowConfig {
    /// Base URL of the tracking server (`http://mlflow:5000`); empty: no tracking.
    pub tracking_url: String,
    pub experiment: String,
    /// Per request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// A file holding a bearer token (sent as `Authorization: Bearer`).
    #[serde(default)]
    pub token_file: String,
    /// Basic authentication (MLflow's `basic-auth` app): user, and a file holding the password.
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password_file: String,
    /// Copy the candidate version's files into the run's artifacts when the server proxies
    /// artifacts (`mlflow-artifacts:` URIs, the default of `mlflow server`).
    pub upload_artifacts: bool,
    /// Versions larger than this are not copied (the artifact location tag still names them).
    pub max_artifact_bytes: u64,
}

impl MlflowConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.tracking_url.is_empty() {
            return Ok(());
        }
        if !(self.tracking_url.starts_with("http://") || self.tracking_url.starts_with("https://")) {
            return Err(format!("key `mlflow.tracking_url` must be an http:// or https:// URL, got `{}`", self.tracking_url));
        }
        if self.experiment.trim().is_empty() {
            return Err("key `mlflow.experiment` must not be empty".into());
        }
        if self.timeout.is_zero() {
            return Err("key `mlflow.timeout` must be positive".into());
        }
        if !self.token_file.is_empty() && !self.username.is_empty() {
            return Err("keys `mlflow.token_file` and `mlflow.username` exclude each other".into());
        }
        if self.username.is_empty() != self.password_file.is_empty() {
            return Err("keys `mlflow.username` and `mlflow.password_file` go together".into());
        }
        Ok(())
    }
}

/// `headroom_retrain_mlflow_errors_total{op}`: requests that failed, by operation.
pub fn errors_counter() -> prometheus::IntCounterVec {
    prometheus::IntCounterVec::new(
        prometheus::Opts::new("retrain_mlflow_errors_total", "MLflow tracking requests that failed, by operation (runs go on without them)."),
        &["op"],
    )
    .expect("metric")
}

/// What went wrong with one request.
#[derive(Debug, thiserror::Error)]
pub enum MlflowError {
    #[error("MLflow {op}: {source}")]
    Transport {
        op: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("MLflow {op}: HTTP {status} {code}: {message}")]
    Api { op: &'static str, status: u16, code: String, message: String },
    #[error("MLflow {op}: unexpected response: {detail}")]
    Protocol { op: &'static str, detail: String },
    #[error("MLflow: {0}")]
    Config(String),
}

impl MlflowError {
    pub fn op(&self) -> &'static str {
        match self {
            MlflowError::Transport { op, .. } | MlflowError::Api { op, .. } | MlflowError::Protocol { op, .. } => op,
            MlflowError::Config(_) => "config",
        }
    }
    fn code(&self) -> Option<&str> {
        match self {
            MlflowError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Auth {
    None,
    Bearer(String),
    Basic(String, String),
}

/// An MLflow run this process started.
#[derive(Debug, Clone)]
pub struct MlRun {
    pub run_id: String,
    pub experiment_id: String,
    pub artifact_uri: String,
}

/// How a run ended, in MLflow's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Finished,
    Failed,
    Killed,
}

impl RunStatus {
    fn as_str(self) -> &'static str {
        match self {
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }
}

/// MLflow's limits per `runs/log-batch` request.
const BATCH_METRICS: usize = 1000;
const BATCH_PARAMS: usize = 100;
const BATCH_TAGS: usize = 100;
/// MLflow's limit on a param value (6,000 in MLflow ≥ 2.10; tags take 8,000).
const PARAM_MAX: usize = 6000;
const TAG_MAX: usize = 8000;

/// A client of one tracking server and experiment.
#[derive(Debug)]
pub struct Tracker {
    client: reqwest::Client,
    base: String,
    experiment: String,
    auth: Auth,
    upload: bool,
    max_artifact_bytes: u64,
    experiment_id: Mutex<Option<String>>,
}

fn read_secret(path: &str, key: &str) -> Result<String, MlflowError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
        .map_err(|e| MlflowError::Config(format!("key `{key}`: {path}: {e}")))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

impl Tracker {
    /// None when `tracking_url` is empty.
    pub fn new(cfg: &MlflowConfig) -> Result<Option<Tracker>, MlflowError> {
        if cfg.tracking_url.is_empty() {
            return Ok(None);
        }
        cfg.validate().map_err(MlflowError::Config)?;
        let auth = if !cfg.token_file.is_empty() {
            Auth::Bearer(read_secret(&cfg.token_file, "mlflow.token_file")?)
        } else if !cfg.username.is_empty() {
            Auth::Basic(cfg.username.clone(), read_secret(&cfg.password_file, "mlflow.password_file")?)
        } else {
            Auth::None
        };
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .build()
            .map_err(|e| MlflowError::Config(format!("HTTP client: {e}")))?;
        Ok(Some(Tracker {
            client,
            base: cfg.tracking_url.trim_end_matches('/').to_owned(),
            experiment: cfg.experiment.clone(),
            auth,
            upload: cfg.upload_artifacts,
            max_artifact_bytes: cfg.max_artifact_bytes,
            experiment_id: Mutex::new(None),
        }))
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn authed(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Auth::None => rb,
            Auth::Bearer(t) => rb.bearer_auth(t),
            Auth::Basic(u, p) => rb.basic_auth(u, Some(p)),
        }
    }

    async fn send(&self, op: &'static str, rb: reqwest::RequestBuilder) -> Result<Value, MlflowError> {
        let resp = self.authed(rb).send().await.map_err(|source| MlflowError::Transport { op, source })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|source| MlflowError::Transport { op, source })?;
        let v: Value = if body.is_empty() { json!({}) } else { serde_json::from_slice(&body).unwrap_or(Value::Null) };
        if !status.is_success() {
            let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
            return Err(MlflowError::Api {
                op,
                status: status.as_u16(),
                code: field("error_code").unwrap_or_else(|| "HTTP_ERROR".into()),
                message: field("message").unwrap_or_else(|| truncate(&String::from_utf8_lossy(&body), 300)),
            });
        }
        if v.is_null() {
            return Err(MlflowError::Protocol { op, detail: format!("not JSON: {}", truncate(&String::from_utf8_lossy(&body), 200)) });
        }
        Ok(v)
    }

    async fn post(&self, op: &'static str, endpoint: &str, body: Value) -> Result<Value, MlflowError> {
        let rb = self
            .client
            .post(format!("{}/api/2.0/mlflow/{endpoint}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        self.send(op, rb).await
    }

    /// The experiment's id, created when it does not exist (a concurrent creation is fine).
    pub async fn experiment_id(&self) -> Result<String, MlflowError> {
        let mut cached = self.experiment_id.lock().await;
        if let Some(id) = cached.as_ref() {
            return Ok(id.clone());
        }
        let get = || async {
            let url = format!("{}/api/2.0/mlflow/experiments/get-by-name?experiment_name={}", self.base, encode(&self.experiment));
            let v = self.send("get_experiment", self.client.get(url)).await?;
            v.pointer("/experiment/experiment_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| MlflowError::Protocol { op: "get_experiment", detail: "no experiment.experiment_id".into() })
        };
        let id = match get().await {
            Ok(id) => id,
            Err(e) if e.code() == Some("RESOURCE_DOES_NOT_EXIST") => {
                match self.post("create_experiment", "experiments/create", json!({ "name": self.experiment })).await {
                    Ok(v) => v
                        .get("experiment_id")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .ok_or_else(|| MlflowError::Protocol { op: "create_experiment", detail: "no experiment_id".into() })?,
                    Err(e) if e.code() == Some("RESOURCE_ALREADY_EXISTS") => get().await?,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        *cached = Some(id.clone());
        Ok(id)
    }

    /// Starts a run (status RUNNING) named `name`, with `tags`.
    pub async fn start_run(&self, name: &str, start_ms: i64, tags: &[(String, String)]) -> Result<MlRun, MlflowError> {
        let experiment_id = self.experiment_id().await?;
        let mut t: Vec<Value> = tags.iter().map(|(k, v)| json!({ "key": k, "value": truncate(v, TAG_MAX) })).collect();
        t.push(json!({ "key": "mlflow.source.name", "value": "headroom-retrain" }));
        t.push(json!({ "key": "mlflow.source.type", "value": "JOB" }));
        let v = self
            .post(
                "create_run",
                "runs/create",
                json!({ "experiment_id": experiment_id, "run_name": name, "start_time": start_ms, "tags": t }),
            )
            .await?;
        let info = v.pointer("/run/info").ok_or_else(|| MlflowError::Protocol { op: "create_run", detail: "no run.info".into() })?;
        let field = |k: &str| info.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(MlRun {
            run_id: field("run_id").ok_or_else(|| MlflowError::Protocol { op: "create_run", detail: "no run_id".into() })?,
            experiment_id,
            artifact_uri: field("artifact_uri").unwrap_or_default(),
        })
    }

    /// Logs parameters, metrics (non-finite values are left out: MLflow's stores disagree on
    /// them) and tags, in as many `log-batch` requests as MLflow's limits need.
    pub async fn log(&self, run_id: &str, params: &[(String, String)], metrics: &[(String, f64)], tags: &[(String, String)], ts_ms: i64) -> Result<(), MlflowError> {
        let params: Vec<Value> = params.iter().map(|(k, v)| json!({ "key": k, "value": truncate(v, PARAM_MAX) })).collect();
        let metrics: Vec<Value> = metrics
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(k, v)| json!({ "key": k, "value": v, "timestamp": ts_ms, "step": 0 }))
            .collect();
        let tags: Vec<Value> = tags.iter().map(|(k, v)| json!({ "key": k, "value": truncate(v, TAG_MAX) })).collect();
        let (mut p, mut m, mut t) = (&params[..], &metrics[..], &tags[..]);
        while !(p.is_empty() && m.is_empty() && t.is_empty()) {
            let (pn, mn, tn) = (p.len().min(BATCH_PARAMS), m.len().min(BATCH_METRICS), t.len().min(BATCH_TAGS));
            self.post("log_batch", "runs/log-batch", json!({ "run_id": run_id, "params": &p[..pn], "metrics": &m[..mn], "tags": &t[..tn] }))
                .await?;
            (p, m, t) = (&p[pn..], &m[mn..], &t[tn..]);
        }
        Ok(())
    }

    /// Ends the run.
    pub async fn finish(&self, run_id: &str, status: RunStatus, end_ms: i64) -> Result<(), MlflowError> {
        self.post("update_run", "runs/update", json!({ "run_id": run_id, "status": status.as_str(), "end_time": end_ms }))
            .await
            .map(|_| ())
    }

    /// Copies the files of `dir` (one level) into the run's artifacts under `under/`, when the
    /// server proxies artifacts and the directory is within `max_artifact_bytes`. Returns the
    /// number of files copied (0: not applicable).
    pub async fn upload_dir(&self, run: &MlRun, dir: &Path, under: &str) -> Result<usize, MlflowError> {
        let Some(rest) = run.artifact_uri.strip_prefix("mlflow-artifacts:") else {
            return Ok(0);
        };
        if !self.upload {
            return Ok(0);
        }
        // `mlflow-artifacts:/1/<run>/artifacts` or `mlflow-artifacts://host:port/1/<run>/artifacts`.
        let rel = match rest.strip_prefix("//") {
            Some(with_host) => with_host.split_once('/').map_or("", |(_, p)| p),
            None => rest.trim_start_matches('/'),
        };
        let io = |e: std::io::Error| MlflowError::Config(format!("{}: {e}", dir.display()));
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let meta = entry.metadata().map_err(io)?;
            if meta.is_file() {
                files.push((entry.path(), meta.len()));
            }
        }
        let total: u64 = files.iter().map(|(_, n)| n).sum();
        if total > self.max_artifact_bytes {
            tracing::info!(bytes = total, limit = self.max_artifact_bytes, "the version's files exceed mlflow.max_artifact_bytes; not copied to MLflow");
            return Ok(0);
        }
        files.sort();
        for (path, _) in &files {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let bytes = tokio::fs::read(path).await.map_err(io)?;
            let url = format!(
                "{}/api/2.0/mlflow-artifacts/artifacts/{}/{}/{}",
                self.base,
                rel.trim_end_matches('/'),
                encode(under),
                encode(name)
            );
            self.send("upload_artifact", self.client.put(url).header(reqwest::header::CONTENT_TYPE, "application/octet-stream").body(bytes))
                .await?;
        }
        Ok(files.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> MlflowConfig {
        MlflowConfig {
            tracking_url: url.into(),
            experiment: "headroom-retrain".into(),
            timeout: Duration::from_secs(5),
            token_file: String::new(),
            username: String::new(),
            password_file: String::new(),
            upload_artifacts: true,
            max_artifact_bytes: 1 << 20,
        }
    }

    #[test]
    fn an_empty_url_turns_tracking_off_and_a_bad_one_is_refused() {
        assert!(Tracker::new(&cfg("")).unwrap().is_none());
        let e = Tracker::new(&cfg("mlflow:5000")).unwrap_err().to_string();
        assert!(e.contains("mlflow.tracking_url"), "{e}");
        let mut c = cfg("http://mlflow:5000");
        c.username = "u".into();
        assert!(c.validate().unwrap_err().contains("password_file"));
        c.password_file = "/nonexistent/headroom-mlflow-password".into();
        let e = Tracker::new(&c).unwrap_err().to_string();
        assert!(e.contains("mlflow.password_file") && e.contains("nonexistent"), "{e}");
        c.token_file = "/x".into();
        assert!(c.validate().unwrap_err().contains("exclude"));
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary_and_names_are_encoded() {
        let s = "é".repeat(5000);
        let t = truncate(&s, PARAM_MAX);
        assert!(t.len() <= PARAM_MAX && t.ends_with("...") && t.is_char_boundary(t.len() - 3));
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(encode("headroom retrain/xgb"), "headroom%20retrain%2Fxgb");
    }
}
