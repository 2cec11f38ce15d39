//! The overlay's only `unsafe`: extended attributes on paths (the `l*xattr` family, which
//! never follow a final symlink) and on descriptors, the `FICLONE` reflink ioctl, `cachestat` and `fork` for
//! the daemon.
//! Everything else goes through std or nix.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn path_cstr(path: &Path) -> io::Result<CString> {
    cstr(path.as_os_str().as_bytes())
}

/// Value of the extended attribute `name` of `path` (not following a final symlink).
pub(crate) fn lgetxattr(path: &Path, name: &OsStr) -> io::Result<Vec<u8>> {
    getxattr(path, name, false)
}

/// Value of the extended attribute `name` of `path`; `follow` follows a final symlink
/// (needed for `/proc/self/fd` links).
pub(crate) fn getxattr(path: &Path, name: &OsStr, follow: bool) -> io::Result<Vec<u8>> {
    let get = if follow {
        libc::getxattr
    } else {
        libc::lgetxattr
    };
    let p = path_cstr(path)?;
    let n = cstr(name.as_bytes())?;
    read_sized(|buf, len| {
        // SAFETY: `p` and `n` are NUL-terminated strings that outlive the call;
        // `read_sized` passes a null buffer with length 0, or a buffer valid for writes
        // of `len` bytes, of which the kernel writes at most `len`.
        unsafe { get(p.as_ptr(), n.as_ptr(), buf.cast::<libc::c_void>(), len) }
    })
}

/// Runs a size-then-fetch call (getxattr, listxattr): first with no buffer to learn
/// the size, then with a buffer of that size, again when the value grew in between
/// (ERANGE). `call` gets a null pointer with length 0, or a buffer valid for `len` bytes.
fn read_sized(mut call: impl FnMut(*mut u8, usize) -> isize) -> io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.resize(size as usize, 0);
        if buf.is_empty() {
            return Ok(buf);
        }
        let got = call(buf.as_mut_ptr(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
    }
}

/// Sets the extended attribute `name` of `path` (not following a final symlink).
pub(crate) fn lsetxattr(path: &Path, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    setxattr(path, name, value, flags, false)
}

