//! Layered container filesystem: read-only image layers plus a per-container writable
//! layer. [`overlay`] is the overlay core and the mount API over two back ends, this
//! crate's FUSE filesystem ([`fuse`]) and kernel overlayfs ([`kernel`]). The layers it
//! mounts come from the `layer-store` crate's store (the daemon resolves them).

pub mod fuse;
pub mod kernel;
pub mod overlay;
