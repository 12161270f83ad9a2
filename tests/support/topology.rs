//! Redis beyond one server, for the scale-out tests: a Redis Cluster made with
//! `redis-cli --cluster create` ([`RedisCluster`]), a primary with a replica watched by three
//! sentinels ([`SentinelSet`]), and the TLS arguments for a Redis serving the test CA's
//! certificate ([`tls_server_args`]). Every binary missing is a failure with the package to
//! install, never a skip.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use eslstream::sink::cluster::SlotMap;

pub use super::certs::TestCa;
use super::{free_port, redis_cli_bin, redis_server_bin, wait_until, RedisServer};

/// A port below 55536 whose cluster bus port (10000 higher) is free too.
pub fn cluster_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ =
        NEXT.compare_exchange(0, 20_000 + (std::process::id() % 2_000) as u16 * 10, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        if port >= 45_000 {
            NEXT.store(20_000, Ordering::SeqCst);
            continue;
        }
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

/// `redis-cli` with `args` against `127.0.0.1:port`; panics with its output when it fails.
pub fn cli(port: u16, args: &[&str]) -> String {
    let cli = redis_cli_bin();
    let out = Command::new(cli)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "redis-cli {args:?} failed: {text}");
    text
}

/// A field of `INFO <section>` on `conn`.
pub fn info_field(conn: &mut redis::Connection, section: &str, field: &str) -> Option<String> {
    let info: String = redis::cmd("INFO").arg(section).query(conn).ok()?;
    info.lines().find_map(|l| l.strip_prefix(&format!("{field}:")).map(|v| v.trim().to_owned()))
}

