//! Integration-test helpers. Tests that need the broker call [`brokers`]: it uses
//! `HEADROOM_TEST_BROKERS` when set, and otherwise starts the local broker with
//! `scripts/stack.sh broker-up` (installing it if needed). It never skips: if the broker
//! cannot be started, the test fails with the script's output.

pub use rdkafka;

pub mod mlflow;
pub mod ops;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use headroom_runtime::topology::{self, Topology};
use headroom_runtime::KafkaConfig;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};

/// The checkout the tests run from. The manifest directory is read at run time first: with a
/// cargo target directory shared between checkouts (CI's clean clone reuses the one outside the
/// clone), a test binary built in another checkout would otherwise read that one's files.
/// The manifest directory is that of the test's own package (at any depth), so the root is its
/// nearest ancestor holding the workspace's `Cargo.lock`.
pub fn repo_root() -> PathBuf {
    let start = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()));
    start
        .ancestors()
        .find(|d| d.join("Cargo.lock").is_file())
        .unwrap_or_else(|| panic!("no Cargo.lock above {}", start.display()))
        .canonicalize()
        .expect("repo root")
}

/// The address of a running broker, started through the project's scripts when needed.
pub fn brokers() -> String {
    static BROKERS: OnceLock<String> = OnceLock::new();
    BROKERS
        .get_or_init(|| {
            if let Ok(b) = std::env::var("HEADROOM_TEST_BROKERS") {
                if !b.is_empty() {
                    return b;
                }
            }
            let script = repo_root().join("scripts/stack.sh");
            let out = Command::new("bash")
                .arg(&script)
                .arg("broker-up")
                .output()
                .expect("run scripts/stack.sh");
            assert!(
                out.status.success(),
                "scripts/stack.sh broker-up failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let env = Command::new("bash")
                .arg(&script)
                .arg("env")
                .output()
                .expect("stack env");
            String::from_utf8_lossy(&env.stdout)
                .lines()
                .flat_map(|l| l.trim_start_matches("export ").split_whitespace())
                .find_map(|t| t.strip_prefix("HEADROOM_BROKERS=").map(str::to_owned))
                .expect("stack.sh env prints HEADROOM_BROKERS")
        })
        .clone()
}

/// A name unique to this test run, safe for topics and groups.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

pub fn kafka_config(brokers: &str, group: &str) -> KafkaConfig {
    KafkaConfig {
        instance_id: String::new(),
        brokers: brokers.to_owned(),
        group_id: group.to_owned(),
        properties: Default::default(),
    }
}

/// Creates every topic of the built-in topology under `prefix`.
pub async fn create_topics(brokers: &str, prefix: &str) {
    let report = topology::apply(
        &Topology::builtin(),
        &kafka_config(brokers, "unused"),
        prefix,
        Duration::from_secs(30),
    )
    .await
    .expect("apply topology");
    assert!(
        report.existing.is_empty(),
        "fresh prefix expected, found {:?}",
        report.existing
    );
}

/// One record to produce.
#[derive(Debug, Clone, Default)]
pub struct Rec {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// Produces `records` in order and waits for every acknowledgement.
pub fn produce(brokers: &str, topic: &str, records: &[Rec]) {
    produce_with(brokers, topic, records, &[("linger.ms", "5")]);
}

/// Produces `records` with one record per record batch.
///
/// Tests that restart a consumer mid-stream use it: tansu 0.6 answers a fetch at an offset
/// inside a record batch with the batches that *start* at or after it (a fetch at 150 of a
/// batch holding 0..199 returns 200 first), so a consumer resuming mid-batch silently skips
/// the rest of that batch. Kafka and Redpanda return the whole batch and the client skips the
/// records before the offset. With one record per batch every resume point is a batch start.
pub fn produce_unbatched(brokers: &str, topic: &str, records: &[Rec]) {
    produce_with(
        brokers,
        topic,
        records,
        &[("linger.ms", "0"), ("batch.num.messages", "1")],
    );
}

fn produce_with(brokers: &str, topic: &str, records: &[Rec], props: &[(&str, &str)]) {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true");
    for (k, v) in props {
        cfg.set(*k, *v);
    }
    let p: ThreadedProducer<DefaultProducerContext> = cfg.create().expect("producer");
    for r in records {
        let mut rec = BaseRecord::to(topic).payload(r.payload.as_slice());
        if let Some(k) = &r.key {
            rec = rec.key(k.as_slice());
        }
        if !r.headers.is_empty() {
            let mut h = OwnedHeaders::new();
            for (k, v) in &r.headers {
                h = h.insert(Header {
                    key: k,
                    value: Some(v.as_str()),
                });
            }
            rec = rec.headers(h);
        }
        let mut rec = rec;
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    // A bound for a slow or busy broker (tansu slows down as a long suite's topics pile up),
    // not a speed assertion.
    p.flush(Duration::from_secs(120)).expect("flush");
}

/// A consumer of `group` with auto-commit off, for tests that commit or read offsets by hand.
pub fn group_client(brokers: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

/// Reads `topic` from the beginning of every partition until `expected` records arrived or
/// `timeout` passed, then keeps reading for `settle` to catch extras.
pub fn consume(
    brokers: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
    settle: Duration,
) -> Vec<OwnedMessage> {
    let c = group_client(brokers, &unique("reader"));
    let meta = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for t in meta.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("tpl");
        }
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut settle_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now > deadline || settle_until.is_some_and(|s| now > s) {
            break;
        }
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push(m.detach());
        }
        if out.len() >= expected && settle_until.is_none() {
            settle_until = Some(Instant::now() + settle);
        }
    }
    out
}

pub fn header<'a>(m: &'a OwnedMessage, key: &str) -> Option<&'a str> {
    use rdkafka::message::Headers;
    let h = m.headers()?;
    h.iter()
        .find(|x| x.key == key)
        .and_then(|x| x.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f()
}

