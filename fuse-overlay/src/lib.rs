//! Layered container filesystem: read-only image layers plus a per-container writable
//! layer. [`overlay`] is the overlay core and the mount API over two back ends, this
//! crate's FUSE filesystem ([`fuse`]) and kernel overlayfs ([`kernel`]); [`layers`] is
//! the content-addressed layer store and OCI import.

pub mod fuse;
pub mod kernel;
pub mod layers;
pub mod overlay;
