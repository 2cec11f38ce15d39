//! Paths a caller names for a mount (CSI staging and target paths), resolved without
//! following any symbolic link, and held as a descriptor from then on.
//!
//! A staging or target path comes from the container orchestrator, and anyone who can
//! write to one of its parent directories could swap a component for a link between a
//! check and a mount. So a path is written in one canonical form ([`canonical`]: no `.`
//! or `..`, no repeated or trailing `/`), then opened component by component with
//! openat2 (`RESOLVE_NO_SYMLINKS`), creating what is missing with mkdirat beneath the
//! parent's descriptor, and the mount is made through the final descriptor. A link
//! anywhere in the path is refused with `ELOOP`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::sys;

/// What is at a mount point: a directory, or a file (a block volume's target).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A directory.
    Dir,
    /// A regular file (a device node is bound onto it).
    File,
}

/// A path resolved without following links: its canonical text and an O_PATH
/// descriptor of what it named when it was resolved.
#[derive(Debug)]
pub struct MountPoint {
    path: PathBuf,
    fd: OwnedFd,
    created: bool,
}

/// Why a caller's path is not acceptable as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Empty.
    #[error("is empty")]
    Empty,
    /// Relative.
    #[error("is not absolute")]
    Relative,
    /// Has a `.` or `..` component.
    #[error("has a . or .. component")]
    DotComponent,
    /// Is `/` itself.
    #[error("is the root directory")]
    Root,
    /// Holds a NUL byte.
    #[error("holds a NUL byte")]
    Nul,
}

/// The one form a caller's path is stored and compared in: absolute, without `.` or
/// `..` components (refused, not resolved), with single `/` separators and no trailing
/// `/`.
pub fn canonical(path: &Path) -> Result<PathBuf, PathError> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err(PathError::Empty);
    }
    if bytes[0] != b'/' {
        return Err(PathError::Relative);
    }
    if bytes.contains(&0) {
        return Err(PathError::Nul);
    }
    let mut out = Vec::with_capacity(bytes.len());
    for part in bytes.split(|b| *b == b'/').filter(|p| !p.is_empty()) {
        if part == b"." || part == b".." {
            return Err(PathError::DotComponent);
        }
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        return Err(PathError::Root);
    }
    Ok(PathBuf::from(OsStr::from_bytes(&out)))
}

/// `/` as an O_PATH descriptor.
fn root() -> io::Result<OwnedFd> {
    nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

fn invalid() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// The parent directory of a canonical path, opened without following links, and the
/// final component's name.
fn open_parent(path: &Path) -> io::Result<(OwnedFd, &OsStr)> {
    let name = path.file_name().ok_or_else(invalid)?;
    let parent = path.parent().ok_or_else(invalid)?;
    let rel = parent.strip_prefix("/").map_err(|_| invalid())?;
    let root = root()?;
    let dir = if rel.as_os_str().is_empty() {
        root
    } else {
        sys::open_beneath(root.as_fd(), rel, true)?
    };
    Ok((dir, name))
}

impl MountPoint {
    /// Opens an existing path without following any link (`ELOOP` if one is met).
    /// `path` must be canonical.
    pub fn open(path: &Path) -> io::Result<Self> {
        let rel = path.strip_prefix("/").map_err(|_| invalid())?;
        let root = root()?;
        let fd = sys::open_beneath(root.as_fd(), rel, false)?;
        Ok(MountPoint {
            path: path.to_path_buf(),
            fd,
            created: false,
        })
    }

    /// Opens `path`, first creating what is missing of it — directories (0750), and a
    /// final empty file for [`Shape::File`] — beneath descriptors, never following a
    /// link; an existing final entry of the other shape is `EEXIST`.
    pub fn prepare(path: &Path, shape: Shape) -> io::Result<Self> {
        let rel = path.strip_prefix("/").map_err(|_| invalid())?;
        let parts: Vec<&OsStr> = rel.iter().collect();
        let Some((last, dirs)) = parts.split_last() else {
            return Err(invalid());
        };
        let mut dir = root()?;
        for part in dirs {
            dir = open_or_make_dir(dir.as_fd(), Path::new(part))?;
        }
        let last = Path::new(last);
        let mut created = false;
        let fd = match shape {
            Shape::Dir => match sys::open_beneath(dir.as_fd(), last, true) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    created = make_dir(dir.as_fd(), last)?;
                    sys::open_beneath(dir.as_fd(), last, true)?
                }
                Err(e) => return Err(e),
            },
            Shape::File => {
                match nix::fcntl::openat(
                    dir.as_fd(),
                    last,
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o640),
                ) {
                    Ok(_) => created = true,
                    Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                let fd = sys::open_beneath(dir.as_fd(), last, false)?;
                let id = sys::file_identity(fd.as_fd())?;
                if id.mode & libc::S_IFMT == libc::S_IFDIR {
                    return Err(io::Error::from_raw_os_error(libc::EEXIST));
                }
                fd
            }
        };
        Ok(MountPoint {
            path: path.to_path_buf(),
            fd,
            created,
        })
    }

    /// A path the daemon owns (its state directory, pool, a device node), opened as the
    /// operator configured it: links in it are the operator's, not a caller's.
    pub fn own(path: &Path) -> io::Result<Self> {
        let fd = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())?;
        Ok(MountPoint {
            path: path.to_path_buf(),
            fd,
            created: false,
        })
    }

    /// The canonical path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The O_PATH descriptor of what the path named.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// True when [`MountPoint::prepare`] created the final entry.
    pub fn created(&self) -> bool {
        self.created
    }

    /// `/proc/<this process>/fd/N` for this descriptor: a path that mount(2) and the
    /// programs this process runs follow to exactly this file, whatever happened to
    /// the path since (a child's own `/proc/self` would be another process); valid
    /// while `self` lives.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            std::os::fd::AsRawFd::as_raw_fd(&self.fd)
        ))
    }

    /// statx identity of what the descriptor names.
    pub fn identity(&self) -> io::Result<sys::FileIdentity> {
        sys::file_identity(self.fd.as_fd())
    }
}

