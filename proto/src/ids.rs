//! Id newtypes. Plain strings and integers cross the wire; inside the process they are typed so a
//! partition can never be passed where an epoch is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A partition number in `0..partition_count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionId(pub u32);

/// A partition table version. Strictly increasing; the fencing token of every partition write.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

/// A node's stable name (from its config), unique in the cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub String);

/// A tenant, resolved from the API key; never taken from a request body.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TenantId(pub String);

/// A message id: a ULID, unique across the cluster, sortable by creation time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId(pub String);

macro_rules! display_inner {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    )*};
}
display_inner!(PartitionId, Epoch, NodeId, TenantId, MessageId);

impl NodeId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TenantId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl MessageId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartitionId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}
