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
    /// The backing file's device and inode numbers, as the loop driver reports them.
    pub file_id: Option<FileId>,
}

/// A file's identity on this host: the device and inode numbers of `stat`. Two
/// paths name the same file exactly when these agree (a file bound to a loop
/// device is held open, so its inode number cannot go to another file meanwhile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

impl LoopInfo {
    /// True when this device is backed by `file` (canonical, whose identity is `id`).
    ///
    /// The kernel names a backing file by its path in the mount namespace of the
    /// process that bound the device, so a path means nothing across namespaces:
    /// - A daemon restarted in a new container (a new mount namespace over the
    ///   same host directory) sees only the part below the bind mount's root, e.g.
    ///   `/images/volumes/v-…/disk.img`. Matched by path it found nothing and bound
    ///   a second loop device to a file whose filesystem was mounted through the
    ///   first.
    /// - Two daemons on one kernel (two nodes of a test cluster, two containers)
    ///   each with its own directory bound at the same path see each other's
    ///   devices under their own files' names. Matched by path, one adopted the
    ///   other's pool device and mounted the other's pool.
    ///
    /// So the file's identity decides whenever the kernel gave it, and the path only
    /// when it did not.
    pub fn backs(&self, file: &Path, id: FileId) -> bool {
        match self.file_id {
            Some(known) => known == id,
            None => self.backing_file == file,
        }
    }

    /// The file under `dir` that backs this device, when one does: the kernel's path
    /// itself, or (seen from another mount namespace) `dir` joined with what follows
    /// `dir`'s last component in the kernel's path; either only if it is that file.
    pub fn backing_under(&self, dir: &Path) -> Option<PathBuf> {
        let candidate = if self.backing_file.starts_with(dir) {
            self.backing_file.clone()
        } else {
            let last = dir.file_name()?;
            let parts: Vec<_> = self.backing_file.components().collect();
            let at = parts
                .iter()
                .position(|c| matches!(c, Component::Normal(n) if *n == last))?;
            parts[at + 1..]
                .iter()
                .fold(dir.to_path_buf(), |p, c| p.join(c))
        };
        let id = FileId::of(&std::fs::metadata(&candidate).ok()?);
        self.backs(&candidate, id).then_some(candidate)
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
            .filter(|l| l.backs(&want, FileId::of(&meta)))
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
                        file_id: Some(FileId::of(&backing.metadata()?)),
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
            let file_id = File::open(&device)
                .and_then(|d| sys::loop_backing_file_id(d.as_fd()))
                .ok()
                .map(|(dev, ino)| FileId { dev, ino });
            out.push(LoopInfo {
                device,
                backing_file: PathBuf::from(text.trim_end_matches('\n')),
                direct_io: read_sys_flag(&self.sys, n, "dio").unwrap_or(false),
                file_id,
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

    /// A loop device as a daemon in some mount namespace reads it: the kernel's
    /// path (relative to whatever the binder's namespace had there) and, when the
    /// loop driver answered, the file's identity.
    fn seen(path: &str, file_id: Option<FileId>) -> LoopInfo {
        LoopInfo {
            device: "/dev/loop7".into(),
            backing_file: path.into(),
            direct_io: true,
            file_id,
        }
    }

    fn image_in(dir: &Path, name: &str) -> (PathBuf, FileId) {
        let vols = dir.join(name).join("images/volumes");
        std::fs::create_dir_all(vols.join("v-1")).unwrap();
        let image = vols.join("v-1/disk.img");
        std::fs::write(&image, b"x").unwrap();
        let image = image.canonicalize().unwrap();
        let id = FileId::of(&std::fs::metadata(&image).unwrap());
        (image, id)
    }

    #[test]
    fn a_device_bound_from_another_mount_namespace_is_found_by_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (image, id) = image_in(dir.path(), "state");
        let vols = image.parent().unwrap().parent().unwrap().to_path_buf();

        assert!(seen(image.to_str().unwrap(), Some(id)).backs(&image, id));
        // A daemon restarted in a new container: only the part below its bind mount.
        let other_ns = seen("/images/volumes/v-1/disk.img", Some(id));
        assert!(other_ns.backs(&image, id));
        assert_eq!(other_ns.backing_under(&vols), Some(image.clone()));
        // Another file with that tail, or none at all, is not it.
        let other = FileId {
            dev: id.dev,
            ino: id.ino + 1,
        };
        assert!(!seen("/images/volumes/v-1/disk.img", Some(other)).backs(&image, id));
        assert_eq!(
            seen("/images/volumes/v-2/disk.img", Some(id)).backing_under(&vols),
            None
        );
        // Without the loop driver's answer only the kernel's own path matches.
        assert!(seen(image.to_str().unwrap(), None).backs(&image, id));
        assert!(!seen("/images/volumes/v-1/disk.img", None).backs(&image, id));
    }

    #[test]
    fn the_same_path_in_another_namespace_is_not_the_same_file() {
        // Two daemons on one kernel, each with its own directory bound at the same
        // path: the kernel's path for the other's device is exactly this daemon's
        // path for its own file. Matched by path, a test cluster's second node
        // adopted the first node's pool device and mounted its pool.
        let dir = tempfile::tempdir().unwrap();
        let (mine, my_id) = image_in(dir.path(), "node-2");
        let (_, their_id) = image_in(dir.path(), "node-1");
        let theirs = seen(mine.to_str().unwrap(), Some(their_id));
        assert!(!theirs.backs(&mine, my_id));
        let vols = mine.parent().unwrap().parent().unwrap().to_path_buf();
        assert_eq!(theirs.backing_under(&vols), None);
        // Same inode number on another filesystem: not the same file either.
        let elsewhere = FileId {
            dev: my_id.dev + 1,
            ino: my_id.ino,
        };
        assert!(!seen(mine.to_str().unwrap(), Some(elsewhere)).backs(&mine, my_id));
    }
}
