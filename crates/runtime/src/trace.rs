//! W3C trace context carried in Kafka headers, so one trace follows an event from its
//! producer to its last output. The input's `traceparent` is continued with a new span id on
//! every output; a record without one starts no trace (sampling is the producer's decision).
//!
//! With `log.otlp_endpoint` set, each of those hops is also a span exported over OTLP/HTTP
//! ([`Spans`]): parent = the input's span, id = the one the output carries, from the input's
//! Kafka timestamp (when its producer wrote it) to the output's send, so the spans of one
//! event tile its way through the pipeline in a trace viewer.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

pub const TRACEPARENT: &str = "traceparent";

struct One<'a>(&'a str);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

struct Out(Option<String>);

impl Injector for Out {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

/// The `traceparent` to put on an output whose input carried `input` (a child span).
pub fn child_traceparent(input: &str) -> Option<String> {
    child(input).map(|(_, tp)| tp.1)
}

/// The input's span context and the child's (span id, traceparent).
fn child(input: &str) -> Option<(SpanContext, (SpanId, String))> {
    let prop = TraceContextPropagator::new();
    let parent = prop.extract(&One(input));
    let sc = parent.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    let id = child_span_id();
    let child = SpanContext::new(sc.trace_id(), id, sc.trace_flags(), false, TraceState::default());
    let cx = Context::new().with_remote_span_context(child);
    let mut out = Out(None);
    prop.inject_context(&cx, &mut out);
    Some((sc, (id, out.0?)))
}

/// `log.otlp_endpoint`: empty, or an http(s) URL with a host.
pub fn check_endpoint(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Ok(());
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("`{url}` is not an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("`{url}` has no host"));
    }
    url.parse::<axum::http::Uri>().map(|_| ()).map_err(|e| format!("`{url}`: {e}"))
}

/// Where one hop went: the input's coordinates and the output topic.
pub struct Hop<'a> {
    pub input_topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub output_topic: &'a str,
    /// The input's Kafka timestamp (ms): the span's start.
    pub start_ms: Option<i64>,
}

/// The spans of one service, batched and exported over OTLP/HTTP (protobuf) to
/// `<endpoint>/v1/traces` by the SDK's batch processor (its own thread; a slow or absent
/// receiver drops spans, it never blocks processing). Flushed on drop.
pub struct Spans {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
    tracer: opentelemetry_sdk::trace::SdkTracer,
    name: String,
}

impl std::fmt::Debug for Spans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spans").field("name", &self.name).finish()
    }
}

impl Spans {
    /// The exporter for `service` (resource `service.name` = `headroom-<service>`). Builds its
    /// HTTP client on a thread of its own, so it may be called from async code.
    pub fn new(service: &str, endpoint: &str) -> anyhow::Result<Spans> {
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_otlp::{Protocol, WithExportConfig};
        check_endpoint(endpoint).map_err(|e| anyhow::anyhow!("key `log.otlp_endpoint`: {e}"))?;
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let name = format!("headroom-{service}");
        let n = name.clone();
        std::thread::spawn(move || -> anyhow::Result<Spans> {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(url)
                .with_timeout(std::time::Duration::from_secs(5))
                .build()?;
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(opentelemetry_sdk::Resource::builder_empty().with_service_name(n.clone()).build())
                .build();
            let tracer = provider.tracer("headroom");
            Ok(Spans { provider, tracer, name: n })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the OTLP exporter's set-up panicked"))?
    }

    /// Starts a trace at a producer: a root span (kind Producer, sampled) for one record sent to
    /// `topic`, ended at once, and the `traceparent` the record carries (this span's id).
    pub fn root(&self, topic: &str) -> String {
        use opentelemetry::trace::{Span as _, SpanKind, Tracer as _};
        use opentelemetry::KeyValue;
        let mut span = self
            .tracer
            .span_builder(format!("{} send", self.name))
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.destination.name", topic.to_owned()),
            ])
            .start_with_context(&self.tracer, &Context::new());
        let sc = span.span_context().clone();
        span.end();
        let cx = Context::new().with_remote_span_context(sc);
        let mut out = Out(None);
        TraceContextPropagator::new().inject_context(&cx, &mut out);
        out.0.unwrap_or_else(root_traceparent)
    }

    /// Records the hop of a traced input to one output and returns the output's
    /// `traceparent` (the new span's id). `None` when `input` is no valid traceparent.
    pub fn hop(&self, input: &str, hop: &Hop<'_>) -> Option<String> {
        use opentelemetry::trace::{Span as _, SpanKind, Tracer as _};
        use opentelemetry::KeyValue;
        let (parent, (id, tp)) = child(input)?;
        let now = std::time::SystemTime::now();
        let start = hop
            .start_ms
            .filter(|&ms| ms > 0)
            .map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64))
            .filter(|t| *t <= now)
            .unwrap_or(now);
        let cx = Context::new().with_remote_span_context(parent);
        let mut span = self
            .tracer
            .span_builder(format!("{} process", self.name))
            .with_span_id(id)
            .with_kind(SpanKind::Consumer)
            .with_start_time(start)
            .with_attributes([
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.source.name", hop.input_topic.to_owned()),
                KeyValue::new("messaging.kafka.source.partition", i64::from(hop.partition)),
                KeyValue::new("messaging.kafka.message.offset", hop.offset),
                KeyValue::new("messaging.destination.name", hop.output_topic.to_owned()),
            ])
            .start_with_context(&self.tracer, &cx);
        span.end_with_timestamp(now);
        Some(tp)
    }
}

impl Drop for Spans {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "flushing spans at shutdown");
        }
    }
}

/// A fresh root `traceparent` (sampled) for producers that start traces, such as the load
/// generator.
pub fn root_traceparent() -> String {
    let g = RandomIdGenerator::default();
    format!("00-{}-{}-01", g.new_trace_id(), g.new_span_id())
}

fn child_span_id() -> SpanId {
    RandomIdGenerator::default().new_span_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_keeps_trace_id_and_changes_span() {
        let root = root_traceparent();
        let child = child_traceparent(&root).expect("valid parent");
        assert_eq!(&root[..36], &child[..36], "same version and trace id");
        assert_ne!(&root[36..52], &child[36..52], "new span id");
        assert!(child.ends_with("-01"));
        assert_eq!(child_traceparent("garbage"), None);
    }
}
