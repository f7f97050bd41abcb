//! The deployment files parse with the tools that render them (docker-compose from Debian,
//! `kubectl kustomize`), pass a Kubernetes schema validation (kubernetes-validate) and a
//! security scan (checkov), both from PyPI in the venv scripts/setup.sh makes, and hold what an
//! operator counts on: probes, limits, a ServiceAccount and PodDisruptionBudget per workload,
//! autoscalers on the consumer groups of topologies/headroom.toml, no credentials.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use headroom_runtime::topology::Topology;
use serde::Deserialize;
use serde_yaml::Value;

fn repo() -> PathBuf {
    headroom_testkit::repo_root()
}

/// The section.key paths of a service's defaults (services/<dir>/default.toml).
fn config_keys(dir: &str) -> BTreeSet<String> {
    fn walk(prefix: &str, t: &toml::Table, out: &mut BTreeSet<String>) {
        for (k, v) in t {
            let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            if let Some(sub) = v.as_table() {
                out.insert(key.clone());
                walk(&key, sub, out);
            } else {
                out.insert(key);
            }
        }
    }
    let mut text = std::fs::read_to_string(repo().join(format!("services/{dir}/default.toml")))
        .expect("default.toml");
    if dir == "recommender" {
        text += &std::fs::read_to_string(repo().join("crates/policy/default.toml")).expect("policy");
    }
    let mut out = BTreeSet::new();
    walk("", &toml::from_str(&text).expect("defaults parse"), &mut out);
    out
}

