use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::process::{
    base_args, cli, info_field, pairs, spawn_node, try_cli, wait_until, Node, NodeSpec, TempDir,
    LOCALHOST,
};

const SENTINELS: usize = 3;
const QUORUM: usize = 2;

/// One master and one replica watched by 3 Sentinels (quorum 2) under the name
/// [`RedisSentinel::MASTER_NAME`], `down-after-milliseconds 1000`, `failover-timeout 10000`,
/// `repl-diskless-sync-delay 0`. Killed on drop.
pub struct RedisSentinel {
    // Declared before `dir`: the processes are killed before their directories are removed.
    sentinels: Vec<Node>,
    /// `[initial master, initial replica]`; which one is master now: [`RedisSentinel::master_port`].
    data: Vec<Node>,
    dir: TempDir,
}

impl RedisSentinel {
    pub const MASTER_NAME: &'static str = "mymaster";

    /// Starts the master, the replica (waits until its link is up), then 3 sentinels, and waits
    /// until every sentinel sees the master as `master`, knows the replica with a 40-hex runid
    /// (otherwise `SENTINEL failover` answers NOGOODSLAVE) and sees the 2 other sentinels.
    pub fn start() -> RedisSentinel {
        crate::require_redis();
        let dir = TempDir::new("sentinel");
        let data_args = |port: u16, dir: &Path| {
            let mut a = base_args(port, dir);
            a.extend(["--repl-diskless-sync-delay", "0"].map(String::from));
            a
        };
        let spawn_data = |what: &str| {
            spawn_node(&NodeSpec {
                what,
                parent: dir.path(),
                cluster_bus: false,
                fixed_port: None,
                args: &data_args,
            })
        };
        let master = spawn_data("master");
        let replica = spawn_data("replica");
        let master_port = master.port();
        let replica_port = replica.port();
        // REPLICAOF as a command connects at once; `--replicaof` in the arguments would wait
        // for the next replication cron tick (up to 1 s).
        let reply = cli(
            replica_port,
            None,
            false,
            &["REPLICAOF", LOCALHOST, &master_port.to_string()],
        );
        assert!(reply.starts_with("OK"), "REPLICAOF: {reply}");
        let mut topology = RedisSentinel {
            sentinels: Vec::new(),
            data: vec![master, replica],
            dir,
        };
        // Sentinels learn replicas from the master's INFO, which they refresh only every 10 s:
        // start them once the replica is attached, so their first INFO already lists it.
        wait_until(
            Duration::from_secs(20),
            "the replica's link to the master",
            || {
                let info = try_cli(replica_port, None, false, &["INFO", "replication"])
                    .unwrap_or_default();
                let minfo =
                    try_cli(master_port, None, false, &["INFO", "replication"]).unwrap_or_default();
                info_field(&info, "master_link_status").as_deref() == Some("up")
                    && info_field(&minfo, "connected_slaves").as_deref() == Some("1")
            },
            || topology.logs(),
        );
        let sentinel_args = |port: u16, dir: &Path| {
            let conf = dir.join("sentinel.conf");
            let text = format!(
                "port {port}\n\
                 bind {LOCALHOST}\n\
                 daemonize no\n\
                 dir {dir}\n\
                 logfile {log}\n\
                 pidfile {pid}\n\
                 sentinel monitor {name} {LOCALHOST} {master_port} {QUORUM}\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 10000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir = dir.display(),
                log = dir.join("redis.log").display(),
                pid = dir.join("redis.pid").display(),
                name = Self::MASTER_NAME,
            );
            fs::write(&conf, text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
            vec![conf.display().to_string(), "--sentinel".to_string()]
        };
        for _ in 0..SENTINELS {
            let node = spawn_node(&NodeSpec {
                what: "sentinel",
                parent: topology.dir.path(),
                cluster_bus: false,
                fixed_port: None,
                args: &sentinel_args,
            });
            topology.sentinels.push(node);
        }
        wait_until(
            Duration::from_secs(30),
            "every sentinel to see the master, the replica (with its runid) and the other sentinels",
            || topology.sentinels_ready(master_port),
            || topology.diagnostics(),
        );
        topology
    }

    fn sentinels_ready(&self, master_port: u16) -> bool {
        self.sentinel_ports().into_iter().all(|s| {
            let master = pairs(
                &try_cli(s, None, false, &["SENTINEL", "master", Self::MASTER_NAME])
                    .unwrap_or_default(),
            );
            let field = |k: &str| {
                master
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.as_str())
            };
            let master_ok = field("port") == Some(&master_port.to_string())
                && field("flags") == Some("master")
                && field("num-slaves") == Some("1")
                && field("num-other-sentinels") == Some(&(SENTINELS - 1).to_string());
            if !master_ok {
                return false;
            }
            let replicas = pairs(
                &try_cli(s, None, false, &["SENTINEL", "replicas", Self::MASTER_NAME])
                    .unwrap_or_default(),
            );
            replicas.iter().any(|(k, v)| {
                k == "runid" && v.len() == 40 && v.bytes().all(|b| b.is_ascii_hexdigit())
            }) && replicas.iter().any(|(k, v)| k == "flags" && v == "slave")
        })
    }

