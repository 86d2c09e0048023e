//! `rediss://`: a real `redis-server` with TLS on a loopback port, its certificate from a private
//! CA (a self-signed one made here with `openssl`), trusted through `tls_ca_pem`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wxgate_redis_testkit::require_redis;
use wxgate_store::redis_store::{RedisConfig, RedisStore, Topology};
use wxgate_store::{Acquire, AcquireRequest, Health, Limit, Limiter};

struct TlsRedis {
    child: Child,
    port: u16,
    cert: Vec<u8>,
    dir: std::path::PathBuf,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_tls_redis() -> TlsRedis {
    let dir = std::env::temp_dir().join(format!(
        "wxgate-tls-{}-{}",
        std::process::id(),
        crate::prefix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    // A private CA, and a server certificate for 127.0.0.1 signed by it.
    let run = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl is installed");
        assert!(ok.success(), "openssl {args:?} failed");
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=wxgate-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "server.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
        ])
        .arg("--tls-cert-file")
        .arg(dir.join("cert.pem"))
        .arg("--tls-key-file")
        .arg(dir.join("key.pem"))
        .arg("--tls-ca-cert-file")
        .arg(dir.join("ca.pem"))
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cert = std::fs::read(dir.join("ca.pem")).unwrap();
    // Up when the TLS port accepts connections.
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "TLS redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    TlsRedis {
        child,
        port,
        cert,
        dir,
    }
}

fn store(port: u16, ca: Option<Vec<u8>>) -> RedisStore {
    RedisStore::new(RedisConfig {
        topology: Topology::Standalone {
            url: format!("rediss://127.0.0.1:{port}"),
        },
        prefix: crate::prefix(),
        username: None,
        password: None,
        sentinel_password: None,
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
        tls_ca_pem: ca,
    })
    .unwrap()
}

#[tokio::test]
async fn rediss_with_a_private_ca() {
    require_redis();
    let redis = start_tls_redis();
    let s = store(redis.port, Some(redis.cert.clone()));
    s.ping().await.expect("TLS ping");
    let limits = [Limit {
        scope: wxgate_store::LimitScope::Api(wxgate_store::Api::TemplateSend),
        limit: 1,
        window_ms: 60_000,
    }];
    let req = AcquireRequest {
        appid: "wx0000000000000ccc",
        limits: &limits,
        quotas: &[],
        blocks: &[],
        guard_ms: 0,
        known_seq: 0,
        loss: Default::default(),
    };
    assert!(matches!(
        s.acquire(&req).await.unwrap().decision,
        Acquire::Granted { .. }
    ));
    assert!(matches!(
        s.acquire(&AcquireRequest { ..req.clone() })
            .await
            .unwrap()
            .decision,
        Acquire::Wait { .. }
    ));
    // Without the CA the server's certificate is not trusted: unavailable, never plain text.
    let untrusted = store(redis.port, None);
    assert!(untrusted.ping().await.is_err());
}
