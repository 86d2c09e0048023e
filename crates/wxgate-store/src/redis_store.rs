//! The Redis backend: every operation is one Lua script (`src/lua/*.lua`, one atomic operation
//! per file) run with EVALSHA, falling back to loading the script on NOSCRIPT — so it survives
//! `SCRIPT FLUSH`, a Redis restart and a failover. Every key a script touches is passed in
//! `KEYS` and carries the appid hash tag, so each script runs on one Cluster slot. Time inside
//! scripts is Redis `TIME`.
//!
//! Topologies: standalone (`redis://`, `rediss://`) through a `ConnectionManager` that
//! reconnects by itself; Sentinel (master name + sentinel addresses) through a multiplexed
//! connection to the master that Sentinel names (checked with `ROLE`), dropped and re-resolved
//! when a watcher sees the sentinels name another master, or after an error that means the
//! master moved (`READONLY`, connection refused or reset); Cluster (seed nodes)
//! through redis-rs's cluster client, which follows `MOVED`/`ASK`. Connections are made lazily:
//! a gateway starts while Redis is down and reports not-ready until Redis answers.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, RedisError, Script, ScriptInvocation, Value};

use crate::keys::Keys;
use crate::{
    Acquire, AcquireRequest, ExternalToken, IdemClaim, NewToken, Store, StoreError, StoredToken,
    TokenSource, TokenWrite,
};

/// Where Redis is.
#[derive(Clone, PartialEq, Eq)]
pub enum Topology {
    /// `redis://host:port/db` or `rediss://...` (credentials may be in the URL).
    Standalone { url: String },
    /// Sentinel addresses (`redis://host:26379`) and the monitored master's name.
    Sentinel {
        sentinels: Vec<String>,
        master_name: String,
    },
    /// Seed nodes of a Redis Cluster.
    Cluster { nodes: Vec<String> },
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry a password: show hosts only.
        let hosts =
            |urls: &[String]| -> Vec<String> { urls.iter().map(|u| redact_url(u)).collect() };
        match self {
            Self::Standalone { url } => write!(f, "Standalone({})", redact_url(url)),
            Self::Sentinel {
                sentinels,
                master_name,
            } => {
                write!(f, "Sentinel({:?}, master {master_name})", hosts(sentinels))
            }
            Self::Cluster { nodes } => write!(f, "Cluster({:?})", hosts(nodes)),
        }
    }
}

/// `redis://user:pass@host:port/0` → `redis://***@host:port/0`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisConfig {
    pub topology: Topology,
    /// Key prefix (`wxgate`): every key is `<prefix>:{<appid>}:...`.
    pub prefix: String,
    pub username: Option<String>,
    /// Password for the data nodes (and for sentinels when `sentinel_password` is unset).
    pub password: Option<String>,
    pub sentinel_password: Option<String>,
    pub connect_timeout: Duration,
    /// Longest wait for one operation's answer; past it the operation fails as unavailable.
    pub command_timeout: Duration,
    /// PEM root certificate(s) to trust for `rediss://` instead of the system's store (a
    /// private CA).
    pub tls_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("topology", &self.topology)
            .field("prefix", &self.prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

/// The scripts, loaded from their files at compile time. `Script` keeps the SHA1.
struct Scripts {
    acquire: Script,
    block: Script,
    token_write: Script,
    token_invalidate: Script,
    lease_acquire: Script,
    lease_renew: Script,
    lease_release: Script,
    idem_claim: Script,
    idem_complete: Script,
    idem_release: Script,
    external_token_read: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            acquire: Script::new(include_str!("lua/acquire.lua")),
            block: Script::new(include_str!("lua/block.lua")),
            token_write: Script::new(include_str!("lua/token_write.lua")),
            token_invalidate: Script::new(include_str!("lua/token_invalidate.lua")),
            lease_acquire: Script::new(include_str!("lua/lease_acquire.lua")),
            lease_renew: Script::new(include_str!("lua/lease_renew.lua")),
            lease_release: Script::new(include_str!("lua/lease_release.lua")),
            idem_claim: Script::new(include_str!("lua/idem_claim.lua")),
            idem_complete: Script::new(include_str!("lua/idem_complete.lua")),
            idem_release: Script::new(include_str!("lua/idem_release.lua")),
            external_token_read: Script::new(include_str!("lua/external_token_read.lua")),
        }
    }
}

