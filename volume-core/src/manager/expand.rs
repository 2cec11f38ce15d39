//! Volume expansion, online. The controller side grows the storage (a directory
//! volume's qgroup limit; a loop volume's image file, and the loop device's capacity
//! when attached); the node side grows a loop volume's filesystem while it is mounted.
//! A filesystem that could not be grown yet (volume not staged) is grown at its next
//! stage, since the record keeps the size it spans.

use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::manager::VolumeManager;
use crate::model::{FsType, VolumeKind, VolumeRecord};
use crate::size::round_up;

impl VolumeManager {
    /// Grows volume `id` to at least `required` bytes (never shrinks). Returns the new
    /// capacity and whether the node must still grow the filesystem.
    pub fn expand(&self, id: &str, required: u64, limit: u64) -> Result<(u64, bool)> {
        if required == 0 {
            return Err(Error::InvalidArgument(
                "capacity_range.required_bytes is required".into(),
            ));
        }
        let _guard = self.claim(id)?;
        let mut rec = self.get(id)?;
        let new = round_up(required, 1 << 20);
        if limit != 0 && new > limit {
            return Err(Error::OutOfRange(format!(
                "{new} bytes exceeds limit_bytes {limit}"
            )));
        }
        if new > rec.capacity {
            let growth = new - rec.capacity;
            self.pool
                .available_for_layout(self.pool.layout_of(&rec), growth, "growing by")?;
            match rec.kind {
                VolumeKind::Dir | VolumeKind::Image => self.pool.set_dir_limit(&rec.id, new)?,
                VolumeKind::Loop => {
                    self.pool.grow_image(&rec.id, new)?;
                    for l in self
                        .host
                        .loops
                        .find(&self.pool.image_path(&rec.id))
                        .ctx(|| "list loop devices".into())?
                    {
                        self.host
                            .loops
                            .refresh_capacity(&l.device)
                            .ctx(|| format!("refresh capacity of {}", l.device.display()))?;
                    }
                }
            }
            rec.capacity = new;
            self.store.put(&rec)?;
            tracing::info!(volume.id = %id, capacity = new, "expanded volume");
        }
        let node_needed = rec.kind == VolumeKind::Loop
            && (rec.filesystem_bytes() < rec.capacity
                || rec.staging.as_ref().is_some_and(|s| s.block));
        Ok((rec.capacity, node_needed))
    }

    /// Node-side expansion of volume `id`, published or staged at `path`: grows the
    /// filesystem of a mounted loop volume to its capacity. Returns the capacity.
    pub fn expand_on_node(&self, id: &str, path: &Path) -> Result<u64> {
        let _guard = self.claim(id)?;
        let mut rec = self.get(id)?;
        let path = &crate::manager::node::volume_path(id, path)?;
        let known = rec.staging.as_ref().is_some_and(|s| s.path == *path)
            || rec.publications.iter().any(|p| p.target == *path);
        if !known {
            return Err(Error::PathNotFound {
                id: id.to_string(),
                path: path.to_path_buf(),
            });
        }
        self.grow_filesystem(&mut rec)?;
        Ok(rec.capacity)
    }

