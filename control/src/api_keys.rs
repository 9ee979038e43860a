//! # api_keys: the lifecycle of the public API's keys (create, list, revoke)
//!
//! Owns making a key (a random id and a random secret, `hk_<id>_<secret>`), writing its record
//! to the store and marking a record revoked. The store holds only the key's SHA-256; the key
//! itself leaves this module once, in the answer to its creation. Nodes look keys up in the
//! store and re-check the ones they remember every `api_key_recheck_ms`, so a revocation
//! reaches every node without a restart.
//!
//! Must never log, store or return a key after its creation, and never decide who may call it:
//! the service requires an operator certificate first.

use std::sync::Arc;

use herald_proto::error::Error as InvalidInput;
use herald_proto::v1::ApiKeyInfo;
use herald_store::{ApiKeyRecord, Store};
use rand::Rng;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// What every key starts with (so a leaked key is recognisable in a secret scanner).
pub const KEY_PREFIX: &str = "hk_";

/// Most bytes of a tenant id a key may name.
pub const MAX_TENANT_LEN: usize = 64;

/// Most bytes of a key's label.
pub const MAX_LABEL_LEN: usize = 200;

#[derive(Debug, Error)]
pub enum KeyError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("no API key has id {0:?}")]
    NotFound(String),
    #[error("store: {0}")]
    Store(#[from] herald_store::Error),
}

/// A key just made: its record (as stored) and the key itself (shown once).
pub struct CreatedKey {
    pub record: ApiKeyRecord,
    pub api_key: String,
}

/// SHA-256 of a key, hex: what the store holds and nodes look up.
pub fn key_digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill(buffer.as_mut_slice());
    hex::encode(buffer)
}

/// Checks a tenant id a key is to name.
pub fn check_tenant(field: &str, tenant: &str) -> Result<(), InvalidInput> {
    if tenant.is_empty() {
        return Err(InvalidInput::invalid(field, "is required"));
    }
    if tenant.len() > MAX_TENANT_LEN {
        return Err(InvalidInput::invalid(
            field,
            format!("is {} bytes, the limit is {MAX_TENANT_LEN}", tenant.len()),
        ));
    }
    if !tenant
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(InvalidInput::invalid(
            field,
            "may hold only letters, digits, `-`, `_` and `.`",
        ));
    }
    Ok(())
}

