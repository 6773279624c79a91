//! A real `redis-server` for the shared rate-limit tests, started, stopped, restarted and
//! frozen on demand.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_addr;

/// A real `redis-server` from PATH on a free loopback port, without persistence; killed
/// (SIGKILL) on drop. `stop` + `restart` keep the port (Redis "comes back"); `pause` freezes
/// it with SIGSTOP until the returned guard drops (SIGCONT, also when the test panics).
/// No `redis-server` on PATH fails the test: the suite never skips the shared-limit tests.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Start on a free port (another one if the chosen port was taken meanwhile) and wait
    /// until it answers PING.
    pub fn start() -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("wtgw-redis-")
            .tempdir()
            .expect("tempdir");
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
        };
        for _attempt in 0..5 {
            server.port = free_addr().port();
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server could not bind a free port after 5 attempts");
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server running").id()
    }

    /// Kill the server (SIGKILL) and wait for it to exit; the port is then closed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server could not listen on port {} again within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Freeze the server (SIGSTOP): connections stay open, nothing is answered. It is thawed
    /// (SIGCONT) when the guard drops.
    pub fn pause(&self) -> PausedRedis {
        let pid = self.pid();
        signal_pid(pid, "STOP");
        PausedRedis { pid }
    }

    /// Run one command on a fresh connection (bounded by 2 s).
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut con = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to the test redis-server");
        let _ = con.set_read_timeout(Some(Duration::from_secs(2)));
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut con)
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// Spawn on `self.port`; false when it exited before answering (port taken).
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot run `redis-server` from PATH ({e}). The rate-limit tests need a real \
                 Redis server: `make test` installs the Debian package redis-server \
                 (or run `apt-get install redis-server`), then run the tests again."
            ),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if redis_ping(self.port) {
                self.child = Some(child);
                return true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server on port {} not ready after 10 s", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // A stopped process still dies of SIGKILL; CONT first keeps it simple for tools.
            signal_pid(child.id(), "CONT");
        }
        self.stop();
    }
}

/// A frozen `redis-server`; SIGCONT when dropped.
pub struct PausedRedis {
    pid: u32,
}

impl Drop for PausedRedis {
    fn drop(&mut self) {
        signal_pid(self.pid, "CONT");
    }
}

fn signal_pid(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

fn redis_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