/// Waits until the replica on `replica` has a live link and everything `primary` had
/// written when this was called.
pub fn wait_replica_synced(primary: &RedisServer, replica: &RedisServer) {
    let mut p = primary.connection();
    let target: u64 = info_field(&mut p, "replication", "master_repl_offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut r = replica.connection();
    wait_until(Duration::from_secs(30), "the replica in sync", || {
        info_field(&mut r, "replication", "master_link_status").as_deref() == Some("up")
            && info_field(&mut r, "replication", "slave_repl_offset").and_then(|v| v.parse::<u64>().ok())
                >= Some(target)
    });
}

/// Whether the server answers `ROLE` as a primary.
pub fn is_primary(server: &RedisServer) -> bool {
    let Ok(mut conn) = server.client().get_connection_with_timeout(Duration::from_millis(500)) else { return false };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    let role: redis::RedisResult<redis::Value> = redis::cmd("ROLE").query(&mut conn);
    matches!(role, Ok(redis::Value::Array(items)) if matches!(items.first(), Some(redis::Value::BulkString(r)) if r == b"master"))
}

/// A Redis Cluster of real servers on loopback.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `primaries` primaries with `replicas` replicas each, every slot assigned, state ok and
    /// every replica linked.
    pub fn start(primaries: usize, replicas: usize) -> RedisCluster {
        let args =
            ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000"];
        let nodes: Vec<RedisServer> =
            (0..primaries * (1 + replicas)).map(|_| RedisServer::start_on(&args, cluster_port)).collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let mut create: Vec<&str> = vec!["--cluster", "create"];
        create.extend(addresses.iter().map(String::as_str));
        let replicas_arg = replicas.to_string();
        create.extend(["--cluster-replicas", &replicas_arg, "--cluster-yes"]);
        cli(nodes[0].port(), &create);
        let cluster = RedisCluster { nodes };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every live node says `cluster_state:ok` and agrees on the primaries.
    pub fn wait_ok(&self) {
        wait_until(Duration::from_secs(60), "cluster state ok on every node", || {
            self.nodes.iter().filter(|n| n.pid().is_some()).all(|n| {
                let mut conn = n.connection();
                info_field_cluster(&mut conn).as_deref() == Some("ok")
            })
        });
        wait_until(Duration::from_secs(60), "every replica linked", || {
            self.nodes
                .iter()
                .filter(|n| n.pid().is_some() && !is_primary(n))
                .all(|n| info_field(&mut n.connection(), "replication", "master_link_status").as_deref() == Some("up"))
        });
    }

    /// `127.0.0.1:port` of every node, comma-separated (for `REDIS_CLUSTER_NODES`).
    pub fn seeds(&self) -> String {
        self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect::<Vec<_>>().join(",")
    }

    /// The slot map most live nodes agree on (a node just restarted may still claim its old
    /// slots for a moment).
    pub fn slot_map(&self) -> SlotMap {
        let mut maps: Vec<(SlotMap, usize)> = Vec::new();
        for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
            let Ok(mut conn) = node.client().get_connection_with_timeout(Duration::from_millis(500)) else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            if let Ok(reply) = redis::cmd("CLUSTER").arg("SLOTS").query::<redis::Value>(&mut conn) {
                if let Ok(map) = SlotMap::parse(&reply, "127.0.0.1") {
                    match maps.iter_mut().find(|(m, _)| *m == map) {
                        Some((_, votes)) => *votes += 1,
                        None => maps.push((map, 1)),
                    }
                }
            }
        }
        maps.into_iter()
            .max_by_key(|(_, votes)| *votes)
            .map(|(map, _)| map)
            .expect("a cluster node answered CLUSTER SLOTS")
    }

    /// Index into `nodes` of the primary serving `key` now.
    pub fn primary_for(&self, key: &str) -> usize {
        let map = self.slot_map();
        let address = &map.nodes[map.node_for_key(key).expect("slot served")];
        self.nodes.iter().position(|n| format!("127.0.0.1:{}", n.port()) == *address).expect("a node of ours")
    }

    /// Index of the replica of primary `primary`.
    pub fn replica_of(&self, primary: usize) -> usize {
        let port = self.nodes[primary].port().to_string();
        (0..self.nodes.len())
            .find(|i| {
                *i != primary
                    && info_field(&mut self.nodes[*i].connection(), "replication", "master_port").as_deref()
                        == Some(port.as_str())
            })
            .expect("the primary has a replica")
    }

    /// The node id of node `i`.
    pub fn node_id(&self, i: usize) -> String {
        redis::cmd("CLUSTER").arg("MYID").query(&mut self.nodes[i].connection()).expect("CLUSTER MYID")
    }

    /// A connection to the primary serving `key` now.
    pub fn connection_for(&self, key: &str) -> redis::Connection {
        self.nodes[self.primary_for(key)].connection()
    }

    /// Moves `key`'s slot from its primary to primary `to`, key by key, as `redis-cli
    /// --cluster reshard` does (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE).
    pub fn migrate_slot_of(&self, key: &str, to: usize) {
        let from = self.primary_for(key);
        assert_ne!(from, to, "the slot is already there");
        let slot = eslstream::sink::cluster::key_slot(key.as_bytes());
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let mut src = self.nodes[from].connection();
        let mut dst = self.nodes[to].connection();
        let setslot = |conn: &mut redis::Connection, how: &str, id: &str| {
            let _: () = redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg(how).arg(id).query(conn).expect("SETSLOT");
        };
        setslot(&mut dst, "IMPORTING", &from_id);
        setslot(&mut src, "MIGRATING", &to_id);
        loop {
            let keys: Vec<String> =
                redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(100).query(&mut src).expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let mut migrate = redis::cmd("MIGRATE");
            migrate.arg("127.0.0.1").arg(self.nodes[to].port()).arg("").arg(0).arg(10_000).arg("KEYS");
            for k in &keys {
                migrate.arg(k);
            }
            let _: redis::Value = migrate.query(&mut src).expect("MIGRATE");
        }
        setslot(&mut dst, "NODE", &to_id);
        setslot(&mut src, "NODE", &to_id);
        for (i, node) in self.nodes.iter().enumerate() {
            if i != from && i != to && node.pid().is_some() {
                setslot(&mut node.connection(), "NODE", &to_id);
            }
        }
    }
}