    /// `redis://127.0.0.1:SENTINEL_PORT` for each sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinel_ports()
            .into_iter()
            .map(|p| format!("redis://{LOCALHOST}:{p}"))
            .collect()
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(Node::port).collect()
    }

    /// The ports of the two data nodes, `[initial master, initial replica]`.
    pub fn data_ports(&self) -> Vec<u16> {
        self.data.iter().map(Node::port).collect()
    }

    /// The CURRENT master's port, as the first answering sentinel reports it
    /// (`SENTINEL get-master-addr-by-name mymaster`).
    pub fn master_port(&self) -> u16 {
        for s in self.sentinel_ports() {
            if let Some(p) = self.master_port_seen_by(s) {
                return p;
            }
        }
        panic!(
            "no sentinel answers SENTINEL get-master-addr-by-name {}\n{}",
            Self::MASTER_NAME,
            self.diagnostics()
        );
    }

    fn master_port_seen_by(&self, sentinel_port: u16) -> Option<u16> {
        let out = try_cli(
            sentinel_port,
            None,
            false,
            &["SENTINEL", "get-master-addr-by-name", Self::MASTER_NAME],
        )
        .ok()?;
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// `SENTINEL failover mymaster`, retried on NOGOODSLAVE / INPROG for up to 20 s. Returns
    /// once every sentinel reports the other data node as master and that node's
    /// `INFO replication` says `role:master`.
    ///
    /// The former master is reattached as a replica by the sentinels only ~10 s later (their
    /// INFO period); until then it still answers as a master, and a second failover answers
    /// NOGOODSLAVE (retried here).
    pub fn failover(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let old = self.master_port();
        let new = self
            .data_ports()
            .into_iter()
            .find(|p| *p != old)
            .unwrap_or_else(|| panic!("no data node other than the master {old}"));
        let first = self.sentinels[0].port();
        loop {
            // A failover may already be running (INPROG) or done: don't start a second one.
            if self.master_port_seen_by(first) == Some(new) {
                break;
            }
            let reply = cli(
                first,
                None,
                false,
                &["SENTINEL", "failover", Self::MASTER_NAME],
            );
            if reply == "OK" {
                break;
            }
            if !(reply.contains("NOGOODSLAVE") || reply.contains("INPROG")) {
                panic!(
                    "SENTINEL failover answered: {reply}\n{}",
                    self.diagnostics()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "SENTINEL failover still answers {reply} after 20 s\n{}",
                    self.diagnostics()
                );
            }
            sleep(Duration::from_millis(100));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        wait_until(
            left.max(Duration::from_secs(1)),
            "every sentinel to report the promoted replica as master, and its role:master",
            || {
                self.sentinel_ports()
                    .into_iter()
                    .all(|s| self.master_port_seen_by(s) == Some(new))
                    && info_field(
                        &try_cli(new, None, false, &["INFO", "replication"]).unwrap_or_default(),
                        "role",
                    )
                    .as_deref()
                        == Some("master")
            },
            || self.diagnostics(),
        );
    }

    /// Runs `redis-cli -p CURRENT_MASTER_PORT ARGS` and returns its trimmed stdout; panics when
    /// redis-cli fails. Error replies are returned as text.
    pub fn cli_master(&self, args: &[&str]) -> String {
        cli(self.master_port(), None, false, args)
    }

    fn logs(&self) -> String {
        self.data
            .iter()
            .chain(&self.sentinels)
            .map(Node::log_tail)
            .collect()
    }

    fn diagnostics(&self) -> String {
        let mut out = String::new();
        for p in self.data_ports() {
            let info = try_cli(p, None, false, &["INFO", "replication"]).unwrap_or_else(|e| e);
            out.push_str(&format!("--- INFO replication on {p} ---\n{info}\n"));
        }
        for s in self.sentinel_ports() {
            for sub in ["master", "replicas"] {
                let text = try_cli(s, None, false, &["SENTINEL", sub, Self::MASTER_NAME])
                    .unwrap_or_else(|e| e);
                out.push_str(&format!(
                    "--- SENTINEL {sub} on {s} ---\n{}\n",
                    text.replace('\n', " ")
                ));
            }
        }
        out + &self.logs()
    }
}