#[test]
fn docker_compose_file_is_valid_with_every_profile() {
    let out = Command::new("docker-compose")
        .current_dir(repo())
        .args(["-f", "docker-compose.yml", "--profile", "load", "--profile", "monitoring", "--profile", "tracking", "config"])
        .output()
        .expect("docker-compose is missing: run scripts/setup.sh");
    assert!(
        out.status.success(),
        "docker-compose config failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered: Value = serde_yaml::from_slice(&out.stdout).expect("rendered compose YAML");
    let services = rendered["services"].as_mapping().expect("services");
    let names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
    for service in [
        "kafka", "schema-registry", "postgres", "topology", "featurizer", "models-init", "scorer",
        "recommender", "drift-monitor", "retrainer", "sink", "loadgen", "prometheus", "grafana",
        "otel-collector", "jaeger", "mlflow",
    ] {
        assert!(names.contains(service), "service {service} missing from the rendered stack");
    }
    // Images: our own build, or pinned published upstream images.
    let upstream = [
        "apache/kafka:3.9.0",
        "confluentinc/cp-schema-registry:7.7.1",
        "postgres:15",
        "prom/prometheus:v2.53.2",
        "grafana/grafana:11.3.0",
        "otel/opentelemetry-collector-contrib:0.114.0",
        "jaegertracing/all-in-one:1.63.0",
        "ghcr.io/mlflow/mlflow:v3.17.2",
    ];
    // Each headroom service: its environment names keys its configuration has, its published
    // port is the one it listens on, it has a healthcheck and waits for the set-up job.
    let prefixes: BTreeMap<&str, (&str, &str)> = [
        ("featurizer", ("HEADROOM_FEATURIZER__", "featurizer")),
        ("scorer", ("HEADROOM_SCORER__", "scorer")),
        ("sink", ("HEADROOM_SINK__", "sink")),
        ("recommender", ("HEADROOM_RECOMMENDER__", "recommender")),
        ("drift-monitor", ("HEADROOM_DRIFT__", "drift-monitor")),
        ("retrainer", ("HEADROOM_RETRAIN__", "retrainer")),
    ]
    .into_iter()
    .collect();
    // Distroless images with no shell or HTTP client to run a check with; nothing waits on them.
    let no_healthcheck = ["otel-collector", "jaeger"];
    for (name, svc) in services {
        let name = name.as_str().expect("name");
        let one_shot = str_at(svc, &["restart"]) == "no";
        assert!(
            one_shot || no_healthcheck.contains(&name) || s(svc, &["healthcheck", "test"]).is_some(),
            "{name}: a long-running service without a healthcheck"
        );
        let image = str_at(svc, &["image"]);
        assert!(image == "headroom:latest" || upstream.contains(&image), "{name}: unexpected image {image}");
        for v in s(svc, &["volumes"]).and_then(Value::as_sequence).into_iter().flatten() {
            let src = v.get("source").and_then(Value::as_str).or_else(|| v.as_str().and_then(|x| x.split(':').next()));
            if let Some(src) = src.filter(|p| p.starts_with('/') || p.starts_with('.')) {
                assert!(Path::new(src).exists() || repo().join(src).exists(), "{name}: mounts {src}, which is not in the project");
            }
        }
        let Some((prefix, dir)) = prefixes.get(name) else { continue };
        let keys = config_keys(dir);
        let env = s(svc, &["environment"]).and_then(Value::as_mapping).expect("environment");
        for (k, v) in env {
            let k = k.as_str().expect("key");
            let Some(path) = k.strip_prefix(prefix) else {
                assert_eq!(k, "HEADROOM_HTTP_PORT", "{name}: unexpected variable {k}");
                continue;
            };
            let key = path.to_ascii_lowercase().replace("__", ".");
            assert!(keys.contains(&key), "{name}: {k} names `{key}`, which is not a key of services/{dir}/default.toml");
            let _ = v;
        }
        let listen = env
            .iter()
            .find(|(k, _)| k.as_str().is_some_and(|k| k.ends_with("__HTTP__LISTEN")))
            .and_then(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{name}: no HTTP__LISTEN"));
        let port = listen.rsplit(':').next().expect("port");
        let published = s(svc, &["ports"]).and_then(|p| p.get(0)).expect("a published port");
        let target = published.get("target").map(|t| match t {
            Value::Number(n) => n.to_string(),
            other => other.as_str().unwrap_or("").to_owned(),
        });
        assert_eq!(target.as_deref(), Some(port), "{name}: publishes {published:?}, listens on {listen}");
        assert_eq!(env.get("HEADROOM_HTTP_PORT").and_then(Value::as_str), Some(port), "{name}: healthcheck port");
        assert!(s(svc, &["healthcheck", "test"]).is_some(), "{name}: no healthcheck");
        assert!(s(svc, &["depends_on", "topology"]).is_some(), "{name}: starts before the set-up job");
    }
    // The Prometheus of the stack scrapes every service on the port it listens on.
    let prom = std::fs::read_to_string(repo().join("deploy/prometheus/prometheus.yml")).expect("prometheus.yml");
    for name in prefixes.keys() {
        let svc = &services[&Value::from(*name)];
        let listen = s(svc, &["environment"])
            .and_then(Value::as_mapping)
            .and_then(|e| e.iter().find(|(k, _)| k.as_str().is_some_and(|k| k.ends_with("__HTTP__LISTEN"))))
            .and_then(|(_, v)| v.as_str())
            .expect("listen");
        let target = format!("{name}:{}", listen.rsplit(':').next().expect("port"));
        assert!(prom.contains(&target), "deploy/prometheus/prometheus.yml does not scrape {target}");
    }
    let check = Command::new("promtool")
        .args(["check", "config", "--syntax-only"])
        .arg(repo().join("deploy/prometheus/prometheus.yml"))
        .output()
        .expect("promtool is missing: run scripts/setup.sh");
    assert!(check.status.success(), "promtool check config:\n{}", String::from_utf8_lossy(&check.stdout));
}

/// The venv with checkov and kubernetes-validate (scripts/setup.sh; test.sh exports the path).
fn ops_tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("HEADROOM_OPS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/headroom/ops-venv")
        });
    let tool = venv.join("bin").join(name);
    assert!(
        tool.exists(),
        "{} is missing: run scripts/setup.sh (or set HEADROOM_OPS_VENV)",
        tool.display()
    );
    tool
}

