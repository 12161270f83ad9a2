//! A real PostgreSQL cluster for the outbox tests: `initdb` in a temporary directory and
//! `pg_ctl` on a free loopback port. PostgreSQL refuses to run as root, so as root (CI) the
//! server runs as the packaged `postgres` user; otherwise as the current user.
//!
//! Self-contained (the load harness includes this file too): std, `tempfile`, `libc` and the
//! `postgres` client only.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// A throwaway cluster; stopped and removed when dropped.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    options: String,
}

/// The directory holding `initdb` and `pg_ctl`: on `PATH`, else Debian's
/// `/usr/lib/postgresql/<version>/bin` (the newest).
fn bin_dir() -> PathBuf {
    if let Some(initdb) = find_on_path("initdb") {
        return initdb.canonicalize().unwrap_or(initdb).parent().expect("initdb's directory").to_owned();
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(|d| d.ok()).map(|d| d.path().join("bin")).filter(|b| b.join("initdb").is_file()).collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().expect(
        "PostgreSQL's initdb is neither on PATH nor under /usr/lib/postgresql/*/bin: run scripts/install-deps.sh",
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl PgServer {
    pub fn start() -> PgServer {
        Self::start_with(&["-c", "fsync=off", "-c", "full_page_writes=off"])
    }

    /// A cluster started with these extra `postgres` options (the load harness keeps fsync on).
    pub fn start_with(options: &[&str]) -> PgServer {
        let bin = bin_dir();
        let dir = tempfile::Builder::new().prefix("eslstream-pg-").tempdir().expect("temp dir");
        if is_root() {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
            assert!(status.is_ok_and(|s| s.success()), "chown the cluster directory to postgres");
        }
        let options = options.join(" ");
        let server = PgServer { dir, bin, port: free_port(), options };
        let data = server.data();
        server
            .run("initdb", &["-D", data.to_str().unwrap(), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]);
        server.start_server();
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// One of the server's programs, to be run as `postgres` when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if is_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    /// Runs one of the server's programs, asserting success.
    fn run(&self, program: &str, args: &[&str]) -> String {
        let output = self.command(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "{program} {args:?} failed:\n{text}\n{}", self.log());
        text
    }

    fn start_server(&self) {
        let data = self.data();
        let log = self.dir.path().join("server.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=50 {}",
            self.port,
            self.dir.path().display(),
            self.options
        );
        self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-o", &options, "-w", "-t", "30", "start"],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.try_client().is_none() {
            assert!(Instant::now() < deadline, "PostgreSQL did not accept connections within 30 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (fast shutdown: open sessions are ended).
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", self.data().to_str().unwrap(), "-m", "fast", "-w", "stop"]);
    }

    /// Stops and starts it again on the same port.
    pub fn restart(&self) {
        self.stop();
        self.start_server();
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for the `postgres` database through `addr` (the server itself, or a proxy).
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        format!("postgres://postgres@{}:{}/postgres?sslmode=disable", addr.ip(), addr.port())
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable", self.port)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn try_client(&self) -> Option<postgres::Client> {
        postgres::Client::connect(
            &format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port),
            postgres::NoTls,
        )
        .ok()
    }

    /// A new client session.
    pub fn client(&self) -> postgres::Client {
        self.try_client().unwrap_or_else(|| panic!("cannot connect to PostgreSQL on {}:\n{}", self.port, self.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data();
        let args = ["-D", data.to_str().unwrap_or_default(), "-m", "immediate", "-w", "stop"];
        let _ = self.command("pg_ctl").args(args).output();
    }
}
