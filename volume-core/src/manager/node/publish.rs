//! Publishing a staged volume at a workload's target (a bind, a block device node, or
//! an image volume's overlay) and unpublishing it.

use super::*;

impl VolumeManager {
    /// Publishes staged volume `id` at `target`.
    pub fn publish(
        &self,
        id: &str,
        staging: &Path,
        target: &Path,
        opts: &PublishOptions,
    ) -> Result<()> {
        let staging = &path_arg(staging, "staging path")?;
        let target = &path_arg(target, "target path")?;
        let _guard = self.claim(id)?;
        let mut rec = self.get(id)?;
        if target == staging {
            return Err(Error::InvalidArgument(format!(
                "target path {} is the staging path",
                target.display()
            )));
        }
        self.check_caller_path(id, target, "target path", false)?;
        match &rec.staging {
            Some(s) if s.path == *staging && s.block == opts.block => {}
            Some(s) if s.path == *staging => {
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
        if let Some(existing) = rec.publications.iter().find(|p| p.target == *target) {
            if existing.read_only != opts.read_only || existing.block != opts.block {
                return Err(Error::PublishConflict(target.to_path_buf()));
            }
            match self.probe(target, &self.expected_publication(&rec, existing)?)? {
                Found::Expected => return Ok(()),
                Found::Other(other) => {
                    return Err(Error::FailedPrecondition(format!(
                        "{other} is mounted at {}, where volume {id} is published; nothing done",
                        target.display()
                    )));
                }
                Found::Nothing => {}
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
            rec.publications.retain(|p| p.target != *target);
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
            let device = self.attach_loop(rec)?.0;
            MountPoint::own(&device).ctx(|| format!("open {}", device.display()))?
        } else {
            // A staging path whose mount is gone is an empty directory of the host:
            // publishing it would hand the pod the node's disk.
            if self.probe(staging, &self.expected_staging(rec)?)? != Found::Expected {
                return Err(Error::FailedPrecondition(format!(
                    "volume {} is not mounted at its staging path {}; stage it again",
                    rec.id,
                    staging.display()
                )));
            }
            MountPoint::open(staging).map_err(|e| resolve_err(staging, "staging path", e))?
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
    pub(super) fn mount_image(
        &self,
        rec: &VolumeRecord,
        target: &Path,
        opts: &PublishOptions,
    ) -> Result<()> {
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
        let mp = MountPoint::prepare(target, Shape::Dir)
            .map_err(|e| resolve_err(target, "target path", e))?;
        let created = mp.created();
        let mounted = match backend {
            crate::params::OverlayBackend::Kernel => {
                let mut mount_opts = MountOptions::volume_defaults();
                mount_opts.read_only = opts.read_only;
                mount_opts.extra = opts.mount_flags.clone();
                mount_opts.extra.push(data);
                self.host
                    .mounter
                    .mount(Path::new("overlay"), &mp, "overlay", &mount_opts)
            }
            crate::params::OverlayBackend::Fuse => {
                // Named after its writable layer: how unpublish tells it from any
                // other stowage-overlay mount at the target.
                let data = format!(
                    "{data},fsname={}",
                    crate::os::mount::fuse_overlay_fsname(&upper)
                );
                self.host.mounter.mount_fuse_overlay(
                    &self.node.overlay_program,
                    &data,
                    &mp,
                    opts.read_only,
                )
            }
        };
        if let Err(e) = mounted {
            if created {
                let _ = mountpoint::remove(target);
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
        source: &MountPoint,
        target: &Path,
        opts: &PublishOptions,
    ) -> Result<()> {
        let shape = if opts.block { Shape::File } else { Shape::Dir };
        let mp = MountPoint::prepare(target, shape)
            .map_err(|e| resolve_err(target, "target path", e))?;
        let mut mount_opts = MountOptions::volume_defaults();
        mount_opts.read_only = opts.read_only;
        // The device node itself must stay usable: nodev would make it inaccessible.
        mount_opts.nodev = !opts.block;
        if !opts.block {
            mount_opts.extra = opts.mount_flags.clone();
        }
        if let Err(e) = self.host.mounter.bind(source, &mp, &mount_opts) {
            if mp.created() {
                let _ = mountpoint::remove(target);
            }
            return Err(Error::io(
                format!("bind {} at {}", source.path().display(), target.display()),
                e,
            ));
        }
        Ok(())
    }

    /// Unpublishes volume `id` from `target` and removes the target. Only the volume's
    /// own publication is undone: at a path it is not published at nothing is touched,
    /// and a mount there that is not the volume's is left alone.
    pub fn unpublish(&self, id: &str, target: &Path) -> Result<()> {
        let target = &path_arg(target, "target path")?;
        let _guard = self.claim(id)?;
        let mut rec = self.get(id)?;
        let Some(publication) = rec
            .publications
            .iter()
            .find(|p| p.target == *target)
            .cloned()
        else {
            // Not published there by the records: only a mount of this very volume
            // there (left by an older daemon, or after the metadata was rebuilt) is
            // undone, and the target removed with it.
            let as_recorded = PublishRecord {
                target: target.clone(),
                read_only: false,
                block: false,
                single_writer: false,
            };
            let mut candidates = vec![self.expected_publication(&rec, &as_recorded)?];
            if rec.kind == VolumeKind::Loop {
                candidates.push(Expected::DeviceNode(self.loop_devices(&rec)?));
            }
            for expected in &candidates {
                if self.unmount_unrecorded(&rec, target, expected)? {
                    mountpoint::remove(target).ctx(|| format!("remove {}", target.display()))?;
                    break;
                }
            }
            return Ok(());
        };
        let expected = self.expected_publication(&rec, &publication)?;
        self.unmount_ours(id, target, &expected, "publication")?;
        // The spec asks the plugin to remove what it created at the target path.
        mountpoint::remove(target).ctx(|| format!("remove {}", target.display()))?;
        rec.publications.retain(|p| p.target != *target);
        self.store.put(&rec)?;
        tracing::info!(volume.id = %id, target = %target.display(), "unpublished");
        Ok(())
    }
}
