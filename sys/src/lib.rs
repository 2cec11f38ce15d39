//! The workspace's only `unsafe` code: every system call std, nix and rustix leave to
//! us, wrapped once, each taking borrowed descriptors or checked strings and returning
//! `io::Result`, so its callers stay safe. One module per kind of call.

use std::ffi::CString;
use std::io;

pub mod at;
pub mod fs;
pub mod loopdev;
pub mod mount;
pub mod process;
pub mod xattr;

pub(crate) fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(crate) fn owned(ret: libc::c_long) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(ret as libc::c_int) })
}

pub(crate) fn check_ok(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub(crate) fn cstr(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}
