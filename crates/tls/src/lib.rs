//! Vigil's TLS (rustls with the ring provider).
//!
//! - The cluster CA ([`Ca`]): made at `--bootstrap`, it signs every node's certificate.
//! - A node's certificate names its cluster and itself: the URI `vigil://CLUSTER/NODE` and
//!   the DNS name `vigil-CLUSTER` (what a peer checks the chain against, whatever address it
//!   dialled). Its key is made on the node and never leaves it ([`new_key`]).
//! - [`Tls`]: the node's credentials, swapped in place when a certificate is renewed (or
//!   first arrives, at a join), behind the server's and the clients' configurations, which
//!   are made once.
//! - [`Peer`]: who is at the other end of a connection the agent serves.
//! - [`server`]: the agent's listeners (TLS on TCP, and the Unix socket), each request
//!   tagged with its [`Peer`].
//! - [`pinned_client`]: the operators' (and a joining node's) side, which checks that the
//!   server is a node of the cluster whose CA it was given (or whose CA's hash it holds).

pub mod server;

pub use rustls;

use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::DistinguishedName;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};

/// How long a node's certificate is valid, unless [`set_node_cert_lifetime`] says otherwise.
pub const NODE_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

static LIFETIME: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// Sets how long the certificates this process signs are valid (once, at the start; for
/// drills and tests of renewal).
pub fn set_node_cert_lifetime(d: Duration) {
    let _ = LIFETIME.set(d);
}

/// How long the certificates this process signs are valid.
pub fn node_cert_lifetime() -> Duration {
    LIFETIME.get().copied().unwrap_or(NODE_CERT_LIFETIME)
}

/// Whether a certificate valid from `not_before_s` (backdated by [`BACKDATE`]) to
/// `not_after_s` is due for renewal at `now_s`: in the last third of its life.
pub fn renewal_due(not_before_s: u64, not_after_s: u64, now_s: u64) -> bool {
    let start = not_before_s + BACKDATE.as_secs();
    let life = not_after_s.saturating_sub(start);
    not_after_s.saturating_sub(now_s) < life / 3
}
/// How long the CA's certificate is valid.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// A certificate starts this long before it is signed, so that a peer whose clock is a
/// little behind does not find it not yet valid.
pub const BACKDATE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read or write {path}: {why}")]
    Io { path: String, why: String },
}

fn invalid(what: &str) -> impl Fn(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError::Invalid(format!("{what}: {e}"))
}

/// Installs the ring provider as the process's default (once; later calls do nothing).
pub fn install_provider() {
    let _ = cluster_provider().install_default();
}

/// ring's provider, with AES-128-GCM-SHA256 preferred: its key schedule hashes with SHA-256,
/// which x86's SHA extensions do in hardware, where SHA-384 (AES-256's suite) is software
/// (it showed as 6 % of a server's handshake CPU). Both are TLS 1.3 AEADs of full strength.
fn cluster_provider() -> CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    p
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(cluster_provider()))
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// Lower-case hex of the SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Seconds since the Unix epoch.
pub fn unix_s(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn offset(t: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// The DNS name every node certificate of `cluster` carries.
pub fn cluster_dns(cluster: &str) -> String {
    format!("vigil-{cluster}")
}

fn first_cert(pem: &str, what: &str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| TlsError::Invalid(format!("{what}: no PEM certificate in it")))?
        .map_err(|e| TlsError::Invalid(format!("{what}: {e}")))
}

/// Every certificate of a PEM bundle, in order.
fn all_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid(format!(
            "{what}: no PEM certificate in it"
        )));
    }
    Ok(certs)
}

/// The CA of `cas` (DER) that issued `cert` (DER), by name: a cluster's CAs have names of
/// their own.
fn issuer_of<'a>(
    cert: &CertificateDer<'_>,
    cas: &'a [CertificateDer<'static>],
) -> Option<&'a CertificateDer<'static>> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(cert).ok()?;
    cas.iter().find(|ca| {
        X509Certificate::from_der(ca)
            .is_ok_and(|(_, ca)| ca.subject().as_raw() == cert.issuer().as_raw())
    })
}

