//! Volumes mounted for a container engine (the Docker/Podman plugin): by name, under
//! the plugin's mount directory, reference-counted by the engine's caller id.

use std::path::PathBuf;

use volume_core::{VolumeManager, VolumeRecord};

use super::{Caller, Result, Volumes};

/// A volume and where it is mounted for containers, if it is.
#[derive(Debug, Clone)]
pub struct EngineVolume {
    /// The volume.
    pub volume: VolumeRecord,
    /// Its mount under the plugin's directory, if mounted.
    pub mountpoint: Option<PathBuf>,
}

fn engine_volume(m: &VolumeManager, rec: VolumeRecord, mounts: &std::path::Path) -> EngineVolume {
    EngineVolume {
        mountpoint: m.plugin_path(&rec, mounts),
        volume: rec,
    }
}

impl Volumes {
    /// Mounts the volume called `name` under `mounts` for engine caller `caller`;
    /// returns where.
    pub async fn engine_mount(&self, name: &str, caller: &str, mounts: PathBuf) -> Result<PathBuf> {
        let (name, caller) = (name.to_string(), caller.to_string());
        self.run(Caller::Person, move |m| {
            let rec = m.get_by_name(&name)?;
            m.plugin_mount(&rec.id, &caller, &mounts)
        })
        .await
    }

    /// Drops engine caller `caller`'s mount of the volume called `name`; the last one
    /// unmounts it.
    pub async fn engine_unmount(&self, name: &str, caller: &str, mounts: PathBuf) -> Result<()> {
        let (name, caller) = (name.to_string(), caller.to_string());
        self.run(Caller::Person, move |m| {
            let rec = m.get_by_name(&name)?;
            m.plugin_unmount(&rec.id, &caller, &mounts)
        })
        .await
    }

    /// The volume called `name`, as the engine sees it.
    pub async fn engine_volume(&self, name: &str, mounts: PathBuf) -> Result<EngineVolume> {
        let name = name.to_string();
        self.run(Caller::Person, move |m| {
            let rec = m.get_by_name(&name)?;
            Ok(engine_volume(m, rec, &mounts))
        })
        .await
    }

    /// Every volume an engine may use (inline ephemeral volumes belong to their pod,
    /// not to a container engine).
    pub async fn engine_volumes(&self, mounts: PathBuf) -> Result<Vec<EngineVolume>> {
        self.run(Caller::Person, move |m| {
            Ok(m.list(None, usize::MAX)?
                .into_iter()
                .filter(|rec| !rec.ephemeral)
                .map(|rec| engine_volume(m, rec, &mounts))
                .collect())
        })
        .await
    }
}
