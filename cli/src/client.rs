//! A gRPC channel to the daemon's unix socket: `vol`'s, and the tests' and benchmarks'.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use stowage_proto::stowage::v1::admin_client::AdminClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{CliError, EXIT_ERROR};

/// Connects to the daemon listening on the unix socket at `path`.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    // The URI is required by the API but unused: every connection goes to the socket.
    Endpoint::from_static("http://stowage.local")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}

/// Connects to the daemon's admin service, or says how to reach it.
pub(crate) async fn admin(socket: &Path) -> Result<AdminClient<Channel>, CliError> {
    let channel = connect(socket).await.map_err(|e| CliError {
        code: EXIT_ERROR,
        message: format!(
            "cannot reach stowaged at {}: {} (is it running? set --socket or STOWAGE_SOCKET)",
            socket.display(),
            volume_core::error::chain(&e)
        ),
    })?;
    Ok(AdminClient::new(channel))
}
