//! The use cases over the fake host: no root, no devices. One file per area:
//! [`lifecycle`] (create, copy, delete, expand, modify, snapshots, busy volumes),
//! [`node`] (stage, publish, inline volumes), [`reads`] (views, attachments, groups,
//! layers, replicas, peers).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use volume_core::os::fake::FakeHost;
use volume_core::store::Store;
use volume_core::{ContentSource, NodeIdentity, Pool, PoolConfig, VolumeKind, VolumeManager};

use super::create::CopyOf;
use super::{Caller, Error, NewVolume, Volumes};
use crate::driver::{Driver, DriverConfig};

mod lifecycle;
mod node;
mod reads;

struct Fixture {
    dir: tempfile::TempDir,
    fake: Arc<FakeHost>,
    volumes: Volumes,
}

/// The use cases over a fake btrfs pool in a temporary directory (for the front
/// doors' own tests too).
pub(crate) fn volumes() -> (tempfile::TempDir, Volumes) {
    let f = fixture();
    (f.dir, f.volumes)
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::new(true);
    let pool_dir = dir.path().join("pool");
    std::fs::create_dir_all(&pool_dir).unwrap();
    let pool = Pool::open(&PoolConfig::Btrfs { path: pool_dir }, fake.host()).unwrap();
    let store = Store::open(&dir.path().join("meta.redb")).unwrap();
    let layers = layer_store::LayerStore::open(dir.path().join("layers")).unwrap();
    let node = NodeIdentity {
        node_id: "node-1".into(),
        state_dir: dir.path().join("state"),
        ephemeral_dir: dir.path().join("ephemeral"),
        attach_dir: dir.path().join("attach"),
        layers_dir: layers.layers_dir().to_path_buf(),
        overlay_program: dir.path().join("stowage-overlay"),
    };
    let manager = VolumeManager::new(store, pool, fake.host(), node);
    let config = DriverConfig {
        node_id: "node-1".into(),
        max_volumes_per_node: 0,
        require_controller_publish: false,
        overlay_program: dir.path().join("stowage-overlay"),
        peers: Default::default(),
        rebuild_metadata: false,
        layer_limits: Default::default(),
        layer_store_size: 0,
    };
    let volumes = Volumes::new(Driver::new(manager, config, layers));
    Fixture { dir, fake, volumes }
}

fn new_volume(name: &str, kind: &str, bytes: u64) -> NewVolume {
    NewVolume {
        name: name.into(),
        required_bytes: bytes,
        parameters: HashMap::from([("kind".to_string(), kind.to_string())]),
        ..NewVolume::default()
    }
}

/// A volume a person made (name, kind, bytes).
async fn made(f: &Fixture, name: &str, kind: &str, bytes: u64) -> volume_core::VolumeRecord {
    f.volumes
        .create(Caller::Person, new_volume(name, kind, bytes))
        .await
        .unwrap()
}

fn code(e: Error) -> Code {
    tonic::Status::from(e).code()
}
