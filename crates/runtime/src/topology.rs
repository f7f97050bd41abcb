//! The declarative topic graph (`topologies/*.toml`): parsing, validation against the schema
//! catalogue, and applying it to a broker (create what is missing, fail on a mismatch).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::RDKafkaLogLevel;
use serde::Deserialize;

use crate::KafkaConfig;

/// The topology shipped with headroom.
pub const BUILTIN: &str = include_str!("../../../topologies/headroom.toml");

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("topology: {0}")]
    Invalid(String),
    #[error("broker {brokers}: {detail}")]
    Broker { brokers: String, detail: String },
    #[error("topic {topic}: {detail}")]
    Mismatch { topic: String, detail: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub defaults: Defaults,
    #[serde(rename = "topic")]
    pub topics: Vec<TopicDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub partitions: i32,
    pub replication_factor: i32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicDef {
    pub name: String,
    #[serde(default)]
    pub partitions: Option<i32>,
    #[serde(default)]
    pub replication_factor: Option<i32>,
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,
    pub cleanup: String,
    pub key: String,
    pub schema: String,
    #[serde(default)]
    pub producers: Vec<String>,
    #[serde(default)]
    pub consumers: Vec<ConsumerDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerDef {
    pub service: String,
    /// Empty: the service reads the topic without a consumer group (every replica reads all).
    pub group: String,
}

impl TopicDef {
    pub fn partitions(&self, d: &Defaults) -> i32 {
        self.partitions.unwrap_or(d.partitions)
    }

    pub fn replication(&self, d: &Defaults) -> i32 {
        self.replication_factor.unwrap_or(d.replication_factor)
    }

    /// Topic-level configuration the broker should hold.
    pub fn configs(&self) -> BTreeMap<&'static str, String> {
        let mut c = BTreeMap::new();
        c.insert("cleanup.policy", self.cleanup.clone());
        if let Some(r) = self.retention {
            c.insert("retention.ms", r.as_millis().to_string());
        }
        c
    }
}

impl Topology {
    pub fn parse(text: &str) -> Result<Topology, TopologyError> {
        let t: Topology =
            toml::from_str(text).map_err(|e| TopologyError::Invalid(e.to_string()))?;
        t.validate()?;
        Ok(t)
    }

    pub fn builtin() -> Topology {
        Topology::parse(BUILTIN).expect("the built-in topology is checked by tests")
    }

    fn validate(&self) -> Result<(), TopologyError> {
        let bad = |m: String| Err(TopologyError::Invalid(m));
        if self.defaults.partitions < 1 || self.defaults.replication_factor < 1 {
            return bad(
                "defaults.partitions and defaults.replication_factor must be at least 1".into(),
            );
        }
        let cat = headroom_schemas::Catalogue::builtin();
        let mut names = HashSet::new();
        for t in &self.topics {
            if !names.insert(&t.name) {
                return bad(format!("topic {} is declared twice", t.name));
            }
            if t.partitions(&self.defaults) < 1 {
                return bad(format!("topic {}: partitions must be at least 1", t.name));
            }
            if !matches!(t.cleanup.as_str(), "delete" | "compact" | "compact,delete") {
                return bad(format!(
                    "topic {}: cleanup must be delete, compact or compact,delete",
                    t.name
                ));
            }
            if cat.latest(&t.schema).is_none() {
                return bad(format!(
                    "topic {}: schema subject {} is not in schemas/catalogue.toml",
                    t.name, t.schema
                ));
            }
        }
        Ok(())
    }

    pub fn topic(&self, name: &str) -> Option<&TopicDef> {
        self.topics.iter().find(|t| t.name == name)
    }

    /// Checks that `service` is declared as a consumer of `input` and a producer of each of
    /// `outputs`, so that the wiring in code and in the topology cannot drift apart.
    pub fn check_service(
        &self,
        service: &str,
        inputs: &[&str],
        outputs: &[&str],
    ) -> Result<(), TopologyError> {
        for i in inputs {
            let t = self.topic(i).ok_or_else(|| {
                TopologyError::Invalid(format!(
                    "{service} reads {i}, which the topology does not declare"
                ))
            })?;
            if !t.consumers.iter().any(|c| c.service == service) {
                return Err(TopologyError::Invalid(format!(
                    "{service} reads {i} but is not listed among its consumers"
                )));
            }
        }
        for o in outputs {
            let t = self.topic(o).ok_or_else(|| {
                TopologyError::Invalid(format!(
                    "{service} writes {o}, which the topology does not declare"
                ))
            })?;
            if !t.producers.iter().any(|p| p == service) {
                return Err(TopologyError::Invalid(format!(
                    "{service} writes {o} but is not listed among its producers"
                )));
            }
        }
        Ok(())
    }
}

/// What `apply` did.
#[derive(Debug, Default, PartialEq)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub existing: Vec<String>,
    /// Config checks the broker could not answer (some Kafka-protocol brokers lack DescribeConfigs).
    pub unverified: Vec<String>,
}

