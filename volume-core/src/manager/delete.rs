//! Deleting a volume.

use super::*;

impl VolumeManager {
    /// Deletes volume `id`; a volume that does not exist is already deleted.
    pub fn delete(&self, id: &str) -> Result<()> {
        if !is_valid_id(id) {
            return Ok(());
        }
        self.release_vanished_before(id)?;
        let _guard = self.claim(id)?;
        let Some(mut rec) = self.store.get::<VolumeRecord>(id)? else {
            return Ok(());
        };
        if let Some(m) = rec.container_mounts.first() {
            // Attached into a container: name what to detach, not our staging path.
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is attached into process {} at {}; detach it first \
                 (vol detach {} --pid {} --target {})",
                m.pid,
                m.target.display(),
                rec.name,
                m.pid,
                m.target.display()
            )));
        }
        if rec.in_use() {
            let place = rec
                .staging
                .as_ref()
                .map(|s| s.path.display().to_string())
                .or_else(|| {
                    rec.publications
                        .first()
                        .map(|p| p.target.display().to_string())
                })
                .unwrap_or_default();
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is still staged or published at {place}"
            )));
        }
        rec.state = VolumeState::Deleting;
        self.store.put(&rec)?;
        self.forget(&rec)?;
        tracing::info!(volume.id = %id, volume.name = %rec.name, "deleted volume");
        Ok(())
    }
}