#[derive(Clone)]
enum Conn {
    Managed(ConnectionManager),
    Plain(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// One connection type for the store's calls, whatever the topology.
impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Plain(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Plain(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The connection slot, shared with the Sentinel watcher.
#[derive(Default)]
struct Slot {
    current: Mutex<Option<Conn>>,
    /// The master the current connection goes to (Sentinel only).
    master: Mutex<Option<(String, u16)>>,
}

impl Slot {
    fn conn(&self) -> Option<Conn> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, conn: Option<Conn>, master: Option<(String, u16)>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = conn;
        *self.master.lock().unwrap_or_else(|p| p.into_inner()) = master;
    }

    fn master(&self) -> Option<(String, u16)> {
        self.master
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Holds the current connection; makes one (single-flight) when there is none.
///
/// With Sentinel, a watcher task asks the sentinels every 500 ms where the master is and drops
/// the connection as soon as the answer changes: after a failover the demoted master keeps
/// accepting writes until the sentinels reconfigure it (about 10 s), and writes sent there in
/// the meantime would be lost. The watcher lives as long as the store (aborted on drop).
struct Connector {
    cfg: RedisConfig,
    slot: Arc<Slot>,
    connecting: tokio::sync::Mutex<()>,
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Connector {
    fn drop(&mut self) {
        if let Some(w) = self
            .watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            w.abort();
        }
    }
}

/// Asks the sentinels, in turn, where the master named `name` is.
async fn resolve_master(
    sentinels: &[redis::ConnectionInfo],
    name: &str,
    timeout: Duration,
    ca: Option<&[u8]>,
) -> Result<(String, u16), RedisError> {
    let mut last = None;
    for info in sentinels {
        let attempt = async {
            let client = client_for(info.clone(), ca)?;
            let cfg = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout));
            let mut c = client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await?;
            let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(name)
                .query_async(&mut c)
                .await?;
            addr.ok_or_else(|| {
                RedisError::from((
                    redis::ErrorKind::Io,
                    "sentinel does not know the master",
                    name.to_string(),
                ))
            })
        };
        match attempt.await {
            Ok(addr) => return Ok(addr),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| RedisError::from((redis::ErrorKind::Io, "no sentinel configured"))))
}

impl Connector {
    async fn get(&self) -> Result<Conn, StoreError> {
        if let Some(c) = self.slot.conn() {
            return Ok(c);
        }
        let _flight = self.connecting.lock().await;
        if let Some(c) = self.slot.conn() {
            return Ok(c);
        }
        let (conn, master) = tokio::time::timeout(self.cfg.connect_timeout, self.connect())
            .await
            .map_err(|_| StoreError::Unavailable("connecting to Redis timed out".into()))?
            .map_err(|e| classify(&e))?;
        self.slot.set(Some(conn.clone()), master);
        Ok(conn)
    }

    /// Forget the connection: the next operation connects again (and, with Sentinel, asks
    /// the sentinels where the master is now).
    fn reset(&self) {
        self.slot.set(None, None);
    }

    fn sentinel_infos(
        &self,
        sentinels: &[String],
    ) -> Result<Vec<redis::ConnectionInfo>, RedisError> {
        sentinels
            .iter()
            .map(|u| {
                let info = redis::IntoConnectionInfo::into_connection_info(u.as_str())?;
                Ok(with_credentials(
                    info,
                    None,
                    self.cfg.sentinel_password.as_deref(),
                ))
            })
            .collect()
    }

    fn start_watcher(&self, infos: Vec<redis::ConnectionInfo>, name: String) {
        let mut w = self.watcher.lock().unwrap_or_else(|p| p.into_inner());
        if w.is_some() {
            return;
        }
        let slot = self.slot.clone();
        let timeout = self.cfg.connect_timeout;
        let ca = self.cfg.tls_ca_pem.clone();
        *w = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Some(connected) = slot.master() else {
                    continue;
                };
                if let Ok(now) = resolve_master(&infos, &name, timeout, ca.as_deref()).await {
                    if now != connected {
                        tracing::warn!(
                            from = %format!("{}:{}", connected.0, connected.1),
                            to = %format!("{}:{}", now.0, now.1),
                            "Redis master moved (Sentinel failover): reconnecting"
                        );
                        slot.set(None, None);
                    }
                }
            }
        }));
    }

    async fn connect(&self) -> Result<(Conn, Option<(String, u16)>), RedisError> {
        let cfg = &self.cfg;
        match &cfg.topology {
            Topology::Standalone { url } => {
                let mut info: redis::ConnectionInfo =
                    redis::IntoConnectionInfo::into_connection_info(url.as_str())?;
                info = with_credentials(info, cfg.username.as_deref(), cfg.password.as_deref());
                let client = client_for(info, cfg.tls_ca_pem.as_deref())?;
                let mgr_cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(cfg.connect_timeout))
                    .set_response_timeout(Some(cfg.command_timeout))
                    .set_number_of_retries(1);
                Ok((
                    Conn::Managed(ConnectionManager::new_with_config(client, mgr_cfg).await?),
                    None,
                ))
            }
            Topology::Sentinel {
                sentinels,
                master_name,
            } => {
                // Sentinel's client protocol: ask a sentinel for the master's address, connect,
                // and check with ROLE that the node really is the master.
                let infos = self.sentinel_infos(sentinels)?;
                // Data nodes use TLS when the sentinels do.
                let scheme = if sentinels.iter().any(|u| u.starts_with("rediss://")) {
                    "rediss"
                } else {
                    "redis"
                };
                let (host, port) = resolve_master(
                    &infos,
                    master_name,
                    cfg.connect_timeout,
                    cfg.tls_ca_pem.as_deref(),
                )
                .await?;
                let info = redis::IntoConnectionInfo::into_connection_info(
                    format!("{scheme}://{host}:{port}").as_str(),
                )?;
                let info = with_credentials(info, cfg.username.as_deref(), cfg.password.as_deref());
                let conn_cfg = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(cfg.connect_timeout))
                    .set_response_timeout(Some(cfg.command_timeout));
                let mut conn = client_for(info, cfg.tls_ca_pem.as_deref())?
                    .get_multiplexed_async_connection_with_config(&conn_cfg)
                    .await?;
                let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
                let is_master = role.first().and_then(as_string).as_deref() == Some("master");
                if !is_master {
                    return Err(RedisError::from((
                        redis::ErrorKind::Io,
                        "the node Sentinel named is not (yet) a master",
                        format!("{host}:{port}"),
                    )));
                }
                self.start_watcher(infos, master_name.clone());
                Ok((Conn::Plain(conn), Some((host, port))))
            }
            Topology::Cluster { nodes } => {
                let mut b = redis::cluster::ClusterClient::builder(nodes.clone())
                    .connection_timeout(cfg.connect_timeout)
                    .response_timeout(cfg.command_timeout)
                    .retries(2);
                if let Some(u) = &cfg.username {
                    b = b.username(u);
                }
                if let Some(p) = &cfg.password {
                    b = b.password(p);
                }
                if let Some(pem) = &cfg.tls_ca_pem {
                    b = b.certs(redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem.clone()),
                    });
                }
                Ok((
                    Conn::Cluster(b.build()?.get_async_connection().await?),
                    None,
                ))
            }
        }
    }
}