fn make_dir(dir: BorrowedFd<'_>, name: &Path) -> io::Result<bool> {
    match nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(0o750)) {
        Ok(()) => Ok(true),
        // Made meanwhile by someone else: opened below like any existing directory.
        Err(nix::errno::Errno::EEXIST) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn open_or_make_dir(dir: BorrowedFd<'_>, name: &Path) -> io::Result<OwnedFd> {
    match sys::open_beneath(dir, name, true) {
        Ok(fd) => Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            make_dir(dir, name)?;
            sys::open_beneath(dir, name, true)
        }
        Err(e) => Err(e),
    }
}

/// The statx identity of what canonical `path` names (the root of a mount on it, if
/// any), looked up beneath its parent's descriptor without following links and
/// without holding a descriptor of it: a descriptor would keep a mount there busy
/// (and a process forked meanwhile would inherit it until its exec).
pub fn identity_of(path: &Path) -> io::Result<sys::FileIdentity> {
    let (dir, name) = open_parent(path)?;
    sys::file_identity_at(dir.as_fd(), name)
}

/// Unmounts the topmost mount at canonical `path`, reached through its parent's
/// descriptor (resolved without links) and never following a link in the last
/// component. A descriptor of the mount itself would keep it busy; the parent's does
/// not.
pub fn unmount_beneath(path: &Path) -> io::Result<()> {
    let (dir, name) = open_parent(path)?;
    let mut via = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&dir)
    ));
    via.push(name);
    nix::mount::umount2(&via, nix::mount::MntFlags::UMOUNT_NOFOLLOW)?;
    Ok(())
}

/// Removes the empty directory or the file at canonical `path` (a target the daemon
/// made) through its parent's descriptor, following no link; gone already is success.
pub fn remove(path: &Path) -> io::Result<()> {
    let (dir, name) = match open_parent(path) {
        Ok(p) => p,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let is_dir = match nix::sys::stat::fstatat(
        dir.as_fd(),
        name,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => st.st_mode & libc::S_IFMT == libc::S_IFDIR,
        Err(nix::errno::Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let flag = if is_dir {
        nix::unistd::UnlinkatFlags::RemoveDir
    } else {
        nix::unistd::UnlinkatFlags::NoRemoveDir
    };
    match nix::unistd::unlinkat(dir.as_fd(), name, flag) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_refuses_dots_and_folds_slashes() {
        assert_eq!(canonical(Path::new("/a//b/")).unwrap(), Path::new("/a/b"));
        assert_eq!(canonical(Path::new("/a/b")).unwrap(), Path::new("/a/b"));
        for bad in ["/a/../b", "/a/./b", "/..", "/a/b/.", "/a/b/.."] {
            assert_eq!(
                canonical(Path::new(bad)),
                Err(PathError::DotComponent),
                "{bad}"
            );
        }
        assert_eq!(canonical(Path::new("")), Err(PathError::Empty));
        assert_eq!(canonical(Path::new("a/b")), Err(PathError::Relative));
        assert_eq!(canonical(Path::new("//")), Err(PathError::Root));
        // Names that merely start with dots are ordinary.
        assert!(canonical(Path::new("/a/..b/.c")).is_ok());
    }

    #[test]
    fn prepare_makes_missing_directories_and_refuses_links() {
        let dir = tempfile::tempdir().unwrap();
        let base = canonical(dir.path()).unwrap();
        let target = base.join("x/y/z");
        let mp = MountPoint::prepare(&target, Shape::Dir).unwrap();
        assert!(mp.created());
        assert!(target.is_dir());
        let again = MountPoint::prepare(&target, Shape::Dir).unwrap();
        assert!(!again.created());

        // A link anywhere in the path: nothing is made where it points.
        let elsewhere = base.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, base.join("link")).unwrap();
        let e = MountPoint::prepare(&base.join("link/sub"), Shape::Dir).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        let e = MountPoint::prepare(&base.join("link"), Shape::Dir).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        let e = MountPoint::open(&base.join("link")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn files_are_made_for_block_targets_and_removed_through_the_parent() {
        let dir = tempfile::tempdir().unwrap();
        let base = canonical(dir.path()).unwrap();
        let file = base.join("pods/dev");
        let mp = MountPoint::prepare(&file, Shape::File).unwrap();
        assert!(mp.created() && file.is_file());
        assert!(!MountPoint::prepare(&file, Shape::File).unwrap().created());
        assert_eq!(
            MountPoint::prepare(&base.join("pods"), Shape::File)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EEXIST)
        );
        remove(&file).unwrap();
        assert!(!file.exists());
        remove(&file).unwrap();
        // A link is removed as a link, never followed.
        let kept = base.join("kept");
        std::fs::create_dir(&kept).unwrap();
        std::os::unix::fs::symlink(&kept, base.join("l")).unwrap();
        remove(&base.join("l")).unwrap();
        assert!(kept.is_dir());
    }
}
