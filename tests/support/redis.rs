//! A real `redis-server` per test: free loopback port, its own data directory, AOF with
//! `appendfsync always` (so a SIGKILLed server restarted on the same directory keeps every
//! acknowledged write), and the knobs tests need to misbehave it: kill, restart, SIGSTOP,
//! `CLIENT PAUSE WRITE`, `maxmemory`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, redis_cli_bin, redis_server_bin, signal};

const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A `redis-server` child process; dropped = killed.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    binary: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start), with extra `--name value` arguments for redis-server
    /// (kept for [`restart`](Self::restart)).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        Self::start_on(extra, free_port)
    }

    /// Like [`start_with`](Self::start_with), on a port from `pick` (a cluster node needs one
    /// whose bus port, 10000 higher, is free too).
    pub fn start_on(extra: &[&str], pick: fn() -> u16) -> RedisServer {
        let binary = redis_server_bin();
        let dir = tempfile::Builder::new().prefix("eslstream-redis-").tempdir().expect("temp dir for redis");
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut server = RedisServer { child: None, port: 0, dir, binary, extra };
        let mut last_error = String::new();
        // A free port can be taken by someone else before redis binds it: retry a few times.
        for _ in 0..5 {
            server.port = pick();
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => {
                    last_error = e;
                    server.kill();
                }
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let dir = self.dir.path().to_str().expect("utf-8 temp dir").to_owned();
        let log = self.dir.path().join("redis.log");
        let mut args: Vec<&str> = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            &dir,
            "--daemonize",
            "no",
        ];
        let log_path = log.to_str().expect("utf-8 log path").to_owned();
        args.extend(["--logfile", &log_path]);
        args.extend(self.extra.iter().map(String::as_str));
        let child = Command::new(&self.binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        self.wait_ready().map_err(|e| format!("{e}; log:\n{}", self.log()))
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("redis-server exited with {status}"));
                }
            }
            if self.ping() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no PONG from port {} within {READY_TIMEOUT:?}", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One raw `PING` (false while loading the AOF, stopped or down).
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_millis(200))
        else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 64];
        s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The data directory (AOF, `redis.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's log file so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// A client for this server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid redis URL")
    }

    /// A fresh synchronous connection with 5 s timeouts.
    pub fn connection(&self) -> redis::Connection {
        let con = self.client().get_connection_with_timeout(Duration::from_secs(5)).expect("connect to test redis");
        con.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
        con.set_write_timeout(Some(Duration::from_secs(5))).expect("write timeout");
        con
    }

    /// SIGKILL, then reap. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (after [`kill`](Self::kill), or
    /// killing it first) and waits for PING: everything acknowledged before is there.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("redis-server did not restart on port {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// SIGSTOP: the server stops answering but keeps its connections open.
    pub fn pause(&self) {
        signal(self.pid().expect("redis is running"), libc::SIGSTOP);
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        signal(self.pid().expect("redis is running"), libc::SIGCONT);
    }

    /// `CLIENT PAUSE <ms> WRITE`: writes block for `ms`, reads go on.
    pub fn client_pause_write(&self, ms: u64) {
        let _: () =
            redis::cmd("CLIENT").arg("PAUSE").arg(ms).arg("WRITE").query(&mut self.connection()).expect("CLIENT PAUSE");
    }

    /// `CONFIG SET maxmemory <bytes>` (with the default `noeviction`, writes then fail with OOM).
    pub fn set_maxmemory(&self, bytes: u64) {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(bytes)
            .query(&mut self.connection())
            .expect("CONFIG SET");
    }

    /// Runs `redis-cli -p <port> <args>` and returns its trimmed stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let cli = redis_cli_bin();
        let out = Command::new(cli)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGCONT); // a stopped process cannot be reaped quickly otherwise
        }
        self.kill();
    }
}
