//! The template registry: per app, templates by alias with their WeChat id for this environment
//! (`server.environment`) and their `data` fields.
//!
//! - A send may name a template by alias or by id; either way a registered template's fields
//!   are enforced (missing or extra keys are a 422 naming the key) before any permit is taken.
//!   With `strict_templates`, unregistered ids are refused.
//! - At start-up every node checks the registry against WeChat's own template lists
//!   (`get_all_private_template` for template messages, `wxaapi/newtmpl/gettemplate` for
//!   subscribe messages): each id must exist, with the configured fields if any (fields not
//!   configured are taken from WeChat's `{{name.DATA}}` content). The lists are cached in the
//!   store for an hour (`cache:templates`), so a cluster asks WeChat about once an hour, never
//!   per send. Problems make `/readyz` fail, naming them.

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use wxgate_config::sending::{TemplateDef, TemplateKind};
use wxgate_config::{App, AppKind, Settings};
use wxgate_protocol::template_content::placeholders;
use wxgate_protocol::wire::MessageData;
use wxgate_store::SharedState;
use wxgate_upstream::{Answered, WechatClient};

use crate::outcome::SendError;
use crate::token::TokenManager;

const CACHE_NAME: &str = "templates";
const CACHE_TTL_MS: u64 = 3_600_000;

/// One template WeChat lists for the app.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Listed {
    id: String,
    subscribe: bool,
    content: String,
}

#[derive(Default)]
struct AppRegistry {
    templates: RwLock<Vec<TemplateDef>>,
    problems: RwLock<Vec<String>>,
    verified: std::sync::atomic::AtomicBool,
    /// One check at a time per app.
    verifying: tokio::sync::Mutex<()>,
}

pub struct Registry {
    apps: HashMap<String, AppRegistry>,
}

impl Registry {
    pub fn new(settings: &Settings) -> Self {
        let apps = settings
            .apps
            .values()
            .map(|a| {
                let r = AppRegistry::default();
                *r.templates.write().unwrap_or_else(|p| p.into_inner()) =
                    a.templates.values().cloned().collect();
                (a.name.clone(), r)
            })
            .collect();
        Self { apps }
    }

    fn app(&self, app: &App) -> &AppRegistry {
        self.apps
            .get(&app.name)
            .expect("a registry per configured app")
    }

