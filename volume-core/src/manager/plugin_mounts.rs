//! Reference-counted mounts for the Docker/Podman volume plugin. A plugin Mount stages
//! the volume (no ControllerPublish: the plugin protocol has none) at
//! `<root>/<volume id>` and records the caller's id in the volume's record; Unmount
//! removes the caller and unstages once no caller is left. The callers are persisted
//! with the volume, and the staging with them, so a daemon restart keeps both the
//! mounts (reconcile restores them) and the count.
//!
//! Docker sends one caller id per container; Podman counts mounts itself and sends one
//! fixed id, so for Podman the list holds at most one entry. A repeated Mount by the
//! same caller is a no-op, as is an Unmount by a caller that holds nothing.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::guard::OperationGuard;
use crate::manager::node::StageOptions;
use crate::manager::{VolumeManager, is_valid_id};
use crate::model::{VolumeRecord, VolumeState};

/// Longest caller id accepted (Docker's container ids are 64 hex digits).
pub const MAX_CALLER_LEN: usize = 256;

/// Where the plugin mounts volume `id` under `root`; only an id of ours is joined to a
/// path, so the result cannot leave `root`.
pub fn plugin_mountpoint(root: &Path, id: &str) -> Result<PathBuf> {
    if !is_valid_id(id) {
        return Err(Error::VolumeNotFound(id.to_string()));
    }
    Ok(root.join(id))
}

fn check_caller(caller: &str) -> Result<()> {
    if caller.len() > MAX_CALLER_LEN || caller.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "caller id is longer than {MAX_CALLER_LEN} bytes or holds control characters"
        )));
    }
    Ok(())
}

impl VolumeManager {
    /// The ready volume named `name`, or [`Error::VolumeNotFound`].
    pub fn get_by_name(&self, name: &str) -> Result<VolumeRecord> {
        match self.store.get_by_name::<VolumeRecord>(name)? {
            Some(rec) if rec.state == VolumeState::Ready => Ok(rec),
            _ => Err(Error::VolumeNotFound(name.to_string())),
        }
    }

    /// Where `rec` is mounted for the plugin under `root`, if it is.
    pub fn plugin_path(&self, rec: &VolumeRecord, root: &Path) -> Option<PathBuf> {
        let path = plugin_mountpoint(root, &rec.id).ok()?;
        rec.staging
            .as_ref()
            .is_some_and(|s| s.path == path && !s.block)
            .then_some(path)
    }

    /// Mounts volume `id` for `caller` at `<root>/<id>` and returns that path. The first
    /// caller stages the volume; later ones (and repeats) only join the list.
    pub fn plugin_mount(&self, id: &str, caller: &str, root: &Path) -> Result<PathBuf> {
        check_caller(caller)?;
        let path = plugin_mountpoint(root, id)?;
        require_absolute_root(root)?;
        let _plugin = self.claim_plugin(id)?;
        // Intent first: a crash after this leaves a caller without a mount, which the
        // next Mount repairs and the last Unmount clears.
        let added = self.update_plugin_callers(id, |callers| {
            if callers.iter().any(|c| c == caller) {
                false
            } else {
                callers.push(caller.to_string());
                true
            }
        })?;
        let opts = StageOptions {
            require_attachment: false,
            ..Default::default()
        };
        if let Err(e) = self.stage_from(id, &path, &opts, crate::manager::node::Origin::Daemon) {
            if added {
                match self.update_plugin_callers(id, |callers| callers.retain(|c| c != caller)) {
                    Ok(()) => {}
                    Err(undo) => {
                        tracing::warn!(volume.id = %id, error = %undo, "forget caller of failed plugin mount")
                    }
                }
                // Empty and unmounted unless another caller still holds it.
                let _ = std::fs::remove_dir(&path);
            }
            return Err(e);
        }
        tracing::debug!(volume.id = %id, caller, path = %path.display(), "plugin mount");
        Ok(path)
    }

    /// Releases `caller`'s mount of volume `id`; unstages the volume from `<root>/<id>`
    /// and removes that directory when no caller is left.
    pub fn plugin_unmount(&self, id: &str, caller: &str, root: &Path) -> Result<()> {
        check_caller(caller)?;
        let path = plugin_mountpoint(root, id)?;
        require_absolute_root(root)?;
        let _plugin = self.claim_plugin(id)?;
        self.update_plugin_callers(id, |callers| callers.retain(|c| c != caller))?;
        let rec = self.get(id)?;
        if !rec.plugin_callers.is_empty() {
            tracing::debug!(volume.id = %id, caller, remaining = rec.plugin_callers.len(), "plugin unmount (still in use)");
            return Ok(());
        }
        if rec.staging.as_ref().is_some_and(|s| s.path == path) {
            self.unstage(id, &path)?;
        }
        match std::fs::remove_dir(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other.ctx(|| format!("remove {}", path.display()))?,
        }
        tracing::debug!(volume.id = %id, caller, "plugin unmount");
        Ok(())
    }

    /// One plugin Mount/Unmount per volume at a time; the stage and unstage inside
    /// claim the volume id themselves.
    fn claim_plugin(&self, id: &str) -> Result<OperationGuard> {
        self.inflight().try_claim([format!("plugin:{id}")])
    }

    /// Changes the caller list of volume `id` under its claim, persisting a change.
    fn update_plugin_callers<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Vec<String>) -> T,
    ) -> Result<T> {
        let _guard = self.claim(id)?;
        let mut rec = self.get(id)?;
        let before = rec.plugin_callers.clone();
        let out = f(&mut rec.plugin_callers);
        if rec.plugin_callers != before {
            self.store.put(&rec)?;
        }
        Ok(out)
    }
}

