//! Deleting a volume: the local copy first, then each replica node is asked to drop
//! its copy.

use super::{Caller, Result, Volumes};

impl Volumes {
    /// Deletes the volume `volume` names. Deleting one that is gone is no error for
    /// an orchestrator (CSI's DeleteVolume is idempotent); a person is told it is not
    /// there.
    pub async fn delete(&self, caller: Caller, volume: &str) -> Result<()> {
        let id = match caller {
            Caller::Orchestrator => volume.to_string(),
            Caller::Person => self.get(caller, volume).await?.id,
        };
        let id2 = id.clone();
        let rec = self
            .run(caller, move |m| {
                let rec = m.get(&id2).ok();
                m.delete(&id2).map(|()| rec)
            })
            .await?;
        if let Some(rec) = rec
            && let Some(spec) = &rec.replication
        {
            crate::replication::drop_copies(
                &self.driver,
                &id,
                rec.generation.max(1),
                spec.nodes.clone(),
            );
        }
        Ok(())
    }
}