/// A client for one node, trusting the configured CA for `rediss://`.
fn client_for(info: redis::ConnectionInfo, ca: Option<&[u8]>) -> Result<redis::Client, RedisError> {
    match ca {
        Some(pem) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        ),
        None => redis::Client::open(info),
    }
}

fn with_credentials(
    mut info: redis::ConnectionInfo,
    username: Option<&str>,
    password: Option<&str>,
) -> redis::ConnectionInfo {
    let mut r = info.redis_settings().clone();
    if let Some(u) = username {
        r = r.set_username(u);
    }
    if let Some(p) = password {
        r = r.set_password(p);
    }
    info = info.set_redis_settings(r);
    info
}

/// A Redis error as the store reports it. Connection-level failures, timeouts, failovers in
/// progress and cluster reconfiguration are `Unavailable` (callers fail closed, 503); anything
/// else means a script or protocol bug.
fn classify(e: &RedisError) -> StoreError {
    let msg = e.to_string();
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_cluster_error()
        || is_readonly(e)
        || msg.contains("LOADING")
        || msg.contains("MASTERDOWN")
        || msg.contains("TRYAGAIN")
        || msg.contains("CLUSTERDOWN")
    {
        StoreError::Unavailable(msg)
    } else {
        StoreError::Protocol(msg)
    }
}

