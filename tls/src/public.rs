//! # public: TLS for the public API (a server certificate; client certificates optional)
//!
//! ```toml
//! [api_tls]
//! cert = "/etc/herald/api/tls.crt"   # the API's certificate chain (PEM), e.g. from your PKI
//! key = "/etc/herald/api/tls.key"
//! client_ca = "/etc/herald/api/clients-ca.pem"  # optional: require client certificates
//! reload_interval_ms = 2000
//! ```
//!
//! Owns the public listener's server config: the API's own certificate (not the cluster CA's:
//! clients should trust your usual PKI), and, with `client_ca`, clients must present a
//! certificate chained to it (on top of their API key). The files are re-loaded on change,
//! like the cluster's. Must never fall back to plaintext when the files are set but broken:
//! the node does not start, and a later broken change keeps the previous files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::Error;
use crate::material::{Reload, chain_and_key, provider, roots, watch_files};

/// The `[api_tls]` section: unset `cert` and `key` = the public API speaks plaintext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiTls {
    /// The public API's certificate chain (PEM, leaf first).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// With it, clients must present a certificate chained to this CA (PEM).
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for changes, ms.
    pub reload_interval_ms: u64,
}

impl Default for ApiTls {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            client_ca: None,
            reload_interval_ms: 2_000,
        }
    }
}

impl ApiTls {
    /// Whether the public API runs TLS; `cert` and `key` go together.
    pub fn enabled(&self) -> Result<bool, Error> {
        match (&self.cert, &self.key) {
            (Some(_), Some(_)) => Ok(true),
            (None, None) if self.client_ca.is_none() => Ok(false),
            (None, None) => Err(Error::Config {
                field: "api_tls.client_ca",
                reason: "needs api_tls.cert and api_tls.key".into(),
            }),
            (Some(_), None) => Err(Error::Config {
                field: "api_tls.key",
                reason: "is required with api_tls.cert".into(),
            }),
            (None, Some(_)) => Err(Error::Config {
                field: "api_tls.cert",
                reason: "is required with api_tls.key".into(),
            }),
        }
    }
}

type Stamp = Vec<(Option<SystemTime>, u64)>;

/// The public API's TLS config, re-loaded when its files change.
pub struct PublicTls {
    files: Vec<PathBuf>,
    config: ApiTls,
    loaded: ArcSwap<(Stamp, Arc<ServerConfig>)>,
}

impl std::fmt::Debug for PublicTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicTls")
            .field("files", &self.files)
            .finish()
    }
}

impl PublicTls {
    /// Loads `config`'s files (`None` when the public API is plaintext).
    pub fn load(config: &ApiTls) -> Result<Option<Arc<PublicTls>>, Error> {
        if !config.enabled()? {
            return Ok(None);
        }
        let files: Vec<PathBuf> = [&config.cert, &config.key, &config.client_ca]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let loaded = load(config, &files)?;
        Ok(Some(Arc::new(PublicTls {
            files,
            config: config.clone(),
            loaded: ArcSwap::from_pointee(loaded),
        })))
    }

    /// The config for the next connection.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.loaded.load().1.clone()
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.config.client_ca.is_some()
    }

    /// Looks at the files once: re-loads them when they changed. Returns whether it did.
    pub fn reload_if_changed(&self) -> bool {
        let Ok(now) = stamp(&self.files) else {
            return false;
        };
        if now == self.loaded.load().0 {
            return false;
        }
        match load(&self.config, &self.files) {
            Ok(loaded) => {
                info!("api tls: certificates re-loaded");
                self.loaded.store(Arc::new(loaded));
                true
            }
            Err(error) => {
                warn!(%error, "api tls: changed files do not load; keeping the previous ones");
                false
            }
        }
    }

    /// Checks the files every `reload_interval_ms` for as long as the config is in use.
    pub fn watch(self: &Arc<Self>) {
        let interval = Duration::from_millis(self.config.reload_interval_ms.max(100));
        watch_files(self, interval);
    }
}

impl Reload for PublicTls {
    fn reload_if_changed(&self) -> bool {
        PublicTls::reload_if_changed(self)
    }
}

fn stamp(files: &[PathBuf]) -> Result<Stamp, Error> {
    files
        .iter()
        .map(|path: &PathBuf| {
            let path: &Path = path;
            std::fs::metadata(path)
                .map(|m| (m.modified().ok(), m.len()))
                .map_err(|source| Error::Io {
                    path: path.to_owned(),
                    source,
                })
        })
        .collect()
}

fn load(config: &ApiTls, files: &[PathBuf]) -> Result<(Stamp, Arc<ServerConfig>), Error> {
    let stamp = stamp(files)?;
    let (Some(cert), Some(key)) = (&config.cert, &config.key) else {
        return Err(Error::Config {
            field: "api_tls.cert",
            reason: "is required".into(),
        });
    };
    let (chain, key) = chain_and_key(cert, key)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &config.client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider)
                .build()
                .map_err(|e| Error::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(chain, key)?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok((stamp, Arc::new(server)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_and_key_go_together_and_client_ca_needs_them() {
        let path = |p: &str| Some(PathBuf::from(p));
        assert!(!ApiTls::default().enabled().expect("plaintext"));
        for (config, field) in [
            (
                ApiTls {
                    cert: path("c.pem"),
                    ..Default::default()
                },
                "api_tls.key",
            ),
            (
                ApiTls {
                    key: path("k.pem"),
                    ..Default::default()
                },
                "api_tls.cert",
            ),
            (
                ApiTls {
                    client_ca: path("ca.pem"),
                    ..Default::default()
                },
                "api_tls.client_ca",
            ),
        ] {
            let error = config.enabled().expect_err("incomplete");
            assert!(error.to_string().contains(field), "{error}");
        }
        let missing = PublicTls::load(&ApiTls {
            cert: path("/nonexistent/c.pem"),
            key: path("/nonexistent/k.pem"),
            ..Default::default()
        })
        .expect_err("files that do not exist stop the start");
        assert!(
            missing.to_string().contains("/nonexistent/c.pem"),
            "{missing}"
        );
    }
}
