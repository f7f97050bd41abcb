//! Broker capabilities the runtime relies on, checked against the real broker.

use std::time::Duration;

use headroom_testkit::rdkafka::consumer::{CommitMode, Consumer};
use headroom_testkit::rdkafka::{Offset, TopicPartitionList};
use headroom_testkit::{brokers, create_topics, group_client, produce, unique, Rec};

/// The replay floor travels in the offset commit's metadata: the broker must keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_commit_metadata_round_trips() {
    let brokers = brokers();
    let prefix = format!("{}.", unique("rt-meta"));
    create_topics(&brokers, &prefix).await;
    let topic = format!("{prefix}features");
    produce(
        &brokers,
        &topic,
        &[Rec {
            key: Some(b"k".to_vec()),
            payload: b"v".to_vec(),
            headers: vec![],
        }],
    );
    let group = unique("meta");
    let c = group_client(&brokers, &group);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(5))
        .expect("add");
    tpl.find_partition(&topic, 0)
        .expect("p")
        .set_metadata("replay_from=3");
    c.commit(&tpl, CommitMode::Sync).expect("commit");
    let mut q = TopicPartitionList::new();
    q.add_partition(&topic, 0);
    let got = c
        .committed_offsets(q, Duration::from_secs(10))
        .expect("committed");
    let p = got.find_partition(&topic, 0).expect("p0");
    assert_eq!(p.offset(), Offset::Offset(5));
    // Apache Kafka keeps the metadata; tansu 0.6 returns it empty, which is why the runtime
    // also stores floors in a shadow group (see `kafka::FloorStore`). Record which one this is.
    eprintln!(
        "broker keeps commit metadata: {}",
        p.metadata() == "replay_from=3"
    );
    assert!(p.metadata() == "replay_from=3" || p.metadata().is_empty());
}

/// The shadow-group fallback: a client that never joins the group can commit and read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_of_a_memberless_group_round_trip() {
    let brokers = brokers();
    let prefix = format!("{}.", unique("rt-shadow"));
    create_topics(&brokers, &prefix).await;
    let topic = format!("{prefix}features");
    let group = format!("{}.replay-floor", unique("g"));
    let c = group_client(&brokers, &group);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 2, Offset::Offset(1234))
        .expect("add");
    c.commit(&tpl, CommitMode::Sync).expect("commit");
    let mut q = TopicPartitionList::new();
    q.add_partition(&topic, 2);
    q.add_partition(&topic, 3);
    let got = c
        .committed_offsets(q, Duration::from_secs(10))
        .expect("committed");
    assert_eq!(
        got.find_partition(&topic, 2).expect("p2").offset(),
        Offset::Offset(1234)
    );
    assert_eq!(
        got.find_partition(&topic, 3).expect("p3").offset(),
        Offset::Invalid
    );
}

/// Applying the topology twice is a no-op; a partition-count mismatch fails and names the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_apply_is_idempotent_and_refuses_a_mismatch() {
    use headroom_runtime::topology::{apply, Topology};
    let brokers = brokers();
    let prefix = format!("{}.", unique("rt-topo"));
    let kafka = headroom_testkit::kafka_config(&brokers, "x");
    let t = Topology::builtin();
    let first = apply(&t, &kafka, &prefix, Duration::from_secs(30))
        .await
        .expect("create");
    assert_eq!(first.created.len(), t.topics.len());
    let second = apply(&t, &kafka, &prefix, Duration::from_secs(30))
        .await
        .expect("again");
    assert!(second.created.is_empty());
    assert_eq!(second.existing.len(), t.topics.len());
    let mut changed = t.clone();
    changed.topics[0].partitions = Some(3);
    let err = apply(&changed, &kafka, &prefix, Duration::from_secs(30))
        .await
        .expect_err("mismatch");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{prefix}telemetry.raw")) && msg.contains("3"),
        "{msg}"
    );
}