    /// Brings a staged loop volume's device and filesystem up to its capacity.
    pub(crate) fn grow_filesystem(&self, rec: &mut VolumeRecord) -> Result<()> {
        let Some(stage) = rec.staging.clone() else {
            return Ok(());
        };
        if rec.kind != VolumeKind::Loop {
            return Ok(());
        }
        let image = self.pool.image_path(&rec.id);
        let Some(device) = self
            .host
            .loops
            .find(&image)
            .ctx(|| "list loop devices".into())?
            .into_iter()
            .next()
            .map(|l| l.device)
        else {
            return Err(Error::FailedPrecondition(format!(
                "volume {} is staged but no loop device is attached",
                rec.id
            )));
        };
        self.host
            .loops
            .refresh_capacity(&device)
            .ctx(|| format!("refresh capacity of {}", device.display()))?;
        if stage.block || rec.filesystem_bytes() >= rec.capacity {
            return Ok(());
        }
        let fs = rec.fs.unwrap_or(FsType::Ext4);
        // The growing tool is given the mount through a descriptor resolved without
        // links, once it is known to be this volume's.
        let mount = crate::os::MountPoint::open(&stage.path)
            .map_err(|e| crate::manager::node::resolve_err(&stage.path, "staging path", e))?;
        if !self.is_staged_in_place(rec)? {
            return Err(Error::FailedPrecondition(format!(
                "volume {} is not mounted at its staging path {}",
                rec.id,
                stage.path.display()
            )));
        }
        let via = mount.proc_path();
        if let Err(e) = self.host.formatter.grow(&device, Some(&via), fs) {
            if fs == FsType::Ext4 && e.to_string().contains("Permission denied") {
                return Err(Error::FailedPrecondition(format!(
                    "online ext4 resize was refused ({e}); the kernel requires \
                     CAP_SYS_RESOURCE for it. The filesystem grows offline when the volume \
                     is next staged"
                )));
            }
            return Err(e);
        }
        rec.fs_size = rec.capacity;
        self.store.put(rec)?;
        tracing::info!(volume.id = %rec.id, capacity = rec.capacity, %fs, "grew filesystem");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::error::Error;
    use crate::manager::node::StageOptions;
    use crate::manager::tests::{fixture, req};

    #[test]
    fn dir_expansion_raises_the_limit_without_node_work() {
        let f = fixture(true);
        let v = f.mgr.create(&req("d", "dir", 4 << 20)).unwrap();
        assert_eq!(f.mgr.expand(&v.id, 8 << 20, 0).unwrap(), (8 << 20, false));
        assert_eq!(
            f.fake.limit_of(&f.mgr.pool().volume_dir(&v.id)),
            Some(8 << 20)
        );
        // Asking for less never shrinks.
        assert_eq!(f.mgr.expand(&v.id, 1 << 20, 0).unwrap().0, 8 << 20);
        assert!(matches!(
            f.mgr.expand(&v.id, 16 << 20, 12 << 20),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(
            f.mgr.expand(&v.id, 1 << 60, 0),
            Err(Error::NoSpace(_))
        ));
        assert!(matches!(
            f.mgr.expand(&v.id, 0, 0),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn loop_expansion_grows_image_then_filesystem_online() {
        let f = fixture(true);
        let v = f.mgr.create(&req("l", "loop", 64 << 20)).unwrap();
        let staging = f.dir.path().join("staging");
        f.mgr.attach(&v.id, "node-1", false, 0).unwrap();
        f.mgr
            .stage(&v.id, &staging, &StageOptions::default())
            .unwrap();
        assert_eq!(
            f.mgr.expand(&v.id, 128 << 20, 0).unwrap(),
            (128 << 20, true)
        );
        let image = f.mgr.pool().image_path(&v.id);
        assert_eq!(std::fs::metadata(&image).unwrap().len(), 128 << 20);
        assert!(
            f.fake
                .calls()
                .iter()
                .any(|c| c.starts_with("refresh_capacity"))
        );
        assert!(matches!(
            f.mgr.expand_on_node(&v.id, "/not/there".as_ref()),
            Err(Error::PathNotFound { .. })
        ));
        assert_eq!(f.mgr.expand_on_node(&v.id, &staging).unwrap(), 128 << 20);
        assert!(f.fake.calls().iter().any(|c| c.starts_with("grow")));
        assert_eq!(f.mgr.get(&v.id).unwrap().fs_size, 128 << 20);
        assert_eq!(
            f.mgr.expand(&v.id, 128 << 20, 0).unwrap(),
            (128 << 20, false)
        );
    }

    #[test]
    fn unstaged_ext4_volume_grows_offline_before_its_next_mount() {
        let f = fixture(true);
        let v = f.mgr.create(&req("l", "loop", 64 << 20)).unwrap();
        f.mgr.expand(&v.id, 96 << 20, 0).unwrap();
        assert!(!f.fake.calls().iter().any(|c| c.starts_with("grow")));
        f.mgr.attach(&v.id, "node-1", false, 0).unwrap();
        f.mgr
            .stage(&v.id, &f.dir.path().join("s"), &StageOptions::default())
            .unwrap();
        let calls = f.fake.calls();
        let grow = calls
            .iter()
            .position(|c| c.starts_with("grow") && c.contains("offline"));
        let mount = calls.iter().position(|c| c.starts_with("mount "));
        assert!(grow.unwrap() < mount.unwrap(), "{calls:?}");
        assert_eq!(calls.iter().filter(|c| c.starts_with("grow")).count(), 1);
        assert_eq!(f.mgr.get(&v.id).unwrap().fs_size, 96 << 20);
    }
}
