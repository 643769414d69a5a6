//! TLS with rustls: the public listener's certificate, reloaded when its files change, and
//! development certificates to try it with.
//!
//! **Serving**: [`acceptor`] reads a PEM certificate chain and its PEM private key and answers
//! every handshake with them, offering HTTP/2 and HTTP/1.1 (ALPN). The files are looked at again
//! at most once a second, on a handshake: when either changed (its modification time or size),
//! both are read again, so a renewed certificate (cert-manager rewriting a Kubernetes secret,
//! certbot, an operator's `cp`) is served from the next connection on, with no restart and no
//! dropped connection. A pair that does not load (half written, a key that does not match)
//! keeps the one in service, with a warning.
//!
//! **Between services** ([`Mutual`]): optional mutual TLS. Every service but the gateway then
//! serves gRPC over TLS and asks each caller for a certificate signed by the deployment's CA;
//! every client of a peer verifies the peer's certificate against that CA and shows its own.
//! The process's certificate and key are reloaded as the gateway's are; the CA is read at start.
//!
//! **Development certificates** ([`dev_certs`], `bookstore admin dev-certs`): a local CA and a
//! certificate it signs for `localhost`, `127.0.0.1`, `::1` and any names given, valid for both
//! server and client authentication. Trust `ca.pem` in the client to try HTTPS locally.
//!
//! The crypto is ring's (rustls's `ring` provider): it builds with a C compiler alone, where
//! aws-lc-rs also needs cmake.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The least time between two looks at the certificate files.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The crypto every TLS endpoint of the process uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a file looked like when it was read: its modification time and size.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// A certificate and key read from files, read again when they change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// When the files were last looked at, and what they looked like when last read.
    seen: Mutex<(Instant, [Stamp; 2])>,
}

impl ReloadingCert {
    /// Reads the pair now; an error says which file and why.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let stamps = [stamp(cert), stamp(key)];
        let current = read_pair(cert, key)?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(current),
            seen: Mutex::new((Instant::now(), stamps)),
        })
    }

    /// Reads the pair again when either file changed since it was read (looking at most once
    /// per [`RECHECK`]).
    fn refresh(&self) {
        let Ok(mut seen) = self.seen.lock() else { return };
        if seen.0.elapsed() < RECHECK {
            return;
        }
        seen.0 = Instant::now();
        let stamps = [stamp(&self.cert), stamp(&self.key)];
        if stamps == seen.1 {
            return;
        }
        match read_pair(&self.cert, &self.key) {
            Ok(pair) => {
                if let Ok(mut current) = self.current.write() {
                    *current = pair;
                }
                seen.1 = stamps;
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            // Perhaps half written: tried again at the next look.
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "TLS certificate not reloaded; serving the one in hand")
            }
        }
    }

    /// The pair in service.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.refresh();
        self.current.read().map(|c| c.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The same pair, shown as a client's certificate to the peers it calls.
impl rustls::client::ResolvesClientCert for ReloadingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn read_pair(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("reading the certificate {}: {e}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in {}", cert.display());
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("reading the private key {}: {e}", key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(private)
        .with_context(|| format!("loading the private key {}", key.display()))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().with_context(|| format!("{} is not the key of {}", key.display(), cert.display()))?;
    Ok(Arc::new(pair))
}

/// A TLS acceptor serving the certificate in `cert` with the key in `key` (PEM), reloaded when
/// they change, offering HTTP/2 and HTTP/1.1.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let resolver = Arc::new(ReloadingCert::load(cert, key)?);
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Mutual TLS between services: the acceptor of a service that answers its peers, and the
/// client configuration of one that calls them, from one certificate and key (valid for both
/// server and client authentication, as [`dev_certs`] makes them) and the CA that signs every
/// service's.
#[derive(Clone)]
pub struct Mutual {
    /// Serves the process's certificate and requires a caller's signed by the CA.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Trusts the CA alone and shows the process's certificate.
    pub client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Mutual {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mutual").finish_non_exhaustive()
    }
}

impl Mutual {
    /// Reads the pair and the CA now; an error says which file and why.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> anyhow::Result<Self> {
        let pair = Arc::new(ReloadingCert::load(cert, key)?);
        let roots = Arc::new(roots(ca)?);
        let callers = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .with_context(|| format!("the CA in {}", ca.display()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(callers)
            .with_cert_resolver(pair.clone());
        server.alpn_protocols = vec![b"h2".to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_cert_resolver(pair);
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)), client: Arc::new(client) })
    }
}

/// The CA certificates in the PEM file `ca`, as a trust store.
fn roots(ca: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))? {
        roots.add(cert.map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?)?;
    }
    anyhow::ensure!(!roots.is_empty(), "no CA certificate in {}", ca.display());
    Ok(roots)
}

/// The files [`dev_certs`] writes.
pub const DEV_FILES: [&str; 4] = ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem"];

/// Writes a development CA and a certificate it signs for `localhost`, `127.0.0.1`, `::1` and
/// `hosts` into `dir` ([`DEV_FILES`]); the keys are readable by their owner alone. The paths
/// written.
pub fn dev_certs(dir: &Path, hosts: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "bookstore development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key)?;

    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    names.extend(hosts.iter().filter(|h| !names.contains(h)).cloned().collect::<Vec<_>>());
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, "bookstore");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca, &ca_key)?;

    let contents = [ca.pem(), ca_key.serialize_pem(), cert.pem(), key.serialize_pem()];
    let mut written = Vec::new();
    for (name, content) in DEV_FILES.iter().zip(contents) {
        let path = dir.join(name);
        write_private(&path, content.as_bytes(), name.ends_with("-key.pem"))?;
        written.push(path);
    }
    Ok(written)
}

/// Writes `content` to `path` through a temporary file and a rename, so a reader never sees
/// half of it; owner-only when `secret`.
fn write_private(path: &Path, content: &[u8], secret: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        file.as_file().set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    file.write_all(content)?;
    file.persist(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A client configuration that trusts the CA certificates in `ca_pem` alone (for tests and
/// tools that talk to a development deployment).
pub fn client_trusting(ca_pem: &Path) -> anyhow::Result<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certs_make_a_pair_that_loads_and_keys_only_their_owner_reads() {
        let dir = tempfile::tempdir().unwrap();
        let written = dev_certs(dir.path(), &["shop.test".into()]).unwrap();
        assert_eq!(written.len(), 4);
        ReloadingCert::load(&dir.path().join("server.pem"), &dir.path().join("server-key.pem")).unwrap();
        client_trusting(&dir.path().join("ca.pem")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("server-key.pem")).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key is the owner's alone: {mode:o}");
        }
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_with_both_names() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        dev_certs(a.path(), &[]).unwrap();
        dev_certs(b.path(), &[]).unwrap();
        let err = ReloadingCert::load(&a.path().join("server.pem"), &b.path().join("server-key.pem"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server-key.pem") && err.contains("server.pem"), "{err}");
    }
}
