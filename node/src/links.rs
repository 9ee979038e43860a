//! # links: signed one-click unsubscribe links (RFC 8058)
//!
//! Owns the format of the links Herald puts in `List-Unsubscribe` headers: the tenant and the
//! message id, signed with the cluster's `link_secret`, so the endpoint can trust them without
//! a lookup and nobody can unsubscribe someone else by guessing. Must never put personal data
//! (addresses, recipient names) into a link.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::NodeConfig;
use herald_providers::ListUnsubscribe;

/// Hex digits of the signature kept in a link (128 bits).
const SIGNATURE_HEX: usize = 32;

fn signature(secret: &str, tenant: &str, message_id: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(tenant.as_bytes());
    mac.update(&[0x1f]);
    mac.update(message_id.as_bytes());
    let mut hex = hex::encode(mac.finalize().into_bytes());
    hex.truncate(SIGNATURE_HEX);
    hex
}

/// The `List-Unsubscribe` target for a message, when the node has a public URL and a secret.
pub fn unsubscribe(config: &NodeConfig, tenant: &str, message_id: &str) -> Option<ListUnsubscribe> {
    let base = config.public_url.as_deref()?.trim_end_matches('/');
    let secret = config.link_secret.as_deref()?;
    let tenant_part: String = url_safe(tenant);
    Some(ListUnsubscribe {
        url: format!(
            "{base}/unsubscribe/{tenant_part}/{message_id}/{}",
            signature(secret, tenant, message_id)
        ),
        mailto: None,
    })
}

/// Percent-encodes everything but unreserved characters (tenant ids are free-form).
fn url_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Whether `signature` is the one for `tenant` and `message_id` (constant time).
pub fn verify(config: &NodeConfig, tenant: &str, message_id: &str, given: &str) -> bool {
    let Some(secret) = config.link_secret.as_deref() else {
        return false;
    };
    let expected = signature(secret, tenant, message_id);
    expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_signed_and_checked() {
        let config = NodeConfig {
            public_url: Some("https://herald.example.com/".into()),
            link_secret: Some("s3cret".into()),
            ..Default::default()
        };
        let link = unsubscribe(&config, "acme corp", "01HX").expect("link");
        assert!(
            link.url
                .starts_with("https://herald.example.com/unsubscribe/acme%20corp/01HX/"),
            "{}",
            link.url
        );
        let signature = link.url.rsplit('/').next().expect("signature");
        assert!(verify(&config, "acme corp", "01HX", signature));
        assert!(!verify(&config, "acme corp", "01HY", signature));
        assert!(!verify(&config, "globex", "01HX", signature));
        let unsigned = NodeConfig::default();
        assert!(unsubscribe(&unsigned, "acme", "01HX").is_none());
        assert!(!verify(&unsigned, "acme", "01HX", signature));
    }
}
