//! The calls the layer store makes relative to a directory descriptor, on extended
//! attributes, `syncfs`, `flock` and `geteuid`, from the shared `stowage-sys` crate
//! (the workspace's only `unsafe` code).

pub use stowage_sys::at::*;
pub use stowage_sys::fs::{syncfs, try_lock_exclusive};
pub use stowage_sys::process::geteuid;
pub use stowage_sys::xattr::{fsetxattr, lsetxattr_at};
