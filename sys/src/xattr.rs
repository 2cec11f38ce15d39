//! Extended attributes: on paths without following a final link (`l*xattr`), on
//! descriptors (`f*xattr`), and on an entry beneath a directory descriptor.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::{check_ok, cstr};

/// `fsetxattr(fd, name, value, 0)`.
pub fn fsetxattr(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8]) -> io::Result<()> {
    let n = cstr(name.as_bytes())?;
    // SAFETY: `n` is NUL-terminated, `value` is a live slice whose length we pass, and
    // `fd` is valid for the call.
    check_ok(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// Sets an extended attribute on the entry `name` in `dir` without following it if it is
/// a symlink: `lsetxattr("/proc/self/fd/<dir>/<name>")`. Going through the descriptor's
/// magic link keeps the already-verified directory, whatever happens to the path that
/// led to it.
pub fn lsetxattr_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    key: &OsStr,
    value: &[u8],
) -> io::Result<()> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name.as_bytes());
    let p = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let k = cstr(key.as_bytes())?;
    // SAFETY: both strings are NUL-terminated, `value` is a live slice whose length we
    // pass; the path names a descriptor we hold open for the duration of the call.
    check_ok(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// Value of the extended attribute `name` of `path` (not following a final symlink).
pub fn lgetxattr(path: &Path, name: &OsStr) -> io::Result<Vec<u8>> {
    getxattr(path, name, false)
}

/// Value of the extended attribute `name` of `path`; `follow` follows a final symlink
/// (needed for `/proc/self/fd` links).
pub fn getxattr(path: &Path, name: &OsStr, follow: bool) -> io::Result<Vec<u8>> {
    let get = if follow {
        libc::getxattr
    } else {
        libc::lgetxattr
    };
    let p = cstr(path.as_os_str().as_bytes())?;
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
pub fn lsetxattr(path: &Path, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    setxattr(path, name, value, flags, false)
}

/// Sets the extended attribute `name` of `path`; `follow` follows a final symlink.
pub fn setxattr(
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
    let p = cstr(path.as_os_str().as_bytes())?;
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
pub fn removexattr(path: &Path, name: &OsStr, follow: bool) -> io::Result<()> {
    let remove = if follow {
        libc::removexattr
    } else {
        libc::lremovexattr
    };
    let p = cstr(path.as_os_str().as_bytes())?;
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
pub fn listxattr(path: &Path, follow: bool) -> io::Result<Vec<u8>> {
    let list = if follow {
        libc::listxattr
    } else {
        libc::llistxattr
    };
    let p = cstr(path.as_os_str().as_bytes())?;
    read_sized(|buf, len| {
        // SAFETY: `p` is NUL-terminated and outlives the call; `read_sized` passes a null
        // buffer with length 0, or a buffer valid for writes of `len` bytes.
        unsafe { list(p.as_ptr(), buf.cast::<libc::c_char>(), len) }
    })
}

/// The raw, NUL-separated list of extended attribute names of the open file `fd`.
pub fn flistxattr(fd: impl AsFd) -> io::Result<Vec<u8>> {
    let fd = fd.as_fd();
    read_sized(|buf, len| {
        // SAFETY: the descriptor is borrowed for the call; `read_sized` passes a null
        // buffer with length 0, or a buffer valid for writes of `len` bytes.
        unsafe { libc::flistxattr(fd.as_raw_fd(), buf.cast::<libc::c_char>(), len) }
    })
}

/// Value of the extended attribute `name` of the open file `fd`.
pub fn fgetxattr(fd: impl AsFd, name: &OsStr) -> io::Result<Vec<u8>> {
    let fd = fd.as_fd();
    let n = cstr(name.as_bytes())?;
    read_sized(|buf, len| {
        // SAFETY: `n` is NUL-terminated and outlives the call; the descriptor is
        // borrowed; `read_sized` passes a null buffer with length 0, or a buffer valid
        // for writes of `len` bytes, of which the kernel writes at most `len`.
        unsafe { libc::fgetxattr(fd.as_raw_fd(), n.as_ptr(), buf.cast::<libc::c_void>(), len) }
    })
}