/// Creates missing topics (named `prefix` + name) and checks existing ones. `only` limits the
/// topics applied when not empty.
pub async fn apply(
    topology: &Topology,
    kafka: &KafkaConfig,
    prefix: &str,
    timeout: Duration,
) -> Result<ApplyReport, TopologyError> {
    let broker_err = |detail: String| TopologyError::Broker {
        brokers: kafka.brokers.clone(),
        detail,
    };
    let mut cfg = crate::kafka::client_config(kafka);
    cfg.set_log_level(RDKafkaLogLevel::Warning);
    let admin: AdminClient<DefaultClientContext> =
        cfg.create().map_err(|e| broker_err(e.to_string()))?;
    let existing = {
        let meta = admin
            .inner()
            .fetch_metadata(None, timeout)
            .map_err(|e| broker_err(format!("metadata: {e}")))?;
        meta.topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
            .collect::<BTreeMap<_, _>>()
    };
    let mut report = ApplyReport::default();
    let mut to_create = Vec::new();
    let configs: Vec<(String, BTreeMap<&str, String>)> = topology
        .topics
        .iter()
        .map(|t| (format!("{prefix}{}", t.name), t.configs()))
        .collect();
    for (t, (name, conf)) in topology.topics.iter().zip(&configs) {
        let want = t.partitions(&topology.defaults);
        match existing.get(name) {
            Some(&have) if have == want => report.existing.push(name.clone()),
            Some(&have) => {
                return Err(TopologyError::Mismatch {
                    topic: name.clone(),
                    detail: format!("has {have} partitions, the topology says {want}; changing the partition count moves keys between partitions, so headroom will not do it for you"),
                })
            }
            None => {
                let mut nt = NewTopic::new(name, want, TopicReplication::Fixed(t.replication(&topology.defaults)));
                for (k, v) in conf {
                    nt = nt.set(k, v);
                }
                to_create.push(nt);
            }
        }
    }
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    if !to_create.is_empty() {
        let results = admin
            .create_topics(&to_create, &opts)
            .await
            .map_err(|e| broker_err(format!("create topics: {e}")))?;
        for r in results {
            match r {
                Ok(name) => report.created.push(name),
                Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                    report.existing.push(name)
                }
                Err((name, code)) => {
                    return Err(TopologyError::Mismatch {
                        topic: name,
                        detail: format!("cannot create: {code}"),
                    })
                }
            }
        }
    }
    // Wait until every topic is visible with its partitions.
    let deadline = Instant::now() + timeout;
    loop {
        let meta = admin
            .inner()
            .fetch_metadata(None, timeout)
            .map_err(|e| broker_err(format!("metadata: {e}")))?;
        let ready = topology.topics.iter().all(|t| {
            let name = format!("{prefix}{}", t.name);
            meta.topics().iter().any(|m| {
                m.name() == name
                    && m.error().is_none()
                    && m.partitions().len() as i32 == t.partitions(&topology.defaults)
            })
        });
        if ready {
            break;
        }
        if Instant::now() > deadline {
            return Err(broker_err(
                "topics did not become visible in metadata in time".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Check the settings of topics that already existed.
    for (name, conf) in &configs {
        if !report.existing.contains(name) {
            continue;
        }
        let spec = ResourceSpecifier::Topic(name);
        match admin.describe_configs([&spec], &opts).await {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(resource)) => {
                    for (k, want) in conf {
                        if let Some(entry) = resource.get(k) {
                            if let Some(have) = &entry.value {
                                if have != want {
                                    return Err(TopologyError::Mismatch {
                                        topic: name.clone(),
                                        detail: format!("{k} is {have}, the topology says {want}"),
                                    });
                                }
                            }
                        }
                    }
                }
                _ => report.unverified.push(name.clone()),
            },
            Err(_) => report.unverified.push(name.clone()),
        }
    }
    Ok(report)
}

/// A Kafka resource an ACL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AclResource {
    Topic,
    Group,
    Cluster,
}