fn check_label(label: &str) -> Result<(), InvalidInput> {
    if label.len() > MAX_LABEL_LEN {
        return Err(InvalidInput::invalid(
            "label",
            format!("is {} bytes, the limit is {MAX_LABEL_LEN}", label.len()),
        ));
    }
    if label.chars().any(char::is_control) {
        return Err(InvalidInput::invalid(
            "label",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// The keys of the cluster's store.
pub struct ApiKeys {
    store: Arc<dyn Store>,
}

impl ApiKeys {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Makes a key for `tenant` and stores its record (the digest, never the key).
    pub async fn create(
        &self,
        tenant: &str,
        label: &str,
        now_unix_ms: i64,
    ) -> Result<CreatedKey, KeyError> {
        check_tenant("tenant", tenant)?;
        check_label(label)?;
        // 64 bits of id (public), 256 bits of secret.
        let id = random_hex(8);
        let api_key = format!("{KEY_PREFIX}{id}_{}", random_hex(32));
        let record = ApiKeyRecord {
            id,
            tenant: tenant.to_owned(),
            key_sha256_hex: key_digest(&api_key),
            label: label.to_owned(),
            created_unix_ms: now_unix_ms,
            revoked_unix_ms: 0,
        };
        self.store.put_api_key(&record).await?;
        Ok(CreatedKey { record, api_key })
    }

    /// The records of `tenant`'s keys (every tenant's when empty), by id.
    pub async fn list(
        &self,
        tenant: &str,
        include_revoked: bool,
    ) -> Result<Vec<ApiKeyRecord>, KeyError> {
        if !tenant.is_empty() {
            check_tenant("tenant", tenant)?;
        }
        let mut records = self.store.api_keys().await?;
        records.retain(|r| {
            (tenant.is_empty() || r.tenant == tenant) && (include_revoked || !r.is_revoked())
        });
        Ok(records)
    }

    /// Marks key `id` revoked (a revoked key stays revoked, with its first revocation time).
    pub async fn revoke(&self, id: &str, now_unix_ms: i64) -> Result<ApiKeyRecord, KeyError> {
        if id.is_empty() {
            return Err(InvalidInput::invalid("id", "is required").into());
        }
        if id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(InvalidInput::invalid(
                "id",
                "is not a key id (hex, as `herald keys list` shows)",
            )
            .into());
        }
        let mut record = self
            .store
            .api_keys()
            .await?
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| KeyError::NotFound(id.to_owned()))?;
        if !record.is_revoked() {
            record.revoked_unix_ms = now_unix_ms.max(1);
            self.store.put_api_key(&record).await?;
        }
        Ok(record)
    }
}

/// A record as the API shows it (without its digest).
pub fn info(record: &ApiKeyRecord) -> ApiKeyInfo {
    ApiKeyInfo {
        id: record.id.clone(),
        tenant: record.tenant.clone(),
        label: record.label.clone(),
        created_unix_ms: record.created_unix_ms,
        revoked_unix_ms: record.revoked_unix_ms,
    }
}

impl From<KeyError> for tonic::Status {
    fn from(error: KeyError) -> Self {
        match error {
            KeyError::Invalid(invalid) => invalid.into(),
            KeyError::NotFound(_) => tonic::Status::not_found(error.to_string()),
            KeyError::Store(_) => tonic::Status::unavailable(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_store::embedded::EmbeddedStore;

    fn keys() -> ApiKeys {
        ApiKeys::new(Arc::new(EmbeddedStore::open(None).expect("store")))
    }

    #[tokio::test]
    async fn a_key_is_stored_only_as_its_digest_and_revokes_once() {
        let keys = keys();
        let created = keys.create("acme", "crm sync", 10).await.expect("create");
        assert!(created.api_key.starts_with("hk_"));
        assert_eq!(created.record.key_sha256_hex, key_digest(&created.api_key));
        let stored = keys.store.api_keys().await.expect("records");
        assert!(
            stored
                .iter()
                .all(|r| !format!("{r:?}").contains(&created.api_key)),
            "the key itself is not stored"
        );
        assert_eq!(
            keys.store
                .tenant_for_api_key(&key_digest(&created.api_key))
                .await
                .expect("lookup")
                .map(|t| t.0),
            Some("acme".to_owned())
        );

        let revoked = keys.revoke(&created.record.id, 20).await.expect("revoke");
        assert_eq!(revoked.revoked_unix_ms, 20);
        let again = keys.revoke(&created.record.id, 30).await.expect("again");
        assert_eq!(again.revoked_unix_ms, 20, "the first revocation time stays");
        assert_eq!(
            keys.store
                .tenant_for_api_key(&key_digest(&created.api_key))
                .await
                .expect("lookup"),
            None
        );
        assert!(keys.list("acme", false).await.expect("list").is_empty());
        assert_eq!(keys.list("", true).await.expect("list").len(), 1);
    }

    #[tokio::test]
    async fn bad_input_names_its_field_and_changes_nothing() {
        let keys = keys();
        for (tenant, label, field) in [
            ("", "", "tenant"),
            ("ac me", "", "tenant"),
            (&*"a".repeat(65), "", "tenant"),
            ("acme", "line\nbreak", "label"),
            ("acme", &*"x".repeat(201), "label"),
        ] {
            let error = keys.create(tenant, label, 1).await.err().expect("refused");
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(field), "{}", status.message());
        }
        for id in ["", "zz", "0123"] {
            let status = tonic::Status::from(keys.revoke(id, 1).await.expect_err("refused"));
            let expected = if id == "0123" {
                tonic::Code::NotFound
            } else {
                tonic::Code::InvalidArgument
            };
            assert_eq!(status.code(), expected, "{id:?}: {}", status.message());
        }
        assert!(keys.store.api_keys().await.expect("records").is_empty());
    }
}
