//! # keys: every key Herald stores, in one place
//!
//! Owns two kinds of names:
//!
//! - **Value keys** ([`value`]): the names callers give to expiring values and counters
//!   ([`crate::WriteOp::PutValue`], [`crate::WriteOp::IncrCounter`], [`crate::Store::get_value`]).
//!   They are the same on every backend; the data plane builds them only through these
//!   functions, never by hand.
//! - **The Redis layout** ([`RedisKeys`] and the table below): where the Redis backend puts each
//!   record. The Lua scripts (`scripts/*.lua`) build the keys they derive from the prefix
//!   (`:lease:`, `:a:`, `:fences`) with the same spelling.
//!
//! Must never parse keys back (except active-set members, split at their last `\x1f`, since
//! message ids are ULIDs), and never put a contact point or a message body into a key name (the
//! phone index names a keyed hash of the number, never the number).
//!
//! ## The Redis layout
//! `{p}` is the key prefix (`RedisOptions::key_prefix` of the Redis backend, default `herald`);
//! values are prost-encoded unless said otherwise.
//!
//! | key | type | value |
//! |---|---|---|
//! | `{p}:r:{tenant}:{recipient_id}` | string | `Recipient` |
//! | `{p}:e:{tenant}:{message_id}` | list, PX once ended | the `StoredMessage` first, then its `Event`s in append order (one RPUSH stores a message and its `accepted` event); the event with sequence number `s` is at index `s`. Its terminal append's retention (the tenant's `retention_days`) becomes its expiry, in bulk with the retirement (`PEXPIRE … NX`) |
//! | `{p}:i:{tenant}:{idempotency_key}` | string, PX ttl | `message_id` `\x1f` payload hash (16 hex digits) |
//! | `{p}:a:{partition}` | set | active (non-terminal) messages: `tenant` `\x1f` `message_id`; the partition is the one of the op's fence. A message joins in its accept's script and leaves in bulk after its terminal append (one pipelined `SREM` per partition every 200 ms), so a terminal message can be listed for a moment |
//! | `{p}:lease:{partition}` | string, PX ttl | node id of the lease holder |
//! | `{p}:fences` | hash | partition → fencing epoch (decimal); only lease acquisition raises it |
//! | `{p}:c:{counter}` | string, PX ttl | counter (INCRBY); the ttl is set when it is created; `{counter}` is a [`value`] key |
//! | `{p}:v:{value}` | string, PX ttl | an expiring value; `{value}` is a [`value`] key |
//! | `{p}:singleton:{name}` | string, PX ttl | holder of a singleton lease (control leader) |
//! | `{p}:blob:{name}` | string | opaque bytes |
//! | `{p}:apikeys` | hash | SHA-256 hex of an API key → tenant id |
//! | `{p}:h:{name}` | hash | [`crate::WriteOp::AddFields`]/[`crate::WriteOp::SetFields`] and tallies; `{name}` is a [`campaign`] key |
//! | `{p}:l:{name}` | list | [`crate::WriteOp::PushRecord`] records in order (a credit ledger) |
//! | `{p}:z:{name}` | sorted set, all scores 0 | [`crate::WriteOp::AddMembers`]; the recipient index of a partition ([`value::partition_recipients`]), campaign audiences and schedules |
//!
//! Keys are only ever built, so tenant ids, recipient ids and idempotency keys may contain `:`.

use herald_proto::{PartitionId, TenantId};

/// The names of expiring values and counters, as callers of the store give them.
pub mod value {
    use herald_proto::TenantId;

    /// When the person last wrote to the tenant (ms since the Unix epoch, as text): opens
    /// messenger-style session windows.
    pub fn last_inbound(tenant: &TenantId, recipient_id: &str) -> String {
        format!("inbound:{}:{recipient_id}", tenant.0)
    }

    /// The tenant's recipient with a phone number (inbound SMS name only the number), by a
    /// keyed hash of the number (`digest`, from the node's contact index): never the number.
    pub fn phone_index(tenant: &TenantId, digest: &str) -> String {
        format!("phone:{}:{digest}", tenant.0)
    }

    /// What proves an erased person's opt-out on one contact point, by a keyed hash of it
    /// (`digest`, from the node's contact index): never the contact point.
    pub fn opt_out_proof(tenant: &TenantId, digest: &str) -> String {
        format!("optout:{}:{digest}", tenant.0)
    }

    /// The attempt a provider's message id belongs to (receipts name only that id).
    pub fn receipt_index(account: &str, provider_message_id: &str) -> String {
        format!("rcpt:{account}:{provider_message_id}")
    }

    /// Messages started for a recipient on one UTC day (`day` = days since the Unix epoch).
    pub fn daily_messages(tenant: &TenantId, recipient_id: &str, day: i64) -> String {
        format!("freq:{}:{recipient_id}:{day}", tenant.0)
    }

