//! Calls relative to a directory descriptor: `openat2` that never leaves the directory
//! nor follows a link, and `mkdirat`, `mknodat`, `symlinkat`, `linkat`, `unlinkat`,
//! `fchownat`, `fchmodat`, `utimensat`, `futimens`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use crate::{check_ok, cstr};

/// `RESOLVE_NO_MAGICLINKS` from <linux/openat2.h> (libc exports only some of the flags).
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;

/// A second and nanosecond pair, as `timespec` wants it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

fn timespec(t: Timestamp) -> libc::timespec {
    libc::timespec {
        tv_sec: t.sec as libc::time_t,
        tv_nsec: t.nsec as libc::c_long,
    }
}

/// Opens `path` relative to `dir` with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
/// RESOLVE_NO_MAGICLINKS)`: the walk never leaves `dir` and a symlink anywhere in the
/// path, the last component included, fails with `ELOOP`. `mode` is used only with
/// `O_CREAT`.
pub fn open_beneath(
    dir: BorrowedFd<'_>,
    path: &OsStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let p = cstr(path.as_bytes())?;
    let mut how: libc::open_how = {
        // SAFETY: open_how is a plain C struct of integers; all-zero is its default.
        unsafe { std::mem::zeroed() }
    };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    if flags & libc::O_CREAT != 0 {
        how.mode = u64::from(mode);
    }
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    // SAFETY: `p` is NUL-terminated, `how` is a live open_how whose size we pass, and
    // `dir` is a valid descriptor for the duration of the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            p.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdirat(dir: BorrowedFd<'_>, name: &OsStr, mode: libc::mode_t) -> io::Result<()> {
    let n = cstr(name.as_bytes())?;
    // SAFETY: `n` is NUL-terminated and `dir` is valid for the call.
    check_ok(unsafe { libc::mkdirat(dir.as_raw_fd(), n.as_ptr(), mode) })
}

/// `mknodat(dir, name, mode, dev)`; `mode` carries the file type (S_IFCHR, S_IFBLK,
/// S_IFIFO).
pub fn mknodat(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    mode: libc::mode_t,
    dev: libc::dev_t,
) -> io::Result<()> {
    let n = cstr(name.as_bytes())?;
    // SAFETY: `n` is NUL-terminated and `dir` is valid for the call.
    check_ok(unsafe { libc::mknodat(dir.as_raw_fd(), n.as_ptr(), mode, dev) })
}

/// `symlinkat(target, dir, name)`: the target is stored as given, never resolved.
pub fn symlinkat(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let t = cstr(target.as_bytes())?;
    let n = cstr(name.as_bytes())?;
    // SAFETY: both strings are NUL-terminated and `dir` is valid for the call.
    check_ok(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), n.as_ptr()) })
}

/// `linkat(old_dir, old_name, new_dir, new_name, 0)`: a symlink at `old_name` is linked
/// itself, not followed.
pub fn linkat(
    old_dir: BorrowedFd<'_>,
    old_name: &OsStr,
    new_dir: BorrowedFd<'_>,
    new_name: &OsStr,
) -> io::Result<()> {
    let o = cstr(old_name.as_bytes())?;
    let n = cstr(new_name.as_bytes())?;
    // SAFETY: both strings are NUL-terminated and both descriptors are valid for the call.
    check_ok(unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            o.as_ptr(),
            new_dir.as_raw_fd(),
            n.as_ptr(),
            0,
        )
    })
}

/// `unlinkat(dir, name, AT_REMOVEDIR if directory)`.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &OsStr, directory: bool) -> io::Result<()> {
    let n = cstr(name.as_bytes())?;
    let flags = if directory { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `n` is NUL-terminated and `dir` is valid for the call.
    check_ok(unsafe { libc::unlinkat(dir.as_raw_fd(), n.as_ptr(), flags) })
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)`.
pub fn lchownat(dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    let n = cstr(name.as_bytes())?;
    // SAFETY: `n` is NUL-terminated and `dir` is valid for the call.
    check_ok(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            n.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// `fchmodat(dir, name, mode, 0)`. Only for entries known not to be symlinks (Linux
/// cannot change a symlink's mode).
pub fn fchmodat(dir: BorrowedFd<'_>, name: &OsStr, mode: libc::mode_t) -> io::Result<()> {
    let n = cstr(name.as_bytes())?;
    // SAFETY: `n` is NUL-terminated and `dir` is valid for the call.
    check_ok(unsafe { libc::fchmodat(dir.as_raw_fd(), n.as_ptr(), mode, 0) })
}

/// `utimensat(dir, name, [atime, mtime], AT_SYMLINK_NOFOLLOW)`.
pub fn lutimensat(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    atime: Timestamp,
    mtime: Timestamp,
) -> io::Result<()> {
    let n = cstr(name.as_bytes())?;
    let times = [timespec(atime), timespec(mtime)];
    // SAFETY: `n` is NUL-terminated, `times` is an array of two timespecs as utimensat
    // requires, and `dir` is valid for the call.
    check_ok(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            n.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// `futimens(fd, [atime, mtime])`.
pub fn futimens(fd: BorrowedFd<'_>, atime: Timestamp, mtime: Timestamp) -> io::Result<()> {
    let times = [timespec(atime), timespec(mtime)];
    // SAFETY: `times` is an array of two timespecs and `fd` is valid for the call.
    check_ok(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })
}