/// A changelog read covers every partition asked for with one reader: each record once, in
/// offset order within its partition, tombstones as `None`, nothing of a partition not asked
/// for, and an empty partition counted as read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changelog_restore_reads_all_its_partitions_to_their_ends() {
    use headroom_testkit::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use headroom_testkit::rdkafka::ClientConfig;

    let brokers = brokers();
    let prefix = format!("{}.", unique("rt-changelog"));
    create_topics(&brokers, &prefix).await;
    let topic = format!("{prefix}drift.state");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    // Partitions 0 and 2 hold states, 2 also a tombstone; 1 stays empty; 3 is not asked for.
    let writes: [(i32, &str, Option<&str>); 7] = [
        (0, "a", Some("a1")),
        (2, "b", Some("b1")),
        (0, "c", Some("c1")),
        (3, "x", Some("x1")),
        (2, "b", None),
        (0, "a", Some("a2")),
        (2, "d", Some("d1")),
    ];
    for (partition, key, value) in writes {
        let mut r = BaseRecord::<str, str>::to(&topic).partition(partition).key(key);
        if let Some(v) = value {
            r = r.payload(v);
        }
        producer.send(r).map_err(|(e, _)| e).expect("send");
        // One record batch per record: a restore start is always a batch's base offset (the
        // runtime sends a rewrite only when no earlier changelog record is in flight).
        producer.flush(Duration::from_secs(30)).expect("flush");
    }

    let kafka = headroom_runtime::KafkaConfig {
        instance_id: String::new(),
        brokers: brokers.clone(),
        group_id: unique("restore"),
        properties: Default::default(),
    };
    let mut seen: Vec<(i32, String, Option<String>, i64)> = Vec::new();
    let read = headroom_runtime::changelog::restore(&kafka, &topic, &[0, 1, 2], Duration::from_secs(60), |p, k, v, o| {
        seen.push((p, String::from_utf8_lossy(k).into(), v.map(|v| String::from_utf8_lossy(v).into()), o));
    })
    .expect("restore");
    assert_eq!(read.partitions, 3);
    assert_eq!(read.records, 6, "{seen:?}");
    let of = |p: i32| -> Vec<(String, Option<String>)> {
        seen.iter().filter(|s| s.0 == p).map(|s| (s.1.clone(), s.2.clone())).collect()
    };
    let some = |k: &str, v: &str| (k.to_owned(), Some(v.to_owned()));
    assert_eq!(of(0), vec![some("a", "a1"), some("c", "c1"), some("a", "a2")]);
    assert_eq!(of(2), vec![some("b", "b1"), ("b".to_owned(), None), some("d", "d1")]);
    assert!(of(1).is_empty() && of(3).is_empty(), "{seen:?}");
    for p in [0, 2] {
        let offsets: Vec<i64> = seen.iter().filter(|s| s.0 == p).map(|s| s.3).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "partition {p}: {offsets:?}");
    }

    // Nothing asked for: nothing read.
    let none = headroom_runtime::changelog::restore(&kafka, &topic, &[], Duration::from_secs(10), |_, _, _, _| {
        panic!("no partition was asked for")
    })
    .expect("restore of no partition");
    assert_eq!(none, headroom_runtime::changelog::Restored::default());

    // With restore starts stored (the first offsets of the partitions' latest rewrites), a
    // partition is read from its start; a start past a partition's end (a topic deleted and
    // created again) is not used.
    let starts: headroom_testkit::rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", headroom_runtime::changelog::start_group(&kafka.group_id))
        .create()
        .expect("start store");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(1)).expect("p0");
    tpl.add_partition_offset(&topic, 2, Offset::Offset(5)).expect("p2");
    starts.commit(&tpl, CommitMode::Sync).expect("store starts");
    let mut again: Vec<(i32, String)> = Vec::new();
    let read = headroom_runtime::changelog::restore(&kafka, &topic, &[0, 1, 2], Duration::from_secs(60), |p, k, v, _| {
        again.push((p, format!("{}={}", String::from_utf8_lossy(k), v.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default())));
    })
    .expect("restore from the starts");
    assert_eq!((read.records, read.from_start, read.skipped), (5, 1, 1), "{again:?}");
    let of = |p: i32| -> Vec<&str> { again.iter().filter(|s| s.0 == p).map(|s| s.1.as_str()).collect() };
    assert_eq!(of(0), ["c=c1", "a=a2"]);
    assert_eq!(of(2), ["b=b1", "b=", "d=d1"]);
}
