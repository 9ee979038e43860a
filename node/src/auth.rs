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
use herald_store::Store;

/// Per-tenant settings the data plane needs at run time.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub id: TenantId,
    pub marketing_daily_cap: u32,
    /// Sliding-window caps on marketing messages per recipient (the daily cap included).
    pub marketing_caps: Vec<crate::policy::caps::CapRule>,
    /// `None` = no quiet hours for this tenant.
    pub quiet_hours: Option<crate::policy::quiet_hours::Window>,
    pub time_zone: chrono_tz::Tz,
    pub quiet_hours_spread_ms: i64,
}

impl Tenant {
    /// A tenant known only by id (store-registered keys, forwarded requests of a tenant this
    /// node's config lacks): every setting at its default.
    pub fn defaults(id: TenantId) -> Self {
        Self::from_config(&TenantConfig::new(id.0, Vec::new()))
    }

    pub fn from_config(config: &TenantConfig) -> Self {
        Self {
            id: TenantId(config.id.clone()),
            marketing_daily_cap: config.marketing_daily_cap,
            marketing_caps: {
                use crate::policy::caps::{CapRule, CapScope, DAY};
                let daily = (config.marketing_daily_cap > 0).then_some(CapRule {
                    max: config.marketing_daily_cap,
                    window: DAY,
                    scope: CapScope::TenantMarketing,
                });
                daily
                    .into_iter()
                    .chain(config.marketing_caps.iter().map(|c| CapRule {
                        max: c.max,
                        window: std::time::Duration::from_secs(c.window_s.max(1)),
                        scope: CapScope::TenantMarketing,
                    }))
                    .collect()
            },
            quiet_hours: config
                .quiet_hours_enabled
                .then(|| config.quiet_hours.clone()),
            // Checked at start-up (`TenantConfig::validate`).
            time_zone: config.default_time_zone.parse().unwrap_or(chrono_tz::UTC),
            quiet_hours_spread_ms: i64::try_from(config.quiet_hours_spread_s.saturating_mul(1000))
                .unwrap_or(i64::MAX),
        }
    }
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
            let settings = Arc::new(Tenant::from_config(tenant));
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
            let tenant = Arc::new(Tenant::defaults(tenant_id));
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
            .unwrap_or_else(|| Arc::new(Tenant::defaults(TenantId(id.to_string()))))
    }
}
