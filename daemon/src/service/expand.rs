//! Growing a volume.

use volume_core::VolumeRecord;

use super::{Caller, Result, Volumes};

/// A volume after expansion.
#[derive(Debug, Clone)]
pub struct Expanded {
    /// The volume as it now is.
    pub volume: VolumeRecord,
    /// Its size in bytes.
    pub capacity: u64,
    /// Its filesystem still has to grow on the node that stages it.
    pub node_expansion_required: bool,
}

impl Volumes {
    /// Grows the volume `volume` names to at least `required` bytes (at most `limit`,
    /// 0: no limit). For a person, a filesystem mounted on this node grows too.
    pub async fn expand(
        &self,
        caller: Caller,
        volume: &str,
        required: u64,
        limit: u64,
    ) -> Result<Expanded> {
        let volume = volume.to_string();
        self.run(caller, move |m| {
            let id = caller.find(m, &volume)?.id;
            let (capacity, mut node_expansion_required) = m.expand(&id, required, limit)?;
            let rec = m.get(&id)?;
            if caller == Caller::Person
                && let Some(stage) = &rec.staging
                && rec.filesystem_bytes() < rec.capacity
            {
                m.expand_on_node(&id, &stage.path)?;
                node_expansion_required = false;
            }
            Ok(Expanded {
                volume: m.get(&id)?,
                capacity,
                node_expansion_required,
            })
        })
        .await
    }
}
