//! Reaching Redis: the topologies (standalone, Sentinel, Cluster), TLS, the Sentinel master
//! watcher, and [`RedisConn::exec`], the one place a command or script is sent, timed out,
//! classified and — only when it provably did not run — retried.
//!
//! Standalone (`redis://`, `rediss://`) goes through a `ConnectionManager` that reconnects by
//! itself; Sentinel (master name + sentinel addresses) through a multiplexed connection to the
//! master that Sentinel names (checked with `ROLE`), dropped and re-resolved when a watcher sees
//! the sentinels name another master, or after an error that means the master moved
//! (`READONLY`, connection refused or reset); Cluster (seed nodes) through redis-rs's cluster
//! client, which follows `MOVED`/`ASK`. Connections are made lazily: a gateway starts while
//! Redis is down and reports not-ready until Redis answers.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, RedisError, Script, Value};

use crate::StoreError;

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

/// The connection slots, shared with the Sentinel watcher: one connection per tokio runtime.
///
/// A multiplexed connection's driver task runs on the runtime that made it. The gateway serves
/// requests on one single-threaded runtime per actix worker, so a connection made elsewhere (by
/// the token refresher on the main runtime, say) would make every command cross threads twice
/// (measured: about a sixth of the gateway's CPU, in wake-ups and context switches). Each
/// runtime therefore gets its own connection, made on first use there. The map is bounded by
/// the number of runtimes (the workers plus the main one); it is emptied as a whole when a
/// connection fails or Sentinel names another master, and when it would exceed
/// [`MAX_RUNTIMES`] (runtimes that ended, e.g. in tests).
#[derive(Default)]
struct Slot {
    current: RwLock<HashMap<tokio::runtime::Id, Conn>>,
    /// The master the current connections go to (Sentinel only).
    master: Mutex<Option<(String, u16)>>,
}

/// More runtimes than a gateway has workers: past it, connections of ended runtimes are dropped.
const MAX_RUNTIMES: usize = 64;

fn runtime_id() -> tokio::runtime::Id {
    tokio::runtime::Handle::current().id()
}

