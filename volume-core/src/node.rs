//! Node-side operations: staging (attach + mount, or bind a directory), publishing
//! (bind the staged volume at a target path), their inverses, and usage and health of
//! a mounted volume. Each checks what is already true before acting, so a repeated call
//! succeeds without doing anything twice, and records its intent before mounting, so a
//! restart can restore or explain every mount.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::manager::VolumeManager;
use crate::model::{
    FsType, PublishRecord, StageRecord, VolumeHealth, VolumeKind, VolumeRecord, VolumeUsage,
};
use crate::os::mount::MountOptions;

/// Options of a NodeStage call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageOptions {
    /// The capability's fs_type, if given; must match a loop volume's filesystem.
    pub fs_type: Option<String>,
    /// Extra mount flags.
    pub mount_flags: Vec<String>,
    /// Raw block access: attach the loop device, mount nothing.
    pub block: bool,
    /// Refuse unless ControllerPublish attached the volume to this node (CSI calls).
    pub require_attachment: bool,
}

/// Options of a NodePublish call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Publish read-only.
    pub read_only: bool,
    /// Extra mount flags.
    pub mount_flags: Vec<String>,
    /// Bind the loop device node onto a file at the target.
    pub block: bool,
    /// SINGLE_NODE_SINGLE_WRITER: no other target may hold the volume.
    pub single_writer: bool,
}

fn require_absolute(path: &Path, what: &str) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(Error::InvalidArgument(format!("{what} is empty")));
    }
    if !path.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "{what} {} is not absolute",
            path.display()
        )));
    }
    Ok(())
}

