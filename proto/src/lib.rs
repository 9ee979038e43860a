//! # herald-proto: the wire contract
//!
//! Owns the `.proto` files (package `herald.v1`), the generated tonic/prost code, the id
//! newtypes shared by nodes and control plane, the partition hash (both sides must agree on
//! it, so it lives here and nowhere else), and the mapping of service errors to gRPC codes.
//!
//! It must never depend on node or control internals: everything here is contract.
//!
//! ## Layout
//! - [`v1`]: generated messages, clients and servers.
//! - [`ids`]: `PartitionId`, `Epoch`, `NodeId`, `MessageId`, `TenantId`.
//! - [`partition`]: the stable partition hash.
//! - [`error`]: `error::Error` and its `tonic::Status` mapping.
//! - [`codec`]: the gRPC codec of every service (invalid UTF-8 is `INVALID_ARGUMENT`).
//! - [`clock`]: the injected wall clock ([`clock::SystemClock`], [`clock::ManualClock`]).
//! - [`status`]: what a message status means (terminal or not).

pub mod clock;
pub mod codec;
pub mod error;
pub mod ids;
pub mod partition;
pub mod status;

/// Generated code for `herald.v1`.
#[allow(clippy::all, clippy::unwrap_used, missing_docs)]
pub mod v1 {
    tonic::include_proto!("herald.v1");
}

/// Encoded `FileDescriptorSet` of every herald proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("herald_descriptor");

pub use ids::{Epoch, MessageId, NodeId, PartitionId, TenantId};
