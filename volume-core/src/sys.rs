//! The crate's only unsafe code: ioctls that neither nix nor rustix wraps (loop device
//! configuration, inode flags). Each function takes borrowed file descriptors and returns
//! `io::Result`, so callers stay safe.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

// From <linux/loop.h>.
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;

/// `lo_flags`: the device is read-only.
pub const LO_FLAGS_READ_ONLY: u32 = 1;
/// `lo_flags`: the loop driver does direct I/O on the backing file.
pub const LO_FLAGS_DIRECT_IO: u32 = 16;

// From <linux/fs.h>.
const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
/// Inode flag: no copy-on-write (btrfs nodatacow).
pub const FS_NOCOW_FL: libc::c_long = 0x0080_0000;

/// `struct loop_info64` from <linux/loop.h>.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` from <linux/loop.h>.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Asks /dev/loop-control for the number of a free loop device (creating one if needed).
pub fn loop_ctl_get_free(control: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and only returns an int; the fd is a
    // valid open descriptor for the duration of the call.
    let n = check(unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) })?;
    Ok(n as u32)
}

/// Binds `backing` to the loop device `dev` in one step (LOOP_CONFIGURE).
pub fn loop_configure(
    dev: BorrowedFd<'_>,
    backing: BorrowedFd<'_>,
    block_size: u32,
    flags: u32,
) -> io::Result<()> {
    let config = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size,
        info: LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: flags,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        },
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `LoopConfig` mirrors
    // with #[repr(C)]; the pointer is valid for the call and not retained by the kernel.
    check(unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            LOOP_CONFIGURE,
            &config as *const LoopConfig,
        )
    })?;
    Ok(())
}

/// Unbinds a loop device from its backing file.
pub fn loop_clr_fd(dev: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: LOOP_CLR_FD takes no argument; the fd is valid for the call.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD) })?;
    Ok(())
}

/// Makes a loop device re-read the size of its backing file.
pub fn loop_set_capacity(dev: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: LOOP_SET_CAPACITY takes no argument; the fd is valid for the call.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_CAPACITY) })?;
    Ok(())
}

/// Reads an inode's flags (FS_IOC_GETFLAGS).
pub fn get_inode_flags(file: BorrowedFd<'_>) -> io::Result<libc::c_long> {
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one long through the pointer, which points to a
    // live local for the duration of the call.
    check(unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            FS_IOC_GETFLAGS,
            &mut flags as *mut libc::c_long,
        )
    })?;
    Ok(flags)
}

/// Writes an inode's flags (FS_IOC_SETFLAGS).
pub fn set_inode_flags(file: BorrowedFd<'_>, flags: libc::c_long) -> io::Result<()> {
    // SAFETY: FS_IOC_SETFLAGS reads one long through the pointer, which points to a live
    // local for the duration of the call.
    check(unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            FS_IOC_SETFLAGS,
            &flags as *const libc::c_long,
        )
    })?;
    Ok(())
}

// From <linux/fs.h>: _IOW(0x94, 9, int).
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Makes `dest` share all of `source`'s extents (a reflink): one atomic step, or an
/// error where the filesystem cannot (EOPNOTSUPP, EXDEV, EINVAL).
pub fn ficlone(dest: BorrowedFd<'_>, source: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its integer argument; both fds
    // are valid for the call.
    check(unsafe { libc::ioctl(dest.as_raw_fd(), FICLONE, source.as_raw_fd()) })?;
    Ok(())
}

// From <linux/fs.h>: _IOWR('X', 119, int) and _IOWR('X', 120, int).
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

/// Freezes the filesystem `mount_dir` is the root of: flushes it and blocks new writes
/// until [`thaw`], so a copy of its device taken meanwhile is consistent.
pub fn freeze(mount_dir: BorrowedFd<'_>) -> io::Result<()> {
    let arg: libc::c_int = 0;
    // SAFETY: FIFREEZE takes an int argument it ignores; the fd is valid for the call.
    check(unsafe { libc::ioctl(mount_dir.as_raw_fd(), FIFREEZE, arg) })?;
    Ok(())
}

/// Thaws a filesystem frozen with [`freeze`].
pub fn thaw(mount_dir: BorrowedFd<'_>) -> io::Result<()> {
    let arg: libc::c_int = 0;
    // SAFETY: FITHAW takes an int argument it ignores; the fd is valid for the call.
    check(unsafe { libc::ioctl(mount_dir.as_raw_fd(), FITHAW, arg) })?;
    Ok(())
}

/// Sets extended attribute `name` of the open file `file`.
pub fn fsetxattr(file: BorrowedFd<'_>, name: &str, value: &[u8]) -> io::Result<()> {
    let c_name =
        std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the name is NUL-terminated and lives for the call; `value` points to
    // `value.len()` readable bytes; the fd is valid for the call.
    check(unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })?;
    Ok(())
}

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

fn c_path(path: &std::path::Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn owned(ret: libc::c_long) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(ret as libc::c_int) })
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

/// Opens `path` relative to `dir` with openat2, never leaving `dir` and following no
/// symlink at all (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS), as an
/// O_PATH descriptor of a directory when `directory`.
pub fn open_beneath(
    dir: BorrowedFd<'_>,
    path: &std::path::Path,
    directory: bool,
) -> io::Result<std::os::fd::OwnedFd> {
    const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
    let p = c_path(path)?;
    let mut how: libc::open_how = {
        // SAFETY: open_how is a plain C struct of integers; all-zero is its default.
        unsafe { std::mem::zeroed() }
    };
    // No O_NOFOLLOW: with O_PATH it would open a final symlink itself; instead
    // RESOLVE_NO_SYMLINKS refuses a symlink anywhere in the path with ELOOP.
    how.flags =
        (libc::O_PATH | libc::O_CLOEXEC | if directory { libc::O_DIRECTORY } else { 0 }) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    // SAFETY: `p` is NUL-terminated, `how` is a live open_how whose size we pass, and
    // `dir` is valid for the call.
    owned(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            p.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    })
}