/// The hash (`sha256:HEX`) of the CA among `cas` (PEM certificates) that issued `cert_pem`.
pub fn issuer_hash(cert_pem: &str, cas: &[&str]) -> Option<String> {
    let cert = first_cert(cert_pem, "certificate").ok()?;
    let cas: Vec<CertificateDer<'static>> = cas
        .iter()
        .filter_map(|c| first_cert(c, "CA certificate").ok())
        .collect();
    issuer_of(&cert, &cas).map(|ca| format!("sha256:{}", sha256_hex(ca)))
}

/// `sha256:HEX` of a PEM certificate's DER (what a join token carries of the CA).
pub fn ca_hash(ca_pem: &str) -> Result<String, TlsError> {
    Ok(format!(
        "sha256:{}",
        sha256_hex(&first_cert(ca_pem, "CA certificate")?)
    ))
}

/// When a PEM certificate starts and ends (Unix seconds).
pub fn validity(pem: &str) -> Result<(u64, u64), TlsError> {
    use x509_parser::prelude::*;
    let der = first_cert(pem, "certificate")?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| TlsError::Invalid(format!("certificate: {e}")))?;
    let v = cert.validity();
    Ok((
        v.not_before.timestamp().max(0) as u64,
        v.not_after.timestamp().max(0) as u64,
    ))
}

/// The cluster's certificate authority.
#[derive(Clone, PartialEq, Eq)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ca { key: <secret> }")
    }
}

/// A certificate the CA signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    /// `sha256` hex of its DER.
    pub fingerprint: String,
    pub not_before_s: u64,
    pub not_after_s: u64,
}

impl Ca {
    /// A new CA for cluster `cluster` (ECDSA P-256).
    pub fn generate(cluster: &str, now: SystemTime) -> Result<Ca, TlsError> {
        let key = rcgen::KeyPair::generate().map_err(invalid("CA key"))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            // A name of its own: during a rotation nodes hold certificates of two CAs of
            // the cluster, told apart by their issuer's name.
            format!("vigil cluster {cluster} CA {}", random_hex::<4>()),
        );
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let start = unix_s(now).saturating_sub(BACKDATE.as_secs());
        params.not_before = offset(start);
        params.not_after = offset(start + CA_LIFETIME.as_secs());
        let cert = params
            .self_signed(&key)
            .map_err(invalid("CA certificate"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    pub fn hash(&self) -> String {
        ca_hash(&self.cert_pem).unwrap_or_default()
    }

    /// Whether the key is the certificate's (a key handed on by a peer is checked so).
    pub fn check(&self) -> Result<(), TlsError> {
        use rcgen::PublicKeyData;
        use x509_parser::prelude::*;
        let key = rcgen::KeyPair::from_pem(&self.key_pem).map_err(invalid("CA key"))?;
        let der = first_cert(&self.cert_pem, "CA certificate")?;
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| TlsError::Invalid(format!("CA certificate: {e}")))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(TlsError::Invalid(
                "the CA key is not the key of the cluster's CA certificate".to_string(),
            ));
        }
        Ok(())
    }

    /// The CA key in `dir` (`CA_KEY_FILE`), if this node holds it.
    pub fn load_key(dir: &Path) -> Result<Option<String>, TlsError> {
        read_if_there(&dir.join(CA_KEY_FILE))
    }

    /// Keeps the CA key in `dir`, readable by its owner only.
    pub fn save_key(&self, dir: &Path) -> Result<(), TlsError> {
        write_private(&dir.join(CA_KEY_FILE), self.key_pem.as_bytes())
    }

