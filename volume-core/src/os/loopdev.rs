//! Loop devices: attaching image files as block devices and finding them again.

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::sys;

/// A loop device and the file behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopInfo {
    /// The device node, e.g. /dev/loop3.
    pub device: PathBuf,
    /// The backing file as the kernel names it.
    pub backing_file: PathBuf,
    /// Whether the loop driver does direct I/O on the file.
    pub direct_io: bool,
    /// The backing file's inode number, as the loop driver reports it.
    pub inode: Option<u64>,
}

impl LoopInfo {
    /// True when this device is backed by `file` (canonical, with inode `inode`).
    ///
    /// The kernel names a backing file by its path in the mount namespace of the
    /// process that bound the device. A daemon restarted in a new container (a new
    /// mount namespace over the same host directory) sees only the part below the
    /// bind mount's root, e.g. `/images/volumes/v-…/disk.img`. Matching paths alone
    /// then finds nothing, and a second loop device would be bound to a file whose
    /// filesystem is mounted through the first. So a path that is a proper suffix of
    /// `file` (two components or more, never a deleted file) matches too when the
    /// inode is the same.
    pub fn backs(&self, file: &Path, inode: u64) -> bool {
        if self.backing_file == file {
            return true;
        }
        let Ok(rel) = self.backing_file.strip_prefix("/") else {
            return false;
        };
        let deleted = rel.to_str().is_some_and(|s| s.ends_with(" (deleted)"));
        let parts = rel
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count();
        !deleted && parts >= 2 && file.ends_with(rel) && self.inode == Some(inode)
    }

    /// The file under `dir` that backs this device, when one does: the kernel's path
    /// itself, or (seen from another mount namespace) `dir` joined with what follows
    /// `dir`'s last component in the kernel's path, if that file has the inode.
    pub fn backing_under(&self, dir: &Path) -> Option<PathBuf> {
        if self.backing_file.starts_with(dir) {
            return Some(self.backing_file.clone());
        }
        let last = dir.file_name()?;
        let parts: Vec<_> = self.backing_file.components().collect();
        let at = parts
            .iter()
            .position(|c| matches!(c, Component::Normal(n) if *n == last))?;
        let candidate = parts[at + 1..]
            .iter()
            .fold(dir.to_path_buf(), |p, c| p.join(c));
        let inode = std::fs::metadata(&candidate).ok()?.ino();
        self.backs(&candidate, inode).then_some(candidate)
    }
}

/// Attaches and detaches loop devices.
pub trait LoopControl: Send + Sync + Debug {
    /// Attaches `file` to a free loop device with 4 KiB logical blocks, with direct I/O
    /// when `direct_io` (falling back to buffered I/O where the file does not support
    /// it), and returns the device node.
    fn attach(&self, file: &Path, direct_io: bool, read_only: bool) -> io::Result<LoopInfo>;
    /// Detaches the loop device `device`.
    fn detach(&self, device: &Path) -> io::Result<()>;
    /// Makes `device` re-read its backing file's size.
    fn refresh_capacity(&self, device: &Path) -> io::Result<()>;
    /// All attached loop devices.
    fn list(&self) -> io::Result<Vec<LoopInfo>>;

    /// The loop devices backed by `file` (see [`LoopInfo::backs`]).
    fn find(&self, file: &Path) -> io::Result<Vec<LoopInfo>> {
        let want = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
        let Ok(meta) = std::fs::metadata(&want) else {
            // No such file: only the kernel's own name for it can match.
            return Ok(self
                .list()?
                .into_iter()
                .filter(|l| l.backing_file == want)
                .collect());
        };
        Ok(self
            .list()?
            .into_iter()
            .filter(|l| l.backs(&want, meta.ino()))
            .collect())
    }
}

/// Loop devices through /dev/loop-control and LOOP_CONFIGURE; state read from sysfs.
#[derive(Debug, Clone)]
pub struct RealLoopControl {
    dev: PathBuf,
    sys: PathBuf,
}

impl RealLoopControl {
    /// `dev` is normally /dev and `sys` /sys.
    pub fn new(dev: impl Into<PathBuf>, sys: impl Into<PathBuf>) -> Self {
        RealLoopControl {
            dev: dev.into(),
            sys: sys.into(),
        }
    }
}

/// Logical block size of our loop devices: matches the 4 KiB sectors of btrfs and of
/// the filesystems we make, so direct I/O is possible.
const LOOP_BLOCK_SIZE: u32 = 4096;

