//! The crate's error type. Each variant is a distinct outcome a caller may act on; the
//! gRPC layer maps every one of them to a CSI status code.

use std::io;
use std::path::PathBuf;

/// Why the database file cannot be trusted.
#[derive(Debug, thiserror::Error)]
#[error("metadata database {path} {reason}")]
pub struct Damaged {
    /// The database file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// Result alias for volume-core operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in a volume operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is malformed (bad parameter, bad name, unsupported option).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No volume with this id exists.
    #[error("volume {0} not found")]
    VolumeNotFound(String),
    /// No snapshot with this id exists.
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),
    /// No group snapshot with this id exists.
    #[error("group snapshot {0} not found")]
    GroupSnapshotNotFound(String),
    /// The node named in a request is not known to this driver.
    #[error("node {0} not found")]
    NodeNotFound(String),
    /// The volume is attached to the node with different options.
    #[error("volume {0} is already attached to node {1} with different options")]
    AttachConflict(String, String),
    /// The node cannot take another volume.
    #[error("node {node} already has its maximum of {max} volumes attached")]
    AttachLimit {
        /// The node id.
        node: String,
        /// Its limit.
        max: i64,
    },
    /// A volume with this name exists but with a different size, kind or parameters.
    #[error("volume name {name} already exists with different properties: {reason}")]
    NameConflict {
        /// The requested name.
        name: String,
        /// What differs.
        reason: String,
    },
    /// A publication at this target exists with incompatible options.
    #[error("target {0} is already published with different options")]
    PublishConflict(PathBuf),
    /// The requested capacity cannot be satisfied by this back end.
    #[error("capacity out of range: {0}")]
    OutOfRange(String),
    /// The pool does not have room for the volume.
    #[error("insufficient space in pool: {0}")]
    NoSpace(String),
    /// The volume is not in the state the operation needs (in use, not staged, ...).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A path given for a volume is not where that volume is staged or published.
    #[error("volume {id} is not staged or published at {path}")]
    PathNotFound {
        /// The volume id.
        id: String,
        /// The path the caller named.
        path: PathBuf,
    },
    /// Another operation on the same volume or name is in flight.
    #[error("an operation on {0} is already in progress")]
    Busy(String),
    /// A system call or file operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An external program (mkfs, btrfs) failed.
    #[error("{program} failed ({status}): {stderr}")]
    Command {
        /// The program name.
        program: String,
        /// Exit status as text.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// A replication stream does not match its trailer (length or blake3 digest), or
    /// does not hold the snapshot its header names: nothing of it was kept.
    #[error("replication stream rejected: {0}")]
    StreamMismatch(String),
    /// The metadata store failed.
    #[error("metadata store")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The metadata database is empty, truncated or unreadable: the daemon must not
    /// start on it (see `--rebuild-metadata`).
    #[error(transparent)]
    Damaged(Damaged),
    /// The metadata holds no record while the pool holds volumes: starting would
    /// forget them.
    #[error(
        "metadata database {database} holds no records but pool {pool} holds {entries} \
         volume(s), snapshot(s) or replica(s)"
    )]
    MetadataLost {
        /// The database file.
        database: PathBuf,
        /// The pool's root.
        pool: PathBuf,
        /// How many entries the pool holds.
        entries: usize,
    },
    /// The metadata store holds a record that does not decode.
    #[error("corrupt metadata record {key}")]
    Corrupt {
        /// The record key.
        key: String,
        /// The decode error.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Wraps an `io::Error` with a short description of what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The errno of an underlying OS error, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when the failure means the pool (or a quota) ran out of space.
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::NoSpace(_) => true,
            Error::Io { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EDQUOT)
            ),
            Error::Command { stderr, .. } => {
                stderr.contains("No space left") || stderr.contains("Disk quota exceeded")
            }
            _ => false,
        }
    }
}

/// Adds context to `io::Result`s.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::io(context(), source))
    }
}

/// The error and its sources, joined with ": " (what a person is shown: the daemon's
/// logs and answers, the `vol` CLI).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut last = out.clone();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        // Some errors repeat their source in their own message: say it once.
        if !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        source = s.source();
    }
    out
}
