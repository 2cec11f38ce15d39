//! The system calls volume-core makes that std and nix do not offer: loop devices,
//! inode flags, reflinks, freezing, the new mount API and statx identities, from the
//! shared `stowage-sys` crate (the workspace's only `unsafe` code), with two adapters
//! to the forms volume-core calls them in.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

pub use stowage_sys::fs::{FS_NOCOW_FL, ficlone, freeze, get_inode_flags, set_inode_flags, thaw};
pub use stowage_sys::loopdev::*;
pub use stowage_sys::mount::*;

/// Sets the extended attribute `name` (UTF-8) of the open file `file`.
pub fn fsetxattr(file: BorrowedFd<'_>, name: &str, value: &[u8]) -> io::Result<()> {
    stowage_sys::xattr::fsetxattr(file, OsStr::new(name), value)
}

/// Opens `path` relative to `dir` as an O_PATH descriptor (of a directory when
/// `directory`), never leaving `dir` and following no link at all.
pub fn open_beneath(dir: BorrowedFd<'_>, path: &Path, directory: bool) -> io::Result<OwnedFd> {
    let flags = libc::O_PATH | if directory { libc::O_DIRECTORY } else { 0 };
    stowage_sys::at::open_beneath(dir, path.as_os_str(), flags, 0)
}
