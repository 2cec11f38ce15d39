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
}

mod health;
mod publish;
mod stage;

#[cfg(test)]
mod path_tests;
#[cfg(test)]
mod tests;
