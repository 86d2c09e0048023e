//! Clients' protocol errors (a malformed request line, a connection reset mid-request) are the
//! clients' fault, but actix-http logs each at ERROR, without a request id: probes alone made
//! pages of them. This layer takes those events out of the log and reports them instead as one
//! WARN line per period at most, with their count and the last message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Whether an event is one of actix-http's per-connection errors.
pub fn is_client_protocol_error(meta: &Metadata<'_>) -> bool {
    *meta.level() == Level::ERROR && meta.target().starts_with("actix_http::h1")
}

#[derive(Default)]
struct Seen {
    count: AtomicU64,
    last: Mutex<String>,
}

/// Counts the events [`is_client_protocol_error`] selects.
pub struct ClientErrors {
    seen: Arc<Seen>,
}

struct Message<'a>(&'a mut String);

impl Visit for Message<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            *self.0 = format!("{value:?}");
        }
    }
}

impl ClientErrors {
    /// The layer, and a thread that reports what it counted every `period` (a WARN line when
    /// there was anything).
    pub fn start(period: Duration) -> Self {
        let seen = Arc::new(Seen::default());
        let reporter = seen.clone();
        std::thread::Builder::new()
            .name("client-error-report".into())
            .spawn(move || loop {
                std::thread::sleep(period);
                let n = reporter.count.swap(0, Ordering::Relaxed);
                if n > 0 {
                    let last = reporter
                        .last
                        .lock()
                        .map(|l| l.clone())
                        .unwrap_or_default();
                    tracing::warn!(
                        count = n,
                        last = %last,
                        period_secs = period.as_secs(),
                        "client connections ended with HTTP protocol errors (malformed or abandoned requests)"
                    );
                }
            })
            .expect("spawn the client-error reporter");
        Self { seen }
    }
}

impl<S: Subscriber> Layer<S> for ClientErrors {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if !is_client_protocol_error(event.metadata()) {
            return;
        }
        self.seen.count.fetch_add(1, Ordering::Relaxed);
        let mut msg = String::new();
        event.record(&mut Message(&mut msg));
        if let Ok(mut last) = self.seen.last.lock() {
            *last = msg;
        }
    }
}
