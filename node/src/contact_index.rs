//! # contact_index: keyed hashes of contact points, for the store's indexes
//!
//! Owns how a contact point becomes part of a key name: an HMAC-SHA256 under the cluster's
//! `contact_index_secret`, of the tenant and the normalised contact point. The store can then
//! find "the recipient with this number" for an inbound SMS without any key naming the number,
//! and a dump of Redis does not list the tenant's phone book. Every node must use the same
//! secret, or nodes will not find each other's index entries.
//!
//! Must never put a contact point into a key name itself, and never log the secret.

use herald_proto::TenantId;
use herald_proto::v1::{Channel, Recipient};
use herald_store::keys;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The key used when no secret is configured: the index is still no plain number, but anyone
/// who knows Herald can test a guessed number against it. Start-up warns.
const UNKEYED: &[u8] = b"herald contact index (no contact_index_secret configured)";

/// Hex digits of the digest kept in a key name (128 bits).
const DIGEST_HEX_LEN: usize = 32;

#[derive(Clone)]
pub struct ContactIndex {
    key: Vec<u8>,
}

impl ContactIndex {
    /// An index under `secret` (`None`: the well-known fallback key).
    pub fn new(secret: Option<&str>) -> Self {
        Self {
            key: secret.map_or_else(|| UNKEYED.to_vec(), |s| s.as_bytes().to_vec()),
        }
    }

    /// Whether a secret was configured.
    pub fn is_keyed(&self) -> bool {
        self.key != UNKEYED
    }

    fn digest(&self, tenant: &TenantId, kind: &str, contact: &str) -> String {
        // The key is any length (HMAC takes every length).
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
        for part in [kind, tenant.as_str(), contact] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        let mut digest = hex::encode(mac.finalize().into_bytes());
        digest.truncate(DIGEST_HEX_LEN);
        digest
    }

    /// The value key of the phone index entry of `e164` in `tenant`.
    pub fn phone_key(&self, tenant: &TenantId, e164: &str) -> String {
        keys::value::phone_index(tenant, &self.digest(tenant, "phone", e164))
    }

    /// The value key of the opt-out proof of `contact` (a number, an address or a push token)
    /// on `channel` in `tenant`.
    pub fn opt_out_key(&self, tenant: &TenantId, channel: Channel, contact: &str) -> String {
        keys::value::opt_out_proof(tenant, &self.digest(tenant, channel.as_str_name(), contact))
    }

    /// The contact points of `recipient` that an opt-out on `channel` names.
    pub fn contacts(recipient: &Recipient, channel: Channel) -> Vec<&str> {
        match channel {
            Channel::Sms if !recipient.phone.is_empty() => vec![recipient.phone.as_str()],
            Channel::Email if !recipient.email.is_empty() => vec![recipient.email.as_str()],
            Channel::Push => recipient
                .push_tokens
                .iter()
                .map(|t| t.token.as_str())
                .filter(|t| !t.is_empty())
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl std::fmt::Debug for ContactIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContactIndex")
            .field("keyed", &self.is_keyed())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_names_no_number_and_depends_on_the_secret() {
        let acme = TenantId("acme".into());
        let index = ContactIndex::new(Some("s3cret"));
        let key = index.phone_key(&acme, "+14155550199");
        assert!(!key.contains("4155550199"), "{key}");
        assert!(key.starts_with("phone:acme:"), "{key}");
        assert_eq!(key, index.phone_key(&acme, "+14155550199"), "stable");
        assert_ne!(
            key,
            ContactIndex::new(Some("other")).phone_key(&acme, "+14155550199")
        );
        assert_ne!(
            key,
            index.phone_key(&TenantId("globex".into()), "+14155550199")
        );
        assert_ne!(key, index.phone_key(&acme, "+14155550198"));
        assert!(index.is_keyed());
        assert!(!ContactIndex::new(None).is_keyed());
        assert!(!format!("{index:?}").contains("s3cret"));
    }
}
