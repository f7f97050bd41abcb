//! Checks of what operators see: a service's `/metrics` exposition against `promtool check
//! metrics` and against the Grafana dashboards' queries, and a real Prometheus server
//! (Debian's `prometheus` package, installed by scripts/setup.sh) scraping a service.
//! Neither tool missing is a skip: the check fails and names scripts/setup.sh.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::repo_root;

/// The service whose own metrics a dashboard metric is, by its name after `headroom_`; the
/// runtime's standard metrics (every service has them) have none of these prefixes.
const SERVICE_PREFIXES: &[(&str, &str)] = &[
    ("featurizer_", "featurizer"),
    ("scorer_", "scorer"),
    ("sink_", "sink"),
    ("recommender_", "recommender"),
    ("drift_", "drift-monitor"),
    ("retrain_", "retrainer"),
];

/// The service that exports `metric` (a full name such as `headroom_sink_rows_written_total`),
/// or `None` for the runtime's standard metrics.
pub fn owner(metric: &str) -> Option<&'static str> {
    let rest = metric.strip_prefix("headroom_")?;
    SERVICE_PREFIXES
        .iter()
        .find(|(p, _)| rest.starts_with(p))
        .map(|(_, s)| *s)
}

/// One query of a dashboard: where it is (dashboard / panel) and its expression.
#[derive(Debug, Clone)]
pub struct DashboardQuery {
    pub place: String,
    pub expr: String,
}

pub fn dashboards_dir() -> PathBuf {
    repo_root().join("deploy/grafana/dashboards")
}

/// Every Prometheus query of every dashboard under deploy/grafana/dashboards (panics on a file
/// that is not valid dashboard JSON).
pub fn dashboard_queries() -> Vec<DashboardQuery> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dashboards_dir())
        .expect("deploy/grafana/dashboards")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards");
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read dashboard");
        let d: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", f.display()));
        let title = d["title"].as_str().unwrap_or_else(|| panic!("{}: no title", f.display()));
        assert!(d["uid"].is_string(), "{}: no uid", f.display());
        let panels = d["panels"].as_array().unwrap_or_else(|| panic!("{title}: no panels"));
        for p in panels {
            let pt = p["title"].as_str().unwrap_or("?");
            if p["type"] == "row" {
                continue;
            }
            let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{title}/{pt}: no targets"));
            assert!(!targets.is_empty(), "{title}/{pt}: no targets");
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or_else(|| panic!("{title}/{pt}: no expr"));
                out.push(DashboardQuery { place: format!("{title} / {pt}"), expr: expr.to_owned() });
            }
        }
    }
    out
}

/// Every alert of deploy/prometheus/alerts.yml as a query (place: `alerts / <alert>`).
pub fn alert_queries() -> Vec<DashboardQuery> {
    let path = repo_root().join("deploy/prometheus/alerts.yml");
    let text = std::fs::read_to_string(&path).expect("deploy/prometheus/alerts.yml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("alerts.yml parses");
    let mut out = Vec::new();
    for g in doc["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            let name = r["alert"].as_str().or_else(|| r["record"].as_str()).expect("alert name");
            let expr = r["expr"].as_str().expect("expr");
            out.push(DashboardQuery { place: format!("alerts / {name}"), expr: expr.to_owned() });
        }
    }
    assert!(!out.is_empty(), "no alerting rules");
    out
}

/// The metric names of an expression (histogram series named by their family: `_bucket`
/// stripped), and the labels it groups by.
pub fn expr_metrics(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut metrics = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("headroom_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let boundary = start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        if boundary {
            let name = &expr[start..end];
            metrics.insert(name.strip_suffix("_bucket").unwrap_or(name).to_owned());
        }
        i = end;
    }
    let mut labels = BTreeSet::new();
    for kw in ["by (", "without ("] {
        let mut rest = expr;
        while let Some(at) = rest.find(kw) {
            let after = &rest[at + kw.len()..];
            let close = after.find(')').unwrap_or(after.len());
            for l in after[..close].split(',') {
                let l = l.trim();
                // `le` is every histogram's; `instance` and `job` are added by Prometheus.
                if !l.is_empty() && !["le", "instance", "job"].contains(&l) {
                    labels.insert(l.to_owned());
                }
            }
            rest = &after[close..];
        }
    }
    (metrics, labels)
}

