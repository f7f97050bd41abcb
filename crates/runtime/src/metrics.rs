//! The metrics every service exports. Names are constants here; labels are bounded (topic,
//! partition, reason), never an entity id or an offset.

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use headroom_schemas::DlqReason;

/// Handles to the standard metrics, registered in a per-service registry.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub records_in: IntCounterVec,
    pub records_out: IntCounterVec,
    pub dlq_records: IntCounterVec,
    pub duplicates: IntCounter,
    pub replayed: IntCounter,
    pub batch_size: Histogram,
    pub batch_seconds: Histogram,
    pub record_latency: Histogram,
    pub commit_seconds: Histogram,
    pub commit_failures: IntCounter,
    pub consumer_lag: IntGaugeVec,
    pub assigned_partitions: IntGauge,
    pub state_entities: IntGauge,
    pub state_bytes: IntGauge,
    pub rebalances: IntCounterVec,
    pub changelog_rewrites: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique constants");
    c
}

impl Metrics {
    /// Creates the metrics with a constant `service` label.
    pub fn new(service: &str) -> Metrics {
        let labels = std::iter::once(("service".to_owned(), service.to_owned())).collect();
        let registry =
            Registry::new_custom(Some("headroom".into()), Some(labels)).expect("registry");
        let r = &registry;
        let m = Metrics {
            records_in: reg(
                r,
                IntCounterVec::new(
                    Opts::new("records_in_total", "Records consumed, by topic."),
                    &["topic"],
                )
                .expect("m"),
            ),
            records_out: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "records_out_total",
                        "Records produced and acknowledged, by topic.",
                    ),
                    &["topic"],
                )
                .expect("m"),
            ),
            dlq_records: reg(
                r,
                IntCounterVec::new(
                    Opts::new("dlq_records_total", "Records dead-lettered, by reason."),
                    &["reason"],
                )
                .expect("m"),
            ),
            duplicates: reg(
                r,
                IntCounter::new("duplicate_records_total", "Exact duplicates dropped.").expect("m"),
            ),
            replayed: reg(
                r,
                IntCounter::new(
                    "replayed_records_total",
                    "Records re-read to rebuild state after an assignment.",
                )
                .expect("m"),
            ),
            batch_size: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new("batch_records", "Records per flushed batch.")
                        .buckets(exponential_buckets(1.0, 2.0, 16).expect("b")),
                )
                .expect("m"),
            ),
            batch_seconds: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "batch_processing_seconds",
                        "Time to process and flush one batch.",
                    )
                    .buckets(exponential_buckets(0.0001, 2.0, 18).expect("b")),
                )
                .expect("m"),
            ),
            record_latency: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "record_latency_seconds",
                        "From the input record's timestamp to its output's acknowledgement.",
                    )
                    .buckets(exponential_buckets(0.0005, 2.0, 18).expect("b")),
                )
                .expect("m"),
            ),
            commit_seconds: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new("commit_seconds", "Offset commit latency.")
                        .buckets(exponential_buckets(0.0005, 2.0, 16).expect("b")),
                )
                .expect("m"),
            ),
            commit_failures: reg(
                r,
                IntCounter::new("commit_failures_total", "Offset commits that failed.").expect("m"),
            ),
            consumer_lag: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "consumer_lag_records",
                        "Records behind the partition's high watermark.",
                    ),
                    &["topic", "partition"],
                )
                .expect("m"),
            ),
            assigned_partitions: reg(
                r,
                IntGauge::new(
                    "assigned_partitions",
                    "Input partitions currently assigned.",
                )
                .expect("m"),
            ),
            state_entities: reg(
                r,
                IntGauge::new("state_entities", "Entities held in memory.").expect("m"),
            ),
            state_bytes: reg(
                r,
                IntGauge::new("state_bytes", "Approximate heap bytes of per-entity state.")
                    .expect("m"),
            ),
            rebalances: reg(
                r,
                IntCounterVec::new(
                    Opts::new("rebalances_total", "Partition assignments and revocations."),
                    &["kind"],
                )
                .expect("m"),
            ),
            changelog_rewrites: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "changelog_rewrites_total",
                        "Complete rewrites of a changelog partition acknowledged: restores of the partition start at their first record.",
                    ),
                    &["topic"],
                )
                .expect("m"),
            ),
            registry,
        };
        for reason in DlqReason::ALL {
            m.dlq_records.with_label_values(&[reason.as_str()]);
        }
        m
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Registers a service-specific histogram (for example model inference time).
    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: Vec<f64>,
    ) -> HistogramVec {
        reg(
            &self.registry,
            HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("m"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_service_label_and_prefix() {
        let m = Metrics::new("featurizer");
        m.records_in.with_label_values(&["telemetry.raw"]).inc_by(3);
        let text = m.render();
        let line = |name: &str, label: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with(name) && l.contains(label) && l.contains("service=\"featurizer\"")
                })
                .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
        };
        assert_eq!(
            line("headroom_records_in_total{", "topic=\"telemetry.raw\"").as_deref(),
            Some("3"),
            "{text}"
        );
        assert_eq!(
            line("headroom_dlq_records_total{", "reason=\"too_late\"").as_deref(),
            Some("0"),
            "{text}"
        );
    }
}