fn overlays() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo().join("k8s/overlays"))
        .expect("k8s/overlays")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("kustomization.yaml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    assert!(v.len() >= 3, "overlays: {v:?}");
    v
}

/// `kubectl kustomize k8s/overlays/<name>`: the manifests as text.
fn render(overlay: &str) -> String {
    let out = Command::new("kubectl")
        .current_dir(repo())
        .args(["kustomize", &format!("k8s/overlays/{overlay}")])
        .output()
        .expect("kubectl is missing (it comes with the machine image; see scripts/setup.sh)");
    assert!(
        out.status.success(),
        "kubectl kustomize k8s/overlays/{overlay}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}


fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    s(v, path).and_then(Value::as_str).unwrap_or("")
}

fn kind<'a>(all: &'a [Value], k: &str) -> Vec<&'a Value> {
    all.iter().filter(|d| str_at(d, &["kind"]) == k).collect()
}

fn name(v: &Value) -> &str {
    str_at(v, &["metadata", "name"])
}

fn write_tmp(overlay: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("headroom-k8s-{}-{overlay}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let f = dir.join(format!("{overlay}.yaml"));
    std::fs::write(&f, text).expect("write");
    f
}

fn validate(file: &Path) -> std::process::Output {
    Command::new(ops_tool("kubernetes-validate"))
        .args(["--strict", "--quiet", "-k", "1.31.0"])
        .arg(file)
        .output()
        .expect("kubernetes-validate runs")
}

#[test]
fn every_overlay_renders_and_passes_the_kubernetes_schemas() {
    // The validator bites: a Deployment with a string for replicas and an unknown field fails.
    let bad = write_tmp(
        "broken",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replicas: two\n  \
         selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      \
         containers: [{name: c, image: i, bogus: 1}]\n",
    );
    assert!(!validate(&bad).status.success(), "kubernetes-validate accepted a broken Deployment");

    for overlay in overlays() {
        let text = render(&overlay);
        let out = validate(&write_tmp(&overlay, &text));
        let report = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{overlay}: schema validation failed:\n{report}");
        // The only resources without a built-in schema are the three CRDs, checked by hand
        // below.
        for line in report.lines().filter(|l| l.contains("Couldn't find schema")) {
            assert!(
                line.contains("kind ScaledObject")
                    || line.contains("kind ServiceMonitor")
                    || line.contains("kind PrometheusRule"),
                "{overlay}: unvalidated resource: {line}"
            );
        }
        assert!(!report.contains("ERROR"), "{overlay}:\n{report}");
    }
}

/// Findings the manifests skip, each with its reason in a `checkov.io/skip` annotation.
const ACCEPTED_FINDINGS: &[&str] = &["CKV_K8S_43"];

#[test]
fn rendered_manifests_pass_the_security_scan() {
    for overlay in overlays() {
        let file = write_tmp(&overlay, &render(&overlay));
        let out = Command::new(ops_tool("checkov"))
            .args(["--framework", "kubernetes", "--output", "json", "-f"])
            .arg(&file)
            .output()
            .expect("checkov runs");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{overlay}: checkov output: {e}\n{}", String::from_utf8_lossy(&out.stderr))
        });
        let results = &report["results"];
        let failed: Vec<String> = results["failed_checks"]
            .as_array()
            .expect("failed_checks")
            .iter()
            .map(|c| format!("{} {} ({})", c["check_id"], c["resource"], c["check_name"]))
            .collect();
        assert!(failed.is_empty(), "{overlay}: checkov findings:\n{}", failed.join("\n"));
        let passed = results["passed_checks"].as_array().map_or(0, Vec::len);
        assert!(passed > 500, "{overlay}: only {passed} checks ran");
        for c in results["skipped_checks"].as_array().into_iter().flatten() {
            let id = c["check_id"].as_str().unwrap_or("");
            assert!(
                ACCEPTED_FINDINGS.contains(&id),
                "{overlay}: {id} skipped on {} without being an accepted finding",
                c["resource"]
            );
        }
    }
}

