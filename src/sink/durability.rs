//! Whether the Redis server itself keeps what it is given: a `maxmemory-policy` other than
//! `noeviction` lets Redis evict streams and dedup keys when memory runs out, and a server
//! without AOF and without RDB save points loses everything on a restart; and with
//! `REDIS_WAIT_REPLICAS=N`, a primary with fewer than N replicas connected confirms nothing.
//! None stops the agent; each is a warning, logged and shown in `/health`
//! (`data.redis.warnings`).

use std::collections::HashMap;

use redis::Connection;

/// The warnings for one server (empty: it keeps what it is given). `Err` only when Redis
/// could not be asked at all (a connection error); a refused `CONFIG GET` (ACL, renamed
/// command) is a warning that says the settings could not be checked.
pub(crate) fn check(conn: &mut Connection, wait_replicas: u32) -> redis::RedisResult<Vec<String>> {
    let mut out = settings_warnings(conn)?;
    if wait_replicas > 0 {
        let info: String = redis::cmd("INFO").arg("replication").query(conn)?;
        let connected = info
            .lines()
            .find_map(|l| l.strip_prefix("connected_slaves:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(0);
        if connected < wait_replicas {
            out.push(format!(
                "REDIS_WAIT_REPLICAS={wait_replicas} but {connected} replicas are connected: no batch can be confirmed (events wait, then spool)"
            ));
        }
    }
    Ok(out)
}

fn settings_warnings(conn: &mut Connection) -> redis::RedisResult<Vec<String>> {
    let settings: HashMap<String, String> =
        match redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").arg("appendonly").arg("save").query(conn) {
            Ok(settings) => settings,
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => return Err(e),
            Err(e) => {
                return Ok(vec![format!(
                    "could not check maxmemory-policy and persistence (CONFIG GET refused: {e}); make sure the server uses maxmemory-policy noeviction and AOF or RDB snapshots"
                )])
            }
        };
    Ok(warnings(&settings))
}

/// The warnings for these `CONFIG GET` values.
pub(crate) fn warnings(settings: &HashMap<String, String>) -> Vec<String> {
    let get = |name: &str| settings.get(name).map(|v| v.trim().to_owned());
    let mut out = Vec::new();
    match get("maxmemory-policy") {
        Some(policy) if policy != "noeviction" => out.push(format!(
            "maxmemory-policy is {policy}: when memory runs out Redis may evict streams and dedup keys (lost events, or duplicates); set maxmemory-policy noeviction"
        )),
        Some(_) => {}
        None => out.push("could not check maxmemory-policy (not in CONFIG GET's answer)".to_owned()),
    }
    let aof = get("appendonly").is_some_and(|v| v == "yes");
    let save_points = get("save").is_some_and(|v| !v.is_empty());
    if !aof && !save_points && settings.contains_key("appendonly") {
        out.push(
            "persistence is off (appendonly no and no save points): a restart of this Redis loses every stream; set appendonly yes (or save points)"
                .to_owned(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn names_the_setting() {
        let safe = settings(&[("maxmemory-policy", "noeviction"), ("appendonly", "yes"), ("save", "")]);
        assert!(warnings(&safe).is_empty());
        let snapshots = settings(&[("maxmemory-policy", "noeviction"), ("appendonly", "no"), ("save", "3600 1")]);
        assert!(warnings(&snapshots).is_empty());
        let lru = settings(&[("maxmemory-policy", "allkeys-lru"), ("appendonly", "yes"), ("save", "")]);
        assert_eq!(warnings(&lru).len(), 1);
        assert!(warnings(&lru)[0].contains("maxmemory-policy is allkeys-lru"));
        let volatile = settings(&[("maxmemory-policy", "noeviction"), ("appendonly", "no"), ("save", "")]);
        assert!(warnings(&volatile)[0].starts_with("persistence is off"));
    }
}
