//! The content-addressed layer store and OCI layer import.
//!
//! A layer is the unpacked tree of one OCI layer tarball, keyed by the blake3 digest of
//! its *uncompressed* tar stream, so the same layer shipped plain, gzip- or
//! zstd-compressed is stored once. The tree is what the overlay mounts as a read-only
//! lower directory.
//!
//! # On disk
//!
//! ```text
//! <root>/                     mode 0700 (trees hold set-uid files; keep others out)
//! <root>/.lock                flock'ed by the one process that has the store open
//! <root>/layers/<key>/        a layer's tree (key = 64 hex digits of blake3)
//! <root>/layers/<key>.json    its metadata (LayerInfo): diff_id, blobs (sha256 digest,
//!                             size, compression of each blob seen), size, entries,
//!                             imported_at, privilege, whiteout format, opaque xattr,
//!                             skipped devices and xattrs
//! <root>/tmp-<pid>-<n>/       an import in progress (or a removal), same file system
//! <root>/tmp-<pid>-<n>.json   metadata being written
//! ```
//!
//! A layer exists when both its tree and its metadata do. Commit order: tree
//! extracted into `tmp-*`, `syncfs`, rename to `layers/<key>`, fsync `layers/`, then the
//! metadata (temporary file, fsync, rename, fsync `layers/`). `open` removes every
//! `tmp-*` and any half-committed layer, so an interrupted import leaves nothing.
//!
//! # Modules
//!
//! - `store`: [`LayerStore`] — open, import one tar stream, list, find, remove.
//! - `oci`: OCI image-layout import (index → manifest → layers, digests verified).
//! - `import`: extraction of tar entries and whiteouts (the entry table is there).
//! - `meta`: [`Privilege`], and an entry's metadata from its header and PAX records.
//! - `tar_safety`: which entry paths are accepted, and why.
//! - `stream`: hashing readers and compression detection.
//! - `digest`: layer keys and OCI digests.
//! - `error`: [`Error`].
//! - `sys`: the crate's only `unsafe` code (libc calls relative to directory fds).

mod digest;
mod error;
mod import;
mod meta;
mod oci;
mod store;
mod stream;
mod sys;
mod tar_safety;

pub use digest::LayerKey;
pub use error::{Error, Result};
pub use import::ImportLimits;
pub use meta::{Privilege, WhiteoutFormat};
pub use oci::ImageSelector;
pub use store::{BlobInfo, ImportedLayer, LayerInfo, LayerStore, METADATA_VERSION};
pub use stream::Compression;
