//! Deleting a volume: the local copy first, then each replica node is asked to drop
//! its copy.

use super::{Caller, Result, Volumes};

impl Volumes {
    /// Deletes the volume `volume` names. Deleting one that is gone is no error for
    /// an orchestrator (CSI's DeleteVolume is idempotent); a person is told it is not
    /// there.
    pub async fn delete(&self, caller: Caller, volume: &str) -> Result<()> {
        let volume = volume.to_string();
        let rec = self
            .run(caller, move |m| {
                let rec = match caller {
                    Caller::Orchestrator => m.get(&volume).ok(),
                    Caller::Person => Some(m.resolve(&volume)?),
                };
                let id = rec.as_ref().map_or(volume.as_str(), |r| r.id.as_str());
                m.delete(id).map(|()| rec)
            })
            .await?;
        if let Some(rec) = rec
            && let Some(spec) = &rec.replication
        {
            crate::replication::drop_copies(
                &self.driver,
                &rec.id,
                rec.generation.max(1),
                spec.nodes.clone(),
            );
        }
        Ok(())
    }
}
