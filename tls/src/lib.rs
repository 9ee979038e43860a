//! # herald-tls: the cluster's mutual TLS
//!
//! Owns everything about certificates and TLS sessions on Herald's internal planes
//! (node-to-node and node-to-control, see `docs/security.md`):
//!
//! - [`identity`]: who a certificate names. A cluster certificate carries its holder's role
//!   and name (`urn:herald:node:n1`, `urn:herald:control:c1`, `urn:herald:operator:alice`)
//!   beside a DNS name; servers authorize callers by that [`Identity`], never by what a
//!   request says about itself.
//! - [`authority`]: the cluster CA and the certificates it issues (rcgen), in memory or as
//!   files (`herald certs init`, `herald certs issue`).
//! - [`material`]: a process's CA, certificate and key, loaded from files and re-loaded when
//!   they change on disk, without a restart (new connections use the new files).
//! - [`transport`]: the TLS listener that tonic serves from, and client channels that verify
//!   the server's role and name.
//! - [`config`]: the `[tls]` section of node and control configs.
//!
//! Must never log key material or certificate contents beyond names, and never accept a
//! certificate that does not chain to the configured cluster CA.

pub mod authority;
pub mod config;
pub mod identity;
pub mod material;
pub mod public;
pub mod transport;

pub use authority::{Authority, Issued};
pub use config::{ClusterTls, TlsMode};
pub use identity::{Identity, Role};
pub use material::TlsMaterial;
pub use transport::{Dialer, ServerTls};

/// What can go wrong with certificates and TLS set-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("verifier: {0}")]
    Verifier(String),
    #[error("invalid name {name:?}: {reason}")]
    Name { name: String, reason: &'static str },
    #[error("{path}: the certificate names no Herald identity (no urn:herald:<role>:<name> SAN)")]
    NoIdentity { path: std::path::PathBuf },
    #[error("{path} exists; pass --force to replace it")]
    Exists { path: std::path::PathBuf },
    #[error("config: {field}: {reason}")]
    Config { field: &'static str, reason: String },
}
