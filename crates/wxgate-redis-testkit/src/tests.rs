use std::time::Instant;

use crate::process::{info_field, ping};
use crate::{require_redis, RedisCluster, RedisSentinel, RedisServer};

#[test]
fn standalone_set_get_restart_stop() {
    require_redis();
    let t = Instant::now();
    let mut server = RedisServer::start();
    eprintln!("standalone start: {:?}", t.elapsed());
    let port = server.port();
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(server.cli(&["SET", "k", "v"]), "OK");
    assert_eq!(server.cli(&["GET", "k"]), "v");
    let sha = server.cli(&["SCRIPT", "LOAD", "return 1"]);
    assert_eq!(server.cli(&["SCRIPT", "EXISTS", &sha]), "1");

    let t = Instant::now();
    server.restart();
    eprintln!("standalone restart: {:?}", t.elapsed());
    assert_eq!(server.port(), port, "restart keeps the port");
    assert_eq!(server.cli(&["GET", "k"]), "", "restart empties the data");
    assert_eq!(
        server.cli(&["SCRIPT", "EXISTS", &sha]),
        "0",
        "and the scripts cache"
    );
    assert_eq!(server.cli(&["PING"]), "PONG");

    let t = Instant::now();
    server.stop();
    eprintln!("standalone stop: {:?}", t.elapsed());
    assert!(!ping(port), "PING fails after stop");
    assert!(!server.is_running());
    server.stop(); // idempotent
    assert!(crate::process::try_cli(port, None, false, &["PING"]).is_err());
}

#[test]
fn standalone_password() {
    require_redis();
    let mut server = RedisServer::start_with_password("s3cret");
    let port = server.port();
    assert_eq!(server.url(), format!("redis://:s3cret@127.0.0.1:{port}"));
    let denied = server.try_cli_unauthenticated(&["SET", "k", "v"]).unwrap();
    assert!(denied.starts_with("NOAUTH"), "{denied}");
    assert_eq!(server.cli(&["SET", "k", "v"]), "OK");
    assert_eq!(server.cli(&["GET", "k"]), "v");
    server.restart();
    let denied = server.try_cli_unauthenticated(&["GET", "k"]).unwrap();
    assert!(
        denied.starts_with("NOAUTH"),
        "password kept over restart: {denied}"
    );
    assert_eq!(server.cli(&["GET", "k"]), "");
}

#[test]
fn drop_kills_the_server_and_removes_its_dir() {
    require_redis();
    let server = RedisServer::start();
    let port = server.port();
    let dir = server.dir_path();
    assert!(dir.exists());
    drop(server);
    assert!(!ping(port));
    assert!(!dir.exists(), "{} removed", dir.display());
}

#[test]
fn parallel_starts_get_distinct_ports() {
    require_redis();
    let t = Instant::now();
    let servers: Vec<RedisServer> = (0..4)
        .map(|_| std::thread::spawn(RedisServer::start))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    eprintln!("4 parallel standalone starts: {:?}", t.elapsed());
    let mut ports: Vec<u16> = servers.iter().map(RedisServer::port).collect();
    for s in &servers {
        assert_eq!(s.cli(&["PING"]), "PONG");
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 4, "distinct ports");
}

#[test]
fn cluster_three_masters() {
    require_redis();
    let t = Instant::now();
    let cluster = RedisCluster::start();
    eprintln!("cluster start: {:?}", t.elapsed());
    let ports = cluster.ports();
    assert_eq!(ports.len(), 3);
    for p in &ports {
        assert!(*p <= 55_000, "bus port {p}+10000 valid");
    }
    assert_eq!(
        cluster.seed_urls(),
        ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
    );
    for p in &ports {
        let info = crate::process::cli(*p, None, false, &["CLUSTER", "INFO"]);
        assert_eq!(
            info_field(&info, "cluster_state").as_deref(),
            Some("ok"),
            "{p}: {info}"
        );
    }
    // Keys on different slots (a: 15495, b: 3300), so at least one is MOVED and followed.
    assert_eq!(cluster.cli(&["SET", "a", "1"]), "OK");
    assert_eq!(cluster.cli(&["SET", "b", "2"]), "OK");
    assert_eq!(cluster.cli(&["GET", "a"]), "1");
    assert_eq!(cluster.cli(&["GET", "b"]), "2");
    for p in &ports {
        assert_eq!(crate::process::cli(*p, None, true, &["GET", "a"]), "1");
    }
    let sha = cluster.cli(&["SCRIPT", "LOAD", "return 1"]);
    let t = Instant::now();
    cluster.flush_scripts();
    eprintln!("cluster flush_scripts: {:?}", t.elapsed());
    for p in &ports {
        assert_eq!(
            crate::process::cli(*p, None, false, &["SCRIPT", "EXISTS", &sha]),
            "0"
        );
    }
    let t = Instant::now();
    drop(cluster);
    eprintln!("cluster drop: {:?}", t.elapsed());
    for p in &ports {
        assert!(!ping(*p));
    }
}

#[test]
fn sentinel_failover() {
    require_redis();
    let t = Instant::now();
    let sentinel = RedisSentinel::start();
    eprintln!("sentinel start: {:?}", t.elapsed());
    let [master, replica] = sentinel.data_ports()[..] else {
        panic!("two data nodes")
    };
    assert_eq!(sentinel.master_port(), master);
    assert_eq!(sentinel.sentinel_urls().len(), 3);
    assert_eq!(sentinel.cli_master(&["SET", "before", "failover"]), "OK");
    assert_eq!(
        sentinel.cli_master(&["WAIT", "1", "2000"]),
        "1",
        "replicated"
    );

    let t = Instant::now();
    sentinel.failover();
    eprintln!("sentinel failover: {:?}", t.elapsed());
    assert_eq!(
        sentinel.master_port(),
        replica,
        "the former replica is master now"
    );
    let role = crate::process::cli(replica, None, false, &["INFO", "replication"]);
    assert_eq!(info_field(&role, "role").as_deref(), Some("master"));
    assert_eq!(sentinel.cli_master(&["GET", "before"]), "failover");
    assert_eq!(sentinel.cli_master(&["SET", "after", "x"]), "OK");

    let ports: Vec<u16> = sentinel
        .sentinel_ports()
        .into_iter()
        .chain(sentinel.data_ports())
        .collect();
    drop(sentinel);
    for p in ports {
        assert!(!ping(p), "{p} stopped");
    }
}

#[test]
fn orphans_of_dead_test_processes_are_reaped() {
    require_redis();
    // A pid that is certainly dead: a child we started and reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let top = crate::process::root_dir().join(format!("standalone-{dead}-0-0"));
    let node_dir = top.join("redis-1");
    std::fs::create_dir_all(&node_dir).unwrap();
    let port = crate::process::pick_port(false);
    let mut orphan = std::process::Command::new("redis-server")
        .args(crate::process::base_args(port, &node_dir))
        .current_dir(&node_dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Another test process starting a server at the same moment may reap the orphan first:
    // either way it must end up dead.
    crate::process::wait_until(
        std::time::Duration::from_secs(5),
        "the orphan to start (or be reaped by a parallel test)",
        || (ping(port) && node_dir.join("redis.pid").exists()) || !node_dir.exists(),
        String::new,
    );
    crate::process::reap_orphans();
    let status = orphan.wait().unwrap();
    assert!(!status.success(), "killed: {status}");
    assert!(!ping(port));
    assert!(!top.exists());
}
