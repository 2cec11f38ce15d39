//! The layer store's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while opening the store, importing or removing a layer.
///
/// Messages are short and do not repeat their source; `#[source]` carries it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system operation on the store or a layout failed.
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading or decompressing the layer stream failed (truncated, corrupt, bad
    /// checksum in a tar header, the reader's own error).
    #[error("reading the layer stream")]
    Read(#[source] io::Error),
    /// Creating an entry in the layer failed.
    #[error("extracting {path:?}")]
    Extract {
        path: String,
        #[source]
        source: io::Error,
    },
    /// Another process holds the store's lock.
    #[error("layer store {} is in use by another process", root.display())]
    Locked { root: PathBuf },
    /// An entry's path is absolute, has a `..` component, is too long, or is otherwise
    /// not a plain relative path.
    #[error("unsafe path {path:?} in layer: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    /// An entry's parent directory is (or passes through) a symlink extracted earlier.
    #[error("entry {path:?} would be written through a symlink")]
    ThroughSymlink { path: String },
    /// A hard link whose target is unsafe or not a previously extracted entry.
    #[error("hard link {path:?} -> {target:?}: {reason}")]
    HardLink {
        path: String,
        target: String,
        reason: &'static str,
    },
    /// An entry that is well formed but cannot be applied (a non-directory parent, a
    /// non-empty directory replaced by a file, a symlink without a target, …).
    #[error("entry {path:?}: {reason}")]
    InvalidEntry { path: String, reason: &'static str },
    /// A tar entry type the store does not import.
    #[error("entry {path:?} has unsupported type {kind:?}")]
    UnsupportedEntry { path: String, kind: char },
    /// A compression format other than gzip and zstd.
    #[error("unsupported layer compression {0}")]
    UnsupportedCompression(&'static str),
    /// A blob's content does not match its digest or size.
    #[error("{what} {expected} does not match the content ({actual})")]
    DigestMismatch {
        what: &'static str,
        expected: String,
        actual: String,
    },
    /// A digest string that is not `sha256:` + 64 lowercase hex digits.
    #[error("layer is larger than the import limit of {limit} bytes")]
    TooLarge { limit: u64 },

    #[error("sparse entry {path:?} declares {declared} bytes for {data} bytes of data")]
    SparseBomb {
        path: String,
        declared: u64,
        data: u64,
    },

    #[error("entry {path:?} needs {needed} bytes and {available} are free (keeping {reserve})")]
    NoSpace {
        path: String,
        needed: u64,
        available: u64,
        reserve: u64,
    },

    #[error("invalid digest {0:?}")]
    InvalidDigest(String),
    /// A digest with an algorithm other than sha256.
    #[error("unsupported digest algorithm in {0:?}")]
    UnsupportedDigest(String),
    /// A layer key that is not 64 lowercase hex digits.
    #[error("invalid layer key {0:?}")]
    InvalidKey(String),
    /// An OCI image layout that is incomplete or inconsistent.
    #[error("OCI layout {}: {reason}", path.display())]
    Layout { path: PathBuf, reason: String },
    /// A media type the importer does not know.
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    /// No manifest in the layout matches the selector.
    #[error("no manifest in {} matches {selector}", path.display())]
    NoMatchingManifest { path: PathBuf, selector: String },
    /// A JSON document (layer metadata, OCI index, manifest or config) did not parse.
    #[error("parsing {}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Result with the layer store's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}
