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
use crate::os::mount::{Expected, Found, MountOptions};
use crate::os::mountpoint::{self, MountPoint, Shape, canonical};

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

/// Who names a staging path: the CO (checked against the daemon's own places), or the
/// daemon itself (its ephemeral, attach and plugin directories under the state root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A CSI caller.
    Caller,
    /// The daemon's own staging directory.
    Daemon,
}

/// A caller's path in its canonical form, or INVALID_ARGUMENT.
pub(crate) fn path_arg(path: &Path, what: &str) -> Result<PathBuf> {
    canonical(path)
        .map_err(|e| Error::InvalidArgument(format!("{what} {:?} {e}", path.display().to_string())))
}

/// A path a caller says volume `id` is at (NodeGetVolumeStats, NodeExpandVolume) in
/// canonical form; one not even in the form of a path the volume could be at is not
/// one it is at (NOT_FOUND, as CSI asks).
pub(crate) fn volume_path(id: &str, path: &Path) -> Result<PathBuf> {
    canonical(path).map_err(|_| Error::PathNotFound {
        id: id.to_string(),
        path: path.to_path_buf(),
    })
}

/// An error resolving a caller's path: a link in it, or a file where a directory must
/// be, is the caller's to fix (INVALID_ARGUMENT); anything else is the system's.
pub(crate) fn resolve_err(path: &Path, what: &str, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) => Error::InvalidArgument(format!(
            "{what} {} has a symbolic link in it (paths are resolved without following links)",
            path.display()
        )),
        Some(libc::ENOTDIR) | Some(libc::EEXIST) => Error::InvalidArgument(format!(
            "{what} {}: {e} (a directory or, for block access, a file is needed)",
            path.display()
        )),
        _ => Error::io(format!("resolve {what} {}", path.display()), e),
    }
}

/// Removes what the daemon made at `path` (an empty directory, or a block target's
/// file) without following links; a directory that is not empty stays, with a warning.
fn remove_made(path: &Path) -> Result<()> {
    match mountpoint::remove(path) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
            tracing::warn!(path = %path.display(), "directory the daemon made is not empty; left in place");
            Ok(())
        }
        Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
    }
}

