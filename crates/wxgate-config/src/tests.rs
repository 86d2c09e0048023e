use super::*;

const MINIMAL: &str = r#"
[apps.shop]
appid = "wx0123456789abcdef"
kind = "official_account"
secret = "s3cr3t-value"

[api_keys.orders]
key = "orders-key-0123456789"
apps = ["shop"]
"#;

#[track_caller]
fn check_err(toml: &str, expected: &str) {
    let err = Settings::from_toml_str(toml)
        .expect_err("config should be refused")
        .to_string();
    assert!(
        err.contains(expected),
        "error `{err}` does not contain `{expected}`"
    );
}

#[test]
fn minimal_config_with_defaults() {
    let s = Settings::from_toml_str(MINIMAL).unwrap();
    assert_eq!(s.server.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(s.server.max_body_bytes, 65536);
    assert_eq!(s.upstream.base_url, "https://api.weixin.qq.com");
    assert_eq!(s.upstream.connect_timeout, Duration::from_secs(3));
    assert_eq!(s.upstream.request_timeout, Duration::from_secs(5));
    assert_eq!(s.token.refresh_ahead, Duration::from_secs(240));
    assert_eq!(s.server.shutdown_timeout, Duration::from_secs(10));
    assert_eq!(s.server.drain_delay, Duration::from_secs(5));
    let app = &s.apps["shop"];
    assert_eq!(app.token_mode, TokenMode::Stable);
    assert_eq!(app.secret_source, "inline");
    assert_eq!(s.api_keys[0].apps, AppScope::Only(vec!["shop".into()]));
}

#[test]
fn secrets_never_in_debug_output() {
    let s = Settings::from_toml_str(MINIMAL).unwrap();
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("s3cr3t-value"), "{dbg}");
    assert!(!dbg.contains("orders-key-0123456789"), "{dbg}");
}

