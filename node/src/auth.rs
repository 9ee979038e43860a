//! # auth: API key → tenant, and the tenant's admission
//!
//! The tenant always comes from the key, never from a request body. Keys come from the
//! config (`[[tenants]] api_keys`) or from the store (`herald keys create`; by SHA-256 digest).
//! A store key is trusted for `api_key_recheck_ms` after each look-up, then looked up again:
//! a revoked key is refused on every node within that time, without a restart. Once
//! authenticated, the call passes the tenant's admission ([`crate::admission`]).
//!
//! Keys are held only as SHA-256 digests in memory; the plaintext key is never logged.
//! Must never accept a request without a known key, nor a store key not re-checked in time.

use std::collections::HashMap;
use std::sync::Arc;

use herald_proto::TenantId;
use herald_proto::error::Error;
use parking_lot::RwLock;
use sha2::{Digest, Sha256};

use crate::admission::Admission;
use crate::config::TenantConfig;
use herald_proto::clock::SharedClock;
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
    /// Admission on the public API (`None` = no limit).
    pub admission: Option<crate::admission::Limit>,
    /// How long an ended message and its log stay in the store.
    pub retention: std::time::Duration,
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
            admission: crate::admission::Limit::from_config(
                config.admission_per_s,
                config.admission_burst,
            ),
            // Checked at start-up (`TenantConfig::validate`: 0 < days <= 3650).
            retention: std::time::Duration::from_secs_f64(
                config.retention_days.clamp(1e-6, 3650.0) * 86_400.0,
            ),
        }
    }
}

/// Most unknown keys remembered (see `Authenticator::unknown`).
const UNKNOWN_KEYS_MAX: usize = 10_000;

/// A store key this node looked up: its tenant, and when the store last confirmed it.
struct Remembered {
    tenant: Arc<Tenant>,
    checked_unix_ms: i64,
}

#[derive(Clone)]
pub struct Authenticator {
    /// Keys of the config, by digest (they change only with the config).
    configured: Arc<HashMap<String, Arc<Tenant>>>,
    /// Tenants of the config, by id (their settings apply to their store keys too).
    settings: Arc<HashMap<String, Arc<Tenant>>>,
    /// Store keys seen, by digest.
    remembered: Arc<RwLock<HashMap<String, Remembered>>>,
    /// Keys the store did not know, by digest, with when it said so: asked again only after
    /// `recheck_ms`, so a flood of made-up keys costs the store one read per key, not per call.
    unknown: Arc<parking_lot::Mutex<HashMap<String, i64>>>,
    store: Option<Arc<dyn Store>>,
    clock: SharedClock,
    recheck_ms: i64,
    admission: Arc<Admission>,
}

