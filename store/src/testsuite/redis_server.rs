//! # testsuite::redis_server: a real `redis-server` for tests
//!
//! Owns [`RedisServer`]: a throwaway `redis-server` process on a free loopback port, with no
//! persistence, in its own temporary directory, killed when the handle is dropped. The store's
//! suite, the control plane's tests and the test kit use it (feature `testsuite`).
//!
//! It must never be used by production code paths: it panics (with a message saying what to do)
//! instead of returning errors, because a test cannot go on without its Redis.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a freshly started server may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts with a new port when the server dies at start (another process took the port
/// between our probe and the server's bind).
const START_ATTEMPTS: usize = 5;

/// Environment variable naming another `redis-server` binary (default: `redis-server` on PATH).
pub const REDIS_SERVER_ENV: &str = "HERALD_REDIS_SERVER";

/// A running `redis-server` owned by a test. Dropping it kills the process and deletes its
/// directory.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
    /// The TLS port, when started with [`RedisServer::start_tls`].
    tls_port: Option<u16>,
}

/// The server side of a TLS Redis: its certificate and key, and the CA that checks clients'
/// certificates (PEM files).
#[derive(Debug, Clone)]
pub struct RedisTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers `PING`.
    ///
    /// # Panics
    /// When `redis-server` is not installed, or does not come up within a bounded time (the
    /// panic message includes the server's log).
    pub fn start() -> RedisServer {
        Self::start_with(None)
    }

    /// [`RedisServer::start`] with a TLS port too (`rediss://`, [`RedisServer::tls_url`]);
    /// clients need no certificate of their own (`--tls-auth-clients no`). The plain port
    /// stays, for the readiness check.
    pub fn start_tls(tls: &RedisTls) -> RedisServer {
        Self::start_with(Some(tls))
    }

    /// The `rediss://` URL of the TLS port (started with [`RedisServer::start_tls`]).
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port
            .map(|port| format!("rediss://127.0.0.1:{port}/"))
    }

    fn start_with(tls: Option<&RedisTls>) -> RedisServer {
        let binary = std::env::var(REDIS_SERVER_ENV).unwrap_or_else(|_| "redis-server".to_owned());
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(&binary, tls) {
                Ok(server) => return server,
                Err(failure) => last_failure = failure,
            }
        }
        panic!("redis-server did not start after {START_ATTEMPTS} attempts: {last_failure}");
    }

    /// The `redis://` URL of the server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// One start attempt; `Err` (with the reason) when the server exited at start, e.g. because
    /// its port was taken meanwhile.
    fn try_start(binary: &str, tls: Option<&RedisTls>) -> Result<RedisServer, String> {
        let port = free_port();
        let tls_port = tls.map(|_| free_port());
        let dir = unique_dir(port);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let log = dir.join("redis.log");
        let mut command = Command::new(binary);
        command
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let (Some(tls), Some(tls_port)) = (tls, tls_port) {
            command
                .arg("--tls-port")
                .arg(tls_port.to_string())
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args(["--tls-auth-clients", "no"]);
        }
        let spawned = command.spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = std::fs::remove_dir_all(&dir);
                panic!("redis-server not found: install it (apt-get install redis-server)");
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                panic!("cannot run {binary}: {e}");
            }
        };
        // From here on, Drop cleans up the process and the directory on every path.
        let mut server = RedisServer {
            child,
            port,
            dir,
            tls_port,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ping(port) {
                return Ok(server);
            }
            match server.child.try_wait() {
                Ok(Some(status)) => {
                    return Err(format!(
                        "redis-server exited with {status}; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    ));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("cannot watch redis-server: {e}")),
            }
            if Instant::now() >= deadline {
                panic!(
                    "redis-server on port {port} did not answer PING within {START_TIMEOUT:?}; \
                     log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL is fine: nothing is persisted and the directory is removed anyway.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port that was free a moment ago (the OS picks it; the listener is closed right away).
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("cannot bind a loopback port to find a free one");
    listener
        .local_addr()
        .expect("a bound listener has a local address")
        .port()
}

fn unique_dir(port: u16) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "herald-redis-{}-{}-{port}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// True when a server on `port` answers `PING` with `+PONG`.
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let timeout = Some(Duration::from_millis(500));
    if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
        return false;
    }
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}