impl LoopControl for RealLoopControl {
    fn attach(&self, file: &Path, direct_io: bool, read_only: bool) -> io::Result<LoopInfo> {
        let backing = OpenOptions::new().read(true).write(!read_only).open(file)?;
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dev.join("loop-control"))?;
        let mut flags = 0;
        if direct_io {
            flags |= sys::LO_FLAGS_DIRECT_IO;
        }
        if read_only {
            flags |= sys::LO_FLAGS_READ_ONLY;
        }
        // Another process may claim the free device between GET_FREE and CONFIGURE:
        // EBUSY then, so ask again.
        for _ in 0..16 {
            let n = sys::loop_ctl_get_free(control.as_fd())?;
            let device = self.dev.join(format!("loop{n}"));
            let dev = OpenOptions::new()
                .read(true)
                .write(!read_only)
                .open(&device)?;
            match sys::loop_configure(dev.as_fd(), backing.as_fd(), LOOP_BLOCK_SIZE, flags) {
                Ok(()) => {
                    let direct = read_sys_flag(&self.sys, n, "dio").unwrap_or(false);
                    return Ok(LoopInfo {
                        device,
                        backing_file: file.canonicalize()?,
                        direct_io: direct,
                        inode: Some(backing.metadata()?.ino()),
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            "no free loop device after 16 tries",
        ))
    }

    fn detach(&self, device: &Path) -> io::Result<()> {
        let dev = File::open(device)?;
        match sys::loop_clr_fd(dev.as_fd()) {
            // ENXIO: not bound to anything, which is what we want.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(()),
            other => other,
        }
    }

    fn refresh_capacity(&self, device: &Path) -> io::Result<()> {
        let dev = File::open(device)?;
        sys::loop_set_capacity(dev.as_fd())
    }

    fn list(&self) -> io::Result<Vec<LoopInfo>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.sys.join("block"))? {
            let name = entry?.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|s| s.strip_prefix("loop"))
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let backing = self.sys.join(format!("block/loop{n}/loop/backing_file"));
            let Ok(text) = std::fs::read_to_string(&backing) else {
                continue; // not bound
            };
            let device = self.dev.join(format!("loop{n}"));
            let inode = File::open(&device)
                .and_then(|d| sys::loop_backing_inode(d.as_fd()))
                .ok();
            out.push(LoopInfo {
                device,
                backing_file: PathBuf::from(text.trim_end_matches('\n')),
                direct_io: read_sys_flag(&self.sys, n, "dio").unwrap_or(false),
                inode,
            });
        }
        out.sort_by(|a, b| a.device.cmp(&b.device));
        Ok(out)
    }
}

fn read_sys_flag(sys: &Path, n: u32, name: &str) -> io::Result<bool> {
    let text = std::fs::read_to_string(sys.join(format!("block/loop{n}/loop/{name}")))?;
    Ok(text.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loop device as a daemon in another mount namespace sees it: the kernel's
    /// path is relative to the bind mount the image was opened through.
    fn seen_from_elsewhere(rel: &str, inode: Option<u64>) -> LoopInfo {
        LoopInfo {
            device: "/dev/loop7".into(),
            backing_file: rel.into(),
            direct_io: true,
            inode,
        }
    }

    #[test]
    fn a_device_bound_from_another_mount_namespace_is_found_by_inode() {
        let dir = tempfile::tempdir().unwrap();
        let vols = dir.path().join("state/images/volumes");
        std::fs::create_dir_all(vols.join("v-1")).unwrap();
        let image = vols.join("v-1/disk.img");
        std::fs::write(&image, b"x").unwrap();
        let image = image.canonicalize().unwrap();
        let ino = std::fs::metadata(&image).unwrap().ino();

        let same_ns = seen_from_elsewhere(image.to_str().unwrap(), None);
        assert!(same_ns.backs(&image, ino), "the kernel's own path matches");
        let other_ns = seen_from_elsewhere("/images/volumes/v-1/disk.img", Some(ino));
        assert!(other_ns.backs(&image, ino));
        assert_eq!(
            other_ns.backing_under(&vols.canonicalize().unwrap()),
            Some(image.clone())
        );
        // A suffix alone is not enough: the inode must agree, the file must not be
        // a deleted one, and one component names nothing.
        assert!(
            !seen_from_elsewhere("/images/volumes/v-1/disk.img", Some(ino + 1)).backs(&image, ino)
        );
        assert!(!seen_from_elsewhere("/images/volumes/v-1/disk.img", None).backs(&image, ino));
        assert!(
            !seen_from_elsewhere("/images/volumes/v-1/disk.img (deleted)", Some(ino))
                .backs(&image, ino)
        );
        assert!(!seen_from_elsewhere("/disk.img", Some(ino)).backs(&image, ino));
        assert!(!seen_from_elsewhere("/other/v-1/disk.img", Some(ino)).backs(&image, ino));
        assert_eq!(
            seen_from_elsewhere("/images/volumes/v-2/disk.img", Some(ino))
                .backing_under(&vols.canonicalize().unwrap()),
            None
        );
    }
}
