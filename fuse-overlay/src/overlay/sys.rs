//! The calls the overlay makes that std and nix do not offer (extended attributes on
//! paths and descriptors, reflinks, `cachestat`, `fork`, `fusermount3`), from the shared
//! `stowage-sys` crate (the workspace's only `unsafe` code), with the descriptor-taking
//! forms the overlay calls them in.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;

pub use stowage_sys::fs::{PageCache, page_cache};
pub use stowage_sys::process::{Forked, fork_process, fusermount, fusermount_unmount};
pub use stowage_sys::xattr::{
    fgetxattr, flistxattr, getxattr, lgetxattr, listxattr, lsetxattr, removexattr, setxattr,
};

/// Sets the extended attribute `name` of the open file `fd`.
pub(crate) fn fsetxattr(fd: impl AsFd, name: &OsStr, value: &[u8]) -> io::Result<()> {
    stowage_sys::xattr::fsetxattr(fd.as_fd(), name, value)
}

/// Makes `dst` share `src`'s data extents (a reflink copy); fails with EXDEV or
/// EOPNOTSUPP where the two files are not on one filesystem that can do that.
pub(crate) fn ficlone(dst: impl AsFd, src: impl AsFd) -> io::Result<()> {
    stowage_sys::fs::ficlone(dst.as_fd(), src.as_fd())
}
