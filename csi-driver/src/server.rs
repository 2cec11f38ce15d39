//! Hosting the services: open the pool and store, reconcile, then serve Identity,
//! Controller and Node on the private unix socket until shutdown.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use stowage_proto::csi::v1::controller_server::ControllerServer;
use stowage_proto::csi::v1::group_controller_server::GroupControllerServer;
use stowage_proto::csi::v1::identity_server::IdentityServer;
use stowage_proto::csi::v1::node_server::NodeServer;
use stowage_proto::stowage::v1::admin_server::AdminServer;
use tokio_stream::wrappers::UnixListenerStream;
use volume_core::os::Host;
use volume_core::reconcile::ReconcileReport;
use volume_core::store::Store;
use volume_core::{NodeIdentity, Pool, PoolConfig, VolumeManager};

use crate::admin::AdminService;
use crate::controller::ControllerService;
use crate::driver::{Driver, DriverConfig};
use crate::group::GroupControllerService;
use crate::identity::IdentityService;
use crate::node::NodeService;

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The state directory could not be prepared.
    #[error("state directory {0}")]
    StateDir(PathBuf, #[source] std::io::Error),
    /// Opening the pool, the store, or reconciling failed.
    #[error("volume manager")]
    Core(#[from] volume_core::Error),
    /// The socket could not be set up.
    #[error("endpoint")]
    Endpoint(#[from] crate::endpoint::EndpointError),
    /// The layer store could not be opened.
    #[error("layer store")]
    Layers(#[from] fuse_overlay::layers::Error),
    /// The gRPC server failed.
    #[error("gRPC server")]
    Transport(#[from] tonic::transport::Error),
}

/// Where the daemon keeps its state.
#[derive(Debug, Clone)]
pub struct StateLayout {
    /// The state root.
    pub root: PathBuf,
}

impl StateLayout {
    /// The metadata database.
    pub fn metadata(&self) -> PathBuf {
        self.root.join("stowage.redb")
    }

    /// The embedded pool image.
    pub fn pool_image(&self) -> PathBuf {
        self.root.join("pool.img")
    }

    /// Where the embedded pool is mounted.
    pub fn pool_mount(&self) -> PathBuf {
        self.root.join("pool")
    }

    /// Where inline ephemeral volumes are staged.
    pub fn ephemeral_dir(&self) -> PathBuf {
        self.root.join("ephemeral")
    }

    /// Where volumes attached into containers are staged.
    pub fn attach_dir(&self) -> PathBuf {
        self.root.join("attach")
    }

    /// The layer store (read-only image layers).
    pub fn layer_store(&self) -> PathBuf {
        self.root.join("layers-store")
    }
}

/// Opens the pool and store under `layout`, reconciles, and returns the driver.
pub fn open_driver(
    layout: &StateLayout,
    pool: &PoolConfig,
    config: DriverConfig,
    host: Host,
) -> Result<(Arc<Driver>, ReconcileReport), ServerError> {
    std::fs::create_dir_all(&layout.root)
        .map_err(|e| ServerError::StateDir(layout.root.clone(), e))?;
    let pool = Pool::open(pool, host.clone())?;
    let store = Store::open(&layout.metadata())?;
    let layers = fuse_overlay::layers::LayerStore::open(layout.layer_store())?;
    let node = NodeIdentity {
        node_id: config.node_id.clone(),
        ephemeral_dir: layout.ephemeral_dir(),
        attach_dir: layout.attach_dir(),
        // The store keeps each layer's tree at `<root>/layers/<key>` (LayerStore::path).
        layers_dir: layers.root().join("layers"),
        overlay_program: config.overlay_program.clone(),
    };
    let manager = VolumeManager::new(store, pool, host, node);
    let report = manager.reconcile()?;
    Ok((Driver::new(manager, config, layers), report))
}

/// Serves the CSI services on `listener` until `shutdown` completes.
pub async fn serve(
    driver: Arc<Driver>,
    listener: tokio::net::UnixListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    tonic::transport::Server::builder()
        .add_service(IdentityServer::new(IdentityService::new(Arc::clone(
            &driver,
        ))))
        .add_service(ControllerServer::new(ControllerService::new(Arc::clone(
            &driver,
        ))))
        .add_service(GroupControllerServer::new(GroupControllerService::new(
            Arc::clone(&driver),
        )))
        .add_service(AdminServer::new(AdminService::new(Arc::clone(&driver))))
        .add_service(NodeServer::new(NodeService::new(driver)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
