use std::collections::HashMap;
use std::sync::Arc;

use headroom_features::{FeatureConfig, FeatureLayout, Outcome, PartitionState, Sample};
use headroom_runtime::registry::RegistryClient;
use headroom_runtime::{Emitter, InputRecord, Metrics, Processor};
use headroom_schemas::features::event_id_into;
use headroom_schemas::{
    DecodeError, DlqReason, FeaturesRecord, Telemetry, TelemetryDecoder, ValidationLimits,
};

/// The featurizer stage: decode, validate, update the entity's state, emit its vector.
pub struct Featurizer {
    cfg: FeatureConfig,
    layout: Arc<FeatureLayout>,
    limits: ValidationLimits,
    output: String,
    decoder: TelemetryDecoder,
    registry: Option<RegistryClient>,
    partitions: HashMap<i32, PartitionState>,
    vector: Vec<f32>,
    record: FeaturesRecord,
    buf: Vec<u8>,
    /// Positions of the current cpu, mem, net and disk values in the vector, looked up once.
    now_index: [usize; 4],
}

impl Featurizer {
    pub fn new(
        cfg: FeatureConfig,
        limits: ValidationLimits,
        output: String,
        registry: Option<RegistryClient>,
    ) -> Featurizer {
        let layout = Arc::new(FeatureLayout::new(&cfg));
        // Every layout has these names; the fallback (one past the end) reads as 0.
        let now_index = ["cpu_now", "mem_now", "net_now", "disk_now"]
            .map(|n| layout.index_of(n).unwrap_or(layout.len()));
        Featurizer {
            now_index,
            record: FeaturesRecord {
                feature_set: layout.id().to_owned(),
                ..FeaturesRecord::default()
            },
            cfg,
            layout,
            limits,
            output,
            decoder: TelemetryDecoder::new(),
            registry,
            partitions: HashMap::new(),
            vector: Vec::new(),
            buf: Vec::with_capacity(1024),
        }
    }

    pub fn layout(&self) -> &FeatureLayout {
        &self.layout
    }

    fn decode(&mut self, payload: &[u8]) -> Result<Telemetry, DecodeError> {
        match self.decoder.decode(payload) {
            Err(DecodeError::UnknownSchemaId(id)) if self.registry.is_some() => {
                let registry = self.registry.as_mut().expect("checked");
                match registry.fetch(id) {
                    Ok(schema) => {
                        self.decoder.add_writer_schema(id, &schema)?;
                        self.decoder.decode(payload)
                    }
                    Err(e) => {
                        tracing::warn!(schema_id = id, error = %e, "schema lookup failed");
                        Err(DecodeError::UnknownSchemaId(id))
                    }
                }
            }
            other => other,
        }
    }
}

impl Processor for Featurizer {
    fn process(&mut self, record: &InputRecord<'_>, out: &mut Emitter<'_>) {
        let Some(payload) = record.payload else {
            out.dead_letter(DlqReason::Truncated, "record has no value");
            return;
        };
        let telemetry = match self.decode(payload) {
            Ok(t) => t,
            Err(e) => {
                out.dead_letter(e.reason(), &e.to_string());
                return;
            }
        };
        if let Err((reason, detail)) = telemetry.validate(record.now_ms, &self.limits) {
            out.dead_letter(reason, &detail);
            return;
        }
        if let Some(key) = record.key {
            if key != telemetry.entity_id.as_bytes() {
                // A key other than the entity id would put the entity on several partitions
                // and split its state.
                out.dead_letter(DlqReason::KeyMismatch, "record key differs from entity_id");
                return;
            }
        }
        let sample = Sample::from(&telemetry);
        let state = self
            .partitions
            .entry(record.partition)
            .or_insert_with(|| PartitionState::with_layout(self.cfg.clone(), self.layout.clone()));
        match state.process(
            &telemetry.entity_id,
            &sample,
            record.offset as u64,
            &mut self.vector,
        ) {
            Outcome::Duplicate => out.duplicate(),
            Outcome::TooLate { behind_ms } => {
                let detail = format!(
                    "event is {} s behind its entity's newest event; allowed lateness is {} s",
                    behind_ms / 1000,
                    self.cfg.allowed_lateness.as_secs()
                );
                out.dead_letter(DlqReason::TooLate, &detail);
            }
            Outcome::Emitted { imputed_mask } => {
                if out.is_replay() {
                    return;
                }
                let [cpu_i, mem_i, net_i, disk_i] = self.now_index;
                let v = &self.vector;
                let get = |i: usize| v.get(i).copied().map_or(0.0, f64::from);
                let r = &mut self.record;
                event_id_into(&telemetry.entity_id, telemetry.ts_ms, &mut r.event_id);
                r.entity_id.clone_from(&telemetry.entity_id);
                r.ts_ms = telemetry.ts_ms;
                r.service.clone_from(&telemetry.service);
                r.cluster.clone_from(&telemetry.cluster);
                r.values.clone_from(v);
                r.cpu_util = get(cpu_i);
                r.mem_util = get(mem_i);
                r.net_bps = get(net_i);
                r.disk_bps = get(disk_i);
                r.cpu_cores = telemetry.cpu_cores;
                r.mem_bytes = telemetry.mem_bytes;
                r.replicas = telemetry.replicas;
                r.cost_per_hour = telemetry.cost_per_hour;
                r.scale_event = telemetry.scale_event.unwrap_or(false);
                r.imputed_mask = i32::from(imputed_mask);
                r.source_ts_ms = record.timestamp_ms;
                r.encode_framed(&mut self.buf);
                out.emit(&self.output, telemetry.entity_id.as_bytes(), &self.buf);
            }
        }
    }

    fn on_revoke(&mut self, _topic: &str, partition: i32) {
        self.partitions.remove(&partition);
    }

    fn replay_floor(&mut self, _topic: &str, partition: i32) -> Option<i64> {
        self.partitions
            .get_mut(&partition)?
            .replay_floor()
            .map(|f| f as i64)
    }

    fn on_commit(&mut self, metrics: &Metrics) {
        let (mut entities, mut bytes, mut expired) = (0, 0, 0);
        for state in self.partitions.values_mut() {
            expired += state.expire_idle();
            entities += state.entity_count();
            bytes += state.state_bytes();
        }
        if expired > 0 {
            tracing::debug!(expired, "idle entities dropped");
        }
        metrics.state_entities.set(entities as i64);
        metrics.state_bytes.set(bytes as i64);
    }
}
