//! # material: a process's CA, certificate and key, re-loaded on change
//!
//! Owns loading the three PEM files of [`TlsFiles`], building the rustls configs from them (a
//! server that requires a client certificate chained to the CA; clients that present this
//! process's certificate and verify the server's role), and re-loading them when a file
//! changes (checked every `reload_interval_ms`; compared by modification time and size). New
//! connections use the newest files; open ones keep the session they have. A change that does
//! not load (a half-written file, a key that does not match, another identity) is logged and
//! ignored: the previous files stay in force.
//!
//! Must never change the process's identity on a reload: a node's id is fixed for its life.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tracing::{info, warn};

use crate::Error;
use crate::config::TlsFiles;
use crate::identity::{Identity, Role};

/// The one crypto backend of the build (ring, as reqwest and lettre use).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What identifies one version of the files on disk.
type Stamp = [(Option<SystemTime>, u64); 3];

struct Loaded {
    stamp: Stamp,
    identity: Identity,
    server: Arc<ServerConfig>,
    to_node: Arc<ClientConfig>,
    to_control: Arc<ClientConfig>,
}

/// A process's cluster TLS identity.
pub struct TlsMaterial {
    files: TlsFiles,
    loaded: ArcSwap<Loaded>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("files", &self.files)
            .field("identity", &self.identity())
            .finish()
    }
}

impl TlsMaterial {
    /// Loads the files; the certificate must name a Herald identity.
    pub fn load(files: TlsFiles) -> Result<Arc<TlsMaterial>, Error> {
        let loaded = load(&files)?;
        Ok(Arc::new(TlsMaterial {
            files,
            loaded: ArcSwap::from_pointee(loaded),
        }))
    }

    /// Whom this process's certificate names.
    pub fn identity(&self) -> Identity {
        self.loaded.load().identity.clone()
    }

    /// The server config: a client certificate chained to the CA is required.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.loaded.load().server.clone()
    }

    /// The client config for dialing a server of `role` (node or control).
    pub fn client_config(&self, role: Role) -> Arc<ClientConfig> {
        let loaded = self.loaded.load();
        match role {
            Role::Control => loaded.to_control.clone(),
            Role::Node | Role::Operator => loaded.to_node.clone(),
        }
    }

    /// Looks at the files once: re-loads them when they changed. Returns whether it did.
    pub fn reload_if_changed(&self) -> bool {
        let current = self.loaded.load();
        let Ok(stamp) = stamp(&self.files) else {
            return false;
        };
        if stamp == current.stamp {
            return false;
        }
        match load(&self.files) {
            Ok(loaded) if loaded.identity != current.identity => {
                warn!(
                    was = %current.identity,
                    now = %loaded.identity,
                    "tls: the new certificate names another identity; keeping the old one"
                );
                false
            }
            Ok(loaded) => {
                info!(identity = %loaded.identity, "tls: certificates re-loaded");
                self.loaded.store(Arc::new(loaded));
                true
            }
            Err(error) => {
                warn!(%error, "tls: changed files do not load; keeping the previous ones");
                false
            }
        }
    }

    /// Checks the files every `interval` for as long as the material is in use.
    pub fn watch(self: &Arc<Self>, interval: Duration) {
        watch_files(self, interval);
    }
}

impl Reload for TlsMaterial {
    fn reload_if_changed(&self) -> bool {
        TlsMaterial::reload_if_changed(self)
    }
}

/// Files that are looked at now and then and re-loaded when they changed.
pub(crate) trait Reload: Send + Sync + 'static {
    /// Looks at the files once; re-loads them when they changed. Returns whether it did.
    fn reload_if_changed(&self) -> bool;
}

/// Calls `files.reload_if_changed()` every `interval` for as long as `files` is in use (the
/// task holds only a weak reference).
pub(crate) fn watch_files<T: Reload>(files: &Arc<T>, interval: Duration) {
    let weak: Weak<T> = Arc::downgrade(files);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(files) = weak.upgrade() else {
                return;
            };
            // File system calls block: off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || files.reload_if_changed()).await;
        }
    });
}

fn stamp(files: &TlsFiles) -> Result<Stamp, Error> {
    let one = |path: &Path| {
        std::fs::metadata(path)
            .map(|m| (m.modified().ok(), m.len()))
            .map_err(|source| Error::Io {
                path: path.to_owned(),
                source,
            })
    };
    Ok([one(&files.ca)?, one(&files.cert)?, one(&files.key)?])
}

fn pem_error(path: &Path) -> impl Fn(rustls_pki_types::pem::Error) -> Error + '_ {
    move |e| Error::Pem {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// The CA file's certificates as a root store.
pub fn roots(path: &Path) -> Result<Arc<RootCertStore>, Error> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_error(path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(path))?;
    if certs.is_empty() {
        return Err(Error::Pem {
            path: path.to_owned(),
            reason: "no certificate in the file".into(),
        });
    }
    for cert in certs {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

/// A certificate chain and its key.
pub fn chain_and_key(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(pem_error(cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(cert))?;
    if chain.is_empty() {
        return Err(Error::Pem {
            path: cert.to_owned(),
            reason: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem_error(key))?;
    Ok((chain, key))
}

fn load(files: &TlsFiles) -> Result<Loaded, Error> {
    // The stamp first: a change while loading is seen again on the next look.
    let stamp = stamp(files)?;
    let roots = roots(&files.ca)?;
    let (chain, key) = chain_and_key(&files.cert, &files.key)?;
    let identity = Identity::from_certificate(&chain[0]).ok_or_else(|| Error::NoIdentity {
        path: files.cert.clone(),
    })?;
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| Error::Verifier(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let client = |role| -> Result<Arc<ClientConfig>, Error> {
        let verifier = RoleVerifier::new(roots.clone(), role)?;
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain.clone(), key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    };
    Ok(Loaded {
        stamp,
        identity,
        server: Arc::new(server),
        to_node: client(Role::Node)?,
        to_control: client(Role::Control)?,
    })
}

/// The web PKI's verification of a server (chain to the CA, validity, the server name), and
/// then the role the server's certificate names: a node's certificate cannot pass for the
/// control plane, nor an operator's for a node.
#[derive(Debug)]
pub struct RoleVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    role: Role,
}

impl RoleVerifier {
    pub fn new(roots: Arc<RootCertStore>, role: Role) -> Result<Arc<RoleVerifier>, Error> {
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| Error::Verifier(e.to_string()))?;
        Ok(Arc::new(RoleVerifier { inner, role }))
    }
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match Identity::from_certificate(end_entity) {
            Some(identity) if identity.role == self.role => Ok(verified),
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
