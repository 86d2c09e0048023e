use std::path::Path;

use crate::process::{base_args, cli, spawn_node, try_cli, Node, NodeSpec, TempDir, LOCALHOST};

/// A standalone `redis-server` (`--save '' --appendonly no`, own directory, not daemonized),
/// killed on drop.
pub struct RedisServer {
    // Declared before `dir`: the process is killed before its directory is removed.
    node: Node,
    password: Option<String>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers PING.
    pub fn start() -> RedisServer {
        Self::launch(None)
    }

    /// Like [`RedisServer::start`], with `requirepass PASSWORD`.
    pub fn start_with_password(password: &str) -> RedisServer {
        Self::launch(Some(password.to_string()))
    }

    fn launch(password: Option<String>) -> RedisServer {
        crate::require_redis();
        let dir = TempDir::new("standalone");
        let node = spawn(dir.path(), password.as_deref(), None);
        RedisServer {
            node,
            password,
            dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.node.port()
    }

    /// `redis://127.0.0.1:PORT`, or `redis://:PASSWORD@127.0.0.1:PORT` with a password.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@{LOCALHOST}:{}", self.port()),
            None => format!("redis://{LOCALHOST}:{}", self.port()),
        }
    }

    /// Runs `redis-cli -p PORT ARGS` (authenticated when the server has a password) and returns
    /// its trimmed stdout. Panics when redis-cli fails (e.g. the server is stopped). Error
    /// replies (`ERR …`) are returned as text, as redis-cli prints them.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port(), self.password.as_deref(), false, args)
    }

    /// Like [`RedisServer::cli`] but without the password (to check that the server rejects
    /// unauthenticated clients) and returning Err instead of panicking when redis-cli fails.
    pub fn try_cli_unauthenticated(&self, args: &[&str]) -> Result<String, String> {
        try_cli(self.port(), None, false, args)
    }

    /// Kills the server and waits until its port no longer answers PING. Idempotent.
    pub fn stop(&mut self) {
        self.node.kill();
    }

    /// True between a start/restart and a stop.
    pub fn is_running(&self) -> bool {
        self.node.is_running()
    }

    /// Stops the server (if running) and starts a fresh one on the same port with empty data
    /// (simulates a Redis restart: keys and the scripts cache are gone).
    pub fn restart(&mut self) {
        self.node.kill();
        self.node = spawn(
            self.dir.path(),
            self.password.as_deref(),
            Some(self.node.port()),
        );
    }
}

fn spawn(parent: &Path, password: Option<&str>, fixed_port: Option<u16>) -> Node {
    let args = |port: u16, dir: &Path| {
        let mut a = base_args(port, dir);
        if let Some(p) = password {
            a.extend(["--requirepass".to_string(), p.to_string()]);
        }
        a
    };
    spawn_node(&NodeSpec {
        what: "redis",
        parent,
        cluster_bus: false,
        fixed_port,
        args: &args,
    })
}

#[cfg(test)]
impl RedisServer {
    pub(crate) fn dir_path(&self) -> std::path::PathBuf {
        self.dir.path().to_path_buf()
    }
}