impl VolumeManager {
    /// What is mounted at `path` against `expected`; a link now in the path counts as
    /// something else (nothing the daemon mounted is reached through a link).
    fn probe(&self, path: &Path, expected: &Expected) -> Result<Found> {
        match self.host.mounter.probe(path, expected) {
            Ok(found) => Ok(found),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                Ok(Found::Other("a symbolic link in the path".into()))
            }
            Err(e) => Err(Error::io(format!("inspect {}", path.display()), e)),
        }
    }

    /// Unmounts the expected mount at `path`; anything else mounted there is
    /// FAILED_PRECONDITION and stays.
    fn unmount_ours(&self, id: &str, path: &Path, expected: &Expected, what: &str) -> Result<()> {
        let found = match self.host.mounter.unmount_expected(path, expected) {
            Ok(found) => found,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                Found::Other("a symbolic link in the path".into())
            }
            Err(e) => return Err(Error::io(format!("unmount {}", path.display()), e)),
        };
        match found {
            Found::Other(other) => Err(Error::FailedPrecondition(format!(
                "{other} is mounted at {}, not volume {id}'s {what} (a mount over it, or in \
                 its place); nothing was unmounted",
                path.display()
            ))),
            Found::Expected | Found::Nothing => Ok(()),
        }
    }

    /// Unmounts `path` if what is mounted there is this volume (`expected`) although
    /// no record says so; never a path the records name for the volume. Returns
    /// whether it unmounted.
    fn unmount_unrecorded(
        &self,
        rec: &VolumeRecord,
        path: &Path,
        expected: &Expected,
    ) -> Result<bool> {
        let recorded = rec.staging.as_ref().is_some_and(|s| s.path == path)
            || rec.publications.iter().any(|p| p.target == path);
        if recorded || self.probe(path, expected)? != Found::Expected {
            return Ok(false);
        }
        match self.host.mounter.unmount_expected(path, expected) {
            Ok(Found::Expected) => {
                tracing::warn!(volume.id = %rec.id, path = %path.display(), "unmounted a mount of the volume that no record named");
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) => Err(Error::io(format!("unmount {}", path.display()), e)),
        }
    }

    /// The loop devices attached to a loop volume's image.
    fn loop_devices(&self, rec: &VolumeRecord) -> Result<Vec<PathBuf>> {
        Ok(self
            .host
            .loops
            .find(&self.pool.image_path(&rec.id))
            .ctx(|| "list loop devices".into())?
            .into_iter()
            .map(|l| l.device)
            .collect())
    }

    /// What a volume's staging mount is.
    fn expected_staging(&self, rec: &VolumeRecord) -> Result<Expected> {
        Ok(match rec.kind {
            VolumeKind::Dir | VolumeKind::Image => Expected::Dir(self.pool.volume_dir(&rec.id)),
            VolumeKind::Loop => Expected::Device(self.loop_devices(rec)?),
        })
    }

    /// What a volume's publication at `p.target` is.
    fn expected_publication(&self, rec: &VolumeRecord, p: &PublishRecord) -> Result<Expected> {
        Ok(match rec.kind {
            _ if p.block => Expected::DeviceNode(self.loop_devices(rec)?),
            VolumeKind::Image => {
                Expected::Overlay(self.publication_dir(&rec.id, &p.target).join("upper"))
            }
            VolumeKind::Dir => Expected::Dir(self.pool.volume_dir(&rec.id)),
            VolumeKind::Loop => Expected::Device(self.loop_devices(rec)?),
        })
    }

    /// Refuses a caller's staging or target path that would put a mount over the
    /// daemon's own state (inside or above its state directory or pool) or over
    /// another staging or publication.
    fn check_caller_path(&self, id: &str, path: &Path, what: &str, staging: bool) -> Result<()> {
        for own in &self.owned_roots {
            if path.starts_with(own) || own.starts_with(path) {
                return Err(Error::InvalidArgument(format!(
                    "{what} {} is inside or above the daemon's own {}",
                    path.display(),
                    own.display()
                )));
            }
        }
        for other in self.store.list::<VolumeRecord>()? {
            let stagings = other
                .staging
                .iter()
                .filter(|_| !(staging && other.id == id))
                .map(|s| s.path.as_path());
            let targets = other
                .publications
                .iter()
                .filter(|_| staging || other.id != id)
                .map(|p| p.target.as_path());
            if let Some(covered) = stagings.chain(targets).find(|p| p.starts_with(path)) {
                return Err(Error::InvalidArgument(format!(
                    "{what} {} would cover {}, where volume {} is mounted",
                    path.display(),
                    covered.display(),
                    other.id
                )));
            }
        }
        Ok(())
    }

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

    fn mount_staging_at(
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

    /// Usage and health of volume `id` mounted at `path` (its staging path or a target).
    pub fn stats(&self, id: &str, path: &Path) -> Result<(VolumeUsage, VolumeHealth)> {
        let rec = self.get(id)?;
        let path = &volume_path(id, path)?;
        let expected = match rec.staging.as_ref().filter(|s| s.path == *path) {
            Some(_) => Some(self.expected_staging(&rec)?),
            None => match rec.publications.iter().find(|p| p.target == *path) {
                Some(p) => Some(self.expected_publication(&rec, p)?),
                None => None,
            },
        };
        let mounted = match &expected {
            Some(e) => self.probe(path, e)? == Found::Expected,
            None => false,
        };
        if !mounted {
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
        // Through a descriptor resolved without links: the numbers are this mount's.
        let st = MountPoint::open(path)
            .and_then(|mp| nix::sys::statvfs::fstatvfs(mp.fd()).map_err(io::Error::from))
            .map_err(|e| Error::io(format!("statvfs {}", path.display()), e))?;
        let frsize = st.fragment_size();
        let mut usage = VolumeUsage {
            total_bytes: st.blocks() * frsize,
            available_bytes: st.blocks_available() * frsize,
            used_bytes: (st.blocks() - st.blocks_free()) * frsize,
            total_inodes: st.files(),
            used_inodes: (st.files()).saturating_sub(st.files_free()),
            available_inodes: st.files_available(),
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
mod path_tests;

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