fn info_field_cluster(conn: &mut redis::Connection) -> Option<String> {
    let info: String = redis::cmd("CLUSTER").arg("INFO").query(conn).ok()?;
    info.lines().find_map(|l| l.strip_prefix("cluster_state:").map(|v| v.trim().to_owned()))
}

/// One sentinel process; dropped = killed.
pub struct Sentinel {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A primary, its replica, and three sentinels watching them as `mymaster` (quorum 2, down
/// after 1 s).
pub struct SentinelSet {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<Sentinel>,
}

/// The name the sentinels monitor the primary under.
pub const MASTER_NAME: &str = "mymaster";

impl SentinelSet {
    pub fn start() -> SentinelSet {
        let primary = RedisServer::start();
        let replica_of = primary.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &replica_of]);
        wait_replica_synced(&primary, &replica);
        let binary = redis_server_bin();
        let sentinels = (0..3)
            .map(|_| {
                let dir = tempfile::Builder::new().prefix("eslstream-sentinel-").tempdir().expect("temp dir");
                let port = free_port();
                let conf = dir.path().join("sentinel.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\n\
                         sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\n\
                         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                         sentinel failover-timeout {MASTER_NAME} 5000\n\
                         sentinel parallel-syncs {MASTER_NAME} 1\n",
                        dir.path().display(),
                        dir.path().join("sentinel.log").display(),
                        primary.port()
                    ),
                )
                .expect("write sentinel.conf");
                let child = Command::new(&binary)
                    .arg(&conf)
                    .arg("--sentinel")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("run redis-server --sentinel");
                Sentinel { child, port, _dir: dir }
            })
            .collect::<Vec<_>>();
        let set = SentinelSet { primary, replica, sentinels };
        // Each sentinel must know the replica (to promote it) and the two other sentinels (to
        // reach a quorum and elect a leader) before a failover can happen.
        for s in &set.sentinels {
            wait_until(Duration::from_secs(60), "a sentinel knowing the replica and the other sentinels", || {
                let Ok(mut conn) = redis::Client::open(format!("redis://127.0.0.1:{}/", s.port))
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
                else {
                    return false;
                };
                let mut count = |what: &str| -> usize {
                    redis::cmd("SENTINEL")
                        .arg(what)
                        .arg(MASTER_NAME)
                        .query::<Vec<redis::Value>>(&mut conn)
                        .map(|v| v.len())
                        .unwrap_or(0)
                };
                count("replicas") == 1 && count("sentinels") == 2
            });
        }
        set
    }

    /// `127.0.0.1:port` of every sentinel, comma-separated (for `REDIS_SENTINELS`).
    pub fn addresses(&self) -> String {
        self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect::<Vec<_>>().join(",")
    }

    /// The port the first answering sentinel names as the primary.
    pub fn named_primary_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let mut conn = redis::Client::open(format!("redis://127.0.0.1:{}/", s.port))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
                .ok()?;
            let named: Option<(String, u16)> =
                redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(MASTER_NAME).query(&mut conn).ok()?;
            named.map(|(_, port)| port)
        })
    }
}

/// A [`RedisServer`] that also listens with TLS (the CA's server certificate; client
/// certificates required with `auth_clients`), and the `rediss://` URL of that port. Its
/// plain port stays, for the test's own reads.
pub fn tls_redis(ca: &TestCa, auth_clients: bool) -> (RedisServer, String) {
    let tls_port = free_port().to_string();
    let (cert, key, ca_cert) = (ca.path("server.crt"), ca.path("server.key"), ca.path("ca.crt"));
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca_cert,
        "--tls-auth-clients",
        if auth_clients { "yes" } else { "no" },
    ]);
    (redis, format!("rediss://127.0.0.1:{tls_port}/"))
}

/// Time from `since` until `condition` holds (polled every 10 ms, up to `timeout`).
pub fn time_until(since: Instant, timeout: Duration, what: &str, condition: impl FnMut() -> bool) -> Duration {
    wait_until(timeout, what, condition);
    since.elapsed()
}