    /// Signs the key of `csr_pem` as node `node` of `cluster`, valid for `lifetime` from
    /// `now`. Only the request's key is used: the names are the CA's to give.
    pub fn sign(
        &self,
        csr_pem: &str,
        cluster: &str,
        node: &str,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<Issued, TlsError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(invalid("certificate signing request"))?;
        let key = rcgen::KeyPair::from_pem(&self.key_pem).map_err(invalid("CA key"))?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&self.cert_pem, key)
            .map_err(invalid("CA certificate"))?;
        let uri = format!("vigil://{cluster}/{node}");
        let mut params = rcgen::CertificateParams::new(vec![cluster_dns(cluster)])
            .map_err(invalid("node certificate"))?;
        params.subject_alt_names.push(rcgen::SanType::URI(
            uri.as_str().try_into().map_err(invalid("node name"))?,
        ));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, node.to_string());
        // Key encipherment too, which ECDSA does not use: QEMU's TLS (GnuTLS, for the live
        // migration stream) refuses a certificate whose critical key usage lacks it.
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let start = unix_s(now).saturating_sub(BACKDATE.as_secs());
        let end = unix_s(now) + lifetime.as_secs();
        params.not_before = offset(start);
        params.not_after = offset(end);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&ring_random_bytes::<16>()));
        let cert = params
            .signed_by(&csr.public_key, &issuer)
            .map_err(invalid("node certificate"))?;
        Ok(Issued {
            fingerprint: sha256_hex(cert.der()),
            cert_pem: cert.pem(),
            not_before_s: start,
            not_after_s: end,
        })
    }
}

fn ring_random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random source works");
    b[0] &= 0x7f; // a positive serial
    b
}

/// `N` random bytes as hex (token ids and secrets).
pub fn random_hex<const N: usize>() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random source works");
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// A node's new key (PKCS#8 PEM) and a signing request for it.
pub fn new_key(node: &str) -> Result<(String, String), TlsError> {
    let key = rcgen::KeyPair::generate().map_err(invalid("node key"))?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node.to_string());
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(invalid("certificate signing request"))?;
    Ok((key.serialize_pem(), csr))
}

/// A signing request for an existing key (a renewal keeps the node's key).
pub fn request_for(key_pem: &str, node: &str) -> Result<String, TlsError> {
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(invalid("node key"))?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node.to_string());
    params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(invalid("certificate signing request"))
}

/// A certificate the CA signed, read from its PEM (one a peer signed on this node's behalf).
pub fn issued_from_pem(pem: &str) -> Result<(Issued, NodeCert), TlsError> {
    let cert = read_node_cert(&first_cert(pem, "certificate")?)?;
    Ok((
        Issued {
            cert_pem: pem.to_string(),
            fingerprint: cert.fingerprint.clone(),
            not_before_s: cert.not_before_s,
            not_after_s: cert.not_after_s,
        },
        cert,
    ))
}

/// What a node certificate says: whose it is and how long it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCert {
    pub cluster: String,
    pub node: String,
    pub not_before_s: u64,
    pub not_after_s: u64,
    /// `sha256` hex of its DER.
    pub fingerprint: String,
}

/// Reads the node a certificate (DER) names. Says nothing of who signed it.
pub fn read_node_cert(der: &[u8]) -> Result<NodeCert, TlsError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| TlsError::Invalid(format!("certificate: {e}")))?;
    let uri = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                GeneralName::URI(u) => u.strip_prefix("vigil://").map(str::to_string),
                _ => None,
            })
        })
        .ok_or_else(|| {
            TlsError::Invalid("certificate names no vigil node (no vigil:// URI)".to_string())
        })?;
    let (cluster, node) = uri
        .split_once('/')
        .ok_or_else(|| TlsError::Invalid(format!("certificate's node URI vigil://{uri}")))?;
    let validity = cert.validity();
    Ok(NodeCert {
        cluster: cluster.to_string(),
        node: node.to_string(),
        not_before_s: validity.not_before.timestamp().max(0) as u64,
        not_after_s: validity.not_after.timestamp().max(0) as u64,
        fingerprint: sha256_hex(der),
    })
}

/// A node's credentials: the CA's certificate, its own certificate and its key (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct Creds {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Creds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Creds { key: <secret> }")
    }
}

/// The files of a node's credentials in its data dir.
pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "node.pem";
pub const KEY_FILE: &str = "node.key";
/// The CA key, on the voters that hold it (not learners, not witnesses).
pub const CA_KEY_FILE: &str = "ca.key";