    /// Resolves `template_id` (an alias or an id) for `kind`, and checks `data` against the
    /// template's fields. Returns the WeChat id to send.
    pub fn check(
        &self,
        app: &App,
        template_id: &str,
        kind: TemplateKind,
        data: &MessageData,
    ) -> Result<String, SendError> {
        let templates = self
            .app(app)
            .templates
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let found = templates
            .iter()
            .find(|t| t.alias == template_id || t.id == template_id);
        let Some(t) = found else {
            if app.strict_templates {
                return Err(invalid_field(
                    "template_id",
                    format!(
                        "`{template_id}` is not a registered template of app `{}`",
                        app.name
                    ),
                ));
            }
            return Ok(template_id.to_string());
        };
        if t.kind != kind {
            let what = match t.kind {
                TemplateKind::Template => "a template message",
                TemplateKind::Subscribe => "a subscribe message",
            };
            return Err(invalid_field(
                "template_id",
                format!("template `{}` is registered as {what} template", t.alias),
            ));
        }
        if let Some(fields) = &t.fields {
            for f in fields {
                if !data.contains_key(f) {
                    return Err(invalid_field(
                        format!("data.{f}"),
                        format!("`data.{f}` is required by template `{}`", t.alias),
                    ));
                }
            }
            for k in data.keys() {
                if !fields.contains(k) {
                    return Err(invalid_field(
                        format!("data.{k}"),
                        format!(
                            "`data.{k}` is not a field of template `{}` (fields: {})",
                            t.alias,
                            fields.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(t.id.clone())
    }

    /// Whether `template_id` names a registered template whose fields are not known yet (not
    /// configured, and WeChat's lists not read yet).
    pub fn needs_fields(&self, app: &App, template_id: &str) -> bool {
        let templates = self
            .app(app)
            .templates
            .read()
            .unwrap_or_else(|p| p.into_inner());
        templates
            .iter()
            .any(|t| (t.alias == template_id || t.id == template_id) && t.fields.is_none())
            && !self
                .app(app)
                .verified
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Problems found by the last check against WeChat (for `/readyz`).
    pub fn problems(&self, app: &App) -> Vec<String> {
        self.app(app)
            .problems
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn verified(&self, app: &App) -> bool {
        let r = self.app(app);
        r.templates
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
            || r.verified.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Checks the app's registered templates against WeChat's lists (cached in the store).
    /// `Err` means WeChat or the store could not be asked: try again later.
    pub async fn verify(
        &self,
        app: &App,
        tokens: &TokenManager,
        client: &WechatClient,
        store: &SharedState,
    ) -> Result<(), String> {
        let reg = self.app(app);
        if reg
            .templates
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            return Ok(());
        }
        let _one = reg.verifying.lock().await;
        if reg.verified.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let listed: Vec<Listed> = match store.cache.get_cached(&app.appid, CACHE_NAME).await {
            Ok(Some(json)) => serde_json::from_str(&json).map_err(|e| e.to_string())?,
            _ => {
                let fresh = fetch_lists(app, tokens, client).await?;
                let json = serde_json::to_string(&fresh).map_err(|e| e.to_string())?;
                if let Err(e) = store
                    .cache
                    .put_cached(&app.appid, CACHE_NAME, &json, CACHE_TTL_MS)
                    .await
                {
                    tracing::warn!(app = %app.name, error = %e, "cannot cache the template lists");
                }
                fresh
            }
        };
        let mut problems = Vec::new();
        let mut templates = reg.templates.write().unwrap_or_else(|p| p.into_inner());
        for t in templates.iter_mut() {
            let subscribe = t.kind == TemplateKind::Subscribe;
            let Some(l) = listed
                .iter()
                .find(|l| l.id == t.id && l.subscribe == subscribe)
            else {
                problems.push(format!(
                    "template `{}` (id `{}`) is not in WeChat's {} list of app `{}`",
                    t.alias,
                    t.id,
                    if subscribe {
                        "subscribe template"
                    } else {
                        "template"
                    },
                    app.name
                ));
                continue;
            };
            let theirs: Vec<String> = placeholders(&l.content);
            if theirs.is_empty() {
                // WeChat may list one-time subscribe templates without content: nothing to compare.
                continue;
            }
            match &t.fields {
                Some(ours) => {
                    let (a, b): (BTreeSet<_>, BTreeSet<_>) =
                        (ours.iter().collect(), theirs.iter().collect());
                    if a != b {
                        problems.push(format!(
                            "template `{}`: configured fields [{}] differ from WeChat's [{}]",
                            t.alias,
                            ours.join(", "),
                            theirs.join(", ")
                        ));
                    }
                }
                None => t.fields = Some(theirs),
            }
        }
        drop(templates);
        for p in &problems {
            tracing::error!(app = %app.name, problem = %p, "template registry does not match WeChat");
        }
        *reg.problems.write().unwrap_or_else(|p| p.into_inner()) = problems;
        reg.verified
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

async fn fetch_lists(
    app: &App,
    tokens: &TokenManager,
    client: &WechatClient,
) -> Result<Vec<Listed>, String> {
    let token = tokens.get(app).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if app.kind == AppKind::OfficialAccount {
        match client
            .private_templates(&token.value)
            .await
            .map_err(|e| e.to_string())?
        {
            Answered::Ok(l) => out.extend(l.template_list.into_iter().map(|t| Listed {
                id: t.template_id,
                subscribe: false,
                content: t.content,
            })),
            Answered::Err(e) => {
                return Err(format!(
                    "get_all_private_template: {} {}",
                    e.errcode, e.errmsg
                ))
            }
        }
    }
    match client
        .new_templates(&token.value)
        .await
        .map_err(|e| e.to_string())?
    {
        Answered::Ok(l) => out.extend(l.data.into_iter().map(|t| Listed {
            id: t.pri_tmpl_id,
            subscribe: true,
            content: t.content,
        })),
        // An OA without subscribe messages may be refused this API: its template list suffices.
        Answered::Err(e) if app.kind == AppKind::OfficialAccount => {
            tracing::debug!(app = %app.name, errcode = e.errcode, "gettemplate refused");
        }
        Answered::Err(e) => return Err(format!("gettemplate: {} {}", e.errcode, e.errmsg)),
    }
    Ok(out)
}

fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> SendError {
    SendError::InvalidField {
        field: field.into(),
        message: message.into(),
    }
}
