//! Writing to a Redis Cluster: the slot map (`CLUSTER SLOTS`), the slot of a key (CRC16 of
//! its hash tag, as Redis computes it), and [`ClusterSink`], which keeps one plain pipelined
//! connection per primary and sends each node its part of a batch.
//!
//! Every key one entry's write touches (the stream and its dedup keys) shares the stream's
//! slot ([`crate::sink::redis::slot_tag`]), so each node's part is written exactly as on a
//! single server: the same transaction, script and `WAIT`. Our own routing rather than
//! redis-rs's cluster client, whose pipelines cannot carry `MULTI`/`EXEC` and which would
//! re-encode every command: here a batch stays one pre-encoded request per node.
//!
//! On `MOVED`, `ASK`, `CLUSTERDOWN`, `TRYAGAIN`, `READONLY` or a lost node the map is read
//! again before the next write and the entries not acknowledged are retried through the
//! checking path. An `ASK` (the slot is being migrated) is not followed to the importing
//! node: a batch's keys may be split between the two nodes until the migration ends, so the
//! batch waits, retried with backoff, until the slot has its new owner (`MOVED`).

use std::borrow::Borrow;
use std::time::Duration;

use redis::{RedisResult, Value};

use crate::config::{split_host_port, RedisConfig, RedisTopology};
use crate::sink::connect::{connect_node, unreachable};
use crate::sink::redis::{classify, Entry, EntryOutcome, RedisSink, Unanswered, WriteError};

/// Slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with.
pub(crate) fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The slot of `key`: of its hash tag (the part between the first `{` and the next `}`, when
/// not empty), else of the whole key.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter().position(|&b| b == b'}').filter(|len| *len > 0).map(|len| &rest[..len])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

/// Which primary serves each slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotMap {
    /// `(first slot, last slot, index into nodes)`, sorted.
    ranges: Vec<(u16, u16, usize)>,
    /// `host:port` of each primary.
    pub nodes: Vec<String>,
}

impl SlotMap {
    /// The index into [`SlotMap::nodes`] of the primary serving `slot`.
    pub(crate) fn node_of(&self, slot: u16) -> Option<usize> {
        let i = self.ranges.partition_point(|(_, last, _)| *last < slot);
        self.ranges.get(i).filter(|(first, _, _)| *first <= slot).map(|(_, _, node)| *node)
    }

    /// The primary serving `key`'s slot.
    pub fn node_for_key(&self, key: &str) -> Option<usize> {
        self.node_of(key_slot(key.as_bytes()))
    }

    /// Parses a `CLUSTER SLOTS` reply; an empty host means the node asked (`asked_host`).
    pub fn parse(reply: &Value, asked_host: &str) -> Result<SlotMap, String> {
        let Value::Array(ranges) = reply else { return Err(format!("CLUSTER SLOTS answered {reply:?}")) };
        let mut map = SlotMap::default();
        for range in ranges {
            let Value::Array(parts) = range else { return Err(format!("slot range {range:?}")) };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(primary))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return Err(format!("slot range {parts:?}"));
            };
            let host = match primary.first() {
                Some(Value::BulkString(h)) if !h.is_empty() && h != b"?" => String::from_utf8_lossy(h).into_owned(),
                _ => asked_host.to_owned(),
            };
            let Some(Value::Int(port)) = primary.get(1) else { return Err(format!("primary {primary:?}")) };
            let address = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
            let node = match map.nodes.iter().position(|n| *n == address) {
                Some(i) => i,
                None => {
                    map.nodes.push(address);
                    map.nodes.len() - 1
                }
            };
            let slot = |v: i64| u16::try_from(v).ok().filter(|s| *s < SLOTS).ok_or(format!("slot {v}"));
            map.ranges.push((slot(*first)?, slot(*last)?, node));
        }
        map.ranges.sort_unstable();
        Ok(map)
    }

    /// Reads the map from the first node that answers: `known` first (the primaries of the
    /// map in use), then the seeds of `REDIS_CLUSTER_NODES`.
    pub(crate) fn fetch(config: &RedisConfig, known: &[String], timeout: Duration) -> RedisResult<SlotMap> {
        let RedisTopology::Cluster { seeds } = &config.topology else {
            return Err(unreachable("not a cluster (REDIS_CLUSTER_NODES is unset)".into()));
        };
        let mut failures = Vec::new();
        for address in known.iter().chain(seeds.iter().filter(|s| !known.contains(s))) {
            let Some(node) = split_host_port(address) else { continue };
            let result = connect_node(config, Some(&node), timeout).and_then(|mut conn| {
                let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn)?;
                SlotMap::parse(&reply, &node.0).map_err(unreachable)
            });
            match result {
                Ok(map) if !map.ranges.is_empty() => return Ok(map),
                Ok(_) => failures.push(format!("{address}: no slot assigned")),
                Err(e) => failures.push(format!("{address}: {e}")),
            }
        }
        Err(unreachable(format!("no cluster node gave its slot map ({})", failures.join("; "))))
    }
}

