//! The daemon's unix socket: parsed from a CSI endpoint URL, created with mode 0600
//! before it listens, so no other user can connect even for an instant.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};

/// Errors setting up the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The endpoint is not `unix:///path` or an absolute path.
    #[error("endpoint {0:?} is not unix:///absolute/path")]
    Unsupported(String),
    /// A system call failed.
    #[error("{context} {path}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The socket path of `unix:///path`, `unix:/path` or `/path`.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, EndpointError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else {
        Err(EndpointError::Unsupported(endpoint.to_string()))
    }
}

/// Binds a listening unix socket at `path` with mode 0600 (replacing a stale socket).
pub fn bind_private(path: &Path) -> Result<tokio::net::UnixListener, EndpointError> {
    let err = |context, source: io::Error| EndpointError::Io {
        context,
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| err("create directory for", e))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err("remove stale", e)),
        _ => {}
    }
    let fd: OwnedFd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| err("create socket", e.into()))?;
    let addr = UnixAddr::new(path).map_err(|e| err("address", e.into()))?;
    socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).map_err(|e| err("bind", e.into()))?;
    // Bound but not listening: nobody can connect yet, so tighten the mode now.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err("chmod", e))?;
    socket::listen(&fd, Backlog::new(128).unwrap_or(Backlog::MAXCONN))
        .map_err(|e| err("listen", e.into()))?;
    let std_listener = std::os::unix::net::UnixListener::from(fd);
    tokio::net::UnixListener::from_std(std_listener).map_err(|e| err("register", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn parses_endpoint_forms() {
        assert_eq!(
            socket_path("unix:///run/csi.sock").unwrap(),
            Path::new("/run/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/run/csi.sock").unwrap(),
            Path::new("/run/csi.sock")
        );
        assert_eq!(
            socket_path("/run/csi.sock").unwrap(),
            Path::new("/run/csi.sock")
        );
        assert!(socket_path("tcp://127.0.0.1:1").is_err());
        assert!(socket_path("relative.sock").is_err());
    }

    #[tokio::test]
    async fn socket_is_0600_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/csi.sock");
        let first = bind_private(&path).unwrap();
        drop(first);
        let _l = bind_private(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
}
