//! # identity: who a cluster certificate names
//!
//! Owns the naming scheme of cluster certificates and its parsing. A certificate for node
//! `n1` carries the DNS name `n1` (what a client verifies when it dials n1) and the URI
//! `urn:herald:node:n1` (what a server reads to authorize the caller); a control replica's
//! certificate also carries the shared DNS name [`CONTROL_SERVER_NAME`], since nodes dial the
//! control plane by address, not by replica id, and every node's certificate carries
//! [`NODE_SERVER_NAME`]: a node dials a peer by the address the partition table gives and
//! checks that a cluster node answers (every node is trusted alike with the store, so which
//! node it is does not widen what it can do; the control plane, which decides membership,
//! checks the exact name). Roles keep a node from passing for the control plane and an
//! operator's certificate from forwarding traffic.
//!
//! Must never trust a name found anywhere but a certificate the TLS layer verified.

use std::fmt;

use rustls_pki_types::CertificateDer;
use tonic::{Request, Status};
use x509_parser::extensions::GeneralName;

/// The DNS name every control replica's certificate carries; nodes verify it.
pub const CONTROL_SERVER_NAME: &str = "herald-control";

/// The DNS name every node's certificate carries; peers verify it.
pub const NODE_SERVER_NAME: &str = "herald-node";

/// The longest name a certificate may carry (node ids are at most this long too).
pub const NAME_MAX_LEN: usize = 63;

const URN_PREFIX: &str = "urn:herald:";

/// What a certificate's holder is to the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A data-plane node: may call other nodes' internal API and join the cluster under its name.
    Node,
    /// A control-plane replica.
    Control,
    /// A person or tool administering the cluster (`herald cluster status`).
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Control => "control",
            Role::Operator => "operator",
        }
    }

    fn parse(text: &str) -> Option<Role> {
        match text {
            "node" => Some(Role::Node),
            "control" => Some(Role::Control),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verified certificate's holder.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: Role,
    pub name: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role, self.name)
    }
}

impl Identity {
    pub fn new(role: Role, name: impl Into<String>) -> Result<Identity, crate::Error> {
        let name = name.into();
        check_name(&name)?;
        Ok(Identity { role, name })
    }

    /// The URI subject alternative name that carries this identity.
    pub fn uri(&self) -> String {
        format!("{URN_PREFIX}{}:{}", self.role, self.name)
    }

    /// Reads the identity of an end-entity certificate (DER); `None` when it carries none.
    pub fn from_certificate(der: &CertificateDer<'_>) -> Option<Identity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let sans = cert.subject_alternative_name().ok()??;
        sans.value.general_names.iter().find_map(|name| match name {
            GeneralName::URI(uri) => parse_uri(uri),
            _ => None,
        })
    }

    /// The caller of `request`, from the client certificate its TLS session verified.
    pub fn of_caller<T>(request: &Request<T>) -> Option<Identity> {
        let certs = request.peer_certs()?;
        Identity::from_certificate(certs.first()?)
    }
}

fn parse_uri(uri: &str) -> Option<Identity> {
    let rest = uri.strip_prefix(URN_PREFIX)?;
    let (role, name) = rest.split_once(':')?;
    let role = Role::parse(role)?;
    check_name(name).ok()?;
    Some(Identity {
        role,
        name: name.to_owned(),
    })
}

/// Names are DNS labels-ish: letters, digits, `-`, `_`, `.`; 1..=63 bytes; not one of the
/// shared server names.
pub fn check_name(name: &str) -> Result<(), crate::Error> {
    let invalid = |reason| {
        Err(crate::Error::Name {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > NAME_MAX_LEN {
        return invalid("must be 1..=63 bytes");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return invalid("only letters, digits, '-', '_' and '.'");
    }
    if name.starts_with(['-', '.']) || name.ends_with(['-', '.']) {
        return invalid("must start and end with a letter or digit");
    }
    if name == CONTROL_SERVER_NAME || name == NODE_SERVER_NAME {
        return invalid("reserved as a shared server name");
    }
    Ok(())
}

/// Answers `PERMISSION_DENIED` unless the caller presented a certificate of `role`.
#[allow(clippy::result_large_err)]
pub fn require_role<T>(request: &Request<T>, role: Role) -> Result<Identity, Status> {
    match Identity::of_caller(request) {
        Some(identity) if identity.role == role => Ok(identity),
        Some(identity) => Err(Status::permission_denied(format!(
            "this API is for {role} certificates; the caller is {identity}"
        ))),
        None => Err(Status::unauthenticated(format!(
            "this API needs a cluster {role} certificate (mutual TLS)"
        ))),
    }
}

/// A tonic interceptor that lets through only callers with a certificate of `role`.
#[derive(Clone, Copy, Debug)]
pub struct RequireRole(pub Role);

impl tonic::service::Interceptor for RequireRole {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        require_role(&request, self.0)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_junk_is_no_identity() {
        let id = Identity::new(Role::Node, "n1").expect("valid");
        assert_eq!(id.uri(), "urn:herald:node:n1");
        assert_eq!(parse_uri(&id.uri()), Some(id));
        for junk in [
            "urn:herald:node:",
            "urn:herald:king:n1",
            "urn:other:node:n1",
            "urn:herald:node:a b",
            "urn:herald:node:herald-control",
        ] {
            assert_eq!(parse_uri(junk), None, "{junk}");
        }
    }

    #[test]
    fn names_are_checked() {
        for good in ["n1", "node-7500", "eu_west.3"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let long = "x".repeat(64);
        for bad in [
            "",
            "-n1",
            "n1.",
            "a b",
            "n/1",
            CONTROL_SERVER_NAME,
            NODE_SERVER_NAME,
            long.as_str(),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