/// A writer's connections to the primaries of a cluster.
pub(crate) struct ClusterSink {
    config: RedisConfig,
    map: SlotMap,
    /// Parallel to `map.nodes`: the connection to that primary, made when first needed.
    sinks: Vec<Option<RedisSink>>,
    /// The primary of each stream written so far (the map's, until it is read again).
    streams: Vec<(String, usize)>,
    /// The map may be out of date: read it again before the next write.
    stale: bool,
    /// Per entry of the batch being written: its primary.
    route: Vec<usize>,
    reply_timeout: Duration,
    keys_ttl: Option<Duration>,
    /// Requests of node connections dropped after they went unanswered (see
    /// [`RedisSink::take_unanswered`]).
    unanswered: Vec<Unanswered>,
    /// A hot-standby pair: every node carries the fence ([`RedisSink::set_fence`]).
    fence: Option<(String, u64)>,
}

impl ClusterSink {
    /// Reads the slot map (nodes are connected as batches need them).
    pub(crate) fn connect(config: &RedisConfig) -> Result<ClusterSink, WriteError> {
        let map = SlotMap::fetch(config, &[], config.write_timeout).map_err(classify)?;
        Ok(ClusterSink {
            config: config.clone(),
            sinks: map.nodes.iter().map(|_| None).collect(),
            map,
            streams: Vec::new(),
            stale: false,
            route: Vec::new(),
            reply_timeout: config.write_timeout,
            keys_ttl: None,
            unanswered: Vec::new(),
            fence: None,
        })
    }

    /// See [`RedisSink::take_unanswered`]: of every node, those whose connection was dropped
    /// included.
    pub(crate) fn take_unanswered(&mut self) -> Vec<Unanswered> {
        let mut all = std::mem::take(&mut self.unanswered);
        all.extend(self.sinks.iter_mut().flatten().filter_map(RedisSink::take_unanswered));
        all
    }

    /// See [`RedisSink::retire`]: each on the primary that serves its stream now.
    /// A failure marks the map for reading again (a slot that moved answers `MOVED` or `ASK`
    /// until then), as a failed write does.
    pub(crate) fn retire(&mut self, unanswered: &[Unanswered]) -> Result<(), WriteError> {
        if self.stale {
            self.refresh()?;
        }
        for u in unanswered {
            let node = self.node_for(&u.stream)?;
            if let Err(e) = self.node_sink(node).and_then(|sink| sink.retire(std::slice::from_ref(u))) {
                if matches!(e, WriteError::Connection(_)) {
                    self.sinks[node] = None;
                }
                self.stale = true;
                return Err(e);
            }
        }
        Ok(())
    }

    /// See [`RedisSink::set_fence`].
    pub(crate) fn set_fence(&mut self, fence: Option<(&str, u64)>) {
        self.fence = fence.map(|(g, e)| (g.to_owned(), e));
        for sink in self.sinks.iter_mut().flatten() {
            sink.set_fence(fence);
        }
    }