/// The metric families of an exposition, with the label names seen on their series.
pub fn exposition_families(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut fams: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(n), Some(t)) = (it.next(), it.next()) {
                types.insert(n.to_owned(), t.to_owned());
                fams.entry(n.to_owned()).or_default();
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, labels) = match line.find('{') {
            Some(b) => (&line[..b], &line[b + 1..line.rfind('}').unwrap_or(line.len())]),
            None => (line.split_whitespace().next().unwrap_or(""), ""),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                let base = series.strip_suffix(s)?;
                (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(series);
        let set = fams.entry(family.to_owned()).or_default();
        for kv in labels.split(',') {
            if let Some((k, _)) = kv.split_once('=') {
                set.insert(k.trim().to_owned());
            }
        }
    }
    fams
}

/// Strips an HTTP response's status line and headers, when there are any.
fn body(text: &str) -> &str {
    if text.starts_with("HTTP/") {
        text.split_once("\r\n\r\n").map_or(text, |(_, b)| b)
    } else {
        text
    }
}

/// `promtool check metrics` over the exposition: it must parse and raise no lint problem
/// (names, units, counters ending in `_total`, help texts).
pub fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: run scripts/setup.sh (Debian's prometheus package)");
    child.stdin.take().expect("stdin").write_all(body(text).as_bytes()).expect("write");
    let out = child.wait_with_output().expect("promtool");
    let report = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}");
}

/// The operator's checks of `service`'s `/metrics` (taken after the test's traffic):
/// promtool's lint, and every dashboard query and alerting rule that reads this service's own
/// metrics (or, for the featurizer, the runtime's standard ones every service exports) names a
/// metric family the exposition has, grouped by labels its series carry. Every such metric
/// must belong to some service, so the services' tests together cover every query and alert.
pub fn check_exposition(service: &str, text: &str) {
    promtool_check(text);
    let fams = exposition_families(body(text));
    let mut checked = 0;
    for q in dashboard_queries().into_iter().chain(alert_queries()) {
        let (metrics, labels) = expr_metrics(&q.expr);
        assert!(!metrics.is_empty(), "{}: `{}` reads no headroom metric", q.place, q.expr);
        for m in &metrics {
            // A metric with no service prefix is the runtime's: the featurizer's scrape must
            // have it, so a name that nothing exports fails there.
            let o = owner(m);
            let standard = o.is_none();
            if o != Some(service) && !(standard && service == "featurizer") {
                continue;
            }
            let seen = fams.get(m).unwrap_or_else(|| {
                panic!("{}: `{}` reads {m}, which {service} does not export", q.place, q.expr)
            });
            for l in &labels {
                assert!(
                    seen.contains(l) || metrics.len() > 1,
                    "{}: `{}` groups {m} by `{l}`, a label it does not have ({seen:?})",
                    q.place,
                    q.expr
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "no dashboard query reads {service}'s metrics");
}

/// A Prometheus server (Debian's package) scraping the given targets every second, on a
/// loopback port of its own, with its data in a temporary directory. Stopped on drop.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    pub fn start(job: &str, targets: &[SocketAddr]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("headroom-prom-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let cfg = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), cfg).expect("config");
        let port = TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("prometheus is missing: run scripts/setup.sh (Debian's prometheus package)");
        Prometheus { child, addr, dir }
    }

    fn get(&self, path_and_query: &str) -> Option<String> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path_and_query} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(body(&text).to_owned())
    }

    /// An instant query's result vector (`data.result`), once the server answers.
    pub fn query(&self, q: &str) -> Option<Vec<serde_json::Value>> {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let text = self.get(&format!("/api/v1/query?query={enc}"))?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        (v["status"] == "success").then(|| v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Polls `q` until `accept` takes its result, or panics after `timeout` with the server's log.
    pub fn wait_for(
        &mut self,
        q: &str,
        timeout: Duration,
        accept: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            if let Some(r) = self.query(q) {
                if accept(&r) {
                    return r;
                }
                last = Some(r);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("prometheus: `{q}` never gave the expected result (last: {last:?}); log:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_name_their_metrics_and_grouping_labels() {
        let (m, l) = expr_metrics(
            "histogram_quantile(0.99, sum by (le, service) (rate(headroom_record_latency_seconds_bucket[5m])))",
        );
        assert_eq!(m.into_iter().collect::<Vec<_>>(), ["headroom_record_latency_seconds"]);
        assert_eq!(l.into_iter().collect::<Vec<_>>(), ["service"]);
        assert_eq!(owner("headroom_sink_rows_written_total"), Some("sink"));
        assert_eq!(owner("headroom_drift_alerts_total"), Some("drift-monitor"));
        assert_eq!(owner("headroom_records_in_total"), None);
    }

    #[test]
    fn exposition_families_fold_histogram_series() {
        let text = "# TYPE headroom_x_seconds histogram\n\
                    headroom_x_seconds_bucket{service=\"a\",model=\"m\",le=\"1\"} 0\n\
                    headroom_x_seconds_sum{service=\"a\",model=\"m\"} 0\n\
                    # TYPE headroom_y_total counter\nheadroom_y_total 3\n";
        let f = exposition_families(text);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f["headroom_x_seconds"].contains("model"));
        assert!(f["headroom_y_total"].is_empty());
    }

    /// Every dashboard parses and every one of its metrics belongs to a service.
    #[test]
    fn every_dashboard_query_reads_a_known_service_metric() {
        let qs = dashboard_queries();
        assert!(qs.len() >= 20, "{} queries", qs.len());
        for q in qs {
            let (m, _) = expr_metrics(&q.expr);
            assert!(!m.is_empty(), "{}: {}", q.place, q.expr);
        }
    }
}

/// One span as an OTLP receiver got it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service_name: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: BTreeMap<String, String>,
}

/// A minimal OTLP/HTTP receiver for tests: a fake of the OpenTelemetry collector (none can run
/// here), named as such. It accepts `POST /v1/traces` with protobuf bodies, decodes them with
/// the OTLP protocol's own message types (opentelemetry-proto) and keeps the spans.
pub struct FakeOtlpCollector {
    addr: SocketAddr,
    spans: std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>,
}

impl FakeOtlpCollector {
    pub fn start() -> FakeOtlpCollector {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = spans.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let sink = sink.clone();
                std::thread::spawn(move || serve_otlp(conn, &sink));
            }
        });
        FakeOtlpCollector { addr, spans }
    }

    /// The base URL to configure as `log.otlp_endpoint`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until `accept` takes the spans received so far (or `timeout`), and returns them.
    pub fn wait_for(&self, timeout: Duration, accept: impl Fn(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.spans.lock().expect("spans").clone();
            if accept(&now) || Instant::now() > deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One HTTP/1.1 request of a test server: the method, the path, and the body.
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// Reads the next request of a keep-alive connection (`buf` carries what was read past the
/// previous one); `None` when the client closed it. For the fakes of HTTP services in tests.
pub fn read_http_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<HttpRequest> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 65536];
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    let mut first = head.lines().next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("").to_owned();
    Some(HttpRequest { method, path, body })
}

