//! How the relay reaches PostgreSQL: `OUTBOX_DATABASE_URL` read with libpq's meaning of
//! `sslmode` (`disable`, `allow`/`prefer`, `require`, `verify-ca`, `verify-full`) and
//! `sslrootcert`, which the driver does not know by itself, and one [`Session`]: the client,
//! plus the task that drives its connection and turns `NOTIFY`s into wake-ups.
//!
//! As in libpq, `require` encrypts without checking the server's certificate (unless
//! `sslrootcert` is given: then it verifies as `verify-ca` does), `verify-ca` checks the chain
//! and `verify-full` also the host name; the roots are `sslrootcert`'s PEM bundle, else the
//! public web roots. TCP keepalives are short, so a dead peer is noticed in seconds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::sync::Notify;
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, Client};

/// What `sslmode` (and `sslrootcert`) ask of the connection's TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsPolicy {
    /// `disable`.
    Off,
    /// `allow`, `prefer` (TLS when the server offers it) and `require`: encrypted, but any
    /// certificate is accepted, as libpq does.
    Unverified,
    /// `verify-ca`: a chain to a trusted root, any host name.
    VerifyCa,
    /// `verify-full`: a chain to a trusted root, for this host name.
    VerifyFull,
}

/// A parsed `OUTBOX_DATABASE_URL`.
#[derive(Clone)]
pub(crate) struct ConnectTarget {
    config: tokio_postgres::Config,
    tls: TlsPolicy,
    root_cert: Option<PathBuf>,
}

impl std::fmt::Debug for ConnectTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("ConnectTarget")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl ConnectTarget {
    /// Reads a `postgres://` / `postgresql://` URL or a `key=value ...` string.
    pub(crate) fn parse(url: &str) -> Result<ConnectTarget, String> {
        let (rest, mode, root_cert) = split_tls_params(url);
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| format!("{e}"))?;
        let (ssl_mode, tls) = match mode.as_deref().unwrap_or("prefer") {
            "disable" => (SslMode::Disable, TlsPolicy::Off),
            "allow" | "prefer" => (SslMode::Prefer, TlsPolicy::Unverified),
            "require" if root_cert.is_some() => (SslMode::Require, TlsPolicy::VerifyCa),
            "require" => (SslMode::Require, TlsPolicy::Unverified),
            "verify-ca" => (SslMode::Require, TlsPolicy::VerifyCa),
            "verify-full" => (SslMode::Require, TlsPolicy::VerifyFull),
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ))
            }
        };
        if config.get_hosts().is_empty() {
            return Err("no host".into());
        }
        config.ssl_mode(ssl_mode);
        config.connect_timeout(Duration::from_secs(5));
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(5));
        config.keepalives_interval(Duration::from_secs(2));
        config.keepalives_retries(3);
        if config.get_application_name().is_none() {
            config.application_name("eslstream outbox relay");
        }
        Ok(ConnectTarget { config, tls, root_cert: root_cert.map(PathBuf::from) })
    }

    /// The database named in the URL, when it names one (the tests check the parse).
    #[cfg(test)]
    pub(crate) fn dbname(&self) -> Option<&str> {
        self.config.get_dbname()
    }

    /// Connects, and starts driving the connection on the current runtime.
    pub(crate) async fn connect(&self) -> Result<Session, String> {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.tls_config()?);
        let (client, mut connection) = self.config.connect(tls).await.map_err(|e| describe(&e))?;
        let wake = Arc::new(Notify::new());
        let closed = Arc::new(Mutex::new(None));
        let (w, c) = (wake.clone(), closed.clone());
        tokio::spawn(async move {
            let why = loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => w.notify_one(),
                    Some(Ok(_)) => {} // notices: the server's own business
                    Some(Err(e)) => break describe(&e),
                    None => break "the connection was closed".to_owned(),
                }
            };
            *c.lock() = Some(why);
            w.notify_one();
        });
        Ok(Session { client, wake, closed })
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let verifier: Arc<dyn ServerCertVerifier> = match self.tls {
            TlsPolicy::Off | TlsPolicy::Unverified => Arc::new(AnyCertificate(provider)),
            TlsPolicy::VerifyCa | TlsPolicy::VerifyFull => {
                let roots = Arc::new(self.roots()?);
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| format!("cannot build the certificate verifier: {e}"))?;
                match self.tls {
                    TlsPolicy::VerifyCa => Arc::new(AnyHostName(webpki)),
                    _ => webpki,
                }
            }
        };
        Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
    }

    fn roots(&self) -> Result<RootCertStore, String> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("cannot read sslrootcert={}: {e}", path.display()))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!("sslrootcert={} holds no usable certificate", path.display()));
                }
            }
        }
        Ok(roots)
    }
}

