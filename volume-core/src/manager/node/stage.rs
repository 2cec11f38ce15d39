//! Staging a volume on this node (a loop device and its filesystem, or a bind of its
//! directory) and unstaging it.

use super::*;

impl VolumeManager {
    /// Stages volume `id` at `staging`.
    pub fn stage(&self, id: &str, staging: &Path, opts: &StageOptions) -> Result<()> {
        self.stage_from(id, staging, opts, Origin::Caller)
    }

    /// Stages volume `id` at `staging`, a path a caller named or one of the daemon's.
    pub(crate) fn stage_from(
        &self,
        id: &str,
        staging: &Path,
        opts: &StageOptions,
        origin: Origin,
    ) -> Result<()> {
        let staging = &path_arg(staging, "staging path")?;
        let _guard = self.claim(id)?;
        let mut rec = self.get(id)?;
        if origin == Origin::Caller {
            self.check_caller_path(id, staging, "staging path", true)?;
        }
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
        let mut created_dir = false;
        if let Some(existing) = &rec.staging {
            if existing.path != *staging || existing.block != opts.block {
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
            match self.staging_state(&rec)? {
                Found::Expected => return Ok(()),
                Found::Other(other) => {
                    return Err(Error::FailedPrecondition(format!(
                        "{other} is mounted at {}, where volume {id} is staged; nothing done",
                        staging.display()
                    )));
                }
                Found::Nothing => created_dir = existing.created_dir,
            }
        }
        rec.staging = Some(StageRecord {
            path: staging.clone(),
            loop_device: None,
            mount_flags: opts.mount_flags.clone(),
            block: opts.block,
            created_dir,
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

    /// What is at the recorded staging: for block staging, whether a loop device is
    /// attached to the image; else the mount at the staging path.
    pub(crate) fn staging_state(&self, rec: &VolumeRecord) -> Result<Found> {
        match &rec.staging {
            None => Ok(Found::Nothing),
            Some(s) if s.block => Ok(if self.loop_devices(rec)?.is_empty() {
                Found::Nothing
            } else {
                Found::Expected
            }),
            Some(s) => self.probe(&s.path, &self.expected_staging(rec)?),
        }
    }

    /// What is mounted at a recorded publication's target.
    pub(crate) fn publication_state(&self, rec: &VolumeRecord, p: &PublishRecord) -> Result<Found> {
        self.probe(&p.target, &self.expected_publication(rec, p)?)
    }

    /// True when the recorded staging is in place (see [`Self::staging_state`]).
    pub(crate) fn is_staged_in_place(&self, rec: &VolumeRecord) -> Result<bool> {
        Ok(self.staging_state(rec)? == Found::Expected)
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
        let target = MountPoint::prepare(staging, Shape::Dir)
            .map_err(|e| resolve_err(staging, "staging path", e))?;
        if let Some(s) = rec.staging.as_mut() {
            s.created_dir |= target.created();
        }
        let result = self.mount_staging_at(rec, &target, flags);
        if result.is_err() && target.created() {
            let _ = mountpoint::remove(staging);
            if let Some(s) = rec.staging.as_mut() {
                s.created_dir = false;
            }
        }
        result
    }

    pub(super) fn mount_staging_at(
        &self,
        rec: &mut VolumeRecord,
        target: &MountPoint,
        flags: &[String],
    ) -> Result<Option<PathBuf>> {
        let staging = target.path();
        let mut opts = MountOptions::volume_defaults();
        opts.extra = flags.to_vec();
        match rec.kind {
            VolumeKind::Dir | VolumeKind::Image => {
                let dir = self.pool.volume_dir(&rec.id);
                let source = MountPoint::own(&dir).ctx(|| format!("open {}", dir.display()))?;
                self.host
                    .mounter
                    .bind(&source, target, &opts)
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
                if let Err(e) = self.host.mounter.mount(&device, target, fs.as_str(), &opts) {
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

    /// Unstages volume `id` from `staging`: unmounts and detaches its loop device. Only
    /// the volume's own staging is undone: a path it is not staged at is refused, and
    /// a mount there that is not the volume's is left alone.
    pub fn unstage(&self, id: &str, staging: &Path) -> Result<()> {
        let staging = &path_arg(staging, "staging path")?;
        self.release_vanished_before(id)?;
        let _guard = self.claim(id)?;
        let mut rec = self.get(id)?;
        let Some(stage) = rec.staging.clone() else {
            // Not staged by the records: only a mount of this very volume there (left
            // by an older daemon, or after the metadata was rebuilt) is undone.
            if self.unmount_unrecorded(&rec, staging, &self.expected_staging(&rec)?)?
                && rec.kind == VolumeKind::Loop
            {
                self.pool.detach_loops(&rec.id)?;
            }
            return Ok(());
        };
        if stage.path != *staging {
            self.unmount_unrecorded(&rec, staging, &self.expected_staging(&rec)?)?;
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is staged at {}, not at {}; nothing was unmounted",
                stage.path.display(),
                staging.display()
            )));
        }
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
        if !rec.plugin_callers.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is mounted for {} container(s) through the volume plugin",
                rec.plugin_callers.len()
            )));
        }
        if !stage.block {
            let expected = self.expected_staging(&rec)?;
            self.unmount_ours(id, staging, &expected, "staging")?;
        }
        if rec.kind == VolumeKind::Loop {
            self.pool.detach_loops(&rec.id)?;
        }
        if stage.created_dir {
            remove_made(staging)?;
        }
        rec.staging = None;
        self.store.put(&rec)?;
        tracing::info!(volume.id = %id, staging = %staging.display(), "unstaged");
        Ok(())
    }
}
