//! Whether the Redis user may do what the agent does: every command the write path, the
//! trimmer and the health check send, on the keys they send it to.
//!
//! Checked by probes that cannot change data, so it works for any user on any version (a
//! narrow user cannot run `ACL DRYRUN`, an admin command, on itself). Redis checks a command's
//! ACL before running it, so each probe is the real command on a real key name with arguments
//! that make it fail harmlessly (or read only) once it is allowed: `NOPERM` means the user may
//! not, anything else means it may. The keys are the stream itself and a dedup key beside it
//! (`{<stream>}:idmp...`), so key patterns are checked too.

use redis::{Connection, Value};

use crate::config::{RedisConfig, RedisTopology};
use crate::sink::redis::{dedup_key, dedup_keys_key, trip_key, IDEMPOTENT_SCRIPT};

/// The commands beyond the write path that the configured topology needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TopologyCommands {
    /// `WAIT` (`REDIS_WAIT_REPLICAS` > 0).
    pub wait: bool,
    /// `ROLE` (Sentinel: the primary is checked with it).
    pub role: bool,
    /// `CLUSTER SLOTS` (Cluster).
    pub cluster_slots: bool,
}

impl TopologyCommands {
    pub(crate) fn of(config: &RedisConfig) -> TopologyCommands {
        TopologyCommands {
            wait: config.wait_replicas > 0,
            role: matches!(config.topology, RedisTopology::Sentinel { .. }),
            cluster_slots: matches!(config.topology, RedisTopology::Cluster { .. }),
        }
    }
}

/// A command the user may not run, and on which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Missing {
    pub command: &'static str,
    pub key: Option<String>,
    /// What Redis said.
    pub error: String,
}

impl Missing {
    /// The ACL rule that would grant it (for the log line and `/health`).
    pub(crate) fn grant(&self) -> String {
        match &self.key {
            Some(key) => format!("+{} ~{}", self.command.to_ascii_lowercase(), key_pattern(key)),
            None => format!("+{}", self.command.to_ascii_lowercase()),
        }
    }
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(key) => write!(
                f,
                "the Redis user may not run {} on {key} ({}); grant it with ACL SETUSER <user> {}",
                self.command,
                self.error,
                self.grant()
            ),
            None => write!(
                f,
                "the Redis user may not run {} ({}); grant it with ACL SETUSER <user> {}",
                self.command,
                self.error,
                self.grant()
            ),
        }
    }
}

/// The key pattern that covers `key`: its dedup keys are covered by the stream's `{tag}*`.
fn key_pattern(key: &str) -> String {
    match key.find(":idmp").or_else(|| key.find(":trip:")) {
        Some(i) => format!("{}*", &key[..i]),
        None => key.to_owned(),
    }
}

/// A probe: the command, the key it touches (if any), and its arguments.
struct Probe {
    command: &'static str,
    key: Option<String>,
    args: Vec<Vec<u8>>,
}

fn probe(command: &'static str, key: Option<&str>, args: &[&[u8]]) -> Probe {
    let mut all: Vec<Vec<u8>> = Vec::new();
    if let Some(key) = key {
        all.push(key.as_bytes().to_vec());
    }
    all.extend(args.iter().map(|a| a.to_vec()));
    Probe { command, key: key.map(str::to_owned), args: all }
}