impl Creds {
    /// The credentials in `dir`, if it holds them.
    pub fn load(dir: &Path) -> Result<Option<Creds>, TlsError> {
        let read = |f: &str| read_if_there(&dir.join(f));
        match (read(CA_FILE)?, read(CERT_FILE)?, read(KEY_FILE)?) {
            (Some(ca_pem), Some(cert_pem), Some(key_pem)) => Ok(Some(Creds {
                ca_pem,
                cert_pem,
                key_pem,
            })),
            (None, None, None) => Ok(None),
            _ => Err(TlsError::Invalid(format!(
                "{} holds only some of {CA_FILE}, {CERT_FILE} and {KEY_FILE}",
                dir.display()
            ))),
        }
    }

    /// Writes the credentials into `dir` (mode 0600, each file replaced whole).
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        for (f, text) in [
            (KEY_FILE, &self.key_pem),
            (CA_FILE, &self.ca_pem),
            (CERT_FILE, &self.cert_pem),
        ] {
            write_private(&dir.join(f), text.as_bytes())?;
        }
        Ok(())
    }
}

/// The text of `path`, or `None` when there is no such file.
fn read_if_there(path: &Path) -> Result<Option<String>, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TlsError::Io {
            path: path.display().to_string(),
            why: e.to_string(),
        }),
    }
}

/// Writes `bytes` to `path` readable by its owner only (through a temporary file renamed
/// over it, so that a reader never sees half of it).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| TlsError::Io {
        path: path.display().to_string(),
        why: e.to_string(),
    };
    // A temporary file of this write's own: `node.pem` and `node.key` must not share one,
    // nor two writers of one file (the last rename wins, and each file is whole).
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

struct Loaded {
    key: Arc<CertifiedKey>,
    me: NodeCert,
    ca_hash: String,
    server: Arc<WebPkiServerVerifier>,
    client: Arc<dyn ClientCertVerifier>,
}

/// A node's credentials, swapped in place (see the module's documentation), and why the last
/// renewal failed, if it did.
#[derive(Clone, Default)]
pub struct Tls(
    Arc<RwLock<Option<Arc<Loaded>>>>,
    Arc<RwLock<Option<String>>>,
    Arc<RwLock<Option<PeerJudge>>>,
);

/// Whether a certificate of this cluster may speak for its node (the database decides:
/// removed and replaced certificates are refused).
pub type PeerJudge = Arc<dyn Fn(&NodeCert) -> Result<(), String> + Send + Sync>;

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tls({:?})", self.identity())
    }
}

/// The trusted CAs of `ca_pem`: one, or two while the CA is rotated (the new one first).
fn roots(ca_pem: &str) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), TlsError> {
    let cas = all_certs(ca_pem, "CA certificate")?;
    let mut roots = RootCertStore::empty();
    for ca in &cas {
        roots
            .add(ca.clone())
            .map_err(|e| TlsError::Invalid(format!("CA certificate: {e}")))?;
    }
    Ok((roots, cas))
}