impl Slot {
    fn conn(&self) -> Option<Conn> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&runtime_id())
            .cloned()
    }

    /// Keeps `conn` for this runtime. A connection to another master than the others' (a
    /// failover happened between two runtimes' connects) replaces them all.
    fn set(&self, conn: Conn, master: Option<(String, u16)>) {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut known = self.master.lock().unwrap_or_else(|p| p.into_inner());
        if *known != master || current.len() >= MAX_RUNTIMES {
            current.clear();
        }
        *known = master;
        current.insert(runtime_id(), conn);
    }

    /// Forgets every connection: the next operation on each runtime connects again.
    fn clear(&self) {
        self.current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        *self.master.lock().unwrap_or_else(|p| p.into_inner()) = None;
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
        self.slot.set(conn.clone(), master);
        Ok(conn)
    }

    /// Forget the connection: the next operation connects again (and, with Sentinel, asks
    /// the sentinels where the master is now).
    fn reset(&self) {
        self.slot.clear();
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
        // A watcher whose runtime ended (it runs on the runtime that connected first) is
        // replaced by one on this runtime.
        if w.as_ref().is_some_and(|h| !h.is_finished()) {
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
                        slot.clear();
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
    // Redis's own error codes (LOADING, MASTERDOWN, ...), not the text around them.
    let failing_over = matches!(
        e.code(),
        Some("LOADING" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY")
    );
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_cluster_error()
        || failing_over
    {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Protocol(e.to_string())
    }
}

/// `READONLY`: we reached a replica (a demoted master); the command did not run.
fn is_readonly(e: &RedisError) -> bool {
    e.code() == Some("READONLY")
}

/// The store's connection: one multiplexed connection per tokio runtime of the process (see
/// [`Slot`]), whatever the topology.
pub(crate) struct RedisConn {
    connector: Connector,
}

impl RedisConn {
    pub(crate) fn new(cfg: RedisConfig) -> Self {
        Self {
            connector: Connector {
                cfg,
                slot: Arc::new(Slot::default()),
                connecting: tokio::sync::Mutex::new(()),
                watcher: Mutex::new(None),
            },
        }
    }

    /// Runs one script call (see [`ScriptCall`]); see [`Self::exec`]. `NOSCRIPT` (a `SCRIPT
    /// FLUSH`, a restart, a failover to a node that never saw the script) loads the script and
    /// runs the call again. Within a `redis_script` span named after the script
    /// (`src/lua/<script>.lua`): the request's trace shows each script call, and OTLP export
    /// (when enabled) sends it.
    pub(crate) async fn run<T: FromRedisValue>(
        &self,
        script: &'static str,
        call: &ScriptCall<'_>,
    ) -> Result<T, StoreError> {
        use tracing::Instrument;
        debug_assert_eq!(call.keys_left, 0, "{script}: fewer keys than declared");
        self.run_untraced(call)
            .instrument(tracing::info_span!("redis_script", script))
            .await
    }

    /// [`Self::run`] without its span: for a call made on behalf of several requests (a batch
    /// of acquires), where each request's own span covers its wait instead.
    pub(crate) async fn run_untraced<T: FromRedisValue>(
        &self,
        call: &ScriptCall<'_>,
    ) -> Result<T, StoreError> {
        debug_assert_eq!(call.keys_left, 0, "fewer keys than declared");
        self.exec(|mut c| async move {
            match call.cmd.query_async::<T>(&mut c).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    call.script.prepare_invoke().load_async(&mut c).await?;
                    call.cmd.query_async::<T>(&mut c).await
                }
                r => r,
            }
        })
        .await
    }

    /// Runs a single command; see [`Self::exec`].
    pub(crate) async fn cmd<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        self.exec(|mut c| async move { cmd.query_async::<T>(&mut c).await })
            .await
    }

    /// Runs a single command; `Ok(None)` when Redis refuses it with the error code `code`
    /// (e.g. `NOGROUP`, `BUSYGROUP`): decided on Redis's code, never on an error's text.
    pub(crate) async fn cmd_unless<T: FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        code: &'static str,
    ) -> Result<Option<T>, StoreError> {
        self.exec(|mut c| async move {
            match cmd.query_async::<T>(&mut c).await {
                Err(e) if e.code() == Some(code) => Ok(None),
                r => r.map(Some),
            }
        })
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
            let conn = self.connector.get().await?;
            match tokio::time::timeout(self.connector.cfg.command_timeout, op(conn)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    let err = classify(&e);
                    if matches!(err, StoreError::Unavailable(_)) {
                        self.connector.reset();
                    }
                    if (is_readonly(&e) || e.is_connection_refusal()) && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(err);
                }
                Err(_) => {
                    self.connector.reset();
                    return Err(StoreError::Unavailable(
                        "Redis did not answer in time".into(),
                    ));
                }
            }
        }
    }
}

/// One call of a script: `EVALSHA <sha> <numkeys> keys... args...`, written into one argument
/// buffer as it is built (a `ScriptInvocation` keeps one allocation per argument and copies
/// them into a command on every call; the send path's `acquire` has ~20). Every key comes
/// before the first argument; the number of keys is declared up front.
pub(crate) struct ScriptCall<'a> {
    script: &'a Script,
    cmd: redis::Cmd,
    keys_left: usize,
}

impl<'a> ScriptCall<'a> {
    pub(crate) fn new(script: &'a Script, numkeys: usize) -> Self {
        let mut cmd = redis::Cmd::with_capacity(3 + numkeys + 16, 256);
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(numkeys);
        Self {
            script,
            cmd,
            keys_left: numkeys,
        }
    }

    pub(crate) fn key<K: redis::ToRedisArgs>(&mut self, key: K) -> &mut Self {
        debug_assert!(self.keys_left > 0, "more keys than declared");
        self.keys_left = self.keys_left.saturating_sub(1);
        self.cmd.arg(key);
        self
    }

    pub(crate) fn arg<A: redis::ToRedisArgs>(&mut self, arg: A) -> &mut Self {
        debug_assert_eq!(self.keys_left, 0, "an argument before every declared key");
        self.cmd.arg(arg);
        self
    }
}

pub(crate) fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
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