/// The probes for writing `streams` and trimming them, plus what the monitor and the
/// topology need.
fn probes(streams: &[&str], topology: TopologyCommands) -> Vec<Probe> {
    let mut out = vec![
        probe("PING", None, &[]),
        probe("INFO", None, &[b"server"]),
        probe("TIME", None, &[]),
        probe("SCRIPT", None, &[b"LOAD", IDEMPOTENT_SCRIPT.as_bytes()]),
        probe("MULTI", None, &[]),
        probe("DISCARD", None, &[]),
        // EXEC without MULTI is refused after the ACL check.
        probe("EXEC", None, &[]),
        // EVALSHA of the loaded script with no entries: it only calls TIME.
        probe("EVALSHA", None, &[script_sha().as_bytes(), b"0", b"1", b"1", b"1", b""]),
    ];
    if topology.wait {
        // No replica is needed for 0: answers at once.
        out.push(probe("WAIT", None, &[b"0", b"1"]));
    }
    if topology.role {
        out.push(probe("ROLE", None, &[]));
    }
    if topology.cluster_slots {
        out.push(probe("CLUSTER", None, &[b"SLOTS"]));
    }
    for stream in streams {
        // Generation u64::MAX and a producer nobody uses: these keys never exist.
        let bitmap = dedup_key(stream, "eslstream-permission-probe", u64::MAX);
        let keyed = dedup_keys_key(stream, "eslstream-permission-probe");
        out.extend([
            // ID 0-0 is refused after the ACL check: nothing is added.
            probe("XADD", Some(stream), &[b"NOMKSTREAM", b"MAXLEN", b"~", b"1", b"0-0", b"f", b"v"]),
            // MINID 0 removes nothing.
            probe("XTRIM", Some(stream), &[b"MINID", b"~", b"0", b"LIMIT", b"1"]),
            probe("BITFIELD", Some(&bitmap), &[b"GET", b"u1", b"0"]),
            // An offset out of range is refused after the ACL check.
            probe("SETBIT", Some(&bitmap), &[b"-1", b"0"]),
            probe("EXPIRE", Some(&bitmap), &[b"1", b"GT", b"LT"]),
            probe("UNLINK", Some(&bitmap), &[]),
            probe("ZSCORE", Some(&keyed), &[b"m"]),
            // GT with LT is refused after the ACL check.
            probe("ZADD", Some(&keyed), &[b"GT", b"LT", b"1", b"m"]),
            probe("ZREM", Some(&keyed), &[b"\x00eslstream-permission-probe"]),
            probe("ZREMRANGEBYSCORE", Some(&keyed), &[b"(1", b"(0"]),
            probe("ZREMRANGEBYRANK", Some(&keyed), &[b"1", b"0"]),
            probe("ZCARD", Some(&keyed), &[]),
            // The fast path's transactions WATCH their connection's tripwire; watching a key
            // nobody writes changes nothing (this connection runs no transaction).
            probe("WATCH", Some(&trip_key(stream, "eslstream-permission-probe")), &[]),
        ]);
    }
    out
}

/// The SHA1 Redis gives the script (hex).
fn script_sha() -> String {
    redis::Script::new(IDEMPOTENT_SCRIPT).get_hash().to_owned()
}

/// Runs every probe; returns what the user may not do (empty: everything is allowed).
/// `Err` when Redis could not be asked at all (a connection error).
pub(crate) fn check(
    conn: &mut Connection,
    streams: &[&str],
    topology: TopologyCommands,
) -> redis::RedisResult<Vec<Missing>> {
    let mut missing = Vec::new();
    for p in probes(streams, topology) {
        let mut cmd = redis::cmd(p.command);
        for arg in &p.args {
            cmd.arg(arg.as_slice());
        }
        match cmd.query::<Value>(conn) {
            Ok(Value::ServerError(e)) if e.code() == "NOPERM" => {
                missing.push(Missing { command: p.command, key: p.key, error: e.to_string() })
            }
            Ok(_) => {}
            Err(e) if e.code() == Some("NOPERM") => {
                missing.push(Missing { command: p.command, key: p.key, error: e.to_string() })
            }
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => return Err(e),
            Err(_) => {} // refused after the ACL check: allowed
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_name_the_command_and_the_stream_pattern() {
        let m = Missing { command: "BITFIELD", key: Some(dedup_key("s:events", "c", 3)), error: "NOPERM".into() };
        assert_eq!(m.grant(), "+bitfield ~{s:events}*");
        let m = Missing { command: "XADD", key: Some("s:events".into()), error: "NOPERM".into() };
        assert_eq!(m.grant(), "+xadd ~s:events");
        assert_eq!(Missing { command: "INFO", key: None, error: String::new() }.grant(), "+info");
    }
}
