//! Taking and deleting snapshots of a volume.

use volume_core::SnapshotRecord;

use super::{Caller, Result, Volumes};

impl Volumes {
    /// Takes snapshot `name` of the volume `volume` names (taking it again answers the
    /// same snapshot).
    pub async fn snapshot(
        &self,
        caller: Caller,
        volume: &str,
        name: &str,
    ) -> Result<SnapshotRecord> {
        let (volume, name) = (volume.to_string(), name.to_string());
        self.run(caller, move |m| {
            let id = match caller {
                // An orchestrator's source id goes to the manager as given: it says
                // whether it is unknown.
                Caller::Orchestrator => volume.clone(),
                Caller::Person => m.resolve(&volume)?.id,
            };
            m.create_snapshot(&name, &id)
        })
        .await
    }

    /// Deletes the snapshot `snapshot` names. Deleting one that is gone is no error
    /// for an orchestrator; a person is told it is not there.
    pub async fn delete_snapshot(&self, caller: Caller, snapshot: &str) -> Result<()> {
        let snapshot = snapshot.to_string();
        self.run(caller, move |m| {
            let id = match caller {
                Caller::Orchestrator => snapshot.clone(),
                Caller::Person => m.resolve_snapshot(&snapshot)?.id,
            };
            m.delete_snapshot(&id)
        })
        .await
    }
}
