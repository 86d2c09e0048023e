//! OTLP export of spans (cargo feature `otlp`, switched on by `tracing.otlp_endpoint`).
//!
//! The exported spans are exactly the ones the logs and the `traceparent` headers name: the
//! request (`request`, ids from the middleware's `trace_id`/`span_id`/`parent_span_id`
//! fields), each WeChat attempt (`upstream_attempt`, ids as forwarded in its `traceparent`)
//! and each Redis script call (`redis_script`, a new span id in its request's trace). A small
//! layer turns those tracing spans into OpenTelemetry `SpanData` with these ids when they close
//! and hands them to the SDK's batch processor, which POSTs them as OTLP/HTTP protobuf to
//! `<otlp_endpoint>/v1/traces` from its own thread. Batching follows the `OTEL_BSP_*`
//! environment variables (default: every 5 s).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Names of the spans exported.
const EXPORTED: &[&str] = &["request", "upstream_attempt", "redis_script"];

/// The running exporter; [`Exporter::shutdown`] flushes what is queued.
#[derive(Clone)]
pub struct Exporter {
    processor: Arc<BatchSpanProcessor>,
}

impl Exporter {
    /// Builds the OTLP/HTTP exporter and its batch processor. Built on a thread of its own:
    /// the blocking HTTP client may not be created inside the async runtime.
    pub fn start(endpoint: &str, service_name: &str) -> Result<Self, String> {
        let url = format!("{endpoint}/v1/traces");
        let service_name = service_name.to_string();
        std::thread::spawn(move || {
            use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url)
                .with_timeout(std::time::Duration::from_secs(5))
                .with_headers(Default::default())
                .build()
                .map_err(|e| format!("OTLP exporter: {e}"))?;
            let mut processor = BatchSpanProcessor::builder(exporter).build();
            processor.set_resource(&Resource::builder().with_service_name(service_name).build());
            Ok(Exporter {
                processor: Arc::new(processor),
            })
        })
        .join()
        .map_err(|_| "OTLP exporter: set-up panicked".to_string())?
    }

    pub fn layer(&self) -> OtlpLayer {
        OtlpLayer {
            processor: self.processor.clone(),
            scope: InstrumentationScope::builder("wxgate")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }
    }

    /// Exports what is queued and stops (blocking; at most a few seconds).
    pub fn shutdown(&self) {
        let processor = self.processor.clone();
        let _ = std::thread::spawn(move || processor.shutdown()).join();
    }
}

pub struct OtlpLayer {
    processor: Arc<BatchSpanProcessor>,
    scope: InstrumentationScope,
}

/// What an exported span carries until it closes (in the span's extensions).
struct Pending {
    start: SystemTime,
    trace_id: Option<[u8; 16]>,
    span_id: Option<[u8; 8]>,
    parent_span_id: Option<[u8; 8]>,
    attributes: Vec<KeyValue>,
    error: bool,
}

fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Visit for Pending {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "trace_id" => self.trace_id = hex_bytes(value),
            "span_id" => self.span_id = hex_bytes(value),
            "parent_span_id" => self.parent_span_id = hex_bytes(value),
            name => self
                .attributes
                .push(KeyValue::new(name.to_string(), value.to_string())),
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `%value` fields arrive here.
        self.record_str(field, &format!("{value:?}"));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.attributes
            .push(KeyValue::new(field.name().to_string(), value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "status" && value >= 500 {
            self.error = true;
        }
        self.attributes
            .push(KeyValue::new(field.name().to_string(), value as i64));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.attributes
            .push(KeyValue::new(field.name().to_string(), value));
    }
}

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !EXPORTED.contains(&attrs.metadata().name()) {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut pending = Pending {
            start: SystemTime::now(),
            trace_id: None,
            span_id: None,
            parent_span_id: None,
            attributes: Vec::new(),
            error: false,
        };
        attrs.record(&mut pending);
        // A span without ids of its own joins the nearest exported ancestor's trace.
        if pending.trace_id.is_none() || pending.parent_span_id.is_none() {
            let ancestor = span.scope().skip(1).find_map(|a| {
                let ext = a.extensions();
                let p = ext.get::<Pending>()?;
                Some((p.trace_id?, p.span_id?))
            });
            if let Some((trace_id, parent)) = ancestor {
                if pending.trace_id.is_none() || pending.trace_id == Some(trace_id) {
                    pending.trace_id = Some(trace_id);
                    pending.parent_span_id.get_or_insert(parent);
                }
            }
        }
        if pending.trace_id.is_some() && pending.span_id.is_none() {
            pending.span_id = Some(wxgate_upstream::trace::TraceContext::new_root().span_id);
        }
        span.extensions_mut().insert(pending);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(p) = ext.get_mut::<Pending>() {
            values.record(p);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(p) = span.extensions_mut().remove::<Pending>() else {
            return;
        };
        let (Some(trace_id), Some(span_id)) = (p.trace_id, p.span_id) else {
            return;
        };
        let parent = p.parent_span_id.unwrap_or([0; 8]);
        // The request's parent is the caller's span (remote); the others' parents are ours.
        let remote_parent = span.name() == "request" && p.parent_span_id.is_some();
        let kind = match span.name() {
            "request" => SpanKind::Server,
            _ => SpanKind::Client,
        };
        self.processor.on_end(SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(trace_id),
                SpanId::from_bytes(span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from_bytes(parent),
            parent_span_is_remote: remote_parent,
            span_kind: kind,
            name: Cow::Borrowed(span.name()),
            start_time: p.start,
            end_time: SystemTime::now(),
            attributes: p.attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: if p.error {
                Status::error("server error")
            } else {
                Status::Unset
            },
            instrumentation_scope: self.scope.clone(),
        });
    }
}
