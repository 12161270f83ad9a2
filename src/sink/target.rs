//! Where writes go: the server of `REDIS_URL`, the primary the sentinels name
//! (`REDIS_SENTINELS`), or the primaries of a Redis Cluster (`REDIS_CLUSTER_NODES`) holding
//! each stream; connections to them kept for the monitor and the trimmer
//! ([`PrimaryConnections`]); and the [`Sink`] a writer writes through, whichever topology it
//! is. Every connection is made by [`crate::sink::connect`].
//!
//! Sentinel discovery is done here rather than with redis-rs's `sentinel` module because its
//! synchronous client connects and queries without timeouts: one sentinel that stops
//! answering would hold a writer forever. Here each sentinel is asked in turn with the dial
//! and write timeouts, and the primary it names is only used once `ROLE` says `master`.

use std::time::Duration;

use redis::{Connection, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, RedisResult, Value};

use crate::config::{split_host_port, RedisConfig, RedisTopology};
use crate::sink::cluster::{ClusterSink, SlotMap};
use crate::sink::connect::{connect_node, connect_with, unreachable};
use crate::sink::redis::{classify, Entry, EntryOutcome, RedisSink, Unanswered, WriteError};

/// The primary's address and a connection to it: the URL's server, or the primary the
/// sentinels name, checked with `ROLE`. (Not for Cluster, which has one primary per slot.)
pub(crate) fn primary_connection(config: &RedisConfig) -> RedisResult<(String, Connection)> {
    primary_connection_with(config, config.write_timeout)
}

fn primary_connection_with(config: &RedisConfig, timeout: Duration) -> RedisResult<(String, Connection)> {
    match &config.topology {
        RedisTopology::Sentinel { sentinels, master, password } => {
            discover_primary(config, sentinels, master, password.as_deref(), timeout)
        }
        RedisTopology::Standalone | RedisTopology::Cluster { .. } => {
            Ok((url_address(&config.url), connect_node(config, None, timeout)?))
        }
    }
}

/// A connection to the primary holding `key` (the one server, the primary the sentinels
/// name, or the owner of its slot in a cluster), with `timeout` for connect, read and write.
pub(crate) fn connect_primary_for(config: &RedisConfig, key: &str, timeout: Duration) -> RedisResult<Connection> {
    match &config.topology {
        RedisTopology::Cluster { .. } => {
            let primary = primaries_for(config, &[key.to_owned()], &[], timeout)?.remove(0);
            let node = split_host_port(&primary.address)
                .ok_or_else(|| unreachable(format!("bad address {}", primary.address)))?;
            connect_node(config, Some(&node), timeout)
        }
        _ => primary_connection_with(config, timeout).map(|(_, conn)| conn),
    }
}

/// `host:port` of a URL, for logs (no credentials).
pub(crate) fn url_address(url: &str) -> String {
    match url.into_connection_info().map(|i| i.addr().clone()) {
        Ok(ConnectionAddr::Tcp(host, port)) | Ok(ConnectionAddr::TcpTls { host, port, .. }) => format!("{host}:{port}"),
        Ok(ConnectionAddr::Unix(path)) => path.display().to_string(),
        _ => crate::config::mask_url(url),
    }
}

/// Asks each sentinel in turn for `master`'s address, and returns the first that answers
/// `ROLE` as a primary.
fn discover_primary(
    config: &RedisConfig,
    sentinels: &[String],
    master: &str,
    password: Option<&str>,
    timeout: Duration,
) -> RedisResult<(String, Connection)> {
    let mut failures = Vec::new();
    for sentinel in sentinels {
        match primary_named_by(config, sentinel, master, password, timeout) {
            Ok(found) => return Ok(found),
            Err(e) => failures.push(format!("{sentinel}: {e}")),
        }
    }
    Err(unreachable(format!("no sentinel named a reachable primary for {master:?} ({})", failures.join("; "))))
}

