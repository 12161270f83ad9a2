//! Making one connection to one Redis node, the same way for every mode: the credentials,
//! database and scheme of `REDIS_URL` (its host replaced by the node's), the PEM files of
//! `REDIS_TLS_*` for `rediss://`, and the dial, read and write timeouts; a TLS failure the
//! configuration can fix says which variable to set.

use std::time::Duration;

use redis::{
    ClientTlsConfig, Connection, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, RedisError, RedisResult,
    TlsCertificates,
};

use crate::config::RedisConfig;

/// A failure that is not Redis's own reply (no primary found, not a primary): reported like
/// a lost connection, so the writer re-discovers and retries.
pub(crate) fn unreachable(text: String) -> RedisError {
    RedisError::from(std::io::Error::other(text))
}

/// Opens a connection to `node` (`None`: the URL's own host) with the URL's credentials and
/// database, TLS as configured, and `timeout` for connect, read and write.
pub(crate) fn connect_node(
    config: &RedisConfig,
    node: Option<&(String, u16)>,
    timeout: Duration,
) -> RedisResult<Connection> {
    connect_with(config, node, None, timeout)
}

/// [`connect_node`], with other credentials (`Some`: a sentinel's, no database).
pub(crate) fn connect_with(
    config: &RedisConfig,
    node: Option<&(String, u16)>,
    auth: Option<RedisConnectionInfo>,
    timeout: Duration,
) -> RedisResult<Connection> {
    let mut info = config.url.as_str().into_connection_info()?;
    if let Some((host, port)) = node {
        let addr = match info.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => {
                ConnectionAddr::TcpTls { host: host.clone(), port: *port, insecure: *insecure, tls_params: None }
            }
            _ => ConnectionAddr::Tcp(host.clone(), *port),
        };
        info = info.set_addr(addr);
    }
    if let Some(auth) = auth {
        info = info.set_redis_settings(auth);
    }
    let tls = &config.tls;
    let client =
        if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) && (tls.ca_cert.is_some() || tls.client.is_some()) {
            redis::Client::build_with_tls(
                info,
                TlsCertificates {
                    client_tls: tls.client.as_ref().map(|(cert, key)| ClientTlsConfig {
                        client_cert: cert.pem.clone(),
                        client_key: key.pem.clone(),
                    }),
                    root_cert: tls.ca_cert.as_ref().map(|ca| ca.pem.clone()),
                },
            )?
        } else {
            redis::Client::open(info)?
        };
    let conn = client.get_connection_with_timeout(config.dial_timeout.min(timeout)).map_err(|e| explain(config, e))?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    Ok(conn)
}

/// Adds what to do to a TLS failure the configuration can fix.
fn explain(config: &RedisConfig, e: RedisError) -> RedisError {
    let text = e.to_string();
    let hint = if text.contains("UnknownIssuer") || text.contains("invalid peer certificate") {
        if config.tls.ca_cert.is_some() {
            "the server's certificate is not signed by REDIS_TLS_CA_CERT (or names another host)"
        } else {
            "the server's certificate is not signed by a known CA; set REDIS_TLS_CA_CERT to the CA that signed it"
        }
    } else if text.contains("CertificateRequired") || text.contains("certificate required") {
        "the server requires a client certificate: set REDIS_TLS_CERT and REDIS_TLS_KEY"
    } else {
        return e;
    };
    unreachable(format!("TLS: {hint} ({text})"))
}
