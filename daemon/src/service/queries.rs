//! Reading volumes and snapshots: a volume with its health (read on the blocking pool:
//! the health of a staged volume parses mountinfo and sysfs), pages of volumes and
//! snapshots, the capacity for a StorageClass, and whether the pool is usable.

use volume_core::manager::snapshot::SnapshotFilter;
use volume_core::model::{Layout, VolumeHealth};
use volume_core::{SnapshotRecord, VolumeManager, VolumeParams, VolumeRecord};

use super::{Caller, Result, Volumes};
use crate::driver::Driver;

/// A volume and its health, as its caller is shown them.
#[derive(Debug, Clone)]
pub struct VolumeView {
    /// The volume.
    pub volume: VolumeRecord,
    /// For an orchestrator, its storage and its replicas; for a person, also how it is
    /// mounted on this node (a problem there comes first).
    pub health: VolumeHealth,
    /// How its data is laid out.
    pub layout: Layout,
}

/// The view of `rec` for `caller` (blocking: metadata and mount table reads).
fn view_of(driver: &Driver, m: &VolumeManager, caller: Caller, rec: VolumeRecord) -> VolumeView {
    let node = match caller {
        Caller::Person => m.node_health(&rec, None).ok().filter(|h| h.abnormal),
        Caller::Orchestrator => None,
    };
    let health =
        node.unwrap_or_else(|| crate::replication::health(driver, &rec, m.controller_health(&rec)));
    VolumeView {
        layout: m.layout_of(&rec),
        volume: rec,
        health,
    }
}

impl Volumes {
    /// What `caller` is shown of `rec`.
    pub async fn view(&self, caller: Caller, rec: VolumeRecord) -> Result<VolumeView> {
        let driver = std::sync::Arc::clone(&self.driver);
        self.run(caller, move |m| {
            Ok(view_of(&driver, m, caller, rec.clone()))
        })
        .await
    }

    /// The volume `volume` names, with its health.
    pub async fn show(&self, caller: Caller, volume: &str) -> Result<VolumeView> {
        let (driver, volume) = (std::sync::Arc::clone(&self.driver), volume.to_string());
        self.run(caller, move |m| {
            let rec = caller.find(m, &volume)?;
            Ok(view_of(&driver, m, caller, rec))
        })
        .await
    }

    /// Up to `limit` volumes after id `after`, in id order, with their health.
    pub async fn list(
        &self,
        caller: Caller,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<VolumeView>> {
        let driver = std::sync::Arc::clone(&self.driver);
        self.run(caller, move |m| {
            Ok(m.list(after.as_deref(), limit)?
                .into_iter()
                .map(|rec| view_of(&driver, m, caller, rec))
                .collect())
        })
        .await
    }

    /// Up to `limit` snapshots matching `filter` after id `after`.
    pub async fn snapshots(
        &self,
        caller: Caller,
        filter: SnapshotFilter,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<SnapshotRecord>> {
        self.run(caller, move |m| {
            m.list_snapshots(&filter, after.as_deref(), limit)
        })
        .await
    }

    /// The snapshot `snapshot` names (an id; for a person, also a name).
    pub async fn get_snapshot(&self, caller: Caller, snapshot: &str) -> Result<SnapshotRecord> {
        let snapshot = snapshot.to_string();
        self.run(caller, move |m| caller.find_snapshot(m, &snapshot))
            .await
    }

    /// The bytes a volume of `params` could have on this node.
    pub async fn capacity(&self, params: VolumeParams) -> Result<u64> {
        self.run(Caller::Orchestrator, move |m| {
            m.capacity_for(&params).map(|u| u.available)
        })
        .await
    }

    /// Why the pool cannot take volume work now, if it cannot.
    pub async fn pool_problem(&self) -> Result<Option<String>> {
        self.run(Caller::Orchestrator, |m| Ok(m.pool_problem()))
            .await
    }
}
