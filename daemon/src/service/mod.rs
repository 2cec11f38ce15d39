//! The service layer: the one place the daemon's volume use cases run. The CSI,
//! admin and plugin handlers translate their requests onto [`Volumes`] and its answers
//! back; the work on the volume manager crosses to the blocking pool here and nowhere
//! else in the use cases, and failures are this layer's [`Error`], which each front
//! door maps to its own protocol (gRPC codes in [`crate::status`]).
//!
//! One file per use case: [`create`], [`remove`], [`expand`], [`modify`],
//! [`snapshots`], [`groups`], [`attachments`], [`container_mounts`], reading ([`queries`]), those on this
//! node ([`node`]), the layer store's ([`layers`]), the replicas held here
//! ([`replicas`]) and what peers ask ([`peers`]).

pub mod attachments;
pub mod container_mounts;
pub mod create;
pub mod error;
pub mod expand;
pub mod groups;
pub mod layers;
pub mod modify;
pub mod node;
pub mod peers;
pub mod queries;
pub mod remove;
pub mod replicas;
pub mod snapshots;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;

use volume_core::{SnapshotRecord, VolumeManager, VolumeRecord};

pub use create::NewVolume;
pub use error::{Error, Result};
pub use expand::Expanded;
pub use queries::VolumeView;

use crate::driver::Driver;

/// Who asks, which decides how a volume is named and how long a busy one is waited
/// for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A container orchestrator (CSI): volumes and snapshots by id; a busy volume is
    /// answered at once (ABORTED), since the orchestrator retries.
    Orchestrator,
    /// A person or a runtime that does not retry (the `vol` CLI, the Docker/Podman
    /// plugin): volumes by name or id; a busy volume is waited for up to
    /// [`crate::grpc::rpc::BUSY_WAIT`], and an expansion also grows the filesystem of a
    /// volume staged on this node (there is no NodeExpandVolume to follow).
    Person,
}

impl Caller {
    fn find(self, manager: &VolumeManager, volume: &str) -> volume_core::Result<VolumeRecord> {
        match self {
            Caller::Orchestrator => manager.get(volume),
            Caller::Person => manager.resolve(volume),
        }
    }

    fn find_snapshot(
        self,
        manager: &VolumeManager,
        snapshot: &str,
    ) -> volume_core::Result<SnapshotRecord> {
        match self {
            Caller::Orchestrator => manager.get_snapshot(snapshot),
            Caller::Person => manager.resolve_snapshot(snapshot),
        }
    }
}

/// The volume use cases of one daemon.
#[derive(Debug, Clone)]
pub struct Volumes {
    driver: Arc<Driver>,
}

impl Volumes {
    /// The use cases over `driver`'s manager, layer store and peers.
    pub fn new(driver: Arc<Driver>) -> Self {
        Volumes { driver }
    }

    /// The driver the use cases work on.
    pub fn driver(&self) -> &Arc<Driver> {
        &self.driver
    }

    /// Runs `work` on the volume manager on the blocking pool; for a
    /// [`Caller::Person`], again while the volume is busy (a busy claim is refused
    /// before anything is done, so running it again is safe).
    pub(in crate::service) async fn run<T, F>(&self, caller: Caller, mut work: F) -> Result<T>
    where
        F: FnMut(&VolumeManager) -> volume_core::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let manager = Arc::clone(&self.driver.manager);
        blocking(move || {
            Ok(match caller {
                Caller::Orchestrator => work(&manager),
                Caller::Person => crate::grpc::rpc::retry_busy(|| work(&manager)),
            }?)
        })
        .await
    }

    /// The volume `volume` names (an id; for a person, also a name).
    pub async fn get(&self, caller: Caller, volume: &str) -> Result<VolumeRecord> {
        let volume = volume.to_string();
        self.run(caller, move |m| caller.find(m, &volume)).await
    }
}

/// Runs `work` on tokio's blocking pool: the service's one crossing.
async fn blocking<T, F>(work: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(Error::Worker)?
}
