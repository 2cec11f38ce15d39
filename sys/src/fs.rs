//! File and filesystem calls std does not offer: inode flags (nodatacow), reflinks
//! (FICLONE), freezing a filesystem, `syncfs`, `flock`, and the page-cache state of a
//! file (`cachestat`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use crate::{check, check_ok};

// From <linux/fs.h>.
const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;

const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;

/// Inode flag: no copy-on-write (btrfs nodatacow).
pub const FS_NOCOW_FL: libc::c_long = 0x0080_0000;

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

/// `syncfs(fd)`: flushes the whole filesystem holding `fd` (one call instead of an
/// fsync per extracted file).
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `fd` is valid for the call; syncfs takes nothing else.
    check_ok(unsafe { libc::syncfs(fd.as_raw_fd()) })
}

/// `flock(fd, LOCK_EX | LOCK_NB)`: `Ok(false)` when another open file description holds
/// the lock.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: `fd` is valid for the call; flock takes nothing else.
    match check_ok(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `cachestat(2)`'s number on x86_64 and aarch64 (the common table); libc does not
/// name it for glibc targets yet. Other architectures number it differently.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SYS_CACHESTAT: libc::c_long = 451;

/// `struct cachestat_range` of `cachestat(2)`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

/// `struct cachestat` of `cachestat(2)`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// Page-cache state of a range of a file, from `cachestat(2)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageCache {
    /// Pages in the page cache.
    pub cached: u64,
    /// Of those, dirty ones (written, not yet on disk).
    pub dirty: u64,
}

/// The page-cache state of `file`'s first `len` bytes (all of it for 0)
/// (`cachestat(2)`, Linux 6.5; ENOSYS before; recent kernels answer EPERM unless the
/// caller may write the file or owns it, which a root daemon can).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn page_cache(_file: impl AsFd, _len: u64) -> io::Result<PageCache> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// The page-cache state of `file`'s first `len` bytes (all of it for 0)
/// (`cachestat(2)`, Linux 6.5; ENOSYS before; recent kernels answer EPERM unless the
/// caller may write the file or owns it, which a root daemon can).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn page_cache(file: impl AsFd, len: u64) -> io::Result<PageCache> {
    let range = CachestatRange { off: 0, len };
    let mut stat = Cachestat::default();
    // SAFETY: `range` and `stat` are live, properly laid out (`repr(C)`, the kernel's
    // field order) for the whole call; the kernel reads `range` and writes only `stat`;
    // the descriptor is borrowed for the call.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_fd().as_raw_fd(),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PageCache {
        cached: stat.nr_cache,
        dirty: stat.nr_dirty,
    })
}
