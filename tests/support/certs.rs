//! Throwaway TLS material made with `openssl`: a CA and a server certificate for `localhost`
//! and `127.0.0.1` signed by it (ECDSA P-256, valid one day).

use std::path::{Path, PathBuf};

/// The files [`make`] wrote.
pub struct TestCerts {
    /// The CA's certificate (trust this).
    pub ca: PathBuf,
    /// The server's certificate and private key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes a CA and a server certificate into `dir`.
pub fn make(dir: &Path) -> TestCerts {
    let openssl = super::find_on_path("openssl").expect("openssl not found: scripts/install-deps.sh installs it");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&openssl).current_dir(dir).args(args).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"],
        &ec[..],
        &["-days", "1", "-subj", "/CN=eslstream test CA", "-keyout", "ca.key", "-out", "ca.pem"],
    ]
    .concat());
    run(&[&["req"], &ec[..], &["-subj", "/CN=localhost", "-keyout", "key.pem", "-out", "leaf.csr"]].concat());
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write leaf.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    TestCerts { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem") }
}