impl Tls {
    /// Takes `creds` as the node's from now on (every later handshake uses them).
    pub fn load(&self, creds: &Creds) -> Result<NodeCert, TlsError> {
        let (roots, cas) = roots(&creds.ca_pem)?;
        let cert = first_cert(&creds.cert_pem, "node certificate")?;
        let me = read_node_cert(&cert)?;
        let ca = issuer_of(&cert, &cas).cloned().ok_or_else(|| {
            TlsError::Invalid("node certificate: not issued by a CA this node trusts".to_string())
        })?;
        let key = PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes())
            .map_err(|e| TlsError::Invalid(format!("node key: {e}")))?;
        let key = CertifiedKey::from_der(vec![cert, ca.clone()], key, &provider())
            .map_err(|e| TlsError::Invalid(format!("node key and certificate: {e}")))?;
        let roots = Arc::new(roots);
        let server = WebPkiServerVerifier::builder(roots.clone())
            .build()
            .map_err(|e| TlsError::Invalid(format!("CA certificate: {e}")))?;
        let client = WebPkiClientVerifier::builder(roots)
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Invalid(format!("CA certificate: {e}")))?;
        let loaded = Loaded {
            key: Arc::new(key),
            me: me.clone(),
            ca_hash: format!("sha256:{}", sha256_hex(&cas[0])),
            server,
            client,
        };
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(loaded));
        Ok(me)
    }

    fn loaded(&self) -> Option<Arc<Loaded>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What this node's current certificate says, once it has one.
    pub fn identity(&self) -> Option<NodeCert> {
        self.loaded().map(|l| l.me.clone())
    }

    /// Sets how the servers this node dials are judged beyond their chain.
    pub fn set_judge(&self, judge: PeerJudge) {
        *self.2.write().unwrap_or_else(|p| p.into_inner()) = Some(judge);
    }

    /// Notes why renewing the certificate failed (`None`: it did not).
    pub fn set_renewal_error(&self, why: Option<String>) {
        *self.1.write().unwrap_or_else(|p| p.into_inner()) = why;
    }

    pub fn renewal_error(&self) -> Option<String> {
        self.1.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The hash of the CA this node trusts.
    pub fn ca_hash(&self) -> Option<String> {
        self.loaded().map(|l| l.ca_hash.clone())
    }

    /// The server side of the agent's port: its certificate, and a client certificate
    /// asked for but optional (operators come with tokens; nodes with certificates).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let mut c = ServerConfig::builder()
            .with_client_cert_verifier(Arc::new(ClientSide(self.clone())))
            .with_cert_resolver(Arc::new(ServerSide(self.clone())));
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        // The server's preference (see `cluster_provider`), whatever the client's order.
        c.ignore_client_order = true;
        Arc::new(c)
    }

    /// A node's client: presents its certificate and accepts only a node of its own cluster.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerCheck(self.clone())))
            .with_client_cert_resolver(Arc::new(ServerSide(self.clone())));
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        c
    }
}

/// The handshake signature checks every verifier here makes the same way (the provider's).
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            algorithms().supported_schemes()
        }
    };
}

/// The node's certificate, as a server and as a client.
#[derive(Debug)]
struct ServerSide(Tls);

impl ResolvesServerCert for ServerSide {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.loaded().map(|l| l.key.clone())
    }
}

impl ResolvesClientCert for ServerSide {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.loaded().map(|l| l.key.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.loaded().is_some()
    }
}

/// Checks a client's certificate (when it presents one) against the current CA.
#[derive(Debug)]
struct ClientSide(Tls);

impl ClientCertVerifier for ClientSide {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let loaded = self
            .0
            .loaded()
            .ok_or_else(|| rustls::Error::General("this node has no cluster CA yet".to_string()))?;
        loaded
            .client
            .verify_client_cert(end_entity, intermediates, now)
    }

    signature_checks!();
}

/// A node's check of the server it dialled: a certificate of its own cluster, from its CA
/// (the address dialled is not what is checked: nodes are reached by address).
#[derive(Debug)]
struct PeerCheck(Tls);

impl ServerCertVerifier for PeerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let loaded = self
            .0
            .loaded()
            .ok_or_else(|| rustls::Error::General("this node has no cluster CA yet".to_string()))?;
        let name = ServerName::try_from(cluster_dns(&loaded.me.cluster))
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified =
            loaded
                .server
                .verify_server_cert(end_entity, intermediates, &name, ocsp, now)?;
        let judge = self.0.2.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(judge) = judge {
            let cert =
                read_node_cert(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
            judge(&cert).map_err(rustls::Error::General)?;
        }
        Ok(verified)
    }

    signature_checks!();
}

/// What a client that is not a node trusts of the server.
#[derive(Clone, Debug)]
pub enum Pin {
    /// The cluster CA's certificate (PEM): `vigil --ca FILE`.
    Ca(String),
    /// The hash of the cluster CA's certificate (`sha256:HEX`), as a join token carries it:
    /// the server's chain must end in a CA with that hash.
    Hash(String),
}

/// A client that accepts only a node of the cluster `pin` names. Presents no certificate.
pub fn pinned_client(pin: Pin) -> Result<ClientConfig, TlsError> {
    if let Pin::Ca(pem) = &pin {
        roots(pem)?;
    }
    let mut c = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned(pin)))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