    pub(crate) fn location(&self) -> String {
        format!("cluster with {} primaries ({})", self.map.nodes.len(), self.map.nodes.join(", "))
    }

    /// The first connected node's server name and version.
    pub(crate) fn server(&self) -> Option<&str> {
        self.sinks.iter().flatten().next().map(RedisSink::server)
    }

    pub(crate) fn set_reply_timeout(&mut self, timeout: Duration) -> Result<(), WriteError> {
        self.reply_timeout = timeout;
        for sink in self.sinks.iter_mut().flatten() {
            sink.set_reply_timeout(timeout)?;
        }
        Ok(())
    }

    pub(crate) fn set_dedup_keys_ttl(&mut self, ttl: Duration) {
        self.keys_ttl = Some(ttl);
        for sink in self.sinks.iter_mut().flatten() {
            sink.set_dedup_keys_ttl(ttl);
        }
    }

    /// Reads the slot map again, keeping the connections to nodes still primaries.
    fn refresh(&mut self) -> Result<(), WriteError> {
        let map = SlotMap::fetch(&self.config, &self.map.nodes, self.config.write_timeout).map_err(classify)?;
        let mut old: Vec<(String, Option<RedisSink>)> = self.map.nodes.drain(..).zip(self.sinks.drain(..)).collect();
        self.sinks =
            map.nodes.iter().map(|n| old.iter_mut().find(|(a, _)| a == n).and_then(|(_, s)| s.take())).collect();
        // Connections to nodes no longer in the map go; what they left unanswered stays to retire.
        self.unanswered.extend(old.into_iter().filter_map(|(_, s)| s.and_then(|mut s| s.take_unanswered())));
        if map != self.map {
            tracing::info!(primaries = %map.nodes.join(", "), "cluster slot map read again");
        }
        self.map = map;
        self.streams.clear();
        self.stale = false;
        Ok(())
    }

    /// The primary of `stream`'s slot.
    fn node_for(&mut self, stream: &str) -> Result<usize, WriteError> {
        if let Some((_, node)) = self.streams.iter().find(|(s, _)| s == stream) {
            return Ok(*node);
        }
        let Some(node) = self.map.node_for_key(stream) else {
            self.stale = true;
            return Err(WriteError::Topology(format!("no primary serves the slot of {stream} (cluster incomplete?)")));
        };
        self.streams.push((stream.to_owned(), node));
        Ok(node)
    }

    /// The connection to primary `node`, made now if needed.
    fn node_sink(&mut self, node: usize) -> Result<&mut RedisSink, WriteError> {
        if self.sinks[node].is_none() {
            let address = &self.map.nodes[node];
            let addr = split_host_port(address)
                .ok_or_else(|| WriteError::Connection(format!("bad node address {address}")))?;
            let conn = connect_node(&self.config, Some(&addr), self.config.write_timeout).map_err(classify)?;
            let mut sink = RedisSink::on(conn, &self.config)?;
            sink.set_reply_timeout(self.reply_timeout)?;
            if let Some(ttl) = self.keys_ttl {
                sink.set_dedup_keys_ttl(ttl);
            }
            sink.set_fence(self.fence.as_ref().map(|(g, e)| (g.as_str(), *e)));
            self.sinks[node] = Some(sink);
        }
        Ok(self.sinks[node].as_mut().expect("connected above"))
    }