    /// The recipient's recent marketing sends (for sliding-window caps).
    pub fn marketing_sends(tenant: &TenantId, recipient_id: &str) -> String {
        format!("sends:{}:{recipient_id}", tenant.0)
    }

    /// When the person last engaged (read, clicked, converted, replied; ms since the Unix
    /// epoch, as text): segments filter on it.
    pub fn last_engaged(tenant: &TenantId, recipient_id: &str) -> String {
        format!("engaged:{}:{recipient_id}", tenant.0)
    }

    /// Sorted set: the ids of a tenant's recipients in one partition (kept by
    /// `PutRecipient` and `EraseRecipient`); segments are evaluated over it.
    pub fn partition_recipients(tenant: &TenantId, partition: u32) -> String {
        format!("precip:{}:{partition}", tenant.0)
    }
}

/// The names of a campaign's records (hashes, sorted sets, lists), and of a tenant's credits.
/// A campaign id is a ULID, so it never contains `:`.
pub mod campaign {
    use herald_proto::TenantId;

    /// Hash: the campaign's definition (`def`), run state (`run`), lifecycle (`life`), its
    /// funnel counters and its credit fields. One hash, so one read is a consistent snapshot
    /// and one write keeps the funnel identity.
    pub fn record(tenant: &TenantId, campaign: &str) -> String {
        format!("cmp:{}:{campaign}", tenant.0)
    }

    /// Hash: per-slice progress (`size:<p>`, `done:<p>`, `cursor:<p>`, `planned:<p>`).
    pub fn slices(tenant: &TenantId, campaign: &str) -> String {
        format!("cmps:{}:{campaign}", tenant.0)
    }

    /// Sorted set: the uploaded recipient ids of one partition.
    pub fn audience(tenant: &TenantId, campaign: &str, partition: u32) -> String {
        format!("cmpa:{}:{campaign}:{partition}", tenant.0)
    }

    /// Sorted set: one partition's planned members, each `due (16 hex digits) id`, so byte
    /// order is due order.
    pub fn schedule(tenant: &TenantId, campaign: &str, partition: u32) -> String {
        format!("cmpq:{}:{campaign}:{partition}", tenant.0)
    }

    /// Hash: recipient id → what the campaign did for that person (one partition).
    pub fn outcomes(tenant: &TenantId, campaign: &str, partition: u32) -> String {
        format!("cmpo:{}:{campaign}:{partition}", tenant.0)
    }

    /// Sorted set: a tenant's campaigns, `created (13 digits ms) ":" id`.
    pub fn index(tenant: &TenantId) -> String {
        format!("cmpidx:{}", tenant.0)
    }

    /// Sorted set: the campaigns the control plane looks after (started and not settled:
    /// running, paused, or ended with credits still held or reserved), `tenant \x1f id`;
    /// a settled campaign leaves it.
    pub const LIVE: &str = "cmplive";

    /// Hash: a tenant's credit balance (`available`, in micro-units).
    pub fn credits(tenant: &TenantId) -> String {
        format!("credits:{}", tenant.0)
    }

    /// List: a tenant's credit ledger, oldest first.
    pub fn ledger(tenant: &TenantId) -> String {
        format!("ledger:{}", tenant.0)
    }
}

/// Keys of journeys (hashes, written with [`crate::Fence::NONE`]: definitions are not
/// partition state).
pub mod journey {
    use herald_proto::TenantId;

    /// Hash: a tenant's journeys. `d:<id>` holds the encoded `JourneyView` (definition, state,
    /// times); `s:<id>` its state name alone, which lifecycle changes check in the same atomic
    /// step as they write.
    pub fn definitions(tenant: &TenantId) -> String {
        format!("jny:{}", tenant.0)
    }

    /// The field of a journey's encoded view in [`definitions`].
    pub fn view_field(journey: &str) -> String {
        format!("d:{journey}")
    }

    /// The field of a journey's state name in [`definitions`].
    pub fn state_field(journey: &str) -> String {
        format!("s:{journey}")
    }

    /// Hash: one person's state in one journey (partition state of the person's partition):
    /// the encoded `JourneyPerson` and the token its transitions check.
    pub fn person(tenant: &TenantId, journey: &str, recipient_id: &str) -> String {
        format!("jst:{}:{journey}:{recipient_id}", tenant.0)
    }

    /// Sorted set: the journey waits of a partition's people, ordered by due time (members
    /// built by the node's `journey::person::WaitMember`).
    pub fn waits(partition: herald_proto::PartitionId) -> String {
        format!("jq:{}", partition.0)
    }