fn require_absolute_root(root: &Path) -> Result<()> {
    if root.is_absolute() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "plugin mount directory {} is not absolute",
            root.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::node::StageOptions;
    use crate::manager::tests::{fixture, req};

    #[test]
    fn first_caller_stages_last_caller_unstages() {
        let f = fixture(true);
        let root = f.dir.path().join("plugin");
        let rec = f.mgr.create(&req("web", "loop", 64 << 20)).unwrap();
        assert_eq!(f.mgr.get_by_name("web").unwrap().id, rec.id);

        let p1 = f.mgr.plugin_mount(&rec.id, "ctr-a", &root).unwrap();
        assert_eq!(p1, root.join(&rec.id));
        // Docker retries and a second container: one stage, one loop device, one mount.
        assert_eq!(f.mgr.plugin_mount(&rec.id, "ctr-a", &root).unwrap(), p1);
        assert_eq!(f.mgr.plugin_mount(&rec.id, "ctr-b", &root).unwrap(), p1);
        let calls = f.fake.calls();
        assert_eq!(calls.iter().filter(|c| c.starts_with("attach")).count(), 1);
        assert_eq!(calls.iter().filter(|c| c.starts_with("mount ")).count(), 1);
        let now = f.mgr.get(&rec.id).unwrap();
        assert_eq!(now.plugin_callers, vec!["ctr-a", "ctr-b"]);
        assert_eq!(f.mgr.plugin_path(&now, &root), Some(p1.clone()));

        f.mgr.plugin_unmount(&rec.id, "ctr-a", &root).unwrap();
        assert_eq!(f.fake.mounted(), vec![p1.clone()], "ctr-b still holds it");
        f.mgr.plugin_unmount(&rec.id, "ctr-b", &root).unwrap();
        assert!(f.fake.mounted().is_empty() && f.fake.attached().is_empty());
        let after = f.mgr.get(&rec.id).unwrap();
        assert!(after.staging.is_none() && after.plugin_callers.is_empty());
        assert_eq!(f.mgr.plugin_path(&after, &root), None);
        assert!(!p1.exists(), "mount point removed");
        // Unmount by a caller that holds nothing is a no-op.
        f.mgr.plugin_unmount(&rec.id, "ctr-a", &root).unwrap();
        f.mgr.delete(&rec.id).unwrap();
    }

    #[test]
    fn callers_survive_a_restart_and_the_mount_is_restored() {
        let f = fixture(true);
        let root = f.dir.path().join("plugin");
        let rec = f.mgr.create(&req("db", "dir", 8 << 20)).unwrap();
        let p = f.mgr.plugin_mount(&rec.id, "ctr-a", &root).unwrap();
        // The mount is lost (as after a reboot); reconcile puts it back.
        {
            use crate::os::Mounter;
            f.fake.unmount(&p).unwrap();
        }
        let report = f.mgr.reconcile().unwrap();
        assert_eq!(report.restored_mounts, vec![p.clone()]);
        assert_eq!(f.mgr.get(&rec.id).unwrap().plugin_callers, vec!["ctr-a"]);
        f.mgr.plugin_unmount(&rec.id, "ctr-a", &root).unwrap();
        assert!(f.fake.mounted().is_empty());
    }

    #[test]
    fn failed_mount_forgets_the_caller_and_csi_staging_conflicts() {
        let f = fixture(true);
        let root = f.dir.path().join("plugin");
        let rec = f.mgr.create(&req("x", "loop", 64 << 20)).unwrap();
        f.fake.fail_next("mount", libc::EIO);
        assert!(f.mgr.plugin_mount(&rec.id, "ctr-a", &root).is_err());
        let after = f.mgr.get(&rec.id).unwrap();
        assert!(after.plugin_callers.is_empty() && after.staging.is_none());
        assert!(f.fake.attached().is_empty(), "loop device detached again");

        let csi = f.dir.path().join("csi-staging");
        f.mgr
            .stage(&rec.id, &csi, &StageOptions::default())
            .unwrap();
        let err = f.mgr.plugin_mount(&rec.id, "ctr-a", &root).unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
        assert!(f.mgr.get(&rec.id).unwrap().plugin_callers.is_empty());
        // The last plugin unmount leaves a CSI staging alone.
        f.mgr.plugin_unmount(&rec.id, "ctr-a", &root).unwrap();
        assert_eq!(f.fake.mounted(), vec![csi]);
    }

    #[test]
    fn names_ids_and_callers_are_checked() {
        let f = fixture(true);
        let root = f.dir.path().join("plugin");
        assert!(matches!(
            f.mgr.get_by_name("missing"),
            Err(Error::VolumeNotFound(_))
        ));
        for bad in ["../../etc", "v-../x", ""] {
            assert!(matches!(
                f.mgr.plugin_mount(bad, "c", &root),
                Err(Error::VolumeNotFound(_))
            ));
        }
        let rec = f.mgr.create(&req("y", "dir", 1 << 20)).unwrap();
        assert!(matches!(
            f.mgr.plugin_mount(&rec.id, &"c".repeat(300), &root),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            f.mgr.plugin_mount(&rec.id, "c", Path::new("relative")),
            Err(Error::InvalidArgument(_))
        ));
        let _held = f.mgr.claim(&rec.id).unwrap();
        assert!(matches!(
            f.mgr.plugin_mount(&rec.id, "c", &root),
            Err(Error::Busy(_))
        ));
    }
}
