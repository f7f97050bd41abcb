//! The synthetic fleet generator as the main job runs it (`loadgen generate`), against the real
//! broker: a run on a topic that already holds events resumes the fleet's clock after them.

use std::process::{Command, Output};
use std::time::Duration;

use headroom_schemas::TelemetryDecoder;
use headroom_testkit::{brokers, consume, create_topics, unique};
use rdkafka::Message;

const ENTITIES: usize = 5;
/// 1,000 records/s for 1 s: 200 rounds of 5 entities.
const RECORDS: usize = 1000;

fn generate(brokers: &str, topic: &str) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--brokers", brokers, "generate", "--topic", topic])
        .args(["--entities", &ENTITIES.to_string(), "--rate", "1000", "--duration", "1s"])
        .output()
        .expect("run loadgen");
    assert!(
        out.status.success(),
        "loadgen generate failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every event time on `topic`, in the order read.
fn event_times(brokers: &str, topic: &str, n: usize) -> Vec<i64> {
    let decoder = TelemetryDecoder::new();
    let got = consume(brokers, topic, n, Duration::from_secs(60), Duration::from_secs(2));
    assert_eq!(got.len(), n, "every generated record on {topic}");
    got.iter()
        .map(|m| decoder.decode(m.payload().expect("payload")).expect("Avro telemetry").ts_ms)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_on_the_same_topic_resumes_the_fleets_clock_after_the_first() {
    let brokers = brokers();
    let prefix = format!("{}.", unique("generate"));
    create_topics(&brokers, &prefix).await;
    let topic = format!("{prefix}telemetry.raw");

    // A first run on an empty topic is backdated so that its last events are due about now.
    let started_ms = headroom_runtime::observe::now_ms();
    let first = generate(&brokers, &topic);
    assert!(
        !String::from_utf8_lossy(&first.stderr).contains("resumes"),
        "nothing to resume on an empty topic:\n{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let first_times = event_times(&brokers, &topic, RECORDS);
    let (first_min, first_max) = (
        *first_times.iter().min().expect("records"),
        *first_times.iter().max().expect("records"),
    );
    assert!(first_max <= started_ms + 60_000, "the first run ends at about now: {first_max} vs {started_ms}");
    assert!(
        first_max - first_min >= 150 * 300_000,
        "compressed event time: 200 rounds of 5 minutes, got {first_min}..{first_max}"
    );

    // A second run starts after the first one's newest event, not at the same backdated start
    // (which would make every event too late for its entity's restored state).
    let second = generate(&brokers, &topic);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("event time resumes after it"), "{stderr}");
    let all = event_times(&brokers, &topic, 2 * RECORDS);
    let second_times: Vec<i64> = all.iter().copied().filter(|t| *t > first_max).collect();
    assert_eq!(
        second_times.len(),
        RECORDS,
        "every event of the second run is newer than the first run's newest ({first_max})"
    );
    assert_eq!(
        second_times.iter().min().copied(),
        Some(first_max + 300_000),
        "the clock resumes one sampling interval after the newest event"
    );
}
