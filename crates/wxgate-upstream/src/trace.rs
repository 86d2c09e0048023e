//! W3C Trace Context (`traceparent`, <https://www.w3.org/TR/trace-context/>): the request's
//! trace, carried in a task-local for the duration of one request, so that each upstream
//! attempt forwards the same trace id with its own span id as the parent. The task-local is
//! scoped to the request's future (no process-wide state); code outside a request (the
//! background token refresher) starts a new trace per call.

use std::fmt;
use std::future::Future;

/// A trace id, a span id and the trace flags (bit 0: sampled).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// Runs `f` with `ctx` as the current trace context (see [`current`]).
pub async fn scope<F: Future>(ctx: TraceContext, f: F) -> F::Output {
    CURRENT.scope(ctx, f).await
}

/// The trace context of the request this task is serving, if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|c| *c).ok()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    // UUID v4 bytes come from the OS's random source; no generator state is kept here.
    let mut out = [0u8; N];
    let mut filled = 0;
    while filled < N {
        let r = uuid::Uuid::new_v4().into_bytes();
        let n = (N - filled).min(r.len());
        out[filled..filled + n].copy_from_slice(&r[..n]);
        filled += n;
    }
    out
}

fn hex_to<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Appends the lower-case hex of `bytes` (no formatting machinery: this runs for every
/// request and every upstream attempt).
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

impl TraceContext {
    /// A new trace (random trace and span ids, sampled).
    pub fn new_root() -> Self {
        loop {
            let (trace_id, span_id) = (random_bytes::<16>(), random_bytes::<8>());
            if trace_id != [0; 16] && span_id != [0; 8] {
                return Self {
                    trace_id,
                    span_id,
                    flags: 0x01,
                };
            }
        }
    }

    /// Parses a `traceparent` header. Version `00` must be exactly
    /// `00-<32 hex>-<16 hex>-<2 hex>`; a later version may append `-...` fields (ignored);
    /// version `ff`, upper-case hex and all-zero ids are invalid. `None` when invalid: the
    /// caller then starts a new trace (never an error answer).
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let version = hex_to::<1>(header.get(0..2)?)?[0];
        if version == 0xff || (version == 0 && header.len() != 55) {
            return None;
        }
        if header.len() > 55 && header.as_bytes()[55] != b'-' {
            return None;
        }
        let b = header.as_bytes();
        if b.get(2) != Some(&b'-') || b.get(35) != Some(&b'-') || b.get(52) != Some(&b'-') {
            return None;
        }
        let trace_id = hex_to::<16>(header.get(3..35)?)?;
        let span_id = hex_to::<8>(header.get(36..52)?)?;
        let flags = hex_to::<1>(header.get(53..55)?)?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A new span of the same trace (the caller's span becomes its parent).
    pub fn child(&self) -> Self {
        let mut span_id = random_bytes::<8>();
        while span_id == [0; 8] {
            span_id = random_bytes::<8>();
        }
        Self {
            trace_id: self.trace_id,
            span_id,
            flags: self.flags,
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// The `traceparent` header value naming this span as the parent.
    pub fn header(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.span_id);
        out.push('-');
        push_hex(&mut out, &[self.flags]);
        out
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header())
    }
}

#[cfg(test)]
mod tests {
    use super::TraceContext;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_version_00() {
        let c = TraceContext::parse(GOOD).unwrap();
        assert_eq!(c.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id_hex(), "00f067aa0ba902b7");
        assert_eq!(c.flags, 1);
        assert_eq!(c.header(), GOOD);
    }

    #[test]
    fn refuses_invalid_values() {
        for bad in [
            "",
            "00",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn later_versions_keep_the_known_fields() {
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert_eq!(
            TraceContext::parse(v).unwrap().trace_id_hex(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn children_keep_the_trace_and_get_new_spans() {
        let root = TraceContext::new_root();
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
        assert_ne!(TraceContext::new_root().trace_id, root.trace_id);
        assert_eq!(TraceContext::parse(&child.header()), Some(child));
    }

    #[tokio::test]
    async fn the_current_context_is_scoped_to_the_future() {
        assert_eq!(super::current(), None);
        let c = TraceContext::new_root();
        assert_eq!(super::scope(c, async { super::current() }).await, Some(c));
        assert_eq!(super::current(), None);
    }
}
