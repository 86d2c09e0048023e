//! `wxgate inspect`: an app's shared state, read from the store the configuration names
//! (standalone, Sentinel or Cluster Redis) — a table for a person, JSON Lines for scripts
//! (one [`AppState`] per line: the shape of `GET /v1/admin/apps/{app}/state`). Nothing it
//! prints is a secret: the token arrives masked from the store.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use wxgate_config::{Settings, StoreKind};
use wxgate_engine::inspect::{read_app_state, AppState, CountState};
use wxgate_protocol::time::utc_rfc3339;
use wxgate_store::clock::SystemClock;

pub struct Options {
    pub apps: Vec<String>,
    pub json: bool,
    pub watch: Option<u64>,
    pub scan_limit: u64,
}

pub async fn run(config: Option<&Path>, opts: Options) -> Result<(), String> {
    let settings = Settings::load(config).map_err(|e| format!("configuration: {e}"))?;
    if settings.store.kind == StoreKind::Memory {
        return Err(
            "store.kind = \"memory\": the state lives inside the serving process; \
             ask it with GET /v1/admin/apps/{app}/state"
                .into(),
        );
    }
    for name in &opts.apps {
        if !settings.apps.contains_key(name) {
            return Err(format!(
                "no app `{name}` in the configuration (apps: {})",
                settings.apps.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let names: Vec<String> = if opts.apps.is_empty() {
        settings.apps.keys().cloned().collect()
    } else {
        opts.apps.clone()
    };
    let store = wxgate_server::startup::open_store(&settings, Arc::new(SystemClock))
        .map_err(|e| e.to_string())?;
    // For the queue figures (Redis store only).
    let engine = wxgate_server::startup::offline_engine(settings.clone(), "wxgate-inspect")
        .map_err(|e| e.to_string())?;
    loop {
        let mut out = String::new();
        for name in &names {
            let app = &settings.apps[name];
            let state = read_app_state(
                store.as_ref(),
                store.backend(),
                &settings,
                app,
                opts.scan_limit,
            )
            .await
            .map_err(|e| format!("app `{name}`: {e}"))?;
            let state = engine
                .with_queue_stats(app, state)
                .await
                .map_err(|e| format!("app `{name}`: {e}"))?;
            if opts.json {
                let line = serde_json::to_string(&state).map_err(|e| e.to_string())?;
                out.push_str(&line);
                out.push('\n');
            } else {
                out.push_str(&table(&state));
            }
        }
        let Some(secs) = opts.watch else {
            return write_out(&out).map(drop);
        };
        // Clear the screen and redraw in place; a reader that went away (`| head`) ends it.
        if !write_out(&format!("\x1b[2J\x1b[H{out}"))? {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(secs.max(1))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Writes `out` to stdout. A closed pipe (the reader gone, as with `| head -1`) ends the command
/// quietly, as it does for other Unix tools (`print!` would panic): the answer is then `false`.
fn write_out(out: &str) -> Result<bool, String> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(format!("cannot write to stdout: {e}")),
    }
}

/// `1h02m03s`, `4.2s`, `850ms`.
fn dur(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    let s = ms / 1000;
    let (h, m, s) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else {
        format!("{m}m{s:02}s")
    }
}

fn counted(c: &CountState) -> String {
    if c.capped {
        format!("at least {}", c.count)
    } else {
        c.count.to_string()
    }
}

/// The readable form of one app's state.
pub fn table(s: &AppState) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "app {} (appid {})   store {}   at {}",
        s.app,
        s.appid,
        s.backend,
        utc_rfc3339(s.now_ms)
    );
    let row = |o: &mut String, k: &str, v: String| {
        let _ = writeln!(o, "  {k:<13} {v}");
    };
    match &s.token {
        Some(t) => row(
            &mut o,
            "token",
            format!(
                "{}  source {}  age {}  expires in {} ({})  written by {} with fence {}",
                t.masked,
                t.source,
                dur(t.age_ms),
                dur(t.expires_in_ms),
                utc_rfc3339(t.expires_at_ms),
                t.node,
                t.fence
            ),
        ),
        None => row(&mut o, "token", "none stored".into()),
    }
    let fence = s
        .fence
        .map_or_else(|| "none".to_string(), |f| f.to_string());
    match &s.leader {
        Some(l) => row(
            &mut o,
            "leader",
            format!(
                "{}  lease left {}  fence {fence}",
                l.node,
                dur(l.lease_left_ms)
            ),
        ),
        None => row(&mut o, "leader", format!("none  fence {fence}")),
    }
    if s.windows.is_empty() {
        row(&mut o, "windows", "none configured".into());
    }
    for w in &s.windows {
        let pct = (w.used * 100).checked_div(w.limit).unwrap_or(100);
        let next = if w.next_free_in_ms == 0 {
            "a permit is free now".to_string()
        } else {
            format!("next permit frees in {}", dur(w.next_free_in_ms))
        };
        row(
            &mut o,
            "window",
            format!(
                "{:<15} {:>6} / {:<6} per {:<8} {:>3}%  {next}",
                w.api.as_str(),
                w.used,
                w.limit,
                dur(w.window_ms),
                pct
            ),
        );
    }
    for q in &s.quotas {
        row(
            &mut o,
            "daily quota",
            format!(
                "{:<15} {:>6} / {:<6} used, {} left, resets {}",
                q.api.as_str(),
                q.used,
                q.limit,
                q.left,
                utc_rfc3339(q.resets_at_ms)
            ),
        );
    }
    if s.blocks.is_empty() {
        row(&mut o, "blocks", "none".into());
    }
    for b in &s.blocks {
        row(
            &mut o,
            "block",
            format!(
                "{:<15} errcode {} ({})  until {} (in {})",
                b.api.as_str(),
                b.errcode,
                b.reason,
                utc_rfc3339(b.until_ms),
                dur(b.left_ms)
            ),
        );
    }
    row(
        &mut o,
        "idempotency",
        counted(&s.idempotency_records) + " records",
    );
    row(
        &mut o,
        "recipients",
        counted(&s.recipients_with_live_window) + " with a live per-recipient window",
    );
    row(
        &mut o,
        "state loss",
        match s.state_loss.last_detected_at_ms {
            Some(t) => format!(
                "last detected {} (grant seq {})",
                utc_rfc3339(t),
                s.state_loss.grant_seq
            ),
            None => format!("none detected (grant seq {})", s.state_loss.grant_seq),
        },
    );
    if let Some(q) = &s.queue {
        row(
            &mut o,
            "queue",
            format!(
                "{} queued ({} being delivered), oldest {}, {} dead letters",
                q.depth,
                q.pending,
                q.oldest_age_ms.map(dur).unwrap_or_else(|| "-".into()),
                q.dead_letters
            ),
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::dur;

    #[test]
    fn durations_read_well() {
        assert_eq!(dur(850), "850ms");
        assert_eq!(dur(4_200), "4.2s");
        assert_eq!(dur(62_000), "1m02s");
        assert_eq!(dur(3_723_000), "1h02m03s");
    }
}