/// Sets the extended attribute `name` of `path`; `follow` follows a final symlink.
pub(crate) fn setxattr(
    path: &Path,
    name: &OsStr,
    value: &[u8],
    flags: i32,
    follow: bool,
) -> io::Result<()> {
    let set = if follow {
        libc::setxattr
    } else {
        libc::lsetxattr
    };
    let p = path_cstr(path)?;
    let n = cstr(name.as_bytes())?;
    // SAFETY: `p` and `n` are NUL-terminated and `value` is valid for reads of its
    // length for the duration of the call.
    let rc = unsafe {
        set(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast::<libc::c_void>(),
            value.len(),
            flags,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes the extended attribute `name` of `path`; `follow` follows a final symlink.
pub(crate) fn removexattr(path: &Path, name: &OsStr, follow: bool) -> io::Result<()> {
    let remove = if follow {
        libc::removexattr
    } else {
        libc::lremovexattr
    };
    let p = path_cstr(path)?;
    let n = cstr(name.as_bytes())?;
    // SAFETY: both arguments are NUL-terminated strings that outlive the call.
    let rc = unsafe { remove(p.as_ptr(), n.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The raw, NUL-separated list of extended attribute names of `path`; `follow` follows
/// a final symlink.
pub(crate) fn listxattr(path: &Path, follow: bool) -> io::Result<Vec<u8>> {
    let list = if follow {
        libc::listxattr
    } else {
        libc::llistxattr
    };
    let p = path_cstr(path)?;
    read_sized(|buf, len| {
        // SAFETY: `p` is NUL-terminated and outlives the call; `read_sized` passes a null
        // buffer with length 0, or a buffer valid for writes of `len` bytes.
        unsafe { list(p.as_ptr(), buf.cast::<libc::c_char>(), len) }
    })
}

/// The raw, NUL-separated list of extended attribute names of the open file `fd`.
pub(crate) fn flistxattr(fd: impl AsFd) -> io::Result<Vec<u8>> {
    let fd = fd.as_fd();
    read_sized(|buf, len| {
        // SAFETY: the descriptor is borrowed for the call; `read_sized` passes a null
        // buffer with length 0, or a buffer valid for writes of `len` bytes.
        unsafe { libc::flistxattr(fd.as_raw_fd(), buf.cast::<libc::c_char>(), len) }
    })
}

/// Value of the extended attribute `name` of the open file `fd`.
pub(crate) fn fgetxattr(fd: impl AsFd, name: &OsStr) -> io::Result<Vec<u8>> {
    let fd = fd.as_fd();
    let n = cstr(name.as_bytes())?;
    read_sized(|buf, len| {
        // SAFETY: `n` is NUL-terminated and outlives the call; the descriptor is
        // borrowed; `read_sized` passes a null buffer with length 0, or a buffer valid
        // for writes of `len` bytes, of which the kernel writes at most `len`.
        unsafe { libc::fgetxattr(fd.as_raw_fd(), n.as_ptr(), buf.cast::<libc::c_void>(), len) }
    })
}

/// Sets the extended attribute `name` of the open file `fd`.
pub(crate) fn fsetxattr(fd: impl AsFd, name: &OsStr, value: &[u8]) -> io::Result<()> {
    let n = cstr(name.as_bytes())?;
    // SAFETY: `n` is NUL-terminated and `value` is valid for reads of its length, both
    // for the whole call; the descriptor is borrowed.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_fd().as_raw_fd(),
            n.as_ptr(),
            value.as_ptr().cast::<libc::c_void>(),
            value.len(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `dst` share `src`'s data extents (a reflink copy); fails with EXDEV or
/// EOPNOTSUPP where the two files are not on one filesystem that can do that.
pub(crate) fn ficlone(dst: impl AsFd, src: impl AsFd) -> io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its integer argument and touches no
    // user memory; both descriptors are borrowed for the duration of the call.
    let rc = unsafe {
        libc::ioctl(
            dst.as_fd().as_raw_fd(),
            libc::FICLONE,
            src.as_fd().as_raw_fd(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

/// Result of [`fork_process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// In the parent; the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// Forks the process. Must be called while the process has a single thread (the daemon
/// forks before it mounts anything or starts its FUSE workers).
pub fn fork_process() -> io::Result<Forked> {
    // SAFETY: the caller guarantees the process is single-threaded here, so the child
    // inherits no lock held by another thread and may run arbitrary code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Forked::Parent(child.as_raw())),
        Ok(nix::unistd::ForkResult::Child) => Ok(Forked::Child),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Mounts a FUSE filesystem at `mountpoint` through the setuid helper `fusermount3` (the
/// unprivileged path) and returns the `/dev/fuse` descriptor it hands back.
pub(crate) fn fusermount(mountpoint: &Path, options: &str) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::net::UnixStream;
    use std::os::unix::process::CommandExt;

    let (ours, theirs) = UnixStream::pair()?;
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-o")
        .arg(options)
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", theirs_fd.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl,
    // which is async-signal-safe; `theirs_fd` stays open in the parent until after
    // spawn, so the child inherits a valid descriptor.
    unsafe {
        cmd.pre_exec(move || {
            // SAFETY: `theirs_fd` is open in the child (inherited, see above).
            let fd = std::os::fd::BorrowedFd::borrow_raw(theirs_fd);
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )?;
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);

    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(std::os::fd::RawFd);
    let received = nix::sys::socket::recvmsg::<()>(
        ours.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::empty(),
    )
    .ok()
    .and_then(|msg| {
        msg.cmsgs().ok()?.find_map(|c| match c {
            nix::sys::socket::ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
    });
    let out = child.wait_with_output()?;
    match received {
        // SAFETY: the kernel just installed this descriptor in our table for us
        // (SCM_RIGHTS); nothing else owns it.
        Some(fd) if fd >= 0 => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        _ => Err(io::Error::other(format!(
            "fusermount3 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// Unmounts a FUSE mount made by [`fusermount`] (lazily when `lazy`).
pub(crate) fn fusermount_unmount(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg(if lazy { "-uz" } else { "-u" })
        .arg("--")
        .arg(mountpoint)
        .stdout(std::process::Stdio::null());
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "fusermount3 -u failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
