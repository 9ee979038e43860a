//! # links: signed one-click unsubscribe links (RFC 8058)
//!
//! Owns the format of the links Herald puts in `List-Unsubscribe` headers: the tenant and the
//! message id, signed with the cluster's `link_secret`, so the endpoint can trust them without
//! a lookup and nobody can unsubscribe someone else by guessing. Must never put personal data
//! (addresses, recipient names) into a link.

use hmac::{Hmac, Mac};
use sha2::Sha256;

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

/// Signs and checks the links of one cluster: its public base URL and `link_secret`.
#[derive(Clone, Debug)]
pub struct LinkSigner {
    base: String,
    secret: String,
}

impl LinkSigner {
    /// A signer when the node has both a public URL and a secret (config checks they come
    /// together); `None` = no unsubscribe links.
    pub fn new(public_url: Option<&str>, secret: Option<&str>) -> Option<LinkSigner> {
        Some(LinkSigner {
            base: public_url?.trim_end_matches('/').to_owned(),
            secret: secret?.to_owned(),
        })
    }

    /// The `List-Unsubscribe` target for a message.
    pub fn unsubscribe(&self, tenant: &str, message_id: &str) -> ListUnsubscribe {
        ListUnsubscribe {
            url: format!(
                "{}/unsubscribe/{}/{message_id}/{}",
                self.base,
                url_safe(tenant),
                signature(&self.secret, tenant, message_id)
            ),
            mailto: None,
        }
    }

    /// Whether `given` is the signature for `tenant` and `message_id` (constant time).
    pub fn verify(&self, tenant: &str, message_id: &str, given: &str) -> bool {
        let expected = signature(&self.secret, tenant, message_id);
        expected.len() == given.len()
            && expected
                .bytes()
                .zip(given.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_signed_and_checked() {
        let signer =
            LinkSigner::new(Some("https://herald.example.com/"), Some("s3cret")).expect("signer");
        let link = signer.unsubscribe("acme corp", "01HX");
        assert!(
            link.url
                .starts_with("https://herald.example.com/unsubscribe/acme%20corp/01HX/"),
            "{}",
            link.url
        );
        let signature = link.url.rsplit('/').next().expect("signature");
        assert!(signer.verify("acme corp", "01HX", signature));
        assert!(!signer.verify("acme corp", "01HY", signature));
        assert!(!signer.verify("globex", "01HX", signature));
        assert!(LinkSigner::new(None, Some("s3cret")).is_none());
        let other = LinkSigner::new(Some("https://x"), Some("other")).expect("signer");
        assert!(!other.verify("acme corp", "01HX", signature));
    }
}
