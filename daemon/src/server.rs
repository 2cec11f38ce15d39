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
use volume_core::manager::reconcile::ReconcileReport;
use volume_core::os::Host;
use volume_core::store::Store;
use volume_core::{NodeIdentity, Pool, PoolConfig, VolumeManager};

use crate::driver::{Driver, DriverConfig};
use crate::grpc::admin::AdminService;
use crate::grpc::controller::ControllerService;
use crate::grpc::group::GroupControllerService;
use crate::grpc::identity::IdentityService;
use crate::grpc::node::NodeService;

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The state directory could not be prepared.
    #[error("state directory {0}")]
    StateDir(PathBuf, #[source] std::io::Error),
    /// The metadata is damaged, or knows nothing of volumes the pool holds.
    #[error(
        "refusing to start: the daemon would forget volumes. Start it once with \
         --rebuild-metadata (STOWAGE_REBUILD_METADATA=true) to rebuild the records from \
         the pool; a damaged file is kept beside the new one"
    )]
    Metadata(#[source] volume_core::Error),
    /// Opening the pool, the store, or reconciling failed.
    #[error("volume manager")]
    Core(#[from] volume_core::Error),
    /// The socket could not be set up.
    #[error("endpoint")]
    Endpoint(#[from] crate::endpoint::EndpointError),
    /// The layer store could not be opened.
    #[error("layer store")]
    Layers(#[from] layer_store::Error),
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
    /// The state root at `root`, created if missing (0700: it holds the pool image,
    /// the metadata and the mount points of every volume) and named by its resolved
    /// path, so that the daemon's own mount points have no link in them.
    pub fn create(root: &std::path::Path) -> Result<Self, ServerError> {
        let err = |e| ServerError::StateDir(root.to_path_buf(), e);
        std::fs::create_dir_all(root).map_err(err)?;
        let root = root.canonicalize().map_err(err)?;
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(err)?;
        Ok(StateLayout { root })
    }

    /// The metadata database.
    pub fn metadata(&self) -> PathBuf {
        self.root.join("stowage.redb")
    }

    /// The embedded pool image.
    pub fn pool_image(&self) -> PathBuf {
        self.root.join("pool.img")
    }

    /// Where `host-image` loop volumes keep their images, beside the embedded pool.
    pub fn host_images(&self) -> PathBuf {
        self.root.join("images")
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
    let layout = &StateLayout::create(&layout.root)?;
    let pool = Pool::open(pool, host.clone())?;
    let database = layout.metadata();
    let store = match Store::open(&database) {
        Ok(store) => store,
        Err(e @ volume_core::Error::Damaged(_)) if config.rebuild_metadata => {
            let aside = set_aside(&database)?;
            tracing::warn!(error = %e, kept = %aside.display(), "metadata database damaged; rebuilding it from the pool");
            Store::open(&database)?
        }
        Err(e @ volume_core::Error::Damaged(_)) => return Err(ServerError::Metadata(e)),
        Err(e) => return Err(e.into()),
    };
    // The layer store lives in the pool (a subvolume with a quota) on btrfs, unless
    // a store made by an earlier release is still in the state directory.
    let legacy = layout.layer_store();
    let legacy_in_use = std::fs::read_dir(layer_store::LayerStore::layers_dir_of(&legacy))
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    let store_dir = if legacy_in_use {
        tracing::warn!(store = %legacy.display(), "layer store in the state directory (made by an earlier release): imports count against its filesystem, not a quota");
        legacy
    } else {
        pool.layer_store_dir(config.layer_store_size)?
            .unwrap_or(legacy)
    };
    let mut layers = layer_store::LayerStore::open(store_dir)?;
    layers.set_limits(config.layer_limits);
    let node = NodeIdentity {
        node_id: config.node_id.clone(),
        state_dir: layout.root.clone(),
        ephemeral_dir: layout.ephemeral_dir(),
        attach_dir: layout.attach_dir(),
        layers_dir: layers.layers_dir().to_path_buf(),
        overlay_program: config.overlay_program.clone(),
    };
    let manager = VolumeManager::new(store, pool, host, node);
    match manager.check_metadata_covers_pool(&database) {
        Ok(()) => {}
        Err(volume_core::Error::MetadataLost { .. }) if config.rebuild_metadata => {
            let rebuilt = manager.rebuild_metadata()?;
            tracing::warn!(?rebuilt, "metadata rebuilt from the pool");
        }
        Err(e @ volume_core::Error::MetadataLost { .. }) => return Err(ServerError::Metadata(e)),
        Err(e) => return Err(e.into()),
    }
    let mirrored = manager.mirror_records()?;
    if mirrored > 0 {
        tracing::info!(records = mirrored, "records mirrored into the pool");
    }
    let report = manager.reconcile()?;
    Ok((Driver::new(manager, config, layers), report))
}

/// Moves a damaged database out of the way: `<file>.damaged-<unix seconds>`.
fn set_aside(database: &std::path::Path) -> Result<PathBuf, ServerError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut name = database.as_os_str().to_owned();
    name.push(format!(".damaged-{secs}"));
    let aside = PathBuf::from(name);
    std::fs::rename(database, &aside).map_err(|e| ServerError::StateDir(aside.clone(), e))?;
    Ok(aside)
}

/// Serves the CSI services on `listener` until `shutdown` completes.
pub async fn serve(
    driver: Arc<Driver>,
    listener: tokio::net::UnixListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let observe = crate::grpc::observe::ObserveLayer::new(Arc::clone(&driver.metrics));
    tonic::transport::Server::builder()
        .layer(observe)
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
