//! Shared set-up of the fuzz targets: a volume manager (and the daemon's service layer
//! over it) on the recording fake host in a temporary directory (nothing on the real
//! host is touched).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use volume_core::os::fake::FakeHost;
use volume_core::store::Store;
use volume_core::{NodeIdentity, Pool, PoolConfig, VolumeManager};

type Shared = (tempfile::TempDir, Arc<FakeHost>, Arc<stowage_daemon::Driver>);

fn shared() -> &'static Shared {
    static MANAGER: OnceLock<Shared> = OnceLock::new();
    MANAGER.get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let fake = FakeHost::new(true);
            let pool_dir = dir.path().join("pool");
            std::fs::create_dir_all(&pool_dir).expect("pool dir");
            let pool =
                Pool::open(&PoolConfig::Btrfs { path: pool_dir }, fake.host()).expect("pool");
            let store = Store::open(&dir.path().join("meta.redb")).expect("store");
            let node = NodeIdentity {
                node_id: "fuzz".into(),
                state_dir: dir.path().join("state"),
                ephemeral_dir: dir.path().join("ephemeral"),
                attach_dir: dir.path().join("attach"),
                layers_dir: dir.path().join("layers"),
                overlay_program: PathBuf::from("/nonexistent/stowage-overlay"),
            };
            let mgr = VolumeManager::new(store, pool, fake.host(), node);
            let layers = layer_store::LayerStore::open(dir.path().join("layer-store"))
                .expect("layer store");
            let config = stowage_daemon::DriverConfig {
                node_id: "fuzz".into(),
                max_volumes_per_node: 0,
                require_controller_publish: false,
                overlay_program: PathBuf::from("/nonexistent/stowage-overlay"),
                peers: Default::default(),
                rebuild_metadata: false,
                layer_limits: Default::default(),
                layer_store_size: 0,
            };
            (dir, fake, stowage_daemon::Driver::new(mgr, config, layers))
        })
}

/// A manager over the fake host, made once per fuzzing process.
pub fn manager() -> Arc<VolumeManager> {
    Arc::clone(&shared().2.manager)
}

/// The daemon's service layer over that manager (what the plugin's router serves).
pub fn volumes() -> stowage_daemon::service::Volumes {
    stowage_daemon::service::Volumes::new(Arc::clone(&shared().2))
}

/// Forgets the fake host's call log (it grows with every call otherwise).
pub fn reset() {
    shared().1.clear_calls();
}

/// The directory plugin mounts go under, beside the manager's.
pub fn plugin_mounts() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
        .to_path_buf()
}