#[test]
fn every_workload_has_probes_limits_its_own_account_and_a_disruption_budget() {
    for overlay in overlays() {
        let all = docs(&render(&overlay));
        let accounts: BTreeMap<&str, &Value> =
            kind(&all, "ServiceAccount").into_iter().map(|a| (name(a), a)).collect();
        let config_maps: BTreeMap<&str, &Value> =
            kind(&all, "ConfigMap").into_iter().map(|c| (name(c), c)).collect();
        assert!(kind(&all, "Secret").is_empty(), "{overlay}: a Secret in the manifests");
        let pdbs: Vec<&str> = kind(&all, "PodDisruptionBudget")
            .iter()
            .map(|p| str_at(p, &["spec", "selector", "matchLabels", "app.kubernetes.io/name"]))
            .collect();
        let services: Vec<&str> = kind(&all, "Service")
            .iter()
            .map(|p| str_at(p, &["spec", "selector", "app.kubernetes.io/name"]))
            .collect();
        let deployments = kind(&all, "Deployment");
        assert_eq!(deployments.len(), 6, "{overlay}: one Deployment per service");
        let mut pods: Vec<(&str, &Value)> =
            deployments.iter().map(|d| (name(d), *d)).collect();
        pods.extend(kind(&all, "Job").iter().map(|j| (name(j), *j)));
        for (n, w) in pods {
            let pod = s(w, &["spec", "template", "spec"]).expect("pod spec");
            let sa = str_at(pod, &["serviceAccountName"]);
            assert_eq!(sa, n, "{overlay}/{n}: its own ServiceAccount");
            let account = accounts.get(sa).unwrap_or_else(|| panic!("{overlay}: no account {sa}"));
            assert_eq!(
                s(account, &["automountServiceAccountToken"]).and_then(Value::as_bool),
                Some(false),
                "{overlay}/{n}: no API token"
            );
            assert_eq!(
                s(pod, &["securityContext", "runAsNonRoot"]).and_then(Value::as_bool),
                Some(true),
                "{overlay}/{n}"
            );
            let is_job = str_at(w, &["kind"]) == "Job";
            for c in s(pod, &["containers"]).and_then(Value::as_sequence).expect("containers") {
                for r in ["requests", "limits"] {
                    for k in ["cpu", "memory"] {
                        assert!(
                            s(c, &["resources", r, k]).is_some(),
                            "{overlay}/{n}: resources.{r}.{k}"
                        );
                    }
                }
                assert_eq!(
                    s(c, &["securityContext", "readOnlyRootFilesystem"]).and_then(Value::as_bool),
                    Some(true),
                    "{overlay}/{n}"
                );
                for env in s(c, &["env"]).and_then(Value::as_sequence).into_iter().flatten() {
                    let key = str_at(env, &["name"]).to_ascii_uppercase();
                    let literal = s(env, &["value"]).is_some();
                    assert!(
                        !(literal && ["PASSWORD", "SECRET", "TOKEN"].iter().any(|w| key.ends_with(w))),
                        "{overlay}/{n}: credential {key} inline"
                    );
                }
                if is_job {
                    continue;
                }
                for p in ["readinessProbe", "livenessProbe"] {
                    assert!(
                        str_at(c, &[p, "httpGet", "path"]).starts_with("/health/"),
                        "{overlay}/{n}: {p}"
                    );
                }
                // The port the service listens on (its ConfigMap) is the port the pod declares.
                let cm_name = s(pod, &["volumes"])
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                    .find_map(|v| s(v, &["configMap", "name"]).and_then(Value::as_str))
                    .unwrap_or_else(|| panic!("{overlay}/{n}: no ConfigMap volume"));
                let cm = config_maps.get(cm_name).unwrap_or_else(|| panic!("{overlay}: {cm_name}"));
                let data = s(cm, &["data"]).and_then(Value::as_mapping).expect("data");
                let toml_text = data.values().next().and_then(Value::as_str).expect("toml");
                let cfg: toml::Table = toml::from_str(toml_text).expect("config TOML");
                let listen = cfg["http"]["listen"].as_str().expect("http.listen");
                let port = s(c, &["ports"]).and_then(|p| p.get(0)).and_then(|p| p.get("containerPort"));
                assert_eq!(
                    listen.rsplit(':').next().and_then(|p| p.parse::<u64>().ok()),
                    port.and_then(Value::as_u64),
                    "{overlay}/{n}: http.listen {listen} vs containerPort"
                );
            }
            if !is_job {
                assert!(pdbs.contains(&n), "{overlay}/{n}: no PodDisruptionBudget");
                assert!(services.contains(&n), "{overlay}/{n}: no Service");
            }
        }
        // Every pod is under the default-deny policy, and the metrics port is let in.
        let policies = kind(&all, "NetworkPolicy");
        assert!(
            policies.iter().any(|p| name(p) == "headroom-default-deny"
                && s(p, &["spec", "podSelector"]).and_then(Value::as_mapping).is_some_and(|m| m.is_empty())),
            "{overlay}: default-deny policy"
        );
        assert!(policies.iter().any(|p| s(p, &["spec", "ingress"]).is_some()), "{overlay}: ingress");
    }
}

