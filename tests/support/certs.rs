//! A throwaway certificate authority made with `openssl` for the TLS tests ([`TestCa`]): a
//! server certificate for `127.0.0.1`/`localhost` and a client certificate, both signed by it.

use std::path::Path;
use std::process::Command;

use super::find_on_path;

/// A throwaway certificate authority, a server certificate for 127.0.0.1/localhost and a
/// client certificate, all signed by it (PEM files in a temporary directory).
pub struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> TestCa {
        let openssl =
            find_on_path("openssl").unwrap_or_else(|| panic!("openssl not found: apt-get install -y openssl"));
        let dir = tempfile::Builder::new().prefix("eslstream-ca-").tempdir().expect("temp dir");
        let run = |args: &[&str]| {
            let out = Command::new(&openssl).args(args).current_dir(dir.path()).output().expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2"]
            .iter()
            .copied()
            .chain(["-subj", "/CN=eslstream test CA"])
            .collect::<Vec<_>>());
        std::fs::write(dir.path().join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        std::fs::write(dir.path().join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, cn) in [("server", "localhost"), ("client", "eslstream")] {
            let (key, csr, crt, ext) =
                (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={cn}"),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
        }
        TestCa { dir }
    }

    /// The path of one of `ca.crt`, `server.crt`, `server.key`, `client.crt`, `client.key`.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
