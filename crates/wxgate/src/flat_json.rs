//! JSON log lines with flat fields: the event's fields and the fields of every span it is in
//! (root first, so an inner span or the event wins on a clash) are top-level keys, e.g.
//!
//! ```json
//! {"timestamp":"2026-11-29T02:30:00.123456Z","level":"INFO","target":"wxgate_engine",
//!  "span":"request","message":"sent","request_id":"...","trace_id":"4bf9...","span_id":"...",
//!  "method":"POST","path":"/v1/apps/oa/messages/template","app":"oa","api":"template_send",
//!  "msgid":2918131553548107776,"attempts":1}
//! ```
//!
//! so log pipelines index `app`, `api`, `request_id`, `trace_id`, `errcode`, `msgid` without
//! unnesting. Span fields are kept by tracing-subscriber's `JsonFields` (as a JSON object per
//! span); this formatter merges them.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

pub struct FlatJson;

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut out = Map::new();
        let mut ts = String::new();
        SystemTime.format_time(&mut Writer::new(&mut ts))?;
        out.insert("timestamp".into(), Value::String(ts));
        let meta = event.metadata();
        out.insert("level".into(), Value::String(meta.level().to_string()));
        out.insert("target".into(), Value::String(meta.target().to_string()));
        if let Some(scope) = ctx.event_scope() {
            let mut innermost = None;
            for span in scope.from_root() {
                innermost = Some(span.name());
                let ext = span.extensions();
                let Some(fields) = ext.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields) {
                    out.extend(map);
                }
            }
            if let Some(name) = innermost {
                out.insert("span".into(), Value::String(name.to_string()));
            }
        }
        event.record(&mut Fields(&mut out));
        let line = serde_json::to_string(&out).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// Collects an event's fields into the line's map.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::String(value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::format::JsonFields;
    use tracing_subscriber::layer::SubscriberExt;

    use super::FlatJson;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    #[test]
    fn span_and_event_fields_are_top_level_keys() {
        let buf = Buf::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(JsonFields::new())
                .event_format(FlatJson)
                .with_writer(buf.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let request = tracing::info_span!(
                "request",
                request_id = "r-1",
                trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
                span_id = "00f067aa0ba902b7",
                app = tracing::field::Empty,
            );
            let _r = request.enter();
            request.record("app", "oa");
            let attempt = tracing::info_span!("upstream_attempt", span_id = "b7ad6b7169203331");
            let _a = attempt.enter();
            tracing::info!(msgid = 42u64, errcode = 0i64, api = "template_send", "sent");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["request_id"], "r-1", "{v}");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["app"], "oa", "a field recorded after the span opened");
        assert_eq!(v["span_id"], "b7ad6b7169203331", "the inner span wins");
        assert_eq!(v["span"], "upstream_attempt");
        assert_eq!(
            (v["msgid"].as_u64(), v["errcode"].as_i64()),
            (Some(42), Some(0))
        );
        assert_eq!(
            (&v["api"], &v["message"], &v["level"]),
            (&"template_send".into(), &"sent".into(), &"INFO".into())
        );
        assert!(v.get("fields").is_none() && v.get("spans").is_none(), "{v}");
    }
}
