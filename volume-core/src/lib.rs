//! Stowage's volume domain: where volumes live (pools), how they are made (directory
//! subvolumes and loop image files), how a node mounts them, and the metadata that ties
//! the two together across restarts.
//!
//! Every side effect on the host goes through the traits in [`os`], so the logic here is
//! tested with recording fakes; the real implementations need root.

pub mod chunkdiff;
pub mod error;
pub mod guard;
pub mod ids;
pub mod manager;
pub mod mode;
pub mod model;
pub mod mutable;
pub mod os;
pub mod params;
pub mod pool;
#[cfg(test)]
mod pool_layout_tests;
pub mod replication;
pub mod size;
pub mod store;
mod sys;

pub use error::{Error, Result};
pub use guard::{InFlight, OperationGuard};
pub use manager::{CreateRequest, NodeIdentity, VolumeManager};
pub use model::{
    ContentSource, FsType, GroupSnapshotRecord, ReplicaAck, ReplicaRecord, ReplicaSnapshot,
    ReplicationSnapshot, ReplicationSpec, SnapshotRecord, VolumeKind, VolumeRecord, VolumeState,
};
pub use params::VolumeParams;
pub use pool::{Pool, PoolBackend, PoolConfig};