/// Which service each consumer group belongs to, and the partitions of each topic it reads,
/// from the topology.
fn groups() -> BTreeMap<String, (String, BTreeMap<String, i32>)> {
    let t = Topology::builtin();
    let mut g: BTreeMap<String, (String, BTreeMap<String, i32>)> = BTreeMap::new();
    for topic in &t.topics {
        for c in topic.consumers.iter().filter(|c| !c.group.is_empty()) {
            let e = g.entry(c.group.clone()).or_insert_with(|| (c.service.clone(), BTreeMap::new()));
            e.1.insert(topic.name.clone(), topic.partitions(&t.defaults));
        }
    }
    g
}

#[test]
fn autoscalers_follow_the_consumer_groups_of_the_topology() {
    let groups = groups();
    let mut scaled_somewhere = false;
    for overlay in overlays() {
        let all = docs(&render(&overlay));
        let deployments: BTreeMap<&str, &Value> =
            kind(&all, "Deployment").into_iter().map(|d| (name(d), d)).collect();
        let scaled = kind(&all, "ScaledObject");
        let hpas = kind(&all, "HorizontalPodAutoscaler");
        assert!(
            scaled.is_empty() != hpas.is_empty(),
            "{overlay}: one kind of autoscaler ({} ScaledObjects, {} HPAs)",
            scaled.len(),
            hpas.len()
        );
        for so in &scaled {
            scaled_somewhere = true;
            let target = str_at(so, &["spec", "scaleTargetRef", "name"]);
            let d = deployments.get(target).unwrap_or_else(|| panic!("{overlay}: {target}"));
            assert!(s(d, &["spec", "replicas"]).is_none(), "{overlay}/{target}: fixed replicas");
            let service = target.trim_start_matches("headroom-");
            let max = s(so, &["spec", "maxReplicaCount"]).and_then(Value::as_i64).expect("max");
            let triggers = s(so, &["spec", "triggers"]).and_then(Value::as_sequence).expect("triggers");
            for t in triggers {
                assert_eq!(str_at(t, &["type"]), "kafka");
                let group = str_at(t, &["metadata", "consumerGroup"]);
                let (owner, topics) = groups
                    .get(group)
                    .unwrap_or_else(|| panic!("{overlay}/{target}: group {group} is not in the topology"));
                assert_eq!(owner, service, "{overlay}/{target}: group {group} belongs to {owner}");
                let topic = str_at(t, &["metadata", "topic"]);
                // More consumers than partitions would sit idle.
                let partitions = if topic.is_empty() {
                    topics.values().copied().max().unwrap_or(0)
                } else {
                    *topics
                        .get(topic)
                        .unwrap_or_else(|| panic!("{overlay}/{target}: {group} does not read {topic}"))
                };
                assert!(max <= partitions as i64, "{overlay}/{target}: {max} > {partitions} partitions");
                assert!(!str_at(t, &["metadata", "bootstrapServers"]).is_empty());
            }
        }
        for h in &hpas {
            let target = str_at(h, &["spec", "scaleTargetRef", "name"]);
            let d = deployments.get(target).unwrap_or_else(|| panic!("{overlay}: {target}"));
            assert!(s(d, &["spec", "replicas"]).is_none(), "{overlay}/{target}: fixed replicas");
        }
        // Every consumer service but the retrainer (one writer of the models) is autoscaled.
        let targets: BTreeSet<&str> = scaled
            .iter()
            .chain(hpas.iter())
            .map(|a| str_at(a, &["spec", "scaleTargetRef", "name"]))
            .collect();
        for service in ["featurizer", "scorer", "recommender", "drift-monitor", "sink"] {
            assert!(targets.contains(format!("headroom-{service}").as_str()), "{overlay}: {service}");
        }
        assert!(!targets.contains("headroom-retrainer"), "{overlay}: the retrainer is one replica");
    }
    assert!(scaled_somewhere, "no overlay scales on consumer lag");
}