fn primary_named_by(
    config: &RedisConfig,
    sentinel: &str,
    master: &str,
    password: Option<&str>,
    timeout: Duration,
) -> RedisResult<(String, Connection)> {
    let addr = split_host_port(sentinel).ok_or_else(|| unreachable(format!("{sentinel} is not host:port")))?;
    let auth = match password {
        Some(p) => RedisConnectionInfo::default().set_password(p),
        None => RedisConnectionInfo::default(),
    };
    let mut conn = connect_with(config, Some(&addr), Some(auth), timeout)?;
    let named: Option<(String, String)> =
        redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(master).query(&mut conn)?;
    let Some((host, port)) = named else {
        return Err(unreachable(format!("the sentinel does not monitor {master:?}")));
    };
    let node = (host, port.parse::<u16>().map_err(|_| unreachable(format!("bad port {port:?}")))?);
    let address = format!("{}:{}", node.0, node.1);
    let mut primary = connect_node(config, Some(&node), timeout)?;
    let role: Value = redis::cmd("ROLE").query(&mut primary)?;
    match role {
        Value::Array(items) if matches!(items.first(), Some(Value::BulkString(r)) if r == b"master") => {
            Ok((address, primary))
        }
        other => {
            Err(unreachable(format!("{address}, named primary, answers ROLE with {other:?} (failover under way?)")))
        }
    }
}

/// The primaries that hold `streams`, each with the streams it holds: one for a single
/// server or Sentinel, the owner of each stream's slot for a cluster (whose map is asked of
/// the `known` nodes first, then of the seeds).
pub(crate) fn primaries_for(
    config: &RedisConfig,
    streams: &[String],
    known: &[String],
    timeout: Duration,
) -> RedisResult<Vec<Primary>> {
    match &config.topology {
        RedisTopology::Cluster { .. } => {
            let map = SlotMap::fetch(config, known, timeout)?;
            let mut out: Vec<Primary> = Vec::new();
            for stream in streams {
                let node = map.node_for_key(stream).ok_or_else(|| {
                    unreachable(format!("no primary serves the slot of {stream} (cluster incomplete?)"))
                })?;
                let addr = map.nodes[node].clone();
                match out.iter_mut().find(|p| p.address == addr) {
                    Some(p) => p.streams.push(stream.clone()),
                    None => out.push(Primary { address: addr, streams: vec![stream.clone()] }),
                }
            }
            Ok(out)
        }
        _ => {
            let address = match &config.topology {
                RedisTopology::Sentinel { .. } => primary_connection_with(config, timeout)?.0,
                _ => url_address(&config.url),
            };
            Ok(vec![Primary { address, streams: streams.to_vec() }])
        }
    }
}

/// One primary node and the streams it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Primary {
    /// `host:port`.
    pub address: String,
    pub streams: Vec<String>,
}

/// Connections to the primaries that hold some streams, for the health monitor and the
/// trimmer: found again at every round (a failover or a resharding moves them), each
/// connection kept while its node stays a primary of those streams and answers.
pub(crate) struct PrimaryConnections {
    config: RedisConfig,
    timeout: Duration,
    conns: Vec<(String, Connection)>,
}

impl PrimaryConnections {
    pub(crate) fn new(config: RedisConfig, timeout: Duration) -> PrimaryConnections {
        PrimaryConnections { config, timeout, conns: Vec::new() }
    }

    /// The primaries holding `streams` now (connections to nodes that no longer are one are
    /// closed).
    pub(crate) fn resolve(&mut self, streams: &[String]) -> RedisResult<Vec<Primary>> {
        let primaries = match &self.config.topology {
            RedisTopology::Sentinel { .. } => {
                // Asked every round, so a failover is seen even while the old primary answers;
                // the connection kept is made by `get` (a new one counts as fresh).
                let (address, _) = primary_connection_with(&self.config, self.timeout)?;
                vec![Primary { address, streams: streams.to_vec() }]
            }
            _ => {
                let known: Vec<String> = self.conns.iter().map(|(a, _)| a.clone()).collect();
                primaries_for(&self.config, streams, &known, self.timeout)?
            }
        };
        self.conns.retain(|(a, _)| primaries.iter().any(|p| p.address == *a));
        Ok(primaries)
    }

