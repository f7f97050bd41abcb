//! A Python client (confluent-kafka, installed by scripts/setup.sh into the project's venv)
//! publishes JSON telemetry and reads feature vectors and a dead letter back.

use std::process::Command;
use std::time::Duration;

use headroom_featurizer::Config;
use headroom_runtime::Shutdown;
use headroom_testkit::{brokers, create_topics, repo_root, unique};

fn python() -> String {
    std::env::var("HEADROOM_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/headroom/venv/bin/python")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_kafka_client_publishes_json_and_reads_features() {
    let py = python();
    assert!(
        std::path::Path::new(&py).exists(),
        "{py} is missing: run scripts/setup.sh (it installs confluent-kafka into the project's venv)"
    );
    let brokers = brokers();
    let prefix = format!("{}.", unique("interop"));
    create_topics(&brokers, &prefix).await;
    let mut c: Config = headroom_runtime::load_config(
        include_str!("../default.toml"),
        None,
        "HEADROOM_FEATURIZER_INTEROP_UNUSED__",
    )
    .expect("defaults");
    c.kafka.brokers = brokers.clone();
    c.kafka.group_id = unique("interop");
    c.http.listen = "127.0.0.1:0".into();
    c.runtime.commit_interval = Duration::from_millis(200);
    c.topics.input = format!("{prefix}telemetry.raw");
    c.topics.output = format!("{prefix}features");
    c.topics.dlq = format!("{prefix}telemetry.dlq");
    let (input, output, dlq) = (
        c.topics.input.clone(),
        c.topics.output.clone(),
        c.topics.dlq.clone(),
    );
    let svc = headroom_featurizer::start(c, Shutdown::new())
        .await
        .expect("start");
    let script = repo_root().join("tests/interop/python_client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(script)
            .args([&brokers, &input, &output, &dlq])
            .output()
            .expect("run python")
    })
    .await
    .expect("join");
    svc.stop().await.expect("stop");
    assert!(
        out.status.success(),
        "python client failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("features=3"));
}