/// The URL of a running PostgreSQL with the project's role and database, started through the
/// project's scripts when needed (`HEADROOM_TEST_PG_URL` when set). Never skips.
pub fn pg_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(u) = std::env::var("HEADROOM_TEST_PG_URL") {
            if !u.is_empty() {
                return u;
            }
        }
        let script = repo_root().join("scripts/stack.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("pg-up")
            .output()
            .expect("run scripts/stack.sh");
        assert!(
            out.status.success(),
            "scripts/stack.sh pg-up failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = Command::new("bash")
            .arg(&script)
            .arg("env")
            .output()
            .expect("stack env");
        String::from_utf8_lossy(&env.stdout)
            .lines()
            .flat_map(|l| l.trim_start_matches("export ").split_whitespace())
            .find_map(|t| t.strip_prefix("HEADROOM_PG_URL=").map(str::to_owned))
            .expect("stack.sh env prints HEADROOM_PG_URL")
    })
    .clone()
}

/// `url` with its sessions' `search_path` set to `schema`: a test creates its own schema and
/// applies the migrations there, so tests never see each other's tables.
pub fn pg_url_in_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

/// A new empty schema of the test's own (named from `prefix`) on [`pg_url`]'s database, and
/// the URL whose sessions use it ([`pg_url_in_schema`]). The test applies the migrations.
pub async fn pg_schema(prefix: &str) -> String {
    use sqlx::Connection;
    let base = pg_url();
    let schema = unique(prefix).replace('-', "_");
    let mut c = sqlx::PgConnection::connect(&base).await.expect("connect to the test PostgreSQL");
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut c).await.expect("create the test's schema");
    let _ = c.close().await;
    pg_url_in_schema(&base, &schema)
}

/// A PostgreSQL server of the test's own (`scripts/stack.sh pg-scratch`), for fault tests that
/// restart it. Stopped and removed on drop.
#[derive(Debug)]
pub struct ScratchPg {
    pub dir: PathBuf,
    pub port: u16,
}

impl ScratchPg {
    pub fn start() -> ScratchPg {
        let dir = std::env::temp_dir().join(unique("headroom-pg"));
        let port = free_port();
        let pg = ScratchPg { dir, port };
        pg.run("start");
        pg
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (trust auth on loopback).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn restart(&self) {
        self.run("restart");
    }

    pub fn stop(&self) {
        self.run("stop");
    }

    pub fn start_again(&self) {
        self.run("start");
    }

    fn run(&self, action: &str) {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/stack.sh"))
            .args(["pg-scratch", action])
            .arg(&self.dir)
            .arg(self.port.to_string())
            .output()
            .expect("run scripts/stack.sh pg-scratch");
        assert!(
            out.status.success(),
            "stack.sh pg-scratch {action} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for ScratchPg {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/stack.sh"))
            .args(["pg-scratch", "stop"])
            .arg(&self.dir)
            .arg(self.port.to_string())
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Text logs for a test, at `RUST_LOG` (default `warn`).
pub fn init_test_logging() {
    headroom_runtime::observe::init_logging(&headroom_runtime::config::LogConfig {
        format: headroom_runtime::config::LogFormat::Text,
        level: std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        otlp_endpoint: String::new(),
    });
}

/// Stops a service when the test ends, also when it fails (the runtime would wait for it).
pub struct StopOnDrop(pub headroom_runtime::Shutdown);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.trigger();
    }
}
