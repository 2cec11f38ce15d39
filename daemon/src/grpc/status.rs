//! The one place where volume-core errors become gRPC status codes, following the
//! CSI spec's code for each case. Every variant is named, so a new one forces a choice.

use tonic::{Code, Status};
use volume_core::Error;

/// Maps a volume-core error to the CSI status code for that case; the message carries
/// the whole error chain.
pub fn to_status(err: &Error) -> Status {
    let code = match err {
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::VolumeNotFound(_) => Code::NotFound,
        Error::SnapshotNotFound(_) => Code::NotFound,
        Error::GroupSnapshotNotFound(_) => Code::NotFound,
        Error::NodeNotFound(_) => Code::NotFound,
        Error::AttachConflict(..) => Code::AlreadyExists,
        Error::AttachLimit { .. } => Code::ResourceExhausted,
        Error::PathNotFound { .. } => Code::NotFound,
        Error::NameConflict { .. } => Code::AlreadyExists,
        Error::PublishConflict(_) => Code::AlreadyExists,
        Error::OutOfRange(_) => Code::OutOfRange,
        Error::NoSpace(_) => Code::ResourceExhausted,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::Busy(_) => Code::Aborted,
        Error::Io { source, .. } => errno_code(source.raw_os_error()),
        Error::Command { .. } if err.is_no_space() => Code::ResourceExhausted,
        Error::Command { .. } => Code::Internal,
        Error::Store(_) => Code::Internal,
        Error::Corrupt { .. } => Code::Internal,
        Error::Damaged(_) => Code::Internal,
        Error::MetadataLost { .. } => Code::Internal,
        Error::StreamMismatch(_) => Code::DataLoss,
    };
    Status::new(code, chain(err))
}

/// A service-layer error as a gRPC status.
pub fn service_status(err: &crate::service::Error) -> Status {
    use crate::service::Error as S;
    match err {
        S::Core(e) => to_status(e),
        S::InvalidArgument(m) => Status::invalid_argument(m.clone()),
        S::NotFound(m) => Status::not_found(m.clone()),
        S::FailedPrecondition(m) => Status::failed_precondition(m.clone()),
        S::Internal(m) => Status::internal(m.clone()),
        S::Layers(e) => layer_status(e),
        S::Peer(s) => s.clone(),
        S::Worker(_) => Status::internal(chain(err)),
    }
}

impl From<crate::service::Error> for Status {
    fn from(err: crate::service::Error) -> Self {
        service_status(&err)
    }
}

/// A peer client error as a gRPC status.
pub fn peer_status(e: &crate::replication::link::PeerError) -> Status {
    use crate::replication::link::PeerError;
    let message = chain(e);
    match e {
        PeerError::UnknownPeer(_) => Status::not_found(message),
        PeerError::Connect(..) => Status::unavailable(message),
        PeerError::SecretFile(..)
        | PeerError::BadSecret(_)
        | PeerError::BadPeer(_)
        | PeerError::TlsFile(..)
        | PeerError::Tls(_) => Status::internal(message),
    }
}

/// A layer store error as a gRPC status: a bad blob, layout or digest is the caller's
/// INVALID_ARGUMENT; file system errors go by errno.
pub fn layer_status(err: &layer_store::Error) -> Status {
    use layer_store::Error as L;
    let code = match err {
        L::Io { source, .. } | L::Extract { source, .. } => errno_code(source.raw_os_error()),
        L::Locked { .. } => Code::FailedPrecondition,
        L::TooLarge { .. } | L::NoSpace { .. } => Code::ResourceExhausted,
        L::SparseBomb { .. } => Code::InvalidArgument,
        L::Read(_)
        | L::UnsafePath { .. }
        | L::ThroughSymlink { .. }
        | L::HardLink { .. }
        | L::InvalidEntry { .. }
        | L::UnsupportedEntry { .. }
        | L::UnsupportedCompression(_)
        | L::DigestMismatch { .. }
        | L::InvalidDigest(_)
        | L::UnsupportedDigest(_)
        | L::InvalidKey(_)
        | L::Layout { .. }
        | L::UnsupportedMediaType(_)
        | L::NoMatchingManifest { .. }
        | L::Json { .. } => Code::InvalidArgument,
    };
    Status::new(code, chain(err))
}

