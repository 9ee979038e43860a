//! API key → tenant. The tenant always comes from the key, never from a request body.
//!
//! Keys are held only as SHA-256 digests in memory; the plaintext key is never logged.
//! Must never accept a request without a known key.

use std::collections::HashMap;
use std::sync::Arc;

use herald_proto::TenantId;
use herald_proto::error::Error;
use parking_lot::RwLock;
use sha2::{Digest, Sha256};

use crate::config::TenantConfig;
use crate::store::Store;

/// Per-tenant settings the data plane needs at run time.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub id: TenantId,
    pub marketing_daily_cap: u32,
}

#[derive(Clone)]
pub struct Authenticator {
    by_digest: Arc<RwLock<HashMap<String, Arc<Tenant>>>>,
    store: Option<Arc<dyn Store>>,
}

pub fn key_digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl Authenticator {
    pub fn new(tenants: &[TenantConfig], store: Option<Arc<dyn Store>>) -> Self {
        let mut by_digest = HashMap::new();
        for tenant in tenants {
            let settings = Arc::new(Tenant {
                id: TenantId(tenant.id.clone()),
                marketing_daily_cap: tenant.marketing_daily_cap,
            });
            for key in &tenant.api_keys {
                by_digest.insert(key_digest(key), settings.clone());
            }
        }
        Self {
            by_digest: Arc::new(RwLock::new(by_digest)),
            store,
        }
    }

    /// Resolves the `authorization: Bearer <key>` metadata of a request.
    pub async fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Arc<Tenant>, Error> {
        let header = metadata
            .get("authorization")
            .ok_or_else(|| Error::Unauthenticated("missing authorization metadata".into()))?;
        let header = header
            .to_str()
            .map_err(|_| Error::Unauthenticated("authorization metadata is not text".into()))?;
        let key = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                Error::Unauthenticated("authorization must be `Bearer <api key>`".into())
            })?;
        let digest = key_digest(key);
        if let Some(tenant) = self.by_digest.read().get(&digest) {
            return Ok(tenant.clone());
        }
        if let Some(store) = &self.store
            && let Some(tenant_id) = store
                .tenant_for_api_key(&digest)
                .await
                .map_err(|e| Error::Unavailable(format!("api key lookup: {e}")))?
        {
            let tenant = Arc::new(Tenant {
                id: tenant_id,
                marketing_daily_cap: 5,
            });
            self.by_digest.write().insert(digest, tenant.clone());
            return Ok(tenant);
        }
        Err(Error::Unauthenticated("unknown api key".into()))
    }

    /// Every tenant this node knows (from its config, and store keys seen so far).
    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        let mut tenants: Vec<Arc<Tenant>> = Vec::new();
        for tenant in self.by_digest.read().values() {
            if !tenants.iter().any(|t| t.id == tenant.id) {
                tenants.push(tenant.clone());
            }
        }
        tenants
    }

    /// Settings of a tenant known by id (forwarded requests carry the id, already authenticated).
    pub fn tenant(&self, id: &str) -> Arc<Tenant> {
        self.by_digest
            .read()
            .values()
            .find(|t| t.id.0 == id)
            .cloned()
            .unwrap_or_else(|| {
                Arc::new(Tenant {
                    id: TenantId(id.to_string()),
                    marketing_daily_cap: 5,
                })
            })
    }
}