#[test]
fn secret_from_file_and_env() {
    let dir = std::env::temp_dir().join(format!("wxgate-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secret");
    std::fs::write(&file, "from-file\n").unwrap();
    let toml = MINIMAL.replace(
        r#"secret = "s3cr3t-value""#,
        &format!("secret_file = {:?}", file.display().to_string()),
    );
    let s = Settings::from_toml_str(&toml).unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(
        s.apps["shop"].secret.as_ref().unwrap().expose_secret(),
        "from-file"
    );
    assert!(s.apps["shop"].secret_source.starts_with("file:"));

    check_err(
        &MINIMAL.replace(
            r#"secret = "s3cr3t-value""#,
            r#"secret_env = "WXGATE_TEST_NOT_SET_XYZ""#,
        ),
        "apps.shop.secret_env: environment variable WXGATE_TEST_NOT_SET_XYZ is not set",
    );
}

#[test]
fn precise_errors() {
    check_err(
        &MINIMAL.replace("wx0123456789abcdef", "wx123"),
        "apps.shop.appid: `wx123` is not",
    );
    check_err(
        &MINIMAL.replace("official_account", "blog"),
        "apps.shop.kind",
    );
    check_err(
        &MINIMAL.replace(r#"secret = "s3cr3t-value""#, ""),
        "apps.shop.secret: set exactly one of",
    );
    check_err(
        &MINIMAL.replace(r#"apps = ["shop"]"#, r#"apps = ["nope"]"#),
        "unknown app `nope`",
    );
    check_err(
        &MINIMAL.replace("orders-key-0123456789", "short"),
        "at least 16 characters",
    );
    check_err(
        &format!("{MINIMAL}\n[server]\nlisten = \"nowhere\""),
        "server.listen",
    );
    check_err(
        &format!("{MINIMAL}\n[server]\nlisnet = \"0.0.0.0:1\""),
        "server.lisnet: unknown field",
    );
    check_err(
        &format!("{MINIMAL}\n[upstream]\nbase_url = \"ftp://x\""),
        "upstream.base_url",
    );
    check_err(
        &format!("{MINIMAL}\n[server]\nworkers = 0"),
        "server.workers",
    );
    check_err(
        &format!("{MINIMAL}\n[store]\nkind = \"etcd\""),
        "store.kind",
    );
    check_err(
        &format!("{MINIMAL}\n[server]\ndrain_delay_secs = 301"),
        "server.drain_delay_secs: must be at most 300",
    );
}

#[test]
fn drain_delay_may_be_zero() {
    let s = Settings::from_toml_str(&format!("{MINIMAL}\n[server]\ndrain_delay_secs = 0")).unwrap();
    assert_eq!(s.server.drain_delay, Duration::ZERO);
}

#[test]
fn the_example_file_is_valid() {
    let text = include_str!("../../../config/wxgate.example.toml");
    let dir = std::env::temp_dir().join(format!("wxgate-config-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("mini");
    std::fs::write(&secret, "mini-secret").unwrap();
    let text = text
        .replace(
            "secret_env = \"SHOP_APPSECRET\"",
            "secret = \"x-shop-secret\"",
        )
        .replace("/run/secrets/mini-appsecret", &secret.display().to_string())
        .replace(
            "key_env = \"ORDERS_API_KEY\"",
            "key = \"orders-key-0123456789\"",
        );
    let s = Settings::from_toml_str(&text).unwrap();
    assert_eq!(s.apps.len(), 2);
    assert_eq!(s.apps["mini"].kind, AppKind::MiniProgram);
}

#[test]
fn redis_store_settings() {
    let s = Settings::from_toml_str(&format!(
        "{MINIMAL}\n[store]\nkind = \"redis\"\nprefix = \"wxg\"\n[store.redis]\nmode = \"sentinel\"\nsentinels = [\"redis://10.0.0.1:26379\"]\nmaster_name = \"mymaster\"\npassword = \"redis-pass-xyz\""
    ))
    .unwrap();
    let r = s.store.redis.as_ref().unwrap();
    assert_eq!(r.mode, RedisMode::Sentinel);
    assert_eq!(s.store.prefix, "wxg");
    assert!(!format!("{s:?}").contains("redis-pass-xyz"));

    check_err(
        &format!("{MINIMAL}\n[store]\nkind = \"redis\""),
        "store.redis.url: required",
    );
    check_err(
        &format!("{MINIMAL}\n[store]\nkind = \"redis\"\n[store.redis]\nmode = \"cluster\""),
        "store.redis.nodes",
    );
    check_err(
        &format!("{MINIMAL}\n[store]\nkind = \"redis\"\n[store.redis]\nmode = \"sentinel\"\nsentinels = [\"redis://h:26379\"]"),
        "store.redis.master_name",
    );
    check_err(
        &format!("{MINIMAL}\n[store]\nkind = \"redis\"\n[store.redis]\nurl = \"http://h\""),
        "store.redis.url: must be a redis://",
    );
    check_err(
        &format!("{MINIMAL}\n[store]\nprefix = \"a{{b}}\""),
        "store.prefix",
    );
}

#[test]
fn token_modes_scopes_and_leadership_settings() {
    let redis = "\n[store]\nkind = \"redis\"\n[store.redis]\nurl = \"redis://127.0.0.1:6379\"\n";
    let external = MINIMAL.replace(
        r#"secret = "s3cr3t-value""#,
        "token_mode = \"external\"\nexternal_token_key = \"other-system:token:shop\"",
    );
    let s = Settings::from_toml_str(&format!("{external}{redis}")).unwrap();
    assert_eq!(s.apps["shop"].token_mode, TokenMode::External);
    assert!(s.apps["shop"].secret.is_none());
    assert_eq!(
        s.apps["shop"].external_token_key.as_deref(),
        Some("other-system:token:shop")
    );
    assert!(s.apps["shop"].required);
    assert_eq!(s.api_keys[0].scopes, vec![Scope::Send]);
    assert_eq!(s.token.refresh_ahead, Duration::from_secs(240));
    assert_eq!(s.token.lease_ttl, Duration::from_secs(15));

    check_err(&external, "set store.kind = \"redis\"");
    check_err(
        &format!(
            "{}{redis}",
            MINIMAL.replace(r#"secret = "s3cr3t-value""#, "token_mode = \"external\"")
        ),
        "apps.shop.external_token_key: required",
    );
    check_err(
        &format!(
            "{}{redis}",
            MINIMAL.replace(
                "official_account\"",
                "official_account\"\ntoken_mode = \"external\"\nexternal_token_key = \"k\""
            )
        ),
        "apps.shop.secret: an external-token app needs no secret",
    );
    check_err(
        &format!("{MINIMAL}\n[token]\nlease_ttl_ms = 1000\ncheck_interval_ms = 1000"),
        "token.lease_ttl_ms",
    );
    check_err(
        &MINIMAL.replace(
            r#"apps = ["shop"]"#,
            "apps = [\"shop\"]\nscopes = [\"root\"]",
        ),
        "api_keys.orders.scopes",
    );
    let admin = Settings::from_toml_str(&MINIMAL.replace(
        r#"apps = ["shop"]"#,
        "apps = [\"shop\"]\nscopes = [\"admin\"]",
    ))
    .unwrap();
    assert_eq!(admin.api_keys[0].scopes, vec![Scope::Admin]);
    let tokens = Settings::from_toml_str(&MINIMAL.replace(
        r#"apps = ["shop"]"#,
        "apps = [\"shop\"]\nscopes = [\"send\", \"token\"]",
    ))
    .unwrap();
    assert_eq!(tokens.api_keys[0].scopes, vec![Scope::Send, Scope::Token]);
}

#[test]
fn limits_quotas_and_template_registry() {
    let registry = r#"
[server]
environment = "prod"

[template_id_patterns]
dev = "tmpl-dev-*"
prod = "tmpl-prod-*"

[apps.shop.limits]
template_send = [{ limit = 900, window_ms = 60000 }]
per_recipient = [{ limit = 3, window_ms = 3600000 }]

[apps.shop.quotas]
template_send = 100000

[apps.shop.templates.shipped]
kind = "template"
fields = ["character_string1", "thing2"]
[apps.shop.templates.shipped.ids]
dev = "tmpl-dev-1"
prod = "tmpl-prod-1"
"#;
    let s = Settings::from_toml_str(&format!("{MINIMAL}{registry}")).unwrap();
    let app = &s.apps["shop"];
    assert_eq!(
        app.templates["shipped"].id, "tmpl-prod-1",
        "the id of server.environment"
    );
    assert_eq!(
        app.limits.per_api[&wxgate_protocol::api::Api::TemplateSend][0].limit,
        900
    );
    assert_eq!(app.limits.per_recipient[0].window_ms, 3_600_000);
    assert_eq!(
        app.limits.quotas[&wxgate_protocol::api::Api::TemplateSend],
        100_000
    );
    assert_eq!(s.sending.max_attempts, 3);
    assert_eq!(s.sending.guard, Duration::from_millis(100));

    // The seed's mistake: a dev id configured as the prod id.
    check_err(
        &format!("{MINIMAL}{}", registry.replace("prod = \"tmpl-prod-1\"", "prod = \"tmpl-dev-1\"")),
        "apps.shop.templates.shipped.ids.prod: `tmpl-dev-1` does not match the prod template id pattern `tmpl-prod-*`",
    );
    check_err(
        &format!(
            "{MINIMAL}{}",
            registry.replace("environment = \"prod\"", "environment = \"staging\"")
        ),
        "apps.shop.templates.shipped.ids: no id for environment `staging`",
    );
    check_err(
        &format!("{MINIMAL}{}", registry.replace("limit = 900", "limit = 0")),
        "apps.shop.limits.template_send: limit must be at least 1",
    );
    check_err(
        &format!(
            "{MINIMAL}{}",
            registry.replace(
                "[apps.shop.quotas]\ntemplate_send",
                "[apps.shop.quotas]\ntoken"
            )
        ),
        "apps.shop.quotas.token",
    );
    check_err(
        &format!("{MINIMAL}\n[retry]\nmax_attempts = 0"),
        "retry.max_attempts",
    );
}

/// Every problem in one run, each under the field the user wrote: three missing secrets (one
/// from an unset variable) and a short key, plus a bad section elsewhere.
#[test]
fn every_problem_is_reported_in_one_run() {
    let toml = r#"
[server]
workers = 0

[apps.shop]
appid = "wx0123456789abcdef"
kind = "official_account"
secret_env = "WXGATE_TEST_UNSET_SECRET_VARIABLE"

[apps.mini]
appid = "wxfedcba9876543210"
kind = "mini_program"
secret_file = "/nonexistent/wxgate/mini-secret"

[apps.third]
appid = "wx00112233445566aa"
kind = "official_account"

[api_keys.orders]
key_env = "WXGATE_TEST_SHORT_KEY"
apps = ["shop"]
"#;
    std::env::set_var("WXGATE_TEST_SHORT_KEY", "short");
    let err = Settings::from_toml_str(toml).expect_err("refused");
    let problems = err.problems();
    let fields: Vec<&str> = problems
        .iter()
        .map(|p| p.split(':').next().unwrap_or(""))
        .collect();
    for expected in [
        "server.workers",
        "apps.shop.secret_env",
        "apps.mini.secret_file",
        "apps.third.secret",
        "api_keys.orders.key_env",
    ] {
        assert!(
            fields.contains(&expected),
            "`{expected}` missing from {problems:#?}"
        );
    }
    assert_eq!(problems.len(), 5, "{problems:#?}");
}

#[test]
fn server_hardening_settings() {
    let s = Settings::from_toml_str(MINIMAL).unwrap();
    assert_eq!(s.server.request_timeout, Duration::from_secs(10));
    assert_eq!(s.server.max_connections, 10_000);
    assert!(s.missing_for_serving().is_empty());
    let empty = Settings::from_toml_str("").unwrap();
    assert_eq!(empty.missing_for_serving().len(), 2);
    let allowed = Settings::from_toml_str("[server]\nallow_empty_config = true\n").unwrap();
    assert!(allowed.missing_for_serving().is_empty());
    check_err(
        "[server]\nrequest_timeout_ms = 10\n",
        "server.request_timeout_ms",
    );
}

#[test]
fn queue_section_defaults_and_validation() {
    let s = Settings::from_toml_str(MINIMAL).unwrap();
    assert!(s.queue.enabled);
    assert_eq!(s.queue.max_backlog, 100_000);
    assert_eq!(s.queue.concurrency, 8);
    assert_eq!(s.queue.claim_idle, Duration::from_secs(30));
    assert!(s.queue.callback_hosts.is_empty());
    let s = Settings::from_toml_str(&format!(
        "[queue]\nmax_backlog = 50\ncallback_hosts = [\"Hooks.Example.com:8443\"]\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(s.queue.max_backlog, 50);
    assert_eq!(s.queue.callback_hosts, vec!["hooks.example.com:8443"]);
    check_err(
        &format!("[queue]\nconcurrency = 0\n{MINIMAL}"),
        "queue.concurrency",
    );
    check_err(
        &format!("[queue]\nmax_backlog = 0\n{MINIMAL}"),
        "queue.max_backlog",
    );
    check_err(
        &format!("[queue]\ncallback_hosts = [\"https://x/\"]\n{MINIMAL}"),
        "queue.callback_hosts",
    );
    check_err(&format!("[queue]\nsurprise = 1\n{MINIMAL}"), "surprise");
}

#[test]
fn tracing_otlp_endpoint_is_optional_and_must_be_http() {
    let none = Settings::from_toml_str("[server]\nallow_empty_config = true\n").unwrap();
    assert_eq!(none.tracing.otlp_endpoint, None);
    assert_eq!(none.tracing.service_name, "wxgate");
    let on = Settings::from_toml_str(
        "[server]\nallow_empty_config = true\n[tracing]\notlp_endpoint = \"http://otel:4318/\"\nservice_name = \"gw-eu\"\n",
    )
    .unwrap();
    assert_eq!(
        on.tracing.otlp_endpoint.as_deref(),
        Some("http://otel:4318")
    );
    assert_eq!(on.tracing.service_name, "gw-eu");
    let bad = Settings::from_toml_str(
        "[server]\nallow_empty_config = true\n[tracing]\notlp_endpoint = \"otel:4318\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(bad.contains("tracing.otlp_endpoint"), "{bad}");
}
