//! Group snapshots: one crash-consistent snapshot of several volumes.

use volume_core::SnapshotRecord;
use volume_core::model::GroupSnapshotRecord;

use super::{Caller, Result, Volumes};

/// A group snapshot and its members.
pub type Group = (GroupSnapshotRecord, Vec<SnapshotRecord>);

impl Volumes {
    /// Takes group snapshot `name` of the volumes `sources` (ids).
    pub async fn snapshot_group(&self, name: &str, sources: Vec<String>) -> Result<Group> {
        let name = name.to_string();
        self.run(Caller::Orchestrator, move |m| {
            m.create_group_snapshot(&name, &sources)
        })
        .await
    }

    /// The group snapshot `id` and its members.
    pub async fn get_group(&self, id: &str) -> Result<Group> {
        let id = id.to_string();
        self.run(Caller::Orchestrator, move |m| m.get_group_snapshot(&id))
            .await
    }

    /// Deletes group snapshot `id`, whose members must be `snapshot_ids` when given.
    pub async fn delete_group(&self, id: &str, snapshot_ids: Vec<String>) -> Result<()> {
        let id = id.to_string();
        self.run(Caller::Orchestrator, move |m| {
            m.delete_group_snapshot(&id, &snapshot_ids)
        })
        .await
    }
}
