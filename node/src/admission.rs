//! # admission: per-tenant admission on the public API
//!
//! Owns one token bucket per tenant on this node (`admission_per_s`, `admission_burst`): a
//! call spends one unit, a batch one per item. A call the bucket cannot pay for is refused
//! `RESOURCE_EXHAUSTED` before it reads or writes anything, so one tenant's flood costs the
//! others nothing but the refusal. Buckets run on the node's clock (tests drive it).
//!
//! Must never refuse a tenant without a limit, and never charge a refused call (a client that
//! backs off gets its full bucket back).

use std::collections::HashMap;

use herald_proto::clock::SharedClock;
use herald_proto::error::Error;
use parking_lot::Mutex;

/// A tenant's limit: `per_s` units a second, up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    pub per_s: u32,
    pub burst: u32,
}

impl Limit {
    /// From a tenant's config (`burst` 0 = one second's worth); `None` = no limit.
    pub fn from_config(per_s: u32, burst: u32) -> Option<Limit> {
        (per_s > 0).then_some(Limit {
            per_s,
            burst: if burst == 0 { per_s } else { burst },
        })
    }
}

/// A token bucket: `tokens` at `at_ms`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

impl Bucket {
    fn full(limit: Limit, now_ms: i64) -> Self {
        Self {
            tokens: f64::from(limit.burst),
            at_ms: now_ms,
        }
    }

    /// Refills to `now_ms`, then takes `units` if there are that many. On refusal, how long
    /// until there would be.
    fn take(&mut self, limit: Limit, units: u32, now_ms: i64) -> Result<(), u64> {
        let elapsed_ms = (now_ms - self.at_ms).max(0) as f64;
        self.tokens = (self.tokens + elapsed_ms * f64::from(limit.per_s) / 1000.0)
            .min(f64::from(limit.burst));
        self.at_ms = now_ms.max(self.at_ms);
        let units = f64::from(units);
        if self.tokens >= units {
            self.tokens -= units;
            return Ok(());
        }
        let missing = units - self.tokens;
        Err((missing * 1000.0 / f64::from(limit.per_s)).ceil() as u64)
    }
}

/// Every tenant's bucket on this node.
pub struct Admission {
    clock: SharedClock,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Admission {
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Admits `units` of `tenant`'s work under `limit`, or refuses them.
    pub fn admit(&self, tenant: &str, limit: Option<Limit>, units: u32) -> Result<(), Error> {
        let Some(limit) = limit else {
            return Ok(());
        };
        let now_ms = self.clock.now_unix_ms();
        let mut buckets = self.buckets.lock();
        let bucket = buckets
            .entry(tenant.to_owned())
            .or_insert_with(|| Bucket::full(limit, now_ms));
        bucket.take(limit, units, now_ms).map_err(|wait_ms| {
            let detail = if units > limit.burst {
                format!(
                    "{units} units at once exceed the tenant's burst of {} (split the batch)",
                    limit.burst
                )
            } else {
                format!("retry in {wait_ms} ms")
            };
            Error::ResourceExhausted(format!(
                "tenant {tenant} is over its admission limit of {}/s on this node: {detail}",
                limit.per_s
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::clock::ManualClock;

    #[test]
    fn a_flood_is_refused_for_its_tenant_only_and_refills() {
        let clock = ManualClock::new(1_000_000);
        let shared: SharedClock = clock.clone();
        let admission = Admission::new(shared);
        let limit = Limit::from_config(10, 0);
        for _ in 0..10 {
            admission
                .admit("flood", limit, 1)
                .expect("within the burst");
        }
        let refused = admission.admit("flood", limit, 1).expect_err("over");
        assert!(matches!(refused, Error::ResourceExhausted(_)), "{refused}");
        assert!(refused.to_string().contains("retry in 100 ms"), "{refused}");
        // Another tenant, same limit: untouched.
        admission.admit("calm", limit, 5).expect("other tenant");
        // No limit: never refused.
        for _ in 0..1000 {
            admission.admit("free", None, 100).expect("unlimited");
        }
        // A refusal costs nothing; time refills.
        clock.advance(std::time::Duration::from_millis(100));
        admission.admit("flood", limit, 1).expect("refilled one");
        admission.admit("flood", limit, 1).expect_err("only one");
        clock.advance(std::time::Duration::from_secs(60));
        admission
            .admit("flood", limit, 10)
            .expect("full again, never above the burst");
        admission
            .admit("flood", limit, 1)
            .expect_err("burst is the cap");
        let batch = admission
            .admit("calm", limit, 11)
            .expect_err("bigger than the burst");
        assert!(batch.to_string().contains("split the batch"), "{batch}");
    }
}
