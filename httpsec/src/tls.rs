//! TLS for the servers' HTTP listeners: a rustls [`ServerConfig`] from PEM files (ring provider,
//! TLS 1.2 and 1.3, HTTP/1.1 by ALPN), a self-signed certificate and key written owner-only, and
//! the certificate fingerprint that clients of a self-signed server pin or compare.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Why a certificate or key could not be read, written or used. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the certificate and key (for example, a key that does not match).
    #[error("certificate {cert} and key {key}: {source}")]
    Rustls {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// The cause.
        source: rustls::Error,
    },
    /// The certificate could not be generated.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The TLS provider refused the configuration (no protocol version in common).
    #[error("TLS provider: {0}")]
    Provider(rustls::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The certificates of a PEM file, leaf first.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE in the file".into(),
        });
    }
    Ok(certs)
}

/// Reads a private key (PKCS#8, PKCS#1 or SEC1 PEM). Its error never quotes the file.
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsError::Pem {
        path: path.to_owned(),
        what: "no PEM private key in the file".into(),
    })
}

/// The rustls server configuration for a certificate chain and its key (PEM files): the ring
/// provider, TLS 1.2 and 1.3, no client certificates, ALPN `http/1.1`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(cert, key, None)
}

/// The ring provider. Not aws-lc-rs (rustls' default): aws-lc-rs needs cmake and a long C build
/// on every machine, and ureq's rustls client here uses ring too. rustls deprecates ring's
/// provider only for its lack of post-quantum key exchange.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client configuration, waiting for its client authentication choice: the ring
/// provider, TLS 1.2 and 1.3, trusting the certificates of the PEM file `ca`, or none without
/// one (for a connector that also needs a configuration to speak plain TCP). The one client
/// setup of the workspace: the MQTT sink, the Backend Interfaces client and the simulator's
/// MQTT delivery all start here.
pub fn client_builder(
    ca: Option<&Path>,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, TlsError>
{
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        for c in read_certificates(ca)? {
            roots.add(c).map_err(|e| TlsError::Pem {
                path: ca.to_owned(),
                what: format!("not a CA certificate: {e}"),
            })?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Provider)?
        .with_root_certificates(roots))
}

/// [`client_builder`] trusting `ca`, without a client certificate.
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    Ok(Arc::new(client_builder(Some(ca))?.with_no_client_auth()))
}

/// Like [`server_config`], but a client may present a certificate, which must then chain to one
/// of `client_cas` (PEM files of CA certificates); a client without one is served too, so that
/// the handler decides (mTLS and/or a bearer token). The handler learns which certificate was
/// presented from the request's [`crate::serve::ClientCertificates`] extension.
pub fn server_config_optional_client_auth(
    cert: &Path,
    key: &Path,
    client_cas: &[PathBuf],
) -> Result<Arc<ServerConfig>, TlsError> {
    if client_cas.is_empty() {
        return server_config(cert, key);
    }
    let mut roots = rustls::RootCertStore::empty();
    for ca in client_cas {
        for c in read_certificates(ca)? {
            roots.add(c).map_err(|e| TlsError::Pem {
                path: ca.clone(),
                what: format!("not a CA certificate: {e}"),
            })?;
        }
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Pem {
                path: client_cas[0].clone(),
                what: format!("client CAs: {e}"),
            })?;
    server_config_with(cert, key, Some(verifier))
}

fn server_config_with(
    cert: &Path,
    key: &Path,
    client_auth: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certificates(cert)?;
    let private = read_private_key(key)?;
    let rustls_err = |source| TlsError::Rustls {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_err)?;
    let builder = match client_auth {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, private)
        .map_err(rustls_err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One client CA (a PEM file of CA certificates): whether a client's certificate chain, as the
/// TLS handshake received it, chains to it. Several of these tell apart the clients of a
/// listener that trusts several CAs (one per peer).
pub struct ClientCa {
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientCa")
    }
}

impl ClientCa {
    /// Reads the CA certificates of `path`.
    pub fn from_file(path: &Path) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in read_certificates(path)? {
            roots.add(c).map_err(|e| TlsError::Pem {
                path: path.to_owned(),
                what: format!("not a CA certificate: {e}"),
            })?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("client CA: {e}"),
        })?;
        Ok(Self { verifier })
    }

    /// Whether `chain` (leaf first) chains to this CA and is valid now.
    pub fn accepts(&self, chain: &[CertificateDer<'static>]) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        self.verifier
            .verify_client_cert(leaf, intermediates, rustls_pki_types::UnixTime::now())
            .is_ok()
    }
}

