//! # config: the `[tls]` section of node and control configs
//!
//! ```toml
//! [tls]
//! mode = "mtls"              # default; "off" only for single-machine tests and benchmarks
//! ca = "certs/ca.pem"        # the cluster CA (herald certs init)
//! cert = "certs/node-n1.pem" # this process's certificate (herald certs issue --node n1)
//! key = "certs/node-n1.key"
//! reload_interval_ms = 2000  # how often the files are checked for changes
//! ```
//!
//! Must never default to an open internal plane: `mode = "off"` has to be written out.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Whether the internal planes use mutual TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Mutual TLS with cluster certificates (the default).
    #[default]
    Mtls,
    /// Plaintext, no caller authentication: anyone who reaches the internal or control port
    /// can act as a node. For tests on one machine and the mTLS benchmark only.
    Off,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterTls {
    pub mode: TlsMode,
    /// The cluster CA certificate (PEM).
    pub ca: Option<PathBuf>,
    /// This process's certificate (PEM; may include intermediates after the leaf).
    pub cert: Option<PathBuf>,
    /// This process's private key (PEM, PKCS#8 or SEC1).
    pub key: Option<PathBuf>,
    /// How often the three files are checked for changes, ms.
    pub reload_interval_ms: u64,
}

impl Default for ClusterTls {
    fn default() -> Self {
        Self {
            mode: TlsMode::Mtls,
            ca: None,
            cert: None,
            key: None,
            reload_interval_ms: 2_000,
        }
    }
}

/// The three files of a process's TLS identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClusterTls {
    /// Plaintext (tests and benchmarks only).
    pub fn off() -> Self {
        Self {
            mode: TlsMode::Off,
            ..Self::default()
        }
    }

    /// mTLS with these files.
    pub fn with_files(files: TlsFiles) -> Self {
        Self {
            mode: TlsMode::Mtls,
            ca: Some(files.ca),
            cert: Some(files.cert),
            key: Some(files.key),
            ..Self::default()
        }
    }

    /// The files to load, `None` when TLS is off; an error names the missing field.
    pub fn files(&self) -> Result<Option<TlsFiles>, crate::Error> {
        if self.mode == TlsMode::Off {
            return Ok(None);
        }
        let need = |value: &Option<PathBuf>, field: &'static str| {
            value.clone().ok_or_else(|| crate::Error::Config {
                field,
                reason: "required with tls.mode = \"mtls\" (create one with `herald certs init` \
                         and `herald certs issue`; or set tls.mode = \"off\" on a test machine)"
                    .into(),
            })
        };
        if self.reload_interval_ms == 0 {
            return Err(crate::Error::Config {
                field: "tls.reload_interval_ms",
                reason: "must be > 0".into(),
            });
        }
        Ok(Some(TlsFiles {
            ca: need(&self.ca, "tls.ca")?,
            cert: need(&self.cert, "tls.cert")?,
            key: need(&self.key, "tls.key")?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtls_is_the_default_and_needs_its_files() {
        let tls = ClusterTls::default();
        let error = tls.files().expect_err("no files");
        assert!(error.to_string().contains("tls.ca"), "{error}");
        let partial = ClusterTls {
            ca: Some("ca.pem".into()),
            cert: Some("n1.pem".into()),
            ..ClusterTls::default()
        };
        assert!(
            partial
                .files()
                .expect_err("no key")
                .to_string()
                .contains("tls.key")
        );
        assert_eq!(ClusterTls::off().files().expect("off"), None);
    }
}