fn errno_code(errno: Option<i32>) -> Code {
    match errno {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => Code::ResourceExhausted,
        Some(libc::ENOENT) => Code::NotFound,
        Some(libc::EEXIST) => Code::AlreadyExists,
        Some(libc::EBUSY) => Code::FailedPrecondition,
        Some(libc::EACCES) | Some(libc::EPERM) => Code::PermissionDenied,
        Some(libc::EINVAL) | Some(libc::ENOTDIR) | Some(libc::ENAMETOOLONG) => {
            Code::InvalidArgument
        }
        _ => Code::Internal,
    }
}

pub use volume_core::error::chain;

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn layer_store_errors_map_to_the_callers_fault_or_errno() {
        use layer_store::Error as L;
        let cases: Vec<(L, Code)> = vec![
            (L::InvalidKey("x".into()), Code::InvalidArgument),
            (
                L::UnsafePath {
                    path: "../x".into(),
                    reason: "parent",
                },
                Code::InvalidArgument,
            ),
            (
                L::Read(io::Error::other("truncated")),
                Code::InvalidArgument,
            ),
            (
                L::Locked {
                    root: PathBuf::from("/s"),
                },
                Code::FailedPrecondition,
            ),
            (
                L::Io {
                    op: "reading",
                    path: PathBuf::from("/x"),
                    source: io::Error::from_raw_os_error(libc::ENOENT),
                },
                Code::NotFound,
            ),
            (
                L::Io {
                    op: "writing",
                    path: PathBuf::from("/x"),
                    source: io::Error::from_raw_os_error(libc::ENOSPC),
                },
                Code::ResourceExhausted,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(layer_status(&err).code(), code, "{err}");
        }
    }

    #[test]
    fn every_domain_error_has_its_csi_code() {
        let cases: Vec<(Error, Code)> = vec![
            (Error::InvalidArgument("x".into()), Code::InvalidArgument),
            (Error::VolumeNotFound("v".into()), Code::NotFound),
            (Error::SnapshotNotFound("s".into()), Code::NotFound),
            (Error::GroupSnapshotNotFound("g".into()), Code::NotFound),
            (Error::NodeNotFound("n".into()), Code::NotFound),
            (
                Error::AttachConflict("v".into(), "n".into()),
                Code::AlreadyExists,
            ),
            (
                Error::AttachLimit {
                    node: "n".into(),
                    max: 1,
                },
                Code::ResourceExhausted,
            ),
            (
                Error::PathNotFound {
                    id: "v".into(),
                    path: PathBuf::from("/p"),
                },
                Code::NotFound,
            ),
            (
                Error::NameConflict {
                    name: "n".into(),
                    reason: "r".into(),
                },
                Code::AlreadyExists,
            ),
            (Error::PublishConflict("/t".into()), Code::AlreadyExists),
            (Error::OutOfRange("x".into()), Code::OutOfRange),
            (Error::NoSpace("x".into()), Code::ResourceExhausted),
            (
                Error::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (Error::Busy("v".into()), Code::Aborted),
            (
                Error::io("write", io::Error::from_raw_os_error(libc::EDQUOT)),
                Code::ResourceExhausted,
            ),
            (
                Error::io("open", io::Error::from_raw_os_error(libc::ENOENT)),
                Code::NotFound,
            ),
            (
                Error::io("mount", io::Error::from_raw_os_error(libc::EIO)),
                Code::Internal,
            ),
            (
                Error::Command {
                    program: "mkfs.ext4".into(),
                    status: "exit status: 1".into(),
                    stderr: "No space left on device".into(),
                },
                Code::ResourceExhausted,
            ),
            (
                Error::Command {
                    program: "btrfs".into(),
                    status: "exit status: 1".into(),
                    stderr: "ERROR: bad".into(),
                },
                Code::Internal,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(to_status(&err).code(), code, "{err:?}");
        }
    }

    #[test]
    fn message_carries_the_source() {
        let err = Error::io("mount /x", io::Error::from_raw_os_error(libc::EIO));
        let msg = to_status(&err).message().to_string();
        assert!(msg.starts_with("mount /x: "), "{msg}");
        assert!(msg.contains("Input/output error"), "{msg}");
    }
}