/// The SHA-256 fingerprint of a DER certificate, as `openssl x509 -fingerprint -sha256` prints
/// it: upper-case hex pairs joined by colons.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fingerprint of the leaf certificate of a PEM file.
pub fn file_fingerprint(cert: &Path) -> Result<String, TlsError> {
    Ok(fingerprint(&read_certificates(cert)?[0]))
}

/// What [`ensure_self_signed`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelfSigned {
    /// A certificate and key were generated; the certificate's fingerprint.
    Created(String),
    /// The certificate already existed and was left alone; its fingerprint.
    Kept(String),
}

impl SelfSigned {
    /// The certificate's fingerprint.
    pub fn fingerprint(&self) -> &str {
        match self {
            Self::Created(f) | Self::Kept(f) => f,
        }
    }
}

/// Creates `path` owner-only (0600) with `content`; fails if it exists.
fn create_owner_only(path: &Path, content: &[u8]) -> Result<(), TlsError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(content)
        .and_then(|()| f.sync_all())
        .map_err(io_err(path))
}

/// Writes a self-signed certificate for `names` (DNS names or IP addresses) and its private key
/// (ECDSA P-256), both 0600, unless the certificate exists: then nothing is written. The
/// directories are created 0700. Never overwrites a file.
pub fn ensure_self_signed(
    cert: &Path,
    key: &Path,
    names: &[String],
) -> Result<SelfSigned, TlsError> {
    if cert.exists() {
        return file_fingerprint(cert).map(SelfSigned::Kept);
    }
    for dir in [cert.parent(), key.parent()].into_iter().flatten() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        }
    }
    let rcgen::CertifiedKey { cert: c, key_pair } =
        rcgen::generate_simple_self_signed(names.to_vec())?;
    // The key first: a certificate without its key would be kept by the next run.
    create_owner_only(key, key_pair.serialize_pem().as_bytes())?;
    create_owner_only(cert, c.pem().as_bytes())?;
    Ok(SelfSigned::Created(fingerprint(c.der())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_pair_is_owner_only_loads_and_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let (cert, key) = (
            tmp.path().join("tls/api.crt"),
            tmp.path().join("tls/api.key"),
        );
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let first = ensure_self_signed(&cert, &key, &names).unwrap();
        let SelfSigned::Created(fp) = &first else {
            panic!("{first:?}")
        };
        assert_eq!(fp.len(), 32 * 3 - 1, "{fp}");
        for p in [&cert, &key] {
            let mode = fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        let dir_mode = fs::metadata(cert.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        server_config(&cert, &key).unwrap();
        assert_eq!(file_fingerprint(&cert).unwrap(), *fp);
        // A second run keeps the pair.
        let before = fs::read(&key).unwrap();
        assert_eq!(
            ensure_self_signed(&cert, &key, &names).unwrap(),
            SelfSigned::Kept(fp.clone())
        );
        assert_eq!(fs::read(&key).unwrap(), before);
    }

    #[test]
    fn bad_files_are_clear_errors_without_their_content() {
        let tmp = tempfile::tempdir().unwrap();
        let junk = tmp.path().join("junk.pem");
        fs::write(&junk, "SECRET-LOOKING-TEXT\n").unwrap();
        let e = server_config(&junk, &junk).unwrap_err().to_string();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        assert!(!e.contains("SECRET-LOOKING-TEXT"), "{e}");
        let (cert, key) = (tmp.path().join("a.crt"), tmp.path().join("a.key"));
        ensure_self_signed(&cert, &key, &["localhost".into()]).unwrap();
        let e = server_config(&cert, &junk).unwrap_err().to_string();
        assert!(e.contains("no PEM private key"), "{e}");
        let (cert2, key2) = (tmp.path().join("b.crt"), tmp.path().join("b.key"));
        ensure_self_signed(&cert2, &key2, &["localhost".into()]).unwrap();
        let e = server_config(&cert, &key2).unwrap_err().to_string();
        assert!(
            e.contains("certificate"),
            "a key of another certificate: {e}"
        );
        let missing = server_config(&tmp.path().join("none.crt"), &key).unwrap_err();
        assert!(matches!(missing, TlsError::Io { .. }), "{missing}");
    }

    #[test]
    fn fingerprint_is_sha256_in_openssl_form() {
        // SHA-256 of the empty string.
        assert!(fingerprint(b"").starts_with("E3:B0:C4:42:98:FC:1C:14"));
    }
}