#[derive(Debug)]
struct Pinned(Pin);

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let general = |e: TlsError| rustls::Error::General(e.to_string());
        let ca: CertificateDer<'_> = match &self.0 {
            Pin::Ca(pem) => first_cert(pem, "CA certificate").map_err(general)?,
            Pin::Hash(want) => intermediates
                .iter()
                .find(|c| format!("sha256:{}", sha256_hex(c)) == *want)
                .cloned()
                .ok_or_else(|| {
                    rustls::Error::General(format!(
                        "the server's certificate is not from the cluster CA {want}"
                    ))
                })?,
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.into_owned())
            .map_err(|e| rustls::Error::General(format!("CA certificate: {e}")))?;
        let node = read_node_cert(end_entity).map_err(general)?;
        let verifier = WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let name = ServerName::try_from(cluster_dns(&node.cluster))
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, &name, ocsp, now)
    }

    signature_checks!();
}

/// Who is at the other end of a connection the agent serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A client that presented a certificate from this node's cluster CA.
    Node(NodeCert),
    /// A process of user `uid` on this host, over the agent's Unix socket.
    Local { uid: u32 },
    /// Anyone else (a token decides what it may do).
    Anonymous,
}

impl Peer {
    /// The peer of a TLS connection: its first certificate, which rustls has checked.
    pub fn of_certs(certs: Option<&[CertificateDer<'_>]>) -> Peer {
        certs
            .and_then(|c| c.first())
            .and_then(|c| read_node_cert(c).ok())
            .map_or(Peer::Anonymous, Peer::Node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_node_certificate_names_its_cluster_and_node() {
        install_provider();
        let now = SystemTime::now();
        let ca = Ca::generate("c1", now).unwrap();
        let (key, csr) = new_key("n1").unwrap();
        let issued = ca
            .sign(&csr, "c1", "n1", Duration::from_secs(3600), now)
            .unwrap();
        let der = first_cert(&issued.cert_pem, "x").unwrap();
        let named = read_node_cert(&der).unwrap();
        assert_eq!((named.cluster.as_str(), named.node.as_str()), ("c1", "n1"));
        assert_eq!(named.not_after_s, issued.not_after_s);
        let tls = Tls::default();
        tls.load(&Creds {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: issued.cert_pem,
            key_pem: key,
        })
        .unwrap();
        assert_eq!(tls.ca_hash().unwrap(), ca.hash());
    }

    #[test]
    fn renewal_is_due_in_the_last_third_of_a_certificates_life() {
        let nb = 1_000 - BACKDATE.as_secs();
        assert!(!renewal_due(nb, 1_900, 1_000));
        assert!(!renewal_due(nb, 1_900, 1_599));
        assert!(renewal_due(nb, 1_900, 1_601));
        assert!(renewal_due(nb, 1_900, 2_000));
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        install_provider();
        let now = SystemTime::now();
        let ca = Ca::generate("c1", now).unwrap();
        let (_, csr) = new_key("n1").unwrap();
        let (other, _) = new_key("n1").unwrap();
        let issued = ca
            .sign(&csr, "c1", "n1", Duration::from_secs(3600), now)
            .unwrap();
        let err = Tls::default()
            .load(&Creds {
                ca_pem: ca.cert_pem,
                cert_pem: issued.cert_pem,
                key_pem: other,
            })
            .unwrap_err();
        assert!(
            err.to_string().contains("node key and certificate"),
            "{err}"
        );
    }

    #[test]
    fn a_ca_key_is_checked_against_the_ca_certificate_and_kept_private() {
        let now = SystemTime::now();
        let ca = Ca::generate("c1", now).unwrap();
        ca.check().unwrap();
        let other = Ca::generate("c1", now).unwrap();
        let mixed = Ca {
            cert_pem: ca.cert_pem.clone(),
            key_pem: other.key_pem.clone(),
        };
        let err = mixed.check().unwrap_err().to_string();
        assert!(err.contains("not the key of the cluster's CA"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Ca::load_key(dir.path()).unwrap(), None);
        ca.save_key(dir.path()).unwrap();
        assert_eq!(Ca::load_key(dir.path()).unwrap(), Some(ca.key_pem.clone()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
