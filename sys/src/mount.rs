//! The new mount API (open_tree, mount_setattr, move_mount) and the statx identity of
//! files and mount roots.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use crate::owned;

// From <linux/mount.h>.
const OPEN_TREE_CLONE: libc::c_uint = 1;

const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// Mount attribute: read-only.
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// Mount attribute: ignore set-user-id bits.
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;

/// Mount attribute: ignore device nodes.
pub const MOUNT_ATTR_NODEV: u64 = 0x4;

/// Mount attribute: no programs may be run from it.
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// Mount attribute: the access-time field (one of the three below).
pub const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;

/// Mount attribute: access times are never updated.
pub const MOUNT_ATTR_NOATIME: u64 = 0x10;

/// Mount attribute: access times are always updated.
pub const MOUNT_ATTR_STRICTATIME: u64 = 0x20;

/// Mount attribute: directory access times are never updated.
pub const MOUNT_ATTR_NODIRATIME: u64 = 0x80;

/// Mount attribute: map ids through a user namespace.
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` from <linux/mount.h> (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Clones the mount at the O_PATH descriptor `at` (only that mount, not the mounts
/// below it) into a detached mount: a bind mount that can be attached with
/// [`move_mount_onto`] and never resolves a path again.
pub fn open_tree_clone_fd(at: BorrowedFd<'_>) -> io::Result<std::os::fd::OwnedFd> {
    let flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    // SAFETY: the empty path is a static NUL-terminated string and `at` is valid for
    // the call (AT_EMPTY_PATH: the descriptor itself is the source).
    owned(unsafe { libc::syscall(libc::SYS_open_tree, at.as_raw_fd(), c"".as_ptr(), flags) })
}

/// Identity of the file behind a descriptor, from statx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    /// The root of a mount (None where the kernel does not say).
    pub mount_root: Option<bool>,
    /// Device of the filesystem holding it.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// The device a device node stands for (0 for other files).
    pub rdev: u64,
    /// File type and mode bits.
    pub mode: u32,
}

/// statx of the descriptor itself (AT_EMPTY_PATH), following nothing.
pub fn file_identity(fd: BorrowedFd<'_>) -> io::Result<FileIdentity> {
    statx_identity(fd, c"", libc::AT_EMPTY_PATH)
}

/// statx of `name` in directory `dir`, not following a final symlink (but crossing
/// into a mount on it): no descriptor of what it names is held, so a mount there is
/// not kept busy by the look.
pub fn file_identity_at(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> io::Result<FileIdentity> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(name.as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    statx_identity(dir, &c, 0)
}

fn statx_identity(
    fd: BorrowedFd<'_>,
    path: &std::ffi::CStr,
    flags: libc::c_int,
) -> io::Result<FileIdentity> {
    // SAFETY: statx is a plain C struct of integers; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and outlives the call, `stx` is live and
    // writable for it, and `fd` is valid for it.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            path.as_ptr(),
            flags | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_INO | libc::STATX_TYPE | libc::STATX_MODE,
            &mut stx,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let mount_root = libc::STATX_ATTR_MOUNT_ROOT as u64;
    Ok(FileIdentity {
        mount_root: (stx.stx_attributes_mask & mount_root != 0)
            .then_some(stx.stx_attributes & mount_root != 0),
        dev: libc::makedev(stx.stx_dev_major, stx.stx_dev_minor),
        ino: stx.stx_ino,
        rdev: libc::makedev(stx.stx_rdev_major, stx.stx_rdev_minor),
        mode: u32::from(stx.stx_mode),
    })
}

/// Sets (and clears) attributes on every mount of a detached tree; `userns` is the
/// user namespace for MOUNT_ATTR_IDMAP.
pub fn mount_setattr(
    tree: BorrowedFd<'_>,
    set: u64,
    clear: u64,
    userns: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: userns.map(|fd| fd.as_raw_fd() as u64).unwrap_or(0),
    };
    let empty = c"";
    let flags = libc::AT_EMPTY_PATH | libc::AT_RECURSIVE;
    // SAFETY: `empty` is a valid C string, `attr` a live #[repr(C)] mount_attr whose
    // size we pass; the fds are valid for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Attaches the detached mount `tree` onto the directory (or file) `target`, both
/// given as descriptors (move_mount with both EMPTY_PATH flags).
pub fn move_mount_onto(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
    let empty = c"";
    // SAFETY: `empty` is a valid C string; both fds are valid for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            target.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `fd` is the root of a mount (statx's `STATX_ATTR_MOUNT_ROOT`, Linux 5.8;
/// ENOTSUP where the kernel does not say), with its device and inode numbers.
pub fn mount_root_identity(fd: BorrowedFd<'_>) -> io::Result<(bool, u64, u64)> {
    let id = file_identity(fd)?;
    let root = id
        .mount_root
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOTSUP))?;
    Ok((root, id.dev, id.ino))
}

/// The data overlayfs takes from mount(2), as kernel overlayfs and `stowage-overlay -o`
/// read it: `lowerdir=A:B` (lowers top first), then `,upperdir=U,workdir=W` for a
/// writable overlay, then each of `extra`. `:` and `\` in a path are escaped; a comma
/// cannot be carried in a value, nor a path that is not UTF-8 written into it, and an
/// overlay needs a lower layer: each of those is EINVAL.
pub fn overlayfs_data<L: AsRef<Path>>(
    lowers: &[L],
    upper_and_work: Option<(&Path, &Path)>,
    extra: &[String],
) -> io::Result<String> {
    fn escape(p: &Path) -> io::Result<String> {
        let s = p
            .to_str()
            .filter(|s| !s.contains(','))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok(s.replace('\\', "\\\\").replace(':', "\\:"))
    }
    if lowers.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let lowers = lowers
        .iter()
        .map(|l| escape(l.as_ref()))
        .collect::<io::Result<Vec<_>>>()?
        .join(":");
    let mut data = format!("lowerdir={lowers}");
    if let Some((upper, work)) = upper_and_work {
        data.push_str(&format!(
            ",upperdir={},workdir={}",
            escape(upper)?,
            escape(work)?
        ));
    }
    for option in extra {
        data.push(',');
        data.push_str(option);
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlayfs_data_escapes_and_refuses_what_it_cannot_carry() {
        let lowers = [Path::new("/l/a"), Path::new("/l/b:c\\d")];
        assert_eq!(
            overlayfs_data(&lowers, None, &[]).unwrap(),
            "lowerdir=/l/a:/l/b\\:c\\\\d"
        );
        assert_eq!(
            overlayfs_data(
                &lowers[..1],
                Some((Path::new("/u"), Path::new("/w"))),
                &["volatile".to_string()]
            )
            .unwrap(),
            "lowerdir=/l/a,upperdir=/u,workdir=/w,volatile"
        );
        let einval = |r: io::Result<String>| r.unwrap_err().raw_os_error() == Some(libc::EINVAL);
        assert!(einval(overlayfs_data::<&Path>(&[], None, &[])));
        assert!(einval(overlayfs_data(&[Path::new("/l/a,b")], None, &[])));
        assert!(einval(overlayfs_data(
            &lowers,
            Some((Path::new("/u,x"), Path::new("/w"))),
            &[]
        )));
    }
}