/// Removes an empty directory or a file (a block volume's target).
fn remove_path(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

fn ignore_not_found(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

impl VolumeManager {
    fn is_mounted(&self, path: &Path) -> Result<bool> {
        Ok(self
            .host
            .mounter
            .mount_at(path)
            .ctx(|| "read mount table".into())?
            .is_some())
    }

    /// Stages volume `id` at `staging`.
    pub fn stage(&self, id: &str, staging: &Path, opts: &StageOptions) -> Result<()> {
        require_absolute(staging, "staging path")?;
        let _guard = self.claim(id)?;
        let mut rec = self.get(id)?;
        if opts.require_attachment
            && !rec
                .attachments
                .iter()
                .any(|a| a.node_id == self.node.node_id)
        {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is not published to node {} (ControllerPublishVolume first)",
                self.node.node_id
            )));
        }
        if opts.block && rec.kind != VolumeKind::Loop {
            return Err(Error::InvalidArgument(format!(
                "volume {id} is a directory volume; block access needs kind=loop"
            )));
        }
        if let (VolumeKind::Loop, Some(want)) = (rec.kind, opts.fs_type.as_deref())
            && !want.is_empty()
            && !opts.block
            && FsType::parse(want)? != rec.fs.unwrap_or(FsType::Ext4)
        {
            return Err(Error::InvalidArgument(format!(
                "volume {id} holds {}, the capability asks for {want}",
                rec.fs.unwrap_or(FsType::Ext4)
            )));
        }
        if let Some(existing) = &rec.staging {
            if existing.path != staging || existing.block != opts.block {
                return Err(Error::FailedPrecondition(format!(
                    "volume {id} is already staged at {}{}",
                    existing.path.display(),
                    if existing.block {
                        " for block access"
                    } else {
                        ""
                    }
                )));
            }
            if self.is_staged_in_place(&rec)? {
                return Ok(());
            }
        }
        rec.staging = Some(StageRecord {
            path: staging.to_path_buf(),
            loop_device: None,
            mount_flags: opts.mount_flags.clone(),
            block: opts.block,
        });
        self.store.put(&rec)?;
        match self.mount_staging(&mut rec, staging, &opts.mount_flags) {
            Ok(device) => {
                if let Some(s) = rec.staging.as_mut() {
                    s.loop_device = device;
                }
                self.store.put(&rec)?;
                // A restore into a larger volume, or an expansion while unstaged.
                self.grow_filesystem(&mut rec)?;
                tracing::info!(volume.id = %id, staging = %staging.display(), block = opts.block, "staged");
                Ok(())
            }
            Err(e) => {
                rec.staging = None;
                self.store.put(&rec)?;
                Err(e)
            }
        }
    }

    /// True when the recorded staging is in place: the mount exists, or for block
    /// staging, a loop device is attached to the image.
    pub(crate) fn is_staged_in_place(&self, rec: &VolumeRecord) -> Result<bool> {
        match &rec.staging {
            None => Ok(false),
            Some(s) if s.block => Ok(!self
                .host
                .loops
                .find(&self.pool.image_path(&rec.id))
                .ctx(|| "list loop devices".into())?
                .is_empty()),
            Some(s) => self.is_mounted(&s.path),
        }
    }

    /// Mounts a volume at its staging path; returns the loop device of a loop volume.
    /// On failure nothing it attached stays attached.
    pub(crate) fn mount_staging(
        &self,
        rec: &mut VolumeRecord,
        staging: &Path,
        flags: &[String],
    ) -> Result<Option<PathBuf>> {
        if rec.staging.as_ref().is_some_and(|s| s.block) {
            return self.attach_loop(rec).map(|(device, _)| Some(device));
        }
        std::fs::create_dir_all(staging).ctx(|| format!("create {}", staging.display()))?;
        let mut opts = MountOptions::volume_defaults();
        opts.extra = flags.to_vec();
        match rec.kind {
            VolumeKind::Dir | VolumeKind::Image => {
                let dir = self.pool.volume_dir(&rec.id);
                self.host
                    .mounter
                    .bind(&dir, staging, &opts)
                    .ctx(|| format!("bind {} at {}", dir.display(), staging.display()))?;
                Ok(None)
            }
            VolumeKind::Loop => {
                let (device, attached_here) = self.attach_loop(rec)?;
                let fs = rec.fs.unwrap_or(FsType::Ext4);
                if fs == FsType::Xfs && !opts.extra.iter().any(|o| o == "nouuid") {
                    // A restore or clone carries its source's xfs UUID, and xfs refuses to
                    // mount a filesystem whose UUID is already mounted.
                    opts.extra.push("nouuid".into());
                }
                if fs == FsType::Ext4 && rec.filesystem_bytes() < rec.capacity {
                    // Grow before mounting: offline resize needs no special privilege.
                    let grown = self
                        .host
                        .loops
                        .refresh_capacity(&device)
                        .ctx(|| format!("refresh capacity of {}", device.display()))
                        .and_then(|()| self.host.formatter.grow(&device, None, fs));
                    if let Err(e) = grown {
                        if attached_here {
                            let _ = self.host.loops.detach(&device);
                        }
                        return Err(e);
                    }
                    rec.fs_size = rec.capacity;
                    tracing::info!(volume.id = %rec.id, capacity = rec.capacity, "grew ext4 offline before mounting");
                }
                if let Err(e) = self
                    .host
                    .mounter
                    .mount(&device, staging, fs.as_str(), &opts)
                {
                    if attached_here && let Err(d) = self.host.loops.detach(&device) {
                        tracing::warn!(device = %device.display(), error = %d, "detach after failed mount");
                    }
                    return Err(Error::io(
                        format!("mount {} ({fs}) at {}", device.display(), staging.display()),
                        e,
                    ));
                }
                Ok(Some(device))
            }
        }
    }

    /// The loop device of a loop volume's image, attached now (true) or already.
    pub(crate) fn attach_loop(&self, rec: &VolumeRecord) -> Result<(PathBuf, bool)> {
        let image = self.pool.image_path(&rec.id);
        let existing = self
            .host
            .loops
            .find(&image)
            .ctx(|| "list loop devices".into())?;
        if let Some(l) = existing.into_iter().next() {
            return Ok((l.device, false));
        }
        let l = self
            .host
            .loops
            .attach(&image, true, false)
            .ctx(|| format!("attach {}", image.display()))?;
        if !l.direct_io {
            tracing::warn!(volume.id = %rec.id, device = %l.device.display(), "loop device fell back to buffered I/O");
        }
        Ok((l.device, true))
    }

    /// Unstages volume `id` from `staging`: unmounts and detaches its loop device.
    pub fn unstage(&self, id: &str, staging: &Path) -> Result<()> {
        require_absolute(staging, "staging path")?;
        let _guard = self.claim(id)?;
        let mut rec = self.get(id)?;
        if let Some(p) = rec.publications.first() {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is still published at {}",
                p.target.display()
            )));
        }
        // An attachment into a container uses this staging (and detach checks its
        // mount against it): it goes first.
        if let Some(m) = rec.container_mounts.first() {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is still attached into process {} at {}; vol detach it first",
                m.pid,
                m.target.display()
            )));
        }
        let block = rec.staging.as_ref().is_some_and(|s| s.block);
        if !block && self.is_mounted(staging)? {
            self.host
                .mounter
                .unmount(staging)
                .ctx(|| format!("unmount {}", staging.display()))?;
        }
        if rec.kind == VolumeKind::Loop {
            self.pool.detach_loops(&rec.id)?;
        }
        if rec.staging.take().is_some() {
            self.store.put(&rec)?;
        }
        tracing::info!(volume.id = %id, staging = %staging.display(), "unstaged");
        Ok(())
    }

    /// Publishes staged volume `id` at `target`.
    pub fn publish(
        &self,
        id: &str,
        staging: &Path,
        target: &Path,
        opts: &PublishOptions,
    ) -> Result<()> {
        require_absolute(staging, "staging path")?;
        require_absolute(target, "target path")?;
        let _guard = self.claim(id)?;
        let mut rec = self.get(id)?;
        match &rec.staging {
            Some(s) if s.path == staging && s.block == opts.block => {}
            Some(s) if s.path == staging => {
                return Err(Error::InvalidArgument(format!(
                    "volume {id} is staged for {} access",
                    if s.block { "block" } else { "mount" }
                )));
            }
            _ => {
                return Err(Error::FailedPrecondition(format!(
                    "volume {id} is not staged at {}",
                    staging.display()
                )));
            }
        }
        if let Some(existing) = rec.publications.iter().find(|p| p.target == target) {
            if existing.read_only != opts.read_only || existing.block != opts.block {
                return Err(Error::PublishConflict(target.to_path_buf()));
            }
            if self.is_mounted(target)? {
                return Ok(());
            }
        } else {
            if let Some(other) = rec
                .publications
                .iter()
                .find(|p| opts.single_writer || p.single_writer)
            {
                return Err(Error::FailedPrecondition(format!(
                    "volume {id} is single-writer and already published at {}",
                    other.target.display()
                )));
            }
            rec.publications.push(PublishRecord {
                target: target.to_path_buf(),
                read_only: opts.read_only,
                block: opts.block,
                single_writer: opts.single_writer,
            });
            self.store.put(&rec)?;
        }
        if let Err(e) = self.mount_target(&rec, staging, target, opts) {
            rec.publications.retain(|p| p.target != target);
            self.store.put(&rec)?;
            return Err(e);
        }
        tracing::info!(volume.id = %id, target = %target.display(), read_only = opts.read_only, block = opts.block, "published");
        Ok(())
    }

    /// Mounts a publication of `rec` at `target`: the overlay of an image volume, else
    /// a bind mount of the staging directory (or of the loop device for block access).
    pub(crate) fn mount_target(
        &self,
        rec: &VolumeRecord,
        staging: &Path,
        target: &Path,
        opts: &PublishOptions,
    ) -> Result<()> {
        if rec.kind == VolumeKind::Image {
            return self.mount_image(rec, target, opts);
        }
        let source = if opts.block {
            self.attach_loop(rec)?.0
        } else {
            staging.to_path_buf()
        };
        self.bind_target(&source, target, opts)
    }

    /// The writable layer of an image volume's publication at `target`:
    /// `<volume dir>/pub-<hash of target>/{upper,work}`, inside the volume's subvolume
    /// (overlayfs needs upper and work on one filesystem) and so within its quota. It
    /// is kept across unpublish: publishing at the same target again sees the earlier
    /// writes; it goes with the volume.
    pub fn publication_dir(&self, id: &str, target: &Path) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        // FNV-1a: stable across releases and platforms, unlike std's hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in target.as_os_str().as_bytes() {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.pool.volume_dir(id).join(format!("pub-{hash:016x}"))
    }

    /// Mounts the overlay of an image volume's layers (the `layers` parameter, bottom
    /// first, resolved to layer store keys at creation) with the publication's
    /// writable layer at `target`.
    fn mount_image(&self, rec: &VolumeRecord, target: &Path, opts: &PublishOptions) -> Result<()> {
        let keys = crate::params::layer_keys(&rec.parameters)?;
        let backend = crate::params::overlay_backend(&rec.parameters)?;
        let mut lowers = Vec::with_capacity(keys.len());
        // overlayfs takes lower directories top first.
        for key in keys.iter().rev() {
            let dir = self.node.layers_dir.join(key);
            if !dir.is_dir() {
                return Err(Error::FailedPrecondition(format!(
                    "layer {key} of volume {} is not in the layer store (vol layer import it)",
                    rec.id
                )));
            }
            lowers.push(dir);
        }
        let pub_dir = self.publication_dir(&rec.id, target);
        let (upper, work) = (pub_dir.join("upper"), pub_dir.join("work"));
        for d in [&upper, &work] {
            std::fs::create_dir_all(d).ctx(|| format!("create {}", d.display()))?;
        }
        let data = crate::os::mount::overlay_data(&lowers, &upper, &work)
            .ctx(|| format!("overlay options for {}", target.display()))?;
        let created = !target.exists();
        std::fs::create_dir_all(target).ctx(|| format!("create {}", target.display()))?;
        let mounted = match backend {
            crate::params::OverlayBackend::Kernel => {
                let mut mount_opts = MountOptions::volume_defaults();
                mount_opts.read_only = opts.read_only;
                mount_opts.extra = opts.mount_flags.clone();
                mount_opts.extra.push(data);
                self.host
                    .mounter
                    .mount(Path::new("overlay"), target, "overlay", &mount_opts)
            }
            crate::params::OverlayBackend::Fuse => self.host.mounter.mount_fuse_overlay(
                &self.node.overlay_program,
                &data,
                target,
                opts.read_only,
            ),
        };
        if let Err(e) = mounted {
            if created {
                let _ = remove_path(target);
            }
            return Err(Error::io(
                format!(
                    "mount the {} overlay of volume {} at {}",
                    backend.as_str(),
                    rec.id,
                    target.display()
                ),
                e,
            ));
        }
        Ok(())
    }

    /// Bind-mounts `source` (the staging directory, or a loop device node) at `target`,
    /// creating the target directory (or, for a device, file) when missing.
    pub(crate) fn bind_target(
        &self,
        source: &Path,
        target: &Path,
        opts: &PublishOptions,
    ) -> Result<()> {
        let created = !target.exists();
        if opts.block {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).ctx(|| format!("create {}", parent.display()))?;
            }
            if created {
                std::fs::File::create(target).ctx(|| format!("create {}", target.display()))?;
            }
        } else {
            std::fs::create_dir_all(target).ctx(|| format!("create {}", target.display()))?;
        }
        let mut mount_opts = MountOptions::volume_defaults();
        mount_opts.read_only = opts.read_only;
        // The device node itself must stay usable: nodev would make it inaccessible.
        mount_opts.nodev = !opts.block;
        if !opts.block {
            mount_opts.extra = opts.mount_flags.clone();
        }
        if let Err(e) = self.host.mounter.bind(source, target, &mount_opts) {
            if created {
                let _ = remove_path(target);
            }
            return Err(Error::io(
                format!("bind {} at {}", source.display(), target.display()),
                e,
            ));
        }
        Ok(())
    }

    /// Unpublishes volume `id` from `target` and removes the target directory.
    pub fn unpublish(&self, id: &str, target: &Path) -> Result<()> {
        require_absolute(target, "target path")?;
        let _guard = self.claim(id)?;
        let mut rec = self.get(id)?;
        if self.is_mounted(target)? {
            self.host
                .mounter
                .unmount(target)
                .ctx(|| format!("unmount {}", target.display()))?;
        }
        // The spec asks the plugin to remove what it created at the target path.
        ignore_not_found(remove_path(target)).ctx(|| format!("remove {}", target.display()))?;
        let before = rec.publications.len();
        rec.publications.retain(|p| p.target != target);
        if rec.publications.len() != before {
            self.store.put(&rec)?;
        }
        tracing::info!(volume.id = %id, target = %target.display(), "unpublished");
        Ok(())
    }

    /// Usage and health of volume `id` mounted at `path` (its staging path or a target).
    pub fn stats(&self, id: &str, path: &Path) -> Result<(VolumeUsage, VolumeHealth)> {
        let rec = self.get(id)?;
        let known = rec.staging.as_ref().is_some_and(|s| s.path == path)
            || rec.publications.iter().any(|p| p.target == path);
        if !known || !self.is_mounted(path)? {
            return Err(Error::PathNotFound {
                id: id.to_string(),
                path: path.to_path_buf(),
            });
        }
        if rec.staging.as_ref().is_some_and(|s| s.block) {
            // A raw device: its size is all there is to report.
            let usage = VolumeUsage {
                total_bytes: rec.capacity,
                ..Default::default()
            };
            return Ok((usage, self.node_health(&rec, None)?));
        }
        let st = nix::sys::statvfs::statvfs(path)
            .map_err(|e| Error::io(format!("statvfs {}", path.display()), e.into()))?;
        let frsize = st.fragment_size() as u64;
        let mut usage = VolumeUsage {
            total_bytes: st.blocks() as u64 * frsize,
            available_bytes: st.blocks_available() as u64 * frsize,
            used_bytes: (st.blocks() as u64 - st.blocks_free() as u64) * frsize,
            total_inodes: st.files() as u64,
            used_inodes: (st.files() as u64).saturating_sub(st.files_free() as u64),
            available_inodes: st.files_available() as u64,
        };
        if rec.kind.is_directory() {
            // A directory shares the pool's filesystem: report against its own size.
            usage.total_bytes = rec.capacity;
            if let Some(q) = self.pool.qgroup_usage(&rec)? {
                usage.used_bytes = q.referenced;
                usage.available_bytes = rec
                    .capacity
                    .saturating_sub(q.referenced)
                    .min(usage.available_bytes);
            } else {
                usage.used_bytes = usage.used_bytes.min(rec.capacity);
                usage.available_bytes = usage.available_bytes.min(rec.capacity);
            }
        }
        Ok((usage, self.node_health(&rec, Some(&usage))?))
    }

    /// Node-side health of a staged volume.
    pub fn node_health(
        &self,
        rec: &VolumeRecord,
        usage: Option<&VolumeUsage>,
    ) -> Result<VolumeHealth> {
        let mut problems = Vec::new();
        if let Some(s) = &rec.staging {
            match self
                .host
                .mounter
                .mount_at(&s.path)
                .ctx(|| "read mount table".into())?
            {
                None => problems.push(format!("staging mount {} is missing", s.path.display())),
                Some(m) if m.read_only() && rec.kind == VolumeKind::Loop => problems.push(format!(
                    "filesystem at {} is read-only (errors?)",
                    s.path.display()
                )),
                Some(_) => {}
            }
            if rec.kind == VolumeKind::Loop {
                let image = self.pool.image_path(&rec.id);
                if self
                    .host
                    .loops
                    .find(&image)
                    .ctx(|| "list loop devices".into())?
                    .is_empty()
                {
                    problems.push(format!("no loop device is attached to {}", image.display()));
                }
            }
        }
        if !rec.capacity_enforced {
            problems.push("capacity is not enforced on this pool".into());
        }
        if let Some(u) = usage
            && rec.kind.is_directory()
            && rec.capacity_enforced
            && u.available_bytes == 0
        {
            problems.push("quota exhausted".into());
        }
        let abnormal = problems
            .iter()
            .any(|p| !p.starts_with("capacity is not enforced"));
        Ok(VolumeHealth {
            abnormal,
            message: if problems.is_empty() {
                "ok".into()
            } else {
                problems.join("; ")
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::error::Error;
    use crate::manager::tests::{fixture, req};
    use crate::node::{PublishOptions, StageOptions};

    #[test]
    fn loop_stage_attaches_and_mounts_once_and_unstage_undoes_it() {
        let f = fixture(true);
        let rec = f.mgr.create(&req("l", "loop", 64 << 20)).unwrap();
        let staging = f.dir.path().join("staging");
        f.mgr
            .stage(&rec.id, &staging, &StageOptions::default())
            .unwrap();
        f.mgr
            .stage(&rec.id, &staging, &StageOptions::default())
            .unwrap();
        let calls = f.fake.calls();
        assert_eq!(
            calls.iter().filter(|c| c.starts_with("attach")).count(),
            1,
            "{calls:?}"
        );
        assert_eq!(
            calls.iter().filter(|c| c.starts_with("mount ")).count(),
            1,
            "{calls:?}"
        );
        assert_eq!(f.fake.attached().len(), 1);
        let staged = f.mgr.get(&rec.id).unwrap().staging.unwrap();
        assert_eq!(staged.loop_device.unwrap(), f.fake.attached()[0].device);

        f.mgr.unstage(&rec.id, &staging).unwrap();
        f.mgr.unstage(&rec.id, &staging).unwrap();
        assert!(f.fake.attached().is_empty());
        assert!(f.fake.mounted().is_empty());
        assert!(f.mgr.get(&rec.id).unwrap().staging.is_none());
    }

    #[test]
    fn failed_mount_detaches_and_forgets_staging() {
        let f = fixture(true);
        let rec = f.mgr.create(&req("l", "loop", 64 << 20)).unwrap();
        f.fake.fail_next("mount", libc::EUCLEAN);
        let staging = f.dir.path().join("staging");
        assert!(
            f.mgr
                .stage(&rec.id, &staging, &StageOptions::default())
                .is_err()
        );
        assert!(f.fake.attached().is_empty());
        assert!(f.mgr.get(&rec.id).unwrap().staging.is_none());
    }

    #[test]
    fn xfs_is_mounted_nouuid_so_restores_and_clones_mount_beside_their_source() {
        let f = fixture(true);
        let mut r = req("x", "loop", 300 << 20);
        r.params = crate::params::VolumeParams::parse(
            &[
                ("kind".to_string(), "loop".to_string()),
                ("fsType".to_string(), "xfs".to_string()),
            ]
            .into_iter()
            .collect(),
            None,
        )
        .unwrap();
        let xfs = f.mgr.create(&r).unwrap();
        let ext4 = f.mgr.create(&req("e", "loop", 64 << 20)).unwrap();
        for (v, p) in [(&xfs, "sx"), (&ext4, "se")] {
            f.mgr
                .stage(&v.id, &f.dir.path().join(p), &StageOptions::default())
                .unwrap();
        }
        let mounts: Vec<String> = f
            .fake
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("mount "))
            .collect();
        assert_eq!(mounts.len(), 2, "{mounts:?}");
        assert!(
            mounts[0].contains(" xfs ") && mounts[0].ends_with(" nouuid"),
            "{mounts:?}"
        );
        assert!(!mounts[1].contains("nouuid"), "{mounts:?}");
    }

    #[test]
    fn stage_with_wrong_fs_type_is_invalid() {
        let f = fixture(true);
        let rec = f.mgr.create(&req("l", "loop", 64 << 20)).unwrap();
        let opts = StageOptions {
            fs_type: Some("xfs".into()),
            ..Default::default()
        };
        let err = f
            .mgr
            .stage(&rec.id, &f.dir.path().join("s"), &opts)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
    }

    #[test]
    fn publish_requires_staging_is_idempotent_and_conflicts_on_read_only_change() {
        let f = fixture(true);
        let rec = f.mgr.create(&req("d", "dir", 1 << 20)).unwrap();
        let staging = f.dir.path().join("staging");
        let target = f.dir.path().join("target");
        let rw = PublishOptions::default();
        assert!(matches!(
            f.mgr.publish(&rec.id, &staging, &target, &rw),
            Err(Error::FailedPrecondition(_))
        ));
        f.mgr
            .stage(&rec.id, &staging, &StageOptions::default())
            .unwrap();
        f.mgr.publish(&rec.id, &staging, &target, &rw).unwrap();
        f.mgr.publish(&rec.id, &staging, &target, &rw).unwrap();
        let binds = f
            .fake
            .calls()
            .iter()
            .filter(|c| c.starts_with("bind"))
            .count();
        assert_eq!(binds, 2, "one bind for staging, one for the target");
        let ro = PublishOptions {
            read_only: true,
            ..Default::default()
        };
        assert!(matches!(
            f.mgr.publish(&rec.id, &staging, &target, &ro),
            Err(Error::PublishConflict(_))
        ));
        assert!(matches!(
            f.mgr.unstage(&rec.id, &staging),
            Err(Error::FailedPrecondition(_))
        ));
        f.mgr.unpublish(&rec.id, &target).unwrap();
        f.mgr.unpublish(&rec.id, &target).unwrap();
        assert!(!target.exists());
        f.mgr.unstage(&rec.id, &staging).unwrap();
        assert!(f.fake.mounted().is_empty());
    }

    #[test]
    fn relative_paths_and_unknown_volumes_are_refused() {
        let f = fixture(true);
        let rec = f.mgr.create(&req("d", "dir", 1 << 20)).unwrap();
        assert!(matches!(
            f.mgr
                .stage(&rec.id, "rel/path".as_ref(), &StageOptions::default()),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            f.mgr.stage(
                "v-0123456789abcdef0123456789abcdef",
                "/x".as_ref(),
                &StageOptions::default()
            ),
            Err(Error::VolumeNotFound(_))
        ));
    }

    #[test]
    fn stats_only_for_known_mounted_paths() {
        let f = fixture(true);
        let rec = f.mgr.create(&req("d", "dir", 8 << 20)).unwrap();
        let staging = f.dir.path().join("staging");
        f.mgr
            .stage(&rec.id, &staging, &StageOptions::default())
            .unwrap();
        let (usage, health) = f.mgr.stats(&rec.id, &staging).unwrap();
        assert_eq!(usage.total_bytes, 8 << 20);
        assert_eq!(usage.used_bytes, 16384);
        assert!(!health.abnormal, "{health:?}");
        assert!(matches!(
            f.mgr.stats(&rec.id, "/some/path".as_ref()),
            Err(Error::PathNotFound { .. })
        ));
    }

    fn image_fixture(
        overlay: &str,
    ) -> (
        crate::manager::tests::Fixture,
        crate::model::VolumeRecord,
        [String; 2],
    ) {
        let f = fixture(true);
        let keys = ["a".repeat(64), "b".repeat(64)];
        for k in &keys {
            std::fs::create_dir_all(f.dir.path().join("layers").join(k)).unwrap();
        }
        let p = std::collections::HashMap::from([
            ("kind".to_string(), "image".to_string()),
            ("layers".to_string(), keys.join(",")),
            ("overlay".to_string(), overlay.to_string()),
        ]);
        let params = crate::VolumeParams::parse(&p, None).unwrap();
        let rec = f
            .mgr
            .create(&crate::CreateRequest::new("img", 8 << 20, 0, params))
            .unwrap();
        (f, rec, keys)
    }

    #[test]
    fn image_publish_mounts_an_overlay_with_a_writable_layer_per_target() {
        let (f, rec, keys) = image_fixture("kernel");
        assert_eq!(rec.kind, crate::model::VolumeKind::Image);
        let dir = f.mgr.pool().volume_dir(&rec.id);
        assert_eq!(
            f.fake.limit_of(&dir),
            Some(8 << 20),
            "quota on the writable layers"
        );
        let staging = f.dir.path().join("staging");
        let target = f.dir.path().join("target");
        f.mgr
            .stage(&rec.id, &staging, &StageOptions::default())
            .unwrap();
        let publish = |read_only| PublishOptions {
            read_only,
            ..Default::default()
        };
        f.mgr
            .publish(&rec.id, &staging, &target, &publish(false))
            .unwrap();
        let pub_dir = f.mgr.publication_dir(&rec.id, &target);
        assert!(pub_dir.starts_with(&dir));
        assert!(pub_dir.join("upper").is_dir() && pub_dir.join("work").is_dir());
        let layers = f.dir.path().join("layers");
        let expected = format!(
            "mount overlay {} overlay lowerdir={}:{},upperdir={},workdir={}",
            target.display(),
            layers.join(&keys[1]).display(),
            layers.join(&keys[0]).display(),
            pub_dir.join("upper").display(),
            pub_dir.join("work").display()
        );
        let calls = f.fake.calls();
        assert!(calls.contains(&expected), "top layer first: {calls:#?}");
        // Idempotent.
        f.mgr
            .publish(&rec.id, &staging, &target, &publish(false))
            .unwrap();
        assert_eq!(
            f.fake
                .calls()
                .iter()
                .filter(|c| c.starts_with("mount overlay"))
                .count(),
            1
        );
        // Unpublish keeps the writable layer; another target gets a layer of its own.
        std::fs::write(pub_dir.join("upper/kept"), b"x").unwrap();
        f.mgr.unpublish(&rec.id, &target).unwrap();
        assert!(pub_dir.join("upper/kept").exists());
        let other = f.dir.path().join("other");
        f.mgr
            .publish(&rec.id, &staging, &other, &publish(true))
            .unwrap();
        assert_ne!(f.mgr.publication_dir(&rec.id, &other), pub_dir);
        let entry = crate::os::mount::Mounter::mount_at(&*f.fake, &other)
            .unwrap()
            .unwrap();
        assert!(entry.read_only());
    }

    #[test]
    fn image_publish_of_a_missing_layer_or_a_failed_mount_leaves_nothing() {
        let (f, rec, keys) = image_fixture("kernel");
        let staging = f.dir.path().join("staging");
        let target = f.dir.path().join("target");
        f.mgr
            .stage(&rec.id, &staging, &StageOptions::default())
            .unwrap();
        f.fake.fail_next("mount", libc::EINVAL);
        assert!(
            f.mgr
                .publish(&rec.id, &staging, &target, &PublishOptions::default())
                .is_err()
        );
        assert!(!target.exists());
        assert!(f.mgr.get(&rec.id).unwrap().publications.is_empty());
        std::fs::remove_dir(f.dir.path().join("layers").join(&keys[0])).unwrap();
        let err = f
            .mgr
            .publish(&rec.id, &staging, &target, &PublishOptions::default())
            .unwrap_err();
        assert!(
            matches!(err, Error::FailedPrecondition(ref m) if m.contains(&keys[0])),
            "{err}"
        );
        assert!(!target.exists());
        // Block access is refused for an overlay.
        f.mgr.unstage(&rec.id, &staging).unwrap();
        let block = StageOptions {
            block: true,
            ..Default::default()
        };
        assert!(matches!(
            f.mgr.stage(&rec.id, &staging, &block),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn image_publish_with_fuse_runs_the_overlay_program() {
        let (f, rec, _) = image_fixture("fuse");
        let staging = f.dir.path().join("staging");
        let target = f.dir.path().join("target");
        f.mgr
            .stage(&rec.id, &staging, &StageOptions::default())
            .unwrap();
        let opts = PublishOptions {
            read_only: true,
            ..Default::default()
        };
        f.mgr.publish(&rec.id, &staging, &target, &opts).unwrap();
        let program = f.dir.path().join("stowage-overlay");
        let calls = f.fake.calls();
        let call = calls
            .iter()
            .find(|c| c.starts_with("mount_fuse_overlay"))
            .expect("overlay program run");
        assert!(call.starts_with(&format!(
            "mount_fuse_overlay {} lowerdir=",
            program.display()
        )));
        assert!(
            call.ends_with(&format!("{} true", target.display())),
            "{call}"
        );
        assert!(!calls.iter().any(|c| c.starts_with("mount overlay")));
    }

    #[test]
    fn image_create_is_idempotent_only_for_the_same_layers() {
        let (f, rec, keys) = image_fixture("kernel");
        let same = std::collections::HashMap::from([
            ("kind".to_string(), "image".to_string()),
            ("layers".to_string(), keys.join(",")),
        ]);
        let again = f
            .mgr
            .create(&crate::CreateRequest::new(
                "img",
                8 << 20,
                0,
                crate::VolumeParams::parse(&same, None).unwrap(),
            ))
            .unwrap();
        assert_eq!(again.id, rec.id);
        let other = std::collections::HashMap::from([
            ("kind".to_string(), "image".to_string()),
            ("layers".to_string(), keys[0].clone()),
        ]);
        assert!(matches!(
            f.mgr.create(&crate::CreateRequest::new(
                "img",
                8 << 20,
                0,
                crate::VolumeParams::parse(&other, None).unwrap(),
            )),
            Err(Error::NameConflict { .. })
        ));
    }
}