#[test]
fn the_service_monitor_scrapes_every_service_and_the_gpu_overlay_uses_gpus() {
    let all = docs(&render("prod"));
    let monitors = kind(&all, "ServiceMonitor");
    assert_eq!(monitors.len(), 1);
    let want = str_at(monitors[0], &["spec", "selector", "matchLabels", "app.kubernetes.io/part-of"]);
    let services = kind(&all, "Service");
    assert_eq!(services.len(), 6);
    for svc in services {
        assert_eq!(str_at(svc, &["metadata", "labels", "app.kubernetes.io/part-of"]), want);
        let port = s(svc, &["spec", "ports"]).and_then(|p| p.get(0)).expect("port");
        assert_eq!(str_at(port, &["name"]), "http", "{}", name(svc));
    }

    let gpu = docs(&render("gpu"));
    for d in kind(&gpu, "Deployment") {
        let pod = s(d, &["spec", "template", "spec"]).expect("pod");
        let c = s(pod, &["containers"]).and_then(|c| c.get(0)).expect("container");
        assert!(str_at(c, &["image"]).ends_with("-cuda"), "{}: the CUDA image", name(d));
        let gpus = s(c, &["resources", "limits", "nvidia.com/gpu"]);
        let device_key = match name(d) {
            "headroom-retrainer" => Some("HEADROOM_RETRAIN__TRAINING__DEVICE"),
            "headroom-scorer" => Some("HEADROOM_SCORER__MODELS__DEVICE"),
            _ => None,
        };
        if let Some(key) = device_key {
            assert_eq!(gpus.and_then(Value::as_u64), Some(1), "{}", name(d));
            assert!(s(pod, &["tolerations"]).is_some());
            assert!(s(pod, &["nodeSelector"]).is_some());
            let env = s(c, &["env"]).and_then(Value::as_sequence).expect("env");
            assert!(
                env.iter().any(|e| str_at(e, &["name"]) == key && str_at(e, &["value"]) == "cuda"),
                "{}: {key}=cuda",
                name(d)
            );
        } else {
            assert!(gpus.is_none(), "{}: holds a GPU it does not use", name(d));
        }
    }
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo().join("deploy/prometheus"))
        .output()
        .expect("promtool is missing: run scripts/setup.sh");
    let report = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {}:\n{report}", args.join(" "));
    report
}