/// A driver error in words, with its cause (the driver's `Display` alone often says only
/// "db error"), for the relay's log lines and `/health`.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// Takes `sslmode` and `sslrootcert` out of a URL's query or a `key=value` string.
fn split_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let url = url.trim();
    let (mut mode, mut root) = (None, None);
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), None, None) };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| match pair.split_once('=') {
                Some(("sslmode", v)) => {
                    mode = Some(percent_decode(v));
                    false
                }
                Some(("sslrootcert", v)) => {
                    root = Some(percent_decode(v));
                    false
                }
                _ => true,
            })
            .collect();
        let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        return (rest, mode, root);
    }
    // key=value: cut the two settings out in place (other values may be quoted).
    let mut rest = String::with_capacity(url.len());
    let mut at = 0;
    for token in url.split_ascii_whitespace() {
        let start = token.as_ptr() as usize - url.as_ptr() as usize;
        let taken = match token.split_once('=') {
            Some(("sslmode", v)) => {
                mode = Some(v.trim_matches('\'').to_owned());
                true
            }
            Some(("sslrootcert", v)) => {
                root = Some(v.trim_matches('\'').to_owned());
                true
            }
            _ => false,
        };
        if taken {
            rest.push_str(&url[at..start]);
            at = start + token.len();
        }
    }
    rest.push_str(&url[at..]);
    (rest, mode, root)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One connection to PostgreSQL: the client, and what its driving task reports.
pub(crate) struct Session {
    pub client: Client,
    wake: Arc<Notify>,
    closed: Arc<Mutex<Option<String>>>,
}

impl Session {
    /// Waits until a notification arrives (or the connection ends), or `timeout` passes.
    pub(crate) async fn wait(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.wake.notified()).await;
    }

    /// Why the connection ended, once it has.
    pub(crate) fn closed(&self) -> Option<String> {
        self.closed.lock().clone()
    }
}

/// libpq's `require`: encryption without a certificate check (the handshake's signatures
/// are still verified).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// libpq's `verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct AnyHostName(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sslmode_is_read_as_libpq_reads_it() {
        let t =
            ConnectTarget::parse("postgres://u:p@db:5432/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem").unwrap();
        assert_eq!((t.tls, t.root_cert.clone()), (TlsPolicy::VerifyFull, Some("/etc/ca.pem".into())));
        assert_eq!(t.dbname(), Some("app"));
        assert_eq!(ConnectTarget::parse("postgres://db/app").unwrap().tls, TlsPolicy::Unverified);
        assert_eq!(ConnectTarget::parse("postgres://db/app?sslmode=disable").unwrap().tls, TlsPolicy::Off);
        let kv = ConnectTarget::parse("host=db dbname=app password='a b' sslmode=require sslrootcert=/ca.pem").unwrap();
        assert_eq!((kv.tls, kv.dbname()), (TlsPolicy::VerifyCa, Some("app")));
        assert!(ConnectTarget::parse("postgres://db/app?sslmode=bogus").unwrap_err().contains("sslmode=bogus"));
        assert!(ConnectTarget::parse("postgres://db/app?nonsense=1").is_err());
    }

    #[test]
    fn a_missing_root_bundle_is_named() {
        let t = ConnectTarget::parse("postgres://db/app?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem").unwrap();
        assert!(t.tls_config().unwrap_err().contains("sslrootcert=/nonexistent/ca.pem"));
        assert!(ConnectTarget::parse("postgres://db/app?sslmode=verify-full").unwrap().tls_config().is_ok());
    }

    proptest! {
        #[test]
        fn any_text_parses_or_errs_without_panicking(text in "\\PC{0,200}") {
            let _ = ConnectTarget::parse(&text);
        }

        #[test]
        fn garbage_after_a_url_never_panics(q in "[a-z=&%0-9]{0,60}") {
            let _ = ConnectTarget::parse(&format!("postgres://db/app?{q}"));
        }
    }
}
