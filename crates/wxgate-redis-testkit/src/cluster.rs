use std::path::Path;
use std::time::Duration;

use crate::process::{
    base_args, cli, info_field, spawn_node, try_cli, wait_until, Node, NodeSpec, TempDir, LOCALHOST,
};

const MASTERS: usize = 3;

/// A Redis Cluster of 3 masters and no replicas on loopback (`cluster-enabled yes`, slots
/// assigned like `redis-cli --cluster create … --cluster-replicas 0` does), killed on drop.
pub struct RedisCluster {
    // Declared before `dir`: the processes are killed before their directories are removed.
    nodes: Vec<Node>,
    _dir: TempDir,
}

impl RedisCluster {
    /// Starts 3 cluster-enabled servers (each port ≤ 55000 with `port + 10000` free for the
    /// bus), assigns all slots (see `create`), and waits until every node
    /// reports `cluster_state:ok` with all 16384 slots and 3 known nodes.
    pub fn start() -> RedisCluster {
        crate::require_redis();
        let dir = TempDir::new("cluster");
        let args = |port: u16, dir: &Path| {
            let mut a = base_args(port, dir);
            a.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ]
                .map(String::from),
            );
            a
        };
        let nodes: Vec<Node> = (0..MASTERS)
            .map(|_| {
                spawn_node(&NodeSpec {
                    what: "cluster-node",
                    parent: dir.path(),
                    cluster_bus: true,
                    fixed_port: None,
                    args: &args,
                })
            })
            .collect();
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.create();
        cluster
    }

    /// Does what `redis-cli --cluster create … --cluster-replicas 0 --cluster-yes` does (same
    /// slot ranges, one config epoch per node, CLUSTER MEET), but MEETs every pair and then
    /// polls every 20 ms instead of redis-cli's 1 s "Waiting for the cluster to join" loop,
    /// which made starts take 2–6 s under load instead of ~2.1 s. (Masters never report
    /// `cluster_state:ok` earlier than 2 s after they start: Redis' CLUSTER_WRITABLE_DELAY.)
    fn create(&self) {
        let ports = self.ports();
        let n = ports.len();
        for (i, p) in ports.iter().enumerate() {
            let first = 16384 * i / n;
            let last = 16384 * (i + 1) / n - 1;
            for args in [
                vec![
                    "CLUSTER".to_string(),
                    "ADDSLOTSRANGE".to_string(),
                    first.to_string(),
                    last.to_string(),
                ],
                vec![
                    "CLUSTER".to_string(),
                    "SET-CONFIG-EPOCH".to_string(),
                    (i + 1).to_string(),
                ],
            ] {
                self.expect_ok(*p, &args);
            }
        }
        for p in &ports {
            for q in ports.iter().filter(|q| *q != p) {
                self.expect_ok(
                    *p,
                    &[
                        "CLUSTER".to_string(),
                        "MEET".to_string(),
                        LOCALHOST.to_string(),
                        q.to_string(),
                    ],
                );
            }
        }
        wait_until(
            Duration::from_secs(20),
            "cluster_state:ok on every node",
            || {
                self.ports().into_iter().all(|p| {
                    let info = try_cli(p, None, false, &["CLUSTER", "INFO"]).unwrap_or_default();
                    info_field(&info, "cluster_state").as_deref() == Some("ok")
                        && info_field(&info, "cluster_slots_ok").as_deref() == Some("16384")
                        && info_field(&info, "cluster_known_nodes").as_deref() == Some("3")
                })
            },
            || self.diagnostics(),
        );
    }

    /// `redis://127.0.0.1:PORT` for each master.
    pub fn seed_urls(&self) -> Vec<String> {
        self.ports()
            .into_iter()
            .map(|p| format!("redis://{LOCALHOST}:{p}"))
            .collect()
    }

    /// The masters' ports (client ports; each bus port is `port + 10000`).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(Node::port).collect()
    }

    /// Runs `redis-cli -c -p FIRST_PORT ARGS` (follows MOVED redirects) and returns its trimmed
    /// stdout; panics when redis-cli fails. Error replies are returned as text.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.nodes[0].port(), None, true, args)
    }

    /// `SCRIPT FLUSH` on every node (simulates the scripts cache being lost cluster-wide).
    pub fn flush_scripts(&self) {
        for p in self.ports() {
            let reply = cli(p, None, false, &["SCRIPT", "FLUSH"]);
            assert_eq!(reply, "OK", "SCRIPT FLUSH on port {p}");
        }
    }

    fn expect_ok(&self, port: u16, args: &[String]) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let reply = cli(port, None, false, &args);
        if reply != "OK" {
            panic!(
                "{} on port {port} answered: {reply}\n{}",
                args.join(" "),
                self.diagnostics()
            );
        }
    }

    fn logs(&self) -> String {
        self.nodes.iter().map(Node::log_tail).collect()
    }

    fn diagnostics(&self) -> String {
        let mut out = String::new();
        for p in self.ports() {
            let info = try_cli(p, None, false, &["CLUSTER", "INFO"]).unwrap_or_else(|e| e);
            out.push_str(&format!("--- CLUSTER INFO on {p} ---\n{info}\n"));
        }
        out + &self.logs()
    }
}
