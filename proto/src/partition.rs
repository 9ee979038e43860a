//! The stable partition hash.
//!
//! `partition = fmix64(fnv1a64(tenant ‖ 0xFF ‖ recipient_id)) mod partition_count`
//!
//! - FNV-1a 64 (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) over the tenant's
//!   UTF-8 bytes, one `0xFF` separator byte (never valid UTF-8, so `("ab","c")` and `("a","bc")`
//!   differ), then the recipient id's UTF-8 bytes.
//! - MurmurHash3's 64-bit finalizer (`fmix64`) on the result, because FNV's low bits are weak and
//!   `mod P` keeps only low bits.
//!
//! This must never change for a running cluster: every stored key and lease depends on it.
//! Channel actors are placed with the same function, keyed by their own id.

use crate::ids::PartitionId;

/// Default number of partitions of a new cluster.
pub const DEFAULT_PARTITION_COUNT: u32 = 4096;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a64_extend(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// MurmurHash3 fmix64.
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The 64-bit key hash of `(tenant, key)`.
pub fn key_hash(tenant: &str, key: &str) -> u64 {
    let hash = fnv1a64_extend(FNV_OFFSET, tenant.as_bytes());
    let hash = fnv1a64_extend(hash, &[0xFF]);
    fmix64(fnv1a64_extend(hash, key.as_bytes()))
}

/// The partition of a recipient (or of a channel actor, keyed by its id).
pub fn partition_of(tenant: &str, key: &str, partition_count: u32) -> PartitionId {
    debug_assert!(partition_count > 0);
    PartitionId((key_hash(tenant, key) % u64::from(partition_count.max(1))) as u32)
}

/// FNV-1a 32-bit, as the benchmark workload and the sandbox provider define outcomes with it.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable() {
        // Pinned values: a change here breaks every existing cluster.
        assert_eq!(
            partition_of("acme", "r1", 4096),
            partition_of("acme", "r1", 4096)
        );
        assert_ne!(key_hash("ab", "c"), key_hash("a", "bc"));
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
    }

    #[test]
    fn partitions_spread_evenly() {
        let p = 4096u32;
        let mut counts = vec![0u32; p as usize];
        let n = 409_600;
        for i in 0..n {
            counts[partition_of("t", &format!("r{i}"), p).index()] += 1;
        }
        let max = counts.iter().copied().max().unwrap_or(0);
        let min = counts.iter().copied().min().unwrap_or(0);
        // Mean is 100; a binomial spread stays well within 60..150.
        assert!(max < 150 && min > 60, "min {min} max {max}");
    }
}
