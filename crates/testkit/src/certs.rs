//! Certificates for tests of TLS against real servers: a CA made for one test, what it signs,
//! and an unrelated CA that must not be trusted in its place.

use std::path::{Path, PathBuf};

/// PEM files written by [`TestCerts::write`].
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// The CA that signed the server's and the client's certificates.
    pub ca: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
    /// The server's certificate, for `localhost` and `127.0.0.1`, and its key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate (mutual TLS) and its key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestCerts {
    /// Makes the CAs and certificates and writes them into `dir` (keys readable by the owner
    /// only).
    pub fn write(dir: &Path) -> Self {
        let ca = certificate_authority("idledger test CA");
        let other_ca = certificate_authority("idledger unrelated test CA");
        let issue = |name: &str, sans: &[&str], usage: rcgen::ExtendedKeyUsagePurpose| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(
                sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
            )
            .unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            (params.signed_by(&key, &ca).unwrap(), key)
        };
        let (server, server_key) = issue(
            "idledger test server",
            &["localhost", "127.0.0.1"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = issue(
            "idledger test client",
            &[],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        let certs = Self {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        };
        std::fs::write(&certs.ca, ca.pem()).unwrap();
        std::fs::write(&certs.other_ca, other_ca.pem()).unwrap();
        std::fs::write(&certs.server_cert, server.pem()).unwrap();
        std::fs::write(&certs.client_cert, client.pem()).unwrap();
        write_private(&certs.server_key, &server_key.serialize_pem());
        write_private(&certs.client_key, &client_key.serialize_pem());
        certs
    }
}

fn write_private(path: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A self-signed CA named `name`.
pub(crate) fn certificate_authority(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    rcgen::CertifiedIssuer::self_signed(params, key).unwrap()
}
