//! Internals shared by every topology: tool checks, temp dirs, free ports, spawning
//! `redis-server` children with bind retries, liveness checks and `redis-cli` calls.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How many times a node is started on a fresh port when its port was taken meanwhile.
const BIND_ATTEMPTS: usize = 5;
/// Highest base port for cluster nodes, so that the bus port (`port + 10000`) stays valid.
const MAX_CLUSTER_PORT: u16 = 55_000;
/// How long a single `redis-server` may take to become reachable.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) const LOCALHOST: &str = "127.0.0.1";

/// Panics with an install hint when `redis-server` or `redis-cli` cannot be run.
pub fn require_redis() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = CHECKED.get_or_init(|| {
        if !runs("redis-server") {
            return Err(
                "redis-server not found on PATH: install it (apt-get install redis-server) \
                 — .ci/run and scripts/test.sh do"
                    .to_string(),
            );
        }
        if !runs("redis-cli") {
            return Err(
                "redis-cli not found on PATH: install it (apt-get install redis-tools, \
                 pulled in by redis-server) — .ci/run and scripts/test.sh do"
                    .to_string(),
            );
        }
        Ok(())
    });
    if let Err(message) = result {
        panic!("{message}");
    }
}

fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A directory under `$TMPDIR/wxgate-redis-testkit/`, removed on drop.
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub(crate) fn new(kind: &str) -> TempDir {
        static REAPED: OnceLock<()> = OnceLock::new();
        REAPED.get_or_init(reap_orphans);
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let unique = format!(
            "{kind}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = root_dir().join(unique);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

pub(crate) fn root_dir() -> PathBuf {
    std::env::temp_dir().join("wxgate-redis-testkit")
}

/// Kills servers left behind by test processes that died without running Drop (SIGKILL,
/// abort): for every `root/<kind>-<pid>-…` directory whose owner pid is gone, kills each
/// `redis-server` whose working directory is one of its node directories (each node runs in
/// its own directory, so this never touches anyone else's process), then removes the dir.
pub(crate) fn reap_orphans() {
    let Ok(entries) = fs::read_dir(root_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(owner) = name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if owner == std::process::id() || process_alive(owner) {
            continue;
        }
        let top = entry.path();
        let node_dirs: Vec<PathBuf> = fs::read_dir(&top)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        for node_dir in node_dirs {
            let Ok(pid) = fs::read_to_string(node_dir.join("redis.pid")) else {
                continue;
            };
            let pid = pid.trim();
            let proc_dir = Path::new("/proc").join(pid);
            let cmdline = fs::read(proc_dir.join("cmdline")).unwrap_or_default();
            let cwd = fs::read_link(proc_dir.join("cwd")).ok();
            let node_dir = fs::canonicalize(&node_dir).unwrap_or(node_dir);
            if String::from_utf8_lossy(&cmdline).contains("redis-server")
                && cwd.as_deref() == Some(node_dir.as_path())
            {
                let _ = Command::new("kill")
                    .args(["-9", pid])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = fs::remove_dir_all(&top);
    }
}

/// True when `/proc/PID` exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the `)` that closes the command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => !Path::new("/proc").exists(),
    }
}

/// Picks a port that is free right now on 127.0.0.1 (and, for cluster nodes, whose
/// `port + 10000` is free too). Another process may still take it before redis-server binds
/// it: [`spawn_node`] retries in that case.
pub(crate) fn pick_port(cluster_bus: bool) -> u16 {
    for _ in 0..1000 {
        let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) {
            Ok(l) => l,
            Err(e) => panic!("cannot bind 127.0.0.1:0 to pick a free port: {e}"),
        };
        let port = match listener.local_addr() {
            Ok(a) => a.port(),
            Err(_) => continue,
        };
        if !cluster_bus {
            return port;
        }
        if port > MAX_CLUSTER_PORT {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("could not find a free loopback port (cluster bus: {cluster_bus})");
}

/// A `redis-server` child process (plain, cluster node or sentinel). Killed and reaped on drop.
pub(crate) struct Node {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    what: String,
}

impl Node {
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// The last lines of this node's log (and of its stdout/stderr), for failure messages.
    pub(crate) fn log_tail(&self) -> String {
        describe_logs(&self.what, self.port, &self.dir)
    }

    /// Kills the process (SIGKILL: fast and sure, data is throwaway anyway), reaps it so no
    /// zombie stays, and waits until the port no longer answers PING. Idempotent.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let deadline = Instant::now() + Duration::from_secs(5);
            while ping(self.port) && Instant::now() < deadline {
                sleep(Duration::from_millis(10));
            }
        }
    }

    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn describe_logs(what: &str, port: u16, dir: &Path) -> String {
    let mut out = format!("--- {what} on port {port} ({}) ---\n", dir.display());
    for name in ["redis.log", "stdout.log"] {
        let text = fs::read_to_string(dir.join(name)).unwrap_or_default();
        if text.trim().is_empty() {
            continue;
        }
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(30);
        out.push_str(&format!("[{name}, last {} lines]\n", lines.len() - start));
        for line in &lines[start..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Where and how to start one node: `args(port, dir)` returns the redis-server arguments
/// (it may also write a config file into `dir`). The node's log must go to `dir/redis.log`.
pub(crate) struct NodeSpec<'a> {
    pub(crate) what: &'a str,
    pub(crate) parent: &'a Path,
    pub(crate) cluster_bus: bool,
    pub(crate) fixed_port: Option<u16>,
    pub(crate) args: &'a dyn Fn(u16, &Path) -> Vec<String>,
}

/// The usual arguments of a throwaway data node: loopback only, no persistence, logs in `dir`.
pub(crate) fn base_args(port: u16, dir: &Path) -> Vec<String> {
    let dir_s = dir.display().to_string();
    let log = dir.join("redis.log").display().to_string();
    let pid = dir.join("redis.pid").display().to_string();
    [
        "--port",
        &port.to_string(),
        "--bind",
        LOCALHOST,
        "--daemonize",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir_s,
        "--logfile",
        &log,
        "--pidfile",
        &pid,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Starts a node and waits until it answers PING. The node gets its own directory
/// `parent/<what>-<port>`. If redis-server cannot bind its port (taken meanwhile by another
/// test), it is started again on another port, up to 5 times; with a fixed port (restart) it
/// retries the same port after a short pause.
pub(crate) fn spawn_node(spec: &NodeSpec<'_>) -> Node {
    let mut failures = Vec::new();
    for attempt in 0..BIND_ATTEMPTS {
        let port = match spec.fixed_port {
            Some(p) => p,
            None => pick_port(spec.cluster_bus),
        };
        let dir = spec.parent.join(format!("{}-{port}", spec.what));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let _ = fs::remove_file(dir.join("redis.log"));
        let args = (spec.args)(port, &dir);
        let out = File::create(dir.join("stdout.log"))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone a file handle: {e}"));
        let child = Command::new("redis-server")
            .args(&args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                require_redis();
                panic!("cannot run redis-server: {e}");
            }
        };
        let mut node = Node {
            child: Some(child),
            port,
            dir,
            what: spec.what.to_string(),
        };
        match wait_ready(&mut node) {
            Ready::Yes => return node,
            Ready::PortTaken => {
                failures.push(node.log_tail());
                drop(node);
                if spec.fixed_port.is_some() {
                    sleep(Duration::from_millis(100 * (attempt as u64 + 1)));
                }
            }
            Ready::Failed(why) => {
                let logs = node.log_tail();
                drop(node);
                panic!("{} did not start on port {port}: {why}\n{logs}", spec.what);
            }
        }
    }
    panic!(
        "{} could not bind a port after {BIND_ATTEMPTS} attempts:\n{}",
        spec.what,
        failures.join("\n")
    );
}

enum Ready {
    Yes,
    PortTaken,
    Failed(String),
}

/// Ready = our own process logged that it listens ("Running mode=…, port=…" is printed only
/// after every listening socket, the cluster bus included, is bound) and the port answers PING.
/// Checking our own log (not just PING) makes sure the answer does not come from another
/// test's server that won the race for the port.
fn wait_ready(node: &mut Node) -> Ready {
    let deadline = Instant::now() + READY_TIMEOUT;
    let log = node.log_path();
    let mut listening = false;
    loop {
        if let Some(child) = node.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                node.child = None;
                let text = fs::read_to_string(&log).unwrap_or_default()
                    + &fs::read_to_string(node.dir.join("stdout.log")).unwrap_or_default();
                if text.contains("Address already in use") {
                    return Ready::PortTaken;
                }
                return Ready::Failed(format!("redis-server exited ({status})"));
            }
        }
        if !listening {
            listening = fs::read_to_string(&log)
                .map(|t| t.contains("Running mode="))
                .unwrap_or(false);
        }
        if listening && ping(node.port) {
            return Ready::Yes;
        }
        if Instant::now() > deadline {
            return Ready::Failed(format!("not answering PING after {READY_TIMEOUT:?}"));
        }
        sleep(Duration::from_millis(5));
    }
}

/// True when something on 127.0.0.1:`port` answers PING with PONG (or NOAUTH: alive, but
/// protected by a password).
pub(crate) fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(n) if n > 0 => buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"),
        _ => false,
    }
}

/// Runs `redis-cli -h 127.0.0.1 -p PORT [-c] ARGS` (password through `REDISCLI_AUTH`, so no
/// warning on stderr) and returns its trimmed stdout. Err when redis-cli fails (e.g. cannot
/// connect). Error *replies* (`ERR …`, `NOAUTH …`, `MOVED …`) are returned as text: redis-cli
/// 7.0 exits 0 on them.
pub(crate) fn try_cli(
    port: u16,
    password: Option<&str>,
    cluster: bool,
    args: &[&str],
) -> Result<String, String> {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", LOCALHOST, "-p", &port.to_string()]);
    if cluster {
        cmd.arg("-c");
    }
    match password {
        Some(p) => cmd.env("REDISCLI_AUTH", p),
        None => cmd.env_remove("REDISCLI_AUTH"),
    };
    cmd.args(args).stdin(Stdio::null());
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => {
            require_redis();
            return Err(format!("cannot run redis-cli: {e}"));
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "redis-cli -p {port} {} failed ({}): {} {}",
            args.join(" "),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub(crate) fn cli(port: u16, password: Option<&str>, cluster: bool, args: &[&str]) -> String {
    try_cli(port, password, cluster, args).unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `check` every 20 ms until it returns true; panics with `what` and `diagnostics()`
/// after `timeout`.
pub(crate) fn wait_until(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
    diagnostics: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                diagnostics()
            );
        }
        sleep(Duration::from_millis(20));
    }
}

/// Parses `redis-cli` raw output of a flat field/value reply (one item a line), e.g.
/// `SENTINEL master NAME`, into pairs.
pub(crate) fn pairs(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].to_string(), c[1].to_string()))
        .collect()
}

/// The value of `field` in `INFO`-style text (`field:value` lines).
pub(crate) fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|l| {
        l.trim()
            .strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::to_string)
    })
}
