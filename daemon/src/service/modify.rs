//! Changing a volume's mutable parameters (compression, replicas, replication
//! interval): copies a raised `replicas` adds are placed on peers first, and copies a
//! lowered one drops are removed from their nodes after.

use std::collections::BTreeMap;

use volume_core::VolumeRecord;

use super::{Caller, Error, Result, Volumes};

impl Volumes {
    /// Applies `params` to the volume `volume` names and returns it as it now is.
    pub async fn modify(
        &self,
        caller: Caller,
        volume: &str,
        params: BTreeMap<String, String>,
    ) -> Result<VolumeRecord> {
        let (volume, wanted) = (volume.to_string(), params.clone());
        let (id, need, have) = self
            .run(caller, move |m| {
                let id = caller.find(m, &volume)?.id;
                let (need, have) = m.replica_nodes_wanted(&id, &wanted)?;
                Ok((id, need, have))
            })
            .await?;
        let new_nodes = crate::replication::place(&self.driver, need, &have)
            .await
            .map_err(Error::Peer)?;
        let rec = self
            .run(caller, move |m| m.modify_placed(&id, &params, &new_nodes))
            .await?;
        let now: Vec<String> = rec
            .replication
            .iter()
            .flat_map(|s| s.nodes.clone())
            .collect();
        let gone: Vec<String> = have.into_iter().filter(|n| !now.contains(n)).collect();
        crate::replication::drop_copies(&self.driver, &rec.id, rec.generation.max(1), gone);
        Ok(rec)
    }
}
