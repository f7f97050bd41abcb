//! The trace replayer as a user runs it (`loadgen replay`), against the real broker: a generic
//! CSV trace is published whole, in event-time order, and `--duration` stops it early.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use headroom_schemas::TelemetryDecoder;
use headroom_testkit::{brokers, consume, create_topics, unique};
use rdkafka::Message;

const ENTITIES: usize = 4;
const ROWS_PER_ENTITY: usize = 300;

/// `ts,vm,cpu,mem`: 4 entities × 300 five-minute samples, in event-time order.
fn write_trace(dir: &Path) -> PathBuf {
    let mut csv = String::from("ts,vm,cpu,mem\n");
    for i in 0..ROWS_PER_ENTITY {
        for e in 0..ENTITIES {
            let ts = 1_700_000_000 + i as i64 * 300;
            csv += &format!("{ts},vm-{e},{:.3},0.5\n", (i % 100) as f64 / 100.0);
        }
    }
    let path = dir.join("trace.csv");
    std::fs::write(&path, csv).expect("write trace");
    path
}

fn replay(brokers: &str, topic: &str, trace: &Path, extra: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--brokers", brokers, "replay", "--topic", topic, "--trace-format", "generic"])
        .args(["--ts-column", "ts", "--entity-column", "vm", "--map", "cpu_util=cpu,mem_util=mem"])
        .arg("--trace")
        .arg(trace)
        .args(extra)
        .output()
        .expect("run loadgen");
    assert!(
        out.status.success(),
        "loadgen replay failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `records=` of the `RESULT loadgen-replay` line.
fn published(out: &Output) -> usize {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find(|l| l.starts_with("RESULT loadgen-replay"))
        .and_then(|l| l.split_whitespace().find_map(|kv| kv.strip_prefix("records=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no RESULT loadgen-replay records= in:\n{stdout}"))
}

async fn fresh_topic(brokers: &str) -> String {
    let prefix = format!("{}.", unique("replay"));
    create_topics(brokers, &prefix).await;
    format!("{prefix}telemetry.raw")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trace_is_replayed_whole_in_event_time_order_and_duration_stops_it_early() {
    let brokers = brokers();
    let dir = std::env::temp_dir().join(unique("replay"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let trace = write_trace(&dir);
    let total = ENTITIES * ROWS_PER_ENTITY;
    let decoder = TelemetryDecoder::new();

    // The whole trace, as fast as it goes.
    let topic = fresh_topic(&brokers).await;
    assert_eq!(published(&replay(&brokers, &topic, &trace, &[])), total);
    let got = consume(&brokers, &topic, total, Duration::from_secs(60), Duration::from_secs(2));
    assert_eq!(got.len(), total, "every row published once");
    let mut newest: HashMap<String, i64> = HashMap::new();
    for m in &got {
        let t = decoder.decode(m.payload().expect("payload")).expect("Avro telemetry");
        assert_eq!(m.key(), Some(t.entity_id.as_bytes()), "keyed by entity");
        let before = newest.insert(t.entity_id.clone(), t.ts_ms).unwrap_or(i64::MIN);
        assert!(t.ts_ms > before, "{}: {} after {before}, not in event-time order", t.entity_id, t.ts_ms);
    }
    assert_eq!(newest.len(), ENTITIES);

    // 200 records/s for at most 2 s: about 400 of the 1,200 rows.
    let topic = fresh_topic(&brokers).await;
    let n = published(&replay(&brokers, &topic, &trace, &["--rate", "200", "--duration", "2s"]));
    assert!(n > 0 && n < total / 2, "--duration 2s at 200/s published {n} of {total}");
    let got = consume(&brokers, &topic, n, Duration::from_secs(60), Duration::from_secs(2));
    assert_eq!(got.len(), n, "the RESULT line counts what the topic holds");
    let _ = std::fs::remove_dir_all(&dir);
}
