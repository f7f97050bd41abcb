//! W3C trace context carried in Kafka headers, so one trace follows an event from its
//! producer to its last output. The input's `traceparent` is continued with a new span id on
//! every output; a record without one starts no trace (sampling is the producer's decision).

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
    let prop = TraceContextPropagator::new();
    let parent = prop.extract(&One(input));
    let sc = parent.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    let child = SpanContext::new(
        sc.trace_id(),
        child_span_id(),
        sc.trace_flags(),
        false,
        TraceState::default(),
    );
    let cx = Context::new().with_remote_span_context(child);
    let mut out = Out(None);
    prop.inject_context(&cx, &mut out);
    out.0
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