    /// Sorted set: the tenants that have journeys (what the segment-entry runner looks
    /// through).
    pub fn tenants() -> String {
        "jny-tenants".to_owned()
    }

    /// Hash: per partition (field: the partition number), the checkpoint of a segment-entered
    /// journey's current round over that partition.
    pub fn entry_rounds(tenant: &TenantId, journey: &str) -> String {
        format!("jseg:{}:{journey}", tenant.0)
    }

    /// Hash: a journey's funnel counters (tallied with the writes that move people).
    pub fn funnel(tenant: &TenantId, journey: &str) -> String {
        format!("jfn:{}:{journey}", tenant.0)
    }
}

/// Segments the Redis backend writes straight into its argument buffer (no `String` per op).
pub(crate) const COUNTER_SEGMENT: &[u8] = b":c:";
pub(crate) const VALUE_SEGMENT: &[u8] = b":v:";
pub(crate) const IDEMPOTENCY_SEGMENT: &[u8] = b":i:";
pub(crate) const EVENTS_SEGMENT: &[u8] = b":e:";
pub(crate) const HASH_SEGMENT: &[u8] = b":h:";
pub(crate) const LIST_SEGMENT: &[u8] = b":l:";
pub(crate) const SET_SEGMENT: &[u8] = b":z:";

/// Builds the Redis backend's keys (see the table in the module docs).
pub(crate) struct RedisKeys {
    pub(crate) prefix: String,
}

impl RedisKeys {
    pub(crate) fn recipient(&self, tenant: &TenantId, id: &str) -> String {
        format!("{}:r:{}:{}", self.prefix, tenant, id)
    }
    pub(crate) fn recipients(&self, tenant: &TenantId, ids: &[String]) -> Vec<String> {
        ids.iter().map(|id| self.recipient(tenant, id)).collect()
    }
    pub(crate) fn events(&self, tenant: &str, id: &str) -> String {
        format!("{}:e:{}:{}", self.prefix, tenant, id)
    }
    pub(crate) fn active(&self, partition: PartitionId) -> String {
        format!("{}:a:{}", self.prefix, partition.0)
    }
    pub(crate) fn fences(&self) -> String {
        format!("{}:fences", self.prefix)
    }
    pub(crate) fn singleton(&self, name: &str) -> String {
        format!("{}:singleton:{}", self.prefix, name)
    }
    pub(crate) fn blob(&self, name: &str) -> String {
        format!("{}:blob:{}", self.prefix, name)
    }
    /// digest → tenant, for the keys not revoked (the lookup on every request).
    pub(crate) fn api_keys(&self) -> String {
        format!("{}:apikeys", self.prefix)
    }
    /// id → [`crate::ApiKeyRecord`], revoked ones included.
    pub(crate) fn api_key_records(&self) -> String {
        format!("{}:apikey_records", self.prefix)
    }
    pub(crate) fn value(&self, key: &str) -> String {
        format!("{}:v:{key}", self.prefix)
    }
    /// The hash named `name` ([`crate::WriteOp::AddFields`], [`crate::WriteOp::SetFields`]).
    pub(crate) fn hash(&self, name: &str) -> String {
        format!("{}:h:{name}", self.prefix)
    }
    /// The list named `name` ([`crate::WriteOp::PushRecord`]).
    pub(crate) fn list(&self, name: &str) -> String {
        format!("{}:l:{name}", self.prefix)
    }
    /// The sorted set named `name` ([`crate::WriteOp::AddMembers`], recipient indexes).
    pub(crate) fn set(&self, name: &str) -> String {
        format!("{}:z:{name}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_keys_keep_their_stored_spelling() {
        // These names are in stores already: changing one loses data.
        let acme = TenantId("acme".into());
        assert_eq!(value::last_inbound(&acme, "r1"), "inbound:acme:r1");
        assert_eq!(value::receipt_index("fcm", "m-1"), "rcpt:fcm:m-1");
        assert_eq!(value::daily_messages(&acme, "r1", 3), "freq:acme:r1:3");
        assert_eq!(value::marketing_sends(&acme, "r1"), "sends:acme:r1");
        let keys = RedisKeys { prefix: "h".into() };
        assert_eq!(keys.events("acme", "m"), "h:e:acme:m");
        assert_eq!(keys.value("rcpt:x:y"), "h:v:rcpt:x:y");
        assert_eq!(keys.active(PartitionId(7)), "h:a:7");
        assert_eq!(value::partition_recipients(&acme, 7), "precip:acme:7");
        assert_eq!(keys.hash("credits:acme"), "h:h:credits:acme");
        assert_eq!(keys.list("ledger:acme"), "h:l:ledger:acme");
        assert_eq!(keys.set("precip:acme:7"), "h:z:precip:acme:7");
    }
}