fn is_readonly(e: &RedisError) -> bool {
    e.to_string().contains("READONLY")
}

/// The Redis store.
pub struct RedisStore {
    keys: Keys,
    scripts: Arc<Scripts>,
    conn: Connector,
}

impl RedisStore {
    /// Builds the store; connects on first use (a gateway may start before Redis does).
    pub fn new(cfg: RedisConfig) -> Result<Self, StoreError> {
        // rustls needs one process-wide crypto provider for `rediss://`; choose ring (the one
        // reqwest uses too) rather than depend on which crate features happen to be unified.
        // An error only means a provider is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let keys = Keys::new(&cfg.prefix).map_err(|e| StoreError::Protocol(e.to_string()))?;
        Ok(Self {
            keys,
            scripts: Arc::new(Scripts::new()),
            conn: Connector {
                cfg,
                slot: Arc::new(Slot::default()),
                connecting: tokio::sync::Mutex::new(()),
                watcher: Mutex::new(None),
            },
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Runs a script invocation (EVALSHA, NOSCRIPT → load and retry); see [`Self::exec`].
    async fn run<T: FromRedisValue>(&self, inv: &ScriptInvocation<'_>) -> Result<T, StoreError> {
        self.exec(|mut c| async move { inv.invoke_async::<T>(&mut c).await })
            .await
    }

    /// Runs a single command; see [`Self::exec`].
    async fn cmd<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        self.exec(|mut c| async move { cmd.query_async::<T>(&mut c).await })
            .await
    }

    /// Runs `op` on the current connection within the command timeout. A connection-level
    /// failure drops the connection (the next call reconnects, with Sentinel to the current
    /// master). An answer proving the command did not run (`READONLY`: we reached a demoted
    /// master; a refused connection) is retried once on a fresh connection. Other errors are not
    /// retried: a script that may have run must not run twice.
    async fn exec<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let mut retried = false;
        loop {
            let conn = self.conn.get().await?;
            match tokio::time::timeout(self.conn.cfg.command_timeout, op(conn)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    let err = classify(&e);
                    if matches!(err, StoreError::Unavailable(_)) {
                        self.conn.reset();
                    }
                    if (is_readonly(&e) || e.is_connection_refusal()) && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(err);
                }
                Err(_) => {
                    self.conn.reset();
                    return Err(StoreError::Unavailable(
                        "Redis did not answer in time".into(),
                    ));
                }
            }
        }
    }
}