    pub(crate) fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// The connection to `address` (made now when there is none: `true`).
    pub(crate) fn get(&mut self, address: &str) -> RedisResult<(&mut Connection, bool)> {
        if let Some(i) = self.conns.iter().position(|(a, _)| a == address) {
            return Ok((&mut self.conns[i].1, false));
        }
        let conn = match &self.config.topology {
            RedisTopology::Standalone => connect_node(&self.config, None, self.timeout)?,
            _ => {
                let node = split_host_port(address).ok_or_else(|| unreachable(format!("bad address {address}")))?;
                connect_node(&self.config, Some(&node), self.timeout)?
            }
        };
        self.conns.push((address.to_owned(), conn));
        Ok((&mut self.conns.last_mut().expect("pushed").1, true))
    }

    /// Drops the connection to `address` after a failure (or every one: `None`).
    pub(crate) fn forget(&mut self, address: Option<&str>) {
        self.conns.retain(|(a, _)| address.is_some_and(|x| x != a));
    }
}

/// What a writer writes through: one connection to the primary, or one per cluster primary.
pub(crate) enum Sink {
    Primary { address: String, sink: RedisSink },
    Cluster(ClusterSink),
}

impl Sink {
    /// Connects as the topology says (for a cluster: reads the slot map; nodes are connected
    /// as batches need them).
    pub(crate) fn connect(config: &RedisConfig) -> Result<Sink, WriteError> {
        match &config.topology {
            RedisTopology::Cluster { .. } => Ok(Sink::Cluster(ClusterSink::connect(config)?)),
            _ => {
                let (address, conn) = primary_connection(config).map_err(classify)?;
                Ok(Sink::Primary { address, sink: RedisSink::on(conn, config)? })
            }
        }
    }

    /// Where this sink writes, for the log.
    pub(crate) fn location(&self) -> String {
        match self {
            Sink::Primary { address, .. } => address.clone(),
            Sink::Cluster(c) => c.location(),
        }
    }

    /// The server's name and version (of the first connected node, for a cluster).
    pub(crate) fn server(&self) -> Option<&str> {
        match self {
            Sink::Primary { sink, .. } => Some(sink.server()),
            Sink::Cluster(c) => c.server(),
        }
    }

    /// See [`RedisSink::write`]; a cluster sends each node its part of the batch.
    pub(crate) fn write(&mut self, entries: &[Entry], maybe_written: bool) -> Result<Vec<EntryOutcome>, WriteError> {
        match self {
            Sink::Primary { sink, .. } => sink.write(entries, maybe_written),
            Sink::Cluster(c) => c.write(entries, maybe_written),
        }
    }

    /// See [`RedisSink::set_reply_timeout`].
    pub(crate) fn set_reply_timeout(&mut self, timeout: Duration) -> Result<(), WriteError> {
        match self {
            Sink::Primary { sink, .. } => sink.set_reply_timeout(timeout),
            Sink::Cluster(c) => c.set_reply_timeout(timeout),
        }
    }

    /// See [`RedisSink::take_unanswered`] (of every node, for a cluster).
    pub(crate) fn take_unanswered(&mut self) -> Vec<Unanswered> {
        match self {
            Sink::Primary { sink, .. } => sink.take_unanswered().into_iter().collect(),
            Sink::Cluster(c) => c.take_unanswered(),
        }
    }

    /// See [`RedisSink::retire`] (each stream on its primary, for a cluster).
    pub(crate) fn retire(&mut self, unanswered: &[Unanswered]) -> Result<(), WriteError> {
        match self {
            Sink::Primary { sink, .. } => sink.retire(unanswered),
            Sink::Cluster(c) => c.retire(unanswered),
        }
    }

    /// See [`RedisSink::set_fence`].
    pub(crate) fn set_fence(&mut self, fence: Option<(&str, u64)>) {
        match self {
            Sink::Primary { sink, .. } => sink.set_fence(fence),
            Sink::Cluster(c) => c.set_fence(fence),
        }
    }

    /// See [`RedisSink::set_dedup_keys_ttl`].
    pub(crate) fn set_dedup_keys_ttl(&mut self, ttl: Duration) {
        match self {
            Sink::Primary { sink, .. } => sink.set_dedup_keys_ttl(ttl),
            Sink::Cluster(c) => c.set_dedup_keys_ttl(ttl),
        }
    }
}