    /// Writes a batch: each primary gets its entries in one request. Outcomes are parallel to
    /// `entries`; a node that failed leaves its entries [`EntryOutcome::Pending`] (the error
    /// itself is returned when no node took anything).
    pub(crate) fn write(&mut self, entries: &[Entry], maybe_written: bool) -> Result<Vec<EntryOutcome>, WriteError> {
        if self.stale {
            self.refresh()?;
        }
        let mut route = std::mem::take(&mut self.route);
        route.clear();
        for e in entries {
            match self.node_for(&e.stream_key) {
                Ok(node) => route.push(node),
                Err(err) => {
                    self.route = route;
                    return Err(err);
                }
            }
        }
        let result = match route.first() {
            None => Ok(Vec::new()),
            Some(&first) if route.iter().all(|n| *n == first) => self.write_node(first, entries, maybe_written),
            Some(_) => self.write_split(entries, &route, maybe_written),
        };
        self.route = route;
        result
    }

    /// A batch spanning several primaries: each node's entries, in batch order, one request
    /// per node.
    fn write_split(
        &mut self,
        entries: &[Entry],
        route: &[usize],
        maybe_written: bool,
    ) -> Result<Vec<EntryOutcome>, WriteError> {
        let mut outcomes = vec![EntryOutcome::Pending; entries.len()];
        let mut first_error = None;
        let mut done_nodes: Vec<usize> = Vec::new();
        for &node in route {
            if done_nodes.contains(&node) {
                continue;
            }
            done_nodes.push(node);
            let picked: Vec<usize> = (0..entries.len()).filter(|i| route[*i] == node).collect();
            let part: Vec<&Entry> = picked.iter().map(|i| &entries[*i]).collect();
            match self.write_node(node, &part, maybe_written) {
                Ok(out) => {
                    for (i, outcome) in picked.into_iter().zip(out) {
                        outcomes[i] = outcome;
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if outcomes.iter().all(|o| *o == EntryOutcome::Pending) => Err(e),
            _ => Ok(outcomes),
        }
    }

    /// One node's part; a failure marks the map for reading again (and drops a lost
    /// connection).
    fn write_node<E: Borrow<Entry>>(
        &mut self,
        node: usize,
        entries: &[E],
        maybe_written: bool,
    ) -> Result<Vec<EntryOutcome>, WriteError> {
        let result = self.node_sink(node).and_then(|sink| sink.write(entries, maybe_written));
        match &result {
            Err(WriteError::Connection(_)) => {
                if let Some(unanswered) = self.sinks[node].take().and_then(|mut sink| sink.take_unanswered()) {
                    self.unanswered.push(unanswered);
                }
                self.stale = true;
            }
            Err(WriteError::Topology(_)) => self.stale = true,
            Ok(outcomes) if outcomes.contains(&EntryOutcome::Pending) => self.stale = true,
            _ => {}
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_computed_as_redis_does() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS, "an empty tag hashes the whole key");
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        let stream = "freeswitch:telephony:events";
        let dedup = crate::sink::redis::dedup_key(stream, "core", 0);
        assert_eq!(key_slot(dedup.as_bytes()), key_slot(stream.as_bytes()));
    }

    #[test]
    fn slot_map_from_cluster_slots() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![Value::BulkString(host.into()), Value::Int(port), Value::BulkString(b"id".to_vec())])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node("10.0.0.2", 7001), node("10.0.0.5", 7004)]),
            Value::Array(vec![Value::Int(0), Value::Int(5460), node("", 7000)]),
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node("10.0.0.3", 7002)]),
        ]);
        let map = SlotMap::parse(&reply, "10.0.0.1").unwrap();
        assert_eq!(map.nodes, vec!["10.0.0.2:7001", "10.0.0.1:7000", "10.0.0.3:7002"]);
        assert_eq!(map.node_of(0), Some(1));
        assert_eq!(map.node_of(5460), Some(1));
        assert_eq!(map.node_of(5461), Some(0));
        assert_eq!(map.node_of(16383), Some(2));
        let partial = SlotMap::parse(
            &Value::Array(vec![Value::Array(vec![Value::Int(100), Value::Int(200), node("h", 1)])]),
            "x",
        )
        .unwrap();
        assert_eq!((partial.node_of(99), partial.node_of(150), partial.node_of(201)), (None, Some(0), None));
    }
}