/// The alerting rules parse, pass their unit tests (each alert fires on its case and not on a
/// near miss), are loaded by the compose stack's Prometheus, and the Prometheus Operator's copy
/// in the prod overlay holds exactly the same groups. (That every metric they read is exported
/// is checked on each service's live exposition: headroom_testkit::ops::check_exposition.)
#[test]
fn alerting_rules_pass_their_unit_tests_and_the_operator_copy_matches() {
    assert!(promtool(&["check", "rules", "alerts.yml"]).contains("SUCCESS"));
    assert!(promtool(&["test", "rules", "alerts_test.yml"]).contains("SUCCESS"));
    // The unit tests bite: with a threshold moved, the dead-letter case fails.
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).expect("alerts.yml");
    let dir = std::env::temp_dir().join(format!("headroom-alerts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    std::fs::write(dir.join("alerts.yml"), rules.replace("> 0.05", "> 0.5")).expect("write");
    std::fs::copy(repo().join("deploy/prometheus/alerts_test.yml"), dir.join("alerts_test.yml")).expect("copy");
    let moved = Command::new("promtool").args(["test", "rules", "alerts_test.yml"]).current_dir(&dir).output().expect("promtool");
    assert!(!moved.status.success(), "the unit tests passed with a moved threshold");
    let _ = std::fs::remove_dir_all(&dir);

    let prom: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("deploy/prometheus/prometheus.yml")).expect("prometheus.yml"),
    )
    .expect("prometheus.yml parses");
    let files: Vec<&str> = s(&prom, &["rule_files"]).and_then(Value::as_sequence).into_iter().flatten().filter_map(Value::as_str).collect();
    assert_eq!(files, ["alerts.yml"], "the compose Prometheus loads the rules");

    let groups = |v: &Value| -> Value { v.get("groups").cloned().expect("groups") };
    let ours: Value = serde_yaml::from_str(&rules).expect("alerts.yml parses");
    let all = docs(&render("prod"));
    let operator = kind(&all, "PrometheusRule");
    assert_eq!(operator.len(), 1, "the prod overlay has one PrometheusRule");
    let spec = s(operator[0], &["spec"]).expect("spec");
    assert_eq!(groups(spec), groups(&ours), "k8s/components/monitoring/prometheusrule.yaml differs from deploy/prometheus/alerts.yml");
    let names: Vec<&str> = s(&ours, &["groups"])
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .flat_map(|g| g.get("rules").and_then(Value::as_sequence).into_iter().flatten())
        .filter_map(|r| r.get("alert").and_then(Value::as_str))
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    let tests = std::fs::read_to_string(repo().join("deploy/prometheus/alerts_test.yml")).expect("alerts_test.yml");
    for n in names {
        assert!(tests.contains(&format!("alertname: {n}")), "{n} has no unit test");
    }
}

/// The image's Dockerfile: hadolint (its inline ignores carry their reasons) and checkov's
/// Dockerfile checks (non-root user, healthcheck, no `latest` base, ...), with no finding.
#[test]
fn the_dockerfile_passes_hadolint_and_the_security_scan() {
    let out = Command::new(ops_tool("hadolint"))
        .arg(repo().join("Dockerfile"))
        .output()
        .expect("hadolint runs");
    assert!(
        out.status.success(),
        "hadolint Dockerfile:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(ops_tool("checkov"))
        .args(["--framework", "dockerfile", "--output", "json", "-f"])
        .arg(repo().join("Dockerfile"))
        .output()
        .expect("checkov runs");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("checkov JSON");
    let failed: Vec<String> = report["results"]["failed_checks"]
        .as_array()
        .expect("failed_checks")
        .iter()
        .map(|c| format!("{} ({})", c["check_id"], c["check_name"]))
        .collect();
    assert!(failed.is_empty(), "checkov findings on the Dockerfile:\n{}", failed.join("\n"));
    assert!(report["summary"]["passed"].as_u64().unwrap_or(0) > 50, "{}", report["summary"]);
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    assert!(text.lines().any(|l| l.trim() == "USER 10001"), "runs as the unprivileged user");
}