pub fn key_digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl Authenticator {
    /// Keys of `tenants`, and of the store when `store` is given (re-checked every
    /// `recheck_ms`); decisions read `clock`.
    pub fn new(
        tenants: &[TenantConfig],
        store: Option<Arc<dyn Store>>,
        clock: SharedClock,
        recheck_ms: u64,
    ) -> Self {
        let mut configured = HashMap::new();
        let mut settings = HashMap::new();
        for tenant in tenants {
            let tenant_settings = Arc::new(Tenant::from_config(tenant));
            for key in &tenant.api_keys {
                configured.insert(key_digest(key), tenant_settings.clone());
            }
            settings.insert(tenant.id.clone(), tenant_settings);
        }
        Self {
            configured: Arc::new(configured),
            settings: Arc::new(settings),
            remembered: Arc::new(RwLock::new(HashMap::new())),
            unknown: Arc::new(parking_lot::Mutex::new(HashMap::new())),
            store,
            admission: Arc::new(Admission::new(clock.clone())),
            clock,
            recheck_ms: i64::try_from(recheck_ms).unwrap_or(i64::MAX),
        }
    }

    /// Resolves the `authorization: Bearer <key>` metadata of a request and admits one unit
    /// of the tenant's work.
    pub async fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Arc<Tenant>, Error> {
        self.authenticate_units(metadata, 1).await
    }

    /// [`Authenticator::authenticate`] for a call worth `units` (a batch: one per item).
    pub async fn authenticate_units(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        units: usize,
    ) -> Result<Arc<Tenant>, Error> {
        let tenant = self.tenant_of_key(metadata).await?;
        let units = u32::try_from(units.max(1)).unwrap_or(u32::MAX);
        self.admission
            .admit(&tenant.id.0, tenant.admission, units)?;
        Ok(tenant)
    }

    async fn tenant_of_key(
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
        if let Some(tenant) = self.configured.get(&digest) {
            return Ok(tenant.clone());
        }
        let Some(store) = &self.store else {
            return Err(Error::Unauthenticated("unknown api key".into()));
        };
        let now_ms = self.clock.now_unix_ms();
        if let Some(seen) = self.remembered.read().get(&digest)
            && now_ms - seen.checked_unix_ms < self.recheck_ms
        {
            return Ok(seen.tenant.clone());
        }
        if self
            .unknown
            .lock()
            .get(&digest)
            .is_some_and(|at| now_ms - at < self.recheck_ms)
        {
            return Err(Error::Unauthenticated("unknown api key".into()));
        }
        let found = store
            .tenant_for_api_key(&digest)
            .await
            .map_err(|e| Error::Unavailable(format!("api key lookup: {e}")))?;
        let Some(tenant_id) = found else {
            // Unknown, or revoked since it was last checked.
            self.remembered.write().remove(&digest);
            let mut unknown = self.unknown.lock();
            if unknown.len() >= UNKNOWN_KEYS_MAX {
                // Bounded: a flood of distinct made-up keys starts over rather than grow.
                unknown.clear();
            }
            unknown.insert(digest, now_ms);
            return Err(Error::Unauthenticated("unknown api key".into()));
        };
        self.unknown.lock().remove(&digest);
        let tenant = self.tenant(&tenant_id.0);
        self.remembered.write().insert(
            digest,
            Remembered {
                tenant: tenant.clone(),
                checked_unix_ms: now_ms,
            },
        );
        Ok(tenant)
    }

    /// Every tenant this node knows (from its config, and store keys seen so far).
    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        let mut tenants: Vec<Arc<Tenant>> = self.settings.values().cloned().collect();
        for seen in self.remembered.read().values() {
            if !tenants.iter().any(|t| t.id == seen.tenant.id) {
                tenants.push(seen.tenant.clone());
            }
        }
        tenants
    }

    /// Settings of a tenant known by id (forwarded requests carry the id, already authenticated).
    pub fn tenant(&self, id: &str) -> Arc<Tenant> {
        if let Some(tenant) = self.settings.get(id) {
            return tenant.clone();
        }
        self.remembered
            .read()
            .values()
            .find(|seen| seen.tenant.id.0 == id)
            .map(|seen| seen.tenant.clone())
            .unwrap_or_else(|| Arc::new(Tenant::defaults(TenantId(id.to_string()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::clock::ManualClock;
    use herald_store::ApiKeyRecord;
    use herald_store::embedded::EmbeddedStore;
    use std::time::Duration;

    fn bearer(key: &str) -> tonic::metadata::MetadataMap {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert(
            "authorization",
            format!("Bearer {key}").parse().expect("ascii"),
        );
        metadata
    }

    #[tokio::test]
    async fn a_revoked_store_key_is_refused_after_the_recheck_time() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(None).expect("store"));
        let clock = ManualClock::new(1_000_000);
        let mut acme = TenantConfig::new("acme", vec!["config-key".into()]);
        acme.marketing_daily_cap = 2;
        let auth = Authenticator::new(&[acme], Some(store.clone()), clock.clone(), 2000);
        let mut record = ApiKeyRecord {
            id: "01".into(),
            tenant: "acme".into(),
            key_sha256_hex: key_digest("hk_01_secret"),
            label: String::new(),
            created_unix_ms: 1,
            revoked_unix_ms: 0,
        };
        store.put_api_key(&record).await.expect("put");
        let tenant = auth
            .authenticate(&bearer("hk_01_secret"))
            .await
            .expect("store key");
        assert_eq!(
            tenant.marketing_daily_cap, 2,
            "a store key of a configured tenant gets its settings"
        );

        record.revoked_unix_ms = 2;
        store.put_api_key(&record).await.expect("revoke");
        clock.advance(Duration::from_millis(1999));
        auth.authenticate(&bearer("hk_01_secret"))
            .await
            .expect("still trusted inside the recheck time");
        clock.advance(Duration::from_millis(1));
        let refused = auth
            .authenticate(&bearer("hk_01_secret"))
            .await
            .expect_err("revoked");
        assert!(matches!(refused, Error::Unauthenticated(_)), "{refused}");
        auth.authenticate(&bearer("config-key"))
            .await
            .expect("config keys are untouched");

        // A key the store did not know is not asked for again within the recheck time: a key
        // created meanwhile works once that time is up.
        auth.authenticate(&bearer("hk_02_secret"))
            .await
            .expect_err("unknown");
        store
            .put_api_key(&ApiKeyRecord {
                id: "02".into(),
                tenant: "acme".into(),
                key_sha256_hex: key_digest("hk_02_secret"),
                label: String::new(),
                created_unix_ms: 3,
                revoked_unix_ms: 0,
            })
            .await
            .expect("create");
        clock.advance(Duration::from_millis(1999));
        auth.authenticate(&bearer("hk_02_secret"))
            .await
            .expect_err("still remembered as unknown");
        clock.advance(Duration::from_millis(1));
        auth.authenticate(&bearer("hk_02_secret"))
            .await
            .expect("known after the recheck time");
    }

    #[tokio::test]
    async fn admission_counts_batch_items_per_tenant() {
        let clock = ManualClock::new(1_000_000);
        let mut flood = TenantConfig::new("flood", vec!["flood-key".into()]);
        flood.admission_per_s = 100;
        let calm = TenantConfig::new("calm", vec!["calm-key".into()]);
        let auth = Authenticator::new(&[flood, calm], None, clock, 2000);
        auth.authenticate_units(&bearer("flood-key"), 100)
            .await
            .expect("one second's worth");
        let refused = auth
            .authenticate(&bearer("flood-key"))
            .await
            .expect_err("over");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        auth.authenticate_units(&bearer("calm-key"), 10_000)
            .await
            .expect("the other tenant has no limit");
    }
}
