//! `wxgate dlq list --config FILE APP [--json]` and
//! `wxgate dlq redrive --config FILE APP (ID... | --all)`: the operator's side of the
//! dead-letter streams (the same as `GET /v1/admin/apps/{app}/dlq` and `.../dlq/redrive`).

use std::path::PathBuf;

use clap::Subcommand;
use wxgate_config::Settings;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List an app's dead letters, oldest first, with their last status and error.
    List {
        #[arg(long, short, env = "WXGATE_CONFIG")]
        config: PathBuf,
        /// The app's name (as in `[apps.NAME]`).
        app: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON document instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back on the queue (attempts reset, a new idempotency generation).
    Redrive {
        #[arg(long, short, env = "WXGATE_CONFIG")]
        config: PathBuf,
        app: String,
        /// Message ids to re-drive.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Re-drive every dead letter of the app.
        #[arg(long)]
        all: bool,
    },
}

fn engine(
    config: &std::path::Path,
    app: &str,
) -> Result<(wxgate_engine::Engine, wxgate_config::App), String> {
    let settings = Settings::load(Some(config)).map_err(|e| format!("configuration: {e}"))?;
    let found = settings
        .apps
        .get(app)
        .cloned()
        .ok_or_else(|| format!("no app `{app}` in {}", config.display()))?;
    let engine = wxgate_server::startup::offline_engine(settings, "wxgate-dlq")
        .map_err(|e| e.to_string())?;
    Ok((engine, found))
}

pub async fn run(cmd: DlqCommand) -> Result<(), String> {
    match cmd {
        DlqCommand::List {
            config,
            app,
            limit,
            json,
        } => {
            let (engine, app) = engine(&config, &app)?;
            let letters = engine
                .dead_letters(&app, limit.clamp(1, 100_000))
                .await
                .map_err(|e| e.to_string())?;
            if json {
                let items: Vec<_> = letters
                    .iter()
                    .map(|(l, st)| serde_json::json!({ "id": l.id, "entry": l.entry, "message": st }))
                    .collect();
                say!(
                    "{}",
                    serde_json::json!({ "app": app.name, "dead_letters": items })
                );
            } else {
                say!("{} dead letter(s) of app {}", letters.len(), app.name);
                for (l, st) in &letters {
                    let why = st
                        .as_ref()
                        .and_then(|s| s.error.as_ref())
                        .map(|e| format!("{}: {}", e.code, e.message))
                        .unwrap_or_else(|| "(status expired)".into());
                    say!("  {}  {why}", l.id);
                }
            }
            Ok(())
        }
        DlqCommand::Redrive {
            config,
            app,
            ids,
            all,
        } => {
            let (engine, app) = engine(&config, &app)?;
            let which = if all { None } else { Some(ids.as_slice()) };
            let done = engine
                .redrive(&app, which)
                .await
                .map_err(|e| e.to_string())?;
            say!("re-driven {} message(s) of app {}", done.len(), app.name);
            for id in &done {
                say!("  {id}");
            }
            if let Some(ids) = which {
                let missing: Vec<_> = ids.iter().filter(|i| !done.contains(i)).collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "not in the dead letters (or their status expired): {}",
                        missing
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            Ok(())
        }
    }
}