/// Serves one HTTP/1.1 connection (keep-alive: several requests).
fn serve_otlp(mut conn: TcpStream, sink: &std::sync::Mutex<Vec<ReceivedSpan>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf: Vec<u8> = Vec::new();
    while let Some(HttpRequest { method, path, body }) = read_http_request(&mut conn, &mut buf) {
        let ok = method == "POST" && path == "/v1/traces";
        let status = match ok.then(|| ExportTraceServiceRequest::decode(body.as_slice())) {
            Some(Ok(req)) => {
                let mut got = sink.lock().expect("spans");
                for rs in req.resource_spans {
                    let service_name = rs
                        .resource
                        .iter()
                        .flat_map(|r| r.attributes.iter())
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            Any::StringValue(s) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for sp in ss.spans {
                            let attributes = sp
                                .attributes
                                .iter()
                                .map(|kv| {
                                    let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                        Some(Any::StringValue(s)) => s.clone(),
                                        Some(Any::IntValue(i)) => i.to_string(),
                                        Some(other) => format!("{other:?}"),
                                        None => String::new(),
                                    };
                                    (kv.key.clone(), v)
                                })
                                .collect();
                            got.push(ReceivedSpan {
                                service_name: service_name.clone(),
                                name: sp.name.clone(),
                                trace_id: hex(&sp.trace_id),
                                span_id: hex(&sp.span_id),
                                parent_span_id: hex(&sp.parent_span_id),
                                start_ns: sp.start_time_unix_nano,
                                end_ns: sp.end_time_unix_nano,
                                attributes,
                            });
                        }
                    }
                }
                "200 OK"
            }
            Some(Err(_)) => "400 Bad Request",
            None => "404 Not Found",
        };
        let resp = format!("HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}