fn protocol(what: &str, v: impl fmt::Debug) -> StoreError {
    StoreError::Protocol(format!("unexpected answer to {what}: {v:?}"))
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn now_ms(&self) -> Result<u64, StoreError> {
        let (secs, micros): (u64, u64) = self.cmd(&redis::cmd("TIME")).await?;
        Ok(secs * 1000 + micros / 1000)
    }

    async fn read_token(&self, appid: &str) -> Result<Option<StoredToken>, StoreError> {
        let h: std::collections::HashMap<String, String> = self
            .cmd(redis::cmd("HGETALL").arg(self.keys.token(appid)))
            .await?;
        if h.is_empty() {
            return Ok(None);
        }
        let num = |f: &str| -> Result<u64, StoreError> {
            h.get(f)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| protocol("token hash", f))
        };
        let source = match h.get("source").map(String::as_str) {
            Some("classic") => TokenSource::Classic,
            Some("external") => TokenSource::External,
            _ => TokenSource::Stable,
        };
        // The key expires with the token (PEXPIREAT), so a present key is a live token.
        Ok(Some(StoredToken {
            access_token: h
                .get("access_token")
                .cloned()
                .ok_or_else(|| protocol("token hash", "access_token"))?,
            expires_at_ms: num("expires_at_ms")?,
            fence: num("fence").unwrap_or(0),
            node: h.get("node").cloned().unwrap_or_default(),
            fetched_at_ms: num("fetched_at_ms").unwrap_or(0),
            source,
        }))
    }

    async fn write_token(&self, appid: &str, token: &NewToken) -> Result<TokenWrite, StoreError> {
        let mut inv = self.scripts.token_write.prepare_invoke();
        inv.key(self.keys.token(appid))
            .key(self.keys.fence(appid))
            .arg(&token.access_token)
            .arg(token.expires_in_ms)
            .arg(token.fence)
            .arg(&token.node)
            .arg(token.source.as_str());
        let v: Vec<u64> = self.run(&inv).await?;
        match v.as_slice() {
            [1, expires_at_ms, fetched_at_ms] => Ok(TokenWrite::Written(StoredToken {
                access_token: token.access_token.clone(),
                expires_at_ms: *expires_at_ms,
                fence: token.fence,
                node: token.node.clone(),
                fetched_at_ms: *fetched_at_ms,
                source: token.source,
            })),
            [0, newest] => Ok(TokenWrite::StaleFence {
                stored_fence: *newest,
            }),
            other => Err(protocol("token_write", other)),
        }
    }

    async fn invalidate_token(&self, appid: &str, bad_token: &str) -> Result<bool, StoreError> {
        let mut inv = self.scripts.token_invalidate.prepare_invoke();
        inv.key(self.keys.token(appid)).arg(bad_token);
        let n: i64 = self.run(&inv).await?;
        Ok(n == 1)
    }

    async fn get_cached(&self, appid: &str, name: &str) -> Result<Option<String>, StoreError> {
        self.cmd(redis::cmd("GET").arg(self.keys.cache(appid, name)))
            .await
    }

    async fn put_cached(
        &self,
        appid: &str,
        name: &str,
        value: &str,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let _: () = self
            .cmd(
                redis::cmd("SET")
                    .arg(self.keys.cache(appid, name))
                    .arg(value)
                    .arg("PX")
                    .arg(ttl_ms),
            )
            .await?;
        Ok(())
    }

    async fn read_external_token(&self, key: &str) -> Result<Option<ExternalToken>, StoreError> {
        let mut inv = self.scripts.external_token_read.prepare_invoke();
        inv.key(key);
        let v: Vec<Value> = self.run(&inv).await?;
        let kind = v.first().and_then(as_string).unwrap_or_default();
        let token = v.get(1).and_then(as_string).unwrap_or_default();
        let expires = match v.get(2) {
            Some(Value::Int(i)) if *i >= 0 => Some(*i as u64),
            _ => None,
        };
        let read_at_ms = v
            .get(3)
            .and_then(as_u64)
            .ok_or_else(|| protocol("external token", &v))?;
        if kind == "none" || token.is_empty() {
            return Ok(None);
        }
        Ok(Some(ExternalToken {
            access_token: token,
            expires_at_ms: expires,
            read_at_ms,
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let pong: String = self.cmd(&redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(protocol("PING", pong))
        }
    }

    async fn acquire(&self, req: &AcquireRequest<'_>) -> Result<Acquire, StoreError> {
        let mut inv = self.scripts.acquire.prepare_invoke();
        for api in req.blocks {
            inv.key(self.keys.block(req.appid, api));
        }
        for q in req.quotas {
            inv.key(self.keys.quota(req.appid, &q.name));
        }
        for l in req.limits {
            inv.key(self.keys.window(req.appid, &l.name, l.window_ms));
        }
        inv.arg(req.blocks.len())
            .arg(req.quotas.len())
            .arg(req.limits.len())
            .arg(req.guard_ms)
            .arg(req.permit_id);
        for q in req.quotas {
            inv.arg(q.limit);
        }
        for l in req.limits {
            inv.arg(l.limit).arg(l.window_ms);
        }
        let v: Vec<Value> = self.run(&inv).await?;
        let code = v.first().and_then(as_u64);
        match code {
            Some(1) => Ok(Acquire::Granted {
                now_ms: v
                    .get(1)
                    .and_then(as_u64)
                    .ok_or_else(|| protocol("acquire", &v))?,
            }),
            Some(2) => {
                let wait_ms = v
                    .get(1)
                    .and_then(as_u64)
                    .ok_or_else(|| protocol("acquire", &v))?;
                let idx = v.get(2).and_then(as_u64).unwrap_or(1) as usize;
                let limit = req
                    .limits
                    .get(idx.saturating_sub(1))
                    .map(|l| l.name.clone())
                    .unwrap_or_default();
                Ok(Acquire::Wait { wait_ms, limit })
            }
            Some(3) => Ok(Acquire::Blocked {
                until_ms: v
                    .get(1)
                    .and_then(as_u64)
                    .ok_or_else(|| protocol("acquire", &v))?,
                reason: v.get(2).and_then(as_string).unwrap_or_default(),
            }),
            _ => Err(protocol("acquire", &v)),
        }
    }

    async fn block(
        &self,
        appid: &str,
        api: &str,
        until_ms: u64,
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut inv = self.scripts.block.prepare_invoke();
        inv.key(self.keys.block(appid, api))
            .arg(until_ms)
            .arg(reason);
        let _: i64 = self.run(&inv).await?;
        Ok(())
    }

    async fn acquire_lease(
        &self,
        appid: &str,
        node: &str,
        ttl_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let mut inv = self.scripts.lease_acquire.prepare_invoke();
        inv.key(self.keys.leader(appid))
            .key(self.keys.fence(appid))
            .arg(node)
            .arg(ttl_ms);
        let fence: i64 = self.run(&inv).await?;
        Ok(u64::try_from(fence).ok())
    }

    async fn renew_lease(&self, appid: &str, node: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let mut inv = self.scripts.lease_renew.prepare_invoke();
        inv.key(self.keys.leader(appid)).arg(node).arg(ttl_ms);
        let n: i64 = self.run(&inv).await?;
        Ok(n == 1)
    }

    async fn release_lease(&self, appid: &str, node: &str) -> Result<bool, StoreError> {
        let mut inv = self.scripts.lease_release.prepare_invoke();
        inv.key(self.keys.leader(appid)).arg(node);
        let n: i64 = self.run(&inv).await?;
        Ok(n == 1)
    }

    async fn lease_holder(&self, appid: &str) -> Result<Option<String>, StoreError> {
        self.cmd(redis::cmd("GET").arg(self.keys.leader(appid)))
            .await
    }

    async fn claim_idempotency(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
        ttl_ms: u64,
    ) -> Result<IdemClaim, StoreError> {
        let mut inv = self.scripts.idem_claim.prepare_invoke();
        inv.key(self.keys.idempotency(appid, key))
            .arg(request_id)
            .arg(ttl_ms);
        let v: Vec<String> = self.run(&inv).await?;
        match v.as_slice() {
            [state, _, _] if state == "claimed" => Ok(IdemClaim::Claimed),
            [state, rid, _] if state == "in_progress" => Ok(IdemClaim::InProgress {
                request_id: rid.clone(),
            }),
            [state, rid, result] if state == "done" => Ok(IdemClaim::Done {
                request_id: rid.clone(),
                result: result.clone(),
            }),
            other => Err(protocol("idem_claim", other)),
        }
    }

    async fn complete_idempotency(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
        result: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut inv = self.scripts.idem_complete.prepare_invoke();
        inv.key(self.keys.idempotency(appid, key))
            .arg(request_id)
            .arg(result)
            .arg(ttl_ms);
        let n: i64 = self.run(&inv).await?;
        Ok(n == 1)
    }

    async fn release_idempotency(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
    ) -> Result<bool, StoreError> {
        let mut inv = self.scripts.idem_release.prepare_invoke();
        inv.key(self.keys.idempotency(appid, key)).arg(request_id);
        let n: i64 = self.run(&inv).await?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            super::redact_url("redis://:s3cret@h:6379/0"),
            "redis://***@h:6379/0"
        );
        assert_eq!(super::redact_url("redis://h:6379"), "redis://h:6379");
    }
}