/// One permission a service's principal needs: allow `operations` on `resource` `name`
/// (literal names; the cluster's name is `kafka-cluster`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Acl {
    pub service: String,
    pub resource: AclResource,
    pub name: String,
    /// Kafka's operation names (`Read`, `Write`, `Describe`, `Create`, `DescribeConfigs`,
    /// `IdempotentWrite`); `Read` and `Write` imply `Describe` on Kafka.
    pub operations: Vec<&'static str>,
}

/// The principal that applies the topology (`headroom topology apply`, the init job).
pub const ACL_INIT_SERVICE: &str = "init";

/// Producers the topology names that are not headroom services (the fleet's own
/// publishers): they get no ACLs here, only a mention in [`Topology::acls`]'s caller.
pub const EXTERNAL_PRODUCER: &str = "external";

impl Topology {
    /// Every permission each service needs on a cluster that enforces ACLs, from the topic
    /// graph: `Write` on what it produces (and `IdempotentWrite` on the cluster, which brokers
    /// before Kafka 2.8 ask of idempotent producers), `Read` on what it consumes, `Read` on its
    /// consumer groups and on their shadow groups ([`crate::kafka::shadow_groups`]: the runtime
    /// commits replay floors and changelog restore starts there), and, for the principal that
    /// applies the topology ([`ACL_INIT_SERVICE`]), `Create` and `DescribeConfigs` on the
    /// topics. Topic names carry `prefix`; group names are the topology's.
    pub fn acls(&self, prefix: &str) -> Vec<Acl> {
        let mut want: BTreeMap<(String, AclResource, String), Vec<&'static str>> = BTreeMap::new();
        let mut add = |service: &str, resource: AclResource, name: String, op: &'static str| {
            let ops = want.entry((service.to_owned(), resource, name)).or_default();
            if !ops.contains(&op) {
                ops.push(op);
            }
        };
        for t in &self.topics {
            let topic = format!("{prefix}{}", t.name);
            add(ACL_INIT_SERVICE, AclResource::Topic, topic.clone(), "Create");
            add(ACL_INIT_SERVICE, AclResource::Topic, topic.clone(), "DescribeConfigs");
            for p in t.producers.iter().filter(|p| *p != EXTERNAL_PRODUCER) {
                add(p, AclResource::Topic, topic.clone(), "Write");
                add(p, AclResource::Cluster, "kafka-cluster".into(), "IdempotentWrite");
            }
            for c in &t.consumers {
                add(&c.service, AclResource::Topic, topic.clone(), "Read");
                if !c.group.is_empty() {
                    add(&c.service, AclResource::Group, c.group.clone(), "Read");
                    for g in crate::kafka::shadow_groups(&c.group) {
                        add(&c.service, AclResource::Group, g, "Read");
                    }
                }
            }
        }
        want.into_iter()
            .map(|((service, resource, name), operations)| Acl {
                service,
                resource,
                name,
                operations,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_is_valid_and_covers_every_subject() {
        let t = Topology::builtin();
        let cat = headroom_schemas::Catalogue::builtin();
        for subject in cat.subjects() {
            assert!(
                t.topics.iter().any(|x| x.schema == subject),
                "no topic carries {subject}"
            );
        }
        assert_eq!(
            t.topic("models").map(|m| m.cleanup.as_str()),
            Some("compact")
        );
        t.check_service(
            "featurizer",
            &["telemetry.raw"],
            &["features", "telemetry.dlq"],
        )
        .expect("wiring");
        assert!(t.check_service("featurizer", &["forecasts"], &[]).is_err());
    }

    #[test]
    fn invalid_topologies_are_explained() {
        let base = "[defaults]\npartitions = 1\nreplication_factor = 1\n";
        let dup = format!("{base}[[topic]]\nname='a'\ncleanup='delete'\nkey='k'\nschema='features-value'\n[[topic]]\nname='a'\ncleanup='delete'\nkey='k'\nschema='features-value'\n");
        assert!(Topology::parse(&dup)
            .unwrap_err()
            .to_string()
            .contains("declared twice"));
        let schema =
            format!("{base}[[topic]]\nname='a'\ncleanup='delete'\nkey='k'\nschema='nope-value'\n");
        assert!(Topology::parse(&schema)
            .unwrap_err()
            .to_string()
            .contains("nope-value"));
        let cleanup = format!(
            "{base}[[topic]]\nname='a'\ncleanup='keep'\nkey='k'\nschema='features-value'\n"
        );
        assert!(Topology::parse(&cleanup)
            .unwrap_err()
            .to_string()
            .contains("cleanup"));
    }

    #[test]
    fn acls_follow_the_topic_graph_and_cover_the_shadow_groups() {
        let t = Topology::builtin();
        let acls = t.acls("prod.");
        let has = |service: &str, resource: AclResource, name: &str, op: &str| {
            acls.iter().any(|a| {
                a.service == service && a.resource == resource && a.name == name && a.operations.contains(&op)
            })
        };
        assert!(has("featurizer", AclResource::Topic, "prod.telemetry.raw", "Read"));
        assert!(has("featurizer", AclResource::Topic, "prod.features", "Write"));
        assert!(has("featurizer", AclResource::Topic, "prod.telemetry.dlq", "Write"));
        assert!(has("featurizer", AclResource::Cluster, "kafka-cluster", "IdempotentWrite"));
        for g in ["headroom-featurizer", "headroom-featurizer.replay-floor", "headroom-featurizer.changelog-start"] {
            assert!(has("featurizer", AclResource::Group, g, "Read"), "{g}");
        }
        // The drift monitor reads its own changelogs back without a group.
        assert!(has("drift-monitor", AclResource::Topic, "prod.drift.state", "Write"));
        assert!(has("drift-monitor", AclResource::Topic, "prod.drift.state", "Read"));
        assert!(has("drift-monitor", AclResource::Group, "headroom-drift.changelog-start", "Read"));
        assert!(has(ACL_INIT_SERVICE, AclResource::Topic, "prod.models", "Create"));
        // Nothing beyond the graph: a Write only where the service produces, a Read only where
        // it consumes, no ACL for the fleet's own publishers.
        assert!(!acls.iter().any(|a| a.service == EXTERNAL_PRODUCER));
        assert!(!has("featurizer", AclResource::Topic, "prod.forecasts", "Read"));
        for a in acls.iter().filter(|a| a.resource == AclResource::Topic && a.service != ACL_INIT_SERVICE) {
            let topic = t.topic(a.name.strip_prefix("prod.").expect("prefixed")).expect("declared");
            if a.operations.contains(&"Write") {
                assert!(topic.producers.contains(&a.service), "{a:?}");
            }
            if a.operations.contains(&"Read") {
                assert!(topic.consumers.iter().any(|c| c.service == a.service), "{a:?}");
            }
        }
        // One entry per (service, resource, name), each operation once.
        let mut keys: Vec<_> = acls.iter().map(|a| (&a.service, a.resource, &a.name)).collect();
        let n = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), n);
        assert!(acls.iter().all(|a| {
            let mut o = a.operations.clone();
            o.sort();
            o.dedup();
            o.len() == a.operations.len()
        }));
    }
}
