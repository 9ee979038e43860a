//! # keys: the names of ChannelActors and of the breakers they hold
//!
//! Owns the key formats and the placement rule: a ChannelActor's key is a provider account
//! (`smpp-main`), a tenant's quota on an account (`smpp-main@acme`), or a campaign
//! (`campaign:<tenant>:<campaign id>`); it lives on the owner of
//! `partition_of("__channels", key)`. Breakers are named `campaign:<tenant>:<id>` (held by the
//! campaign's actor) and `sender:<account>` (held by the account's actor) in API answers,
//! metrics and events. Must never change a format: other nodes of a running cluster compute the
//! same placement.

use herald_proto::PartitionId;
use herald_proto::partition::partition_of;

/// The reserved tenant under which ChannelActors are placed on the partition table.
pub const CHANNELS_TENANT: &str = "__channels";

/// The partition that places the ChannelActor of `key` (a public fn: tests find the owner of
/// an account's schedule with it).
pub fn partition(key: &str, partition_count: u32) -> PartitionId {
    partition_of(CHANNELS_TENANT, key, partition_count)
}

/// What every campaign key starts with.
pub const CAMPAIGN_PREFIX: &str = "campaign:";

/// What every sender breaker key starts with.
pub const SENDER_PREFIX: &str = "sender:";

/// The breaker (and ChannelActor) key of a campaign.
pub fn campaign_key(tenant: &str, campaign_id: &str) -> String {
    format!("{CAMPAIGN_PREFIX}{tenant}:{campaign_id}")
}

/// The breaker key of a sender (a provider account).
pub fn sender_key(account: &str) -> String {
    format!("{SENDER_PREFIX}{account}")
}

/// The ChannelActor key of a tenant's own quota on an account (`[rate_limits]
/// "smpp-main@acme" = 10`).
pub fn tenant_key(account: &str, tenant: &str) -> String {
    format!("{account}@{tenant}")
}

/// The ChannelActor that holds the breaker `breaker_key`: the account of a sender, the
/// campaign itself.
pub fn actor_key(breaker_key: &str) -> &str {
    breaker_key
        .strip_prefix(SENDER_PREFIX)
        .unwrap_or(breaker_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breakers_live_with_their_account_or_campaign() {
        assert_eq!(actor_key(&sender_key("smpp-main")), "smpp-main");
        let campaign = campaign_key("acme", "spring");
        assert_eq!(campaign, "campaign:acme:spring");
        assert_eq!(actor_key(&campaign), campaign);
        assert_eq!(tenant_key("smpp-main", "acme"), "smpp-main@acme");
        // The placement is the documented hash under the reserved tenant.
        assert_eq!(
            partition("smpp-main", 4096),
            partition_of("__channels", "smpp-main", 4096)
        );
    }
}
