//! The use cases over the fake host: no root, no devices.

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

struct Fixture {
    _dir: tempfile::TempDir,
    fake: Arc<FakeHost>,
    volumes: Volumes,
}

/// The use cases over a fake btrfs pool in a temporary directory (for the front
/// doors' own tests too).
pub(crate) fn volumes() -> (tempfile::TempDir, Volumes) {
    let f = fixture();
    (f._dir, f.volumes)
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::new(true);
    let pool_dir = dir.path().join("pool");
    std::fs::create_dir_all(&pool_dir).unwrap();
    let pool = Pool::open(&PoolConfig::Btrfs { path: pool_dir }, fake.host()).unwrap();
    let store = Store::open(&dir.path().join("meta.redb")).unwrap();
    let layers = fuse_overlay::layers::LayerStore::open(dir.path().join("layers")).unwrap();
    let node = NodeIdentity {
        node_id: "node-1".into(),
        state_dir: dir.path().join("state"),
        ephemeral_dir: dir.path().join("ephemeral"),
        attach_dir: dir.path().join("attach"),
        layers_dir: layers.root().join("layers"),
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
    Fixture {
        _dir: dir,
        fake,
        volumes,
    }
}

fn new_volume(name: &str, kind: &str, bytes: u64) -> NewVolume {
    NewVolume {
        name: name.into(),
        required_bytes: bytes,
        parameters: HashMap::from([("kind".to_string(), kind.to_string())]),
        ..NewVolume::default()
    }
}

fn code(e: Error) -> Code {
    tonic::Status::from(e).code()
}

#[tokio::test]
async fn create_makes_a_volume_and_is_idempotent_by_name() {
    let f = fixture();
    let a = f
        .volumes
        .create(Caller::Orchestrator, new_volume("a", "dir", 8 << 20))
        .await
        .unwrap();
    assert_eq!((a.kind, a.capacity), (VolumeKind::Dir, 8 << 20));
    let again = f
        .volumes
        .create(Caller::Orchestrator, new_volume("a", "dir", 8 << 20))
        .await
        .unwrap();
    assert_eq!(again.id, a.id);
    let other = f
        .volumes
        .create(Caller::Orchestrator, new_volume("a", "dir", 16 << 20))
        .await
        .unwrap_err();
    assert_eq!(code(other), Code::AlreadyExists);
}

#[tokio::test]
async fn create_refuses_bad_parameters_and_unknown_layers_as_invalid() {
    let f = fixture();
    let bad = f
        .volumes
        .create(Caller::Orchestrator, new_volume("a", "floppy", 1 << 20))
        .await
        .unwrap_err();
    assert_eq!(code(bad), Code::InvalidArgument);
    let mut image = new_volume("img", "image", 1 << 20);
    image.parameters.insert(
        volume_core::params::LAYERS.into(),
        "sha256:".to_string() + &"ab".repeat(32),
    );
    let missing = f
        .volumes
        .create(Caller::Orchestrator, image)
        .await
        .unwrap_err();
    assert!(
        matches!(&missing, Error::InvalidArgument(m) if m.contains("not in the layer store")),
        "{missing:?}"
    );
    assert!(
        f.volumes
            .driver()
            .manager
            .list(None, 10)
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn replication_in_mutable_parameters_places_copies_and_without_peers_is_exhausted() {
    let f = fixture();
    let mut v = new_volume("rep", "dir", 1 << 20);
    v.mutable_parameters
        .insert(volume_core::params::REPLICAS.into(), "2".into());
    let e = f.volumes.create(Caller::Orchestrator, v).await.unwrap_err();
    assert!(matches!(e, Error::Peer(_)), "{e:?}");
    assert_eq!(code(e), Code::ResourceExhausted);
    assert!(
        f.volumes
            .driver()
            .manager
            .list(None, 10)
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn create_from_a_snapshot_and_copy_of_a_volume() {
    let f = fixture();
    let src = f
        .volumes
        .create(Caller::Person, new_volume("src", "dir", 4 << 20))
        .await
        .unwrap();
    let snap = f
        .volumes
        .snapshot(Caller::Person, "src", "s1")
        .await
        .unwrap();
    assert_eq!(snap.source_volume_id, src.id);
    let mut restored = new_volume("restored", "dir", 4 << 20);
    restored.source = Some(ContentSource::Snapshot(snap.id.clone()));
    let restored = f
        .volumes
        .create(Caller::Orchestrator, restored)
        .await
        .unwrap();
    assert_eq!(restored.capacity, 4 << 20);
    // A copy takes its source's kind and size; a smaller size cannot hold it.
    let copy = f
        .volumes
        .create_copy(Caller::Person, "copy", CopyOf::Volume("src".into()), 0)
        .await
        .unwrap();
    assert_eq!((copy.kind, copy.capacity), (VolumeKind::Dir, 4 << 20));
    let small = f
        .volumes
        .create_copy(
            Caller::Person,
            "small",
            CopyOf::Snapshot("s1".into()),
            1 << 20,
        )
        .await
        .unwrap_err();
    assert_eq!(code(small), Code::OutOfRange);
}

#[tokio::test]
async fn a_person_names_volumes_an_orchestrator_gives_ids() {
    let f = fixture();
    let a = f
        .volumes
        .create(Caller::Person, new_volume("a", "dir", 1 << 20))
        .await
        .unwrap();
    assert_eq!(f.volumes.get(Caller::Person, "a").await.unwrap().id, a.id);
    assert_eq!(
        f.volumes.get(Caller::Orchestrator, &a.id).await.unwrap().id,
        a.id
    );
    let by_name = f.volumes.get(Caller::Orchestrator, "a").await.unwrap_err();
    assert_eq!(code(by_name), Code::NotFound);
}

#[tokio::test]
async fn delete_is_idempotent_for_an_orchestrator_and_not_found_for_a_person() {
    let f = fixture();
    let a = f
        .volumes
        .create(Caller::Person, new_volume("a", "dir", 1 << 20))
        .await
        .unwrap();
    f.volumes.delete(Caller::Person, "a").await.unwrap();
    assert!(!f.volumes.driver().manager.pool().volume_dir(&a.id).exists());
    f.volumes.delete(Caller::Orchestrator, &a.id).await.unwrap();
    let gone = f.volumes.delete(Caller::Person, "a").await.unwrap_err();
    assert_eq!(code(gone), Code::NotFound);
}

#[tokio::test]
async fn expand_grows_the_volume_and_its_limit() {
    let f = fixture();
    let a = f
        .volumes
        .create(Caller::Person, new_volume("a", "dir", 1 << 20))
        .await
        .unwrap();
    let grown = f
        .volumes
        .expand(Caller::Orchestrator, &a.id, 3 << 20, 0)
        .await
        .unwrap();
    assert_eq!((grown.capacity, grown.volume.capacity), (3 << 20, 3 << 20));
    assert!(
        !grown.node_expansion_required,
        "a directory has no filesystem"
    );
    let dir = f.volumes.driver().manager.pool().volume_dir(&a.id);
    assert_eq!(f.fake.limit_of(&dir), Some(3 << 20));
    let over = f
        .volumes
        .expand(Caller::Person, "a", 8 << 20, 4 << 20)
        .await
        .unwrap_err();
    assert_eq!(code(over), Code::OutOfRange);
}

#[tokio::test]
async fn modify_changes_mutable_parameters() {
    let f = fixture();
    f.volumes
        .create(Caller::Person, new_volume("a", "dir", 1 << 20))
        .await
        .unwrap();
    let rec = f
        .volumes
        .modify(
            Caller::Person,
            "a",
            BTreeMap::from([(volume_core::modify::COMPRESSION.to_string(), "zstd".into())]),
        )
        .await
        .unwrap();
    assert_eq!(
        rec.mutable_parameters
            .get(volume_core::modify::COMPRESSION)
            .map(String::as_str),
        Some("zstd")
    );
    let unknown = f
        .volumes
        .modify(
            Caller::Person,
            "a",
            BTreeMap::from([("colour".to_string(), "blue".into())]),
        )
        .await
        .unwrap_err();
    assert_eq!(code(unknown), Code::InvalidArgument);
}

#[tokio::test]
async fn snapshots_are_taken_and_deleted_by_name_or_id() {
    let f = fixture();
    let a = f
        .volumes
        .create(Caller::Person, new_volume("a", "dir", 1 << 20))
        .await
        .unwrap();
    let s = f
        .volumes
        .snapshot(Caller::Orchestrator, &a.id, "s")
        .await
        .unwrap();
    let missing = f
        .volumes
        .snapshot(Caller::Orchestrator, "a", "t")
        .await
        .unwrap_err();
    assert_eq!(code(missing), Code::NotFound);
    f.volumes
        .delete_snapshot(Caller::Person, "s")
        .await
        .unwrap();
    assert!(f.volumes.driver().manager.get_snapshot(&s.id).is_err());
    f.volumes
        .delete_snapshot(Caller::Orchestrator, &s.id)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_person_waits_out_a_busy_volume_an_orchestrator_does_not() {
    let f = fixture();
    let a = f
        .volumes
        .create(Caller::Person, new_volume("a", "dir", 1 << 20))
        .await
        .unwrap();
    let manager = Arc::clone(&f.volumes.driver().manager);
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let id = a.id.clone();
    let holder = std::thread::spawn(move || {
        let _claim = manager.claim(&id).unwrap();
        held_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    });
    held_rx.recv().unwrap();
    let busy = f
        .volumes
        .snapshot(Caller::Orchestrator, &a.id, "s")
        .await
        .unwrap_err();
    assert_eq!(code(busy), Code::Aborted);
    f.volumes
        .snapshot(Caller::Person, "a", "s")
        .await
        .expect("a person's call waits for the claim to end");
    holder.join().unwrap();
}

#[tokio::test]
async fn a_volume_is_staged_published_and_taken_down_on_this_node() {
    use volume_core::node::{PublishOptions, StageOptions};
    let f = fixture();
    let v = f
        .volumes
        .create(Caller::Orchestrator, new_volume("l", "loop", 64 << 20))
        .await
        .unwrap();
    let staging = f._dir.path().join("staging");
    let target = f._dir.path().join("pod/vol");
    f.volumes
        .stage(&v.id, staging.clone(), StageOptions::default())
        .await
        .unwrap();
    f.volumes
        .publish(
            &v.id,
            staging.clone(),
            target.clone(),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    let rec = f.volumes.get(Caller::Orchestrator, &v.id).await.unwrap();
    assert!(rec.staging.is_some() && rec.publications.len() == 1);
    assert_eq!(f.fake.attached().len(), 1, "the image is on a loop device");
    let (usage, health) = f.volumes.stats(&v.id, target.clone()).await.unwrap();
    assert!(
        usage.total_bytes > 0 && !health.abnormal,
        "{usage:?} {health:?}"
    );
    // Grown by the controller, then on the node where it is staged.
    let grown = f
        .volumes
        .expand(Caller::Orchestrator, &v.id, 128 << 20, 0)
        .await
        .unwrap();
    assert!(grown.node_expansion_required);
    assert_eq!(
        f.volumes
            .expand_on_node(&v.id, staging.clone())
            .await
            .unwrap(),
        128 << 20
    );
    // A person's expansion finishes on this node by itself.
    let by_person = f
        .volumes
        .expand(Caller::Person, "l", 192 << 20, 0)
        .await
        .unwrap();
    assert!(!by_person.node_expansion_required);
    assert_eq!(by_person.volume.filesystem_bytes(), 192 << 20);
    f.volumes.unpublish(&v.id, target).await.unwrap();
    f.volumes.unstage(&v.id, staging).await.unwrap();
    let rec = f.volumes.get(Caller::Orchestrator, &v.id).await.unwrap();
    assert!(rec.staging.is_none() && rec.publications.is_empty());
    assert!(f.fake.attached().is_empty());
}

#[tokio::test]
async fn an_inline_volume_lives_from_publish_to_unpublish_and_its_layers_must_exist() {
    use volume_core::ephemeral::EPHEMERAL_KEY;
    use volume_core::node::PublishOptions;
    let f = fixture();
    let target = f._dir.path().join("pod/inline");
    let ctx = HashMap::from([
        (EPHEMERAL_KEY.to_string(), "true".to_string()),
        ("kind".to_string(), "dir".to_string()),
        ("size".to_string(), "16MiB".to_string()),
    ]);
    let rec = f
        .volumes
        .publish_ephemeral(
            "csi-pod-1",
            target.clone(),
            ctx.clone(),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    assert!(rec.ephemeral);
    f.volumes.unpublish("csi-pod-1", target).await.unwrap();
    assert!(
        f.volumes
            .driver()
            .manager
            .list(None, 10)
            .unwrap()
            .is_empty(),
        "the inline volume goes with its last publication"
    );
    let mut image = ctx;
    image.insert("kind".into(), "image".into());
    image.insert(
        volume_core::params::LAYERS.into(),
        format!("sha256:{}", "ab".repeat(32)),
    );
    let e = f
        .volumes
        .publish_ephemeral(
            "csi-pod-2",
            f._dir.path().join("pod/img"),
            image,
            PublishOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(e), Code::InvalidArgument);
}

#[tokio::test]
async fn volumes_are_read_with_their_health_and_layout() {
    let f = fixture();
    for name in ["b", "a"] {
        f.volumes
            .create(Caller::Person, new_volume(name, "dir", 1 << 20))
            .await
            .unwrap();
    }
    let all = f
        .volumes
        .list(Caller::Orchestrator, None, usize::MAX)
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|v| !v.health.abnormal));
    assert!(all[0].volume.id < all[1].volume.id, "a page is in id order");
    let page = f
        .volumes
        .list(Caller::Orchestrator, Some(all[0].volume.id.clone()), 10)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].volume.id, all[1].volume.id);
    // Its data gone: the view says so.
    let a = f.volumes.show(Caller::Person, "a").await.unwrap();
    assert_eq!(a.layout, volume_core::model::Layout::BtrfsNocow);
    std::fs::remove_dir_all(f.volumes.driver().manager.pool().volume_dir(&a.volume.id)).unwrap();
    let gone = f.volumes.show(Caller::Person, "a").await.unwrap();
    assert!(gone.health.abnormal, "{:?}", gone.health);
    assert!(
        f.volumes
            .capacity(volume_core::VolumeParams::parse(&HashMap::new(), None).unwrap())
            .await
            .unwrap()
            > 0
    );
    assert_eq!(f.volumes.pool_problem().await.unwrap(), None);
}

#[tokio::test]
async fn a_volume_is_published_to_nodes_up_to_the_limit() {
    let f = fixture();
    let mut ids = Vec::new();
    for name in ["a", "b"] {
        let v = f
            .volumes
            .create(Caller::Orchestrator, new_volume(name, "dir", 1 << 20))
            .await
            .unwrap();
        ids.push(v.id);
    }
    f.volumes
        .attach_to_node(&ids[0], "node-1", false, 1)
        .await
        .unwrap();
    let full = f
        .volumes
        .attach_to_node(&ids[1], "node-1", false, 1)
        .await
        .unwrap_err();
    assert_eq!(code(full), Code::ResourceExhausted);
    f.volumes.detach_from_node(&ids[0], "node-1").await.unwrap();
    f.volumes
        .attach_to_node(&ids[1], "node-1", false, 1)
        .await
        .unwrap();
    let bad_pid = f
        .volumes
        .attach_into("a", 0, f._dir.path().join("t"), false)
        .await
        .unwrap_err();
    assert_eq!(code(bad_pid), Code::InvalidArgument);
}

#[tokio::test]
async fn group_snapshots_are_taken_read_and_deleted() {
    let f = fixture();
    let mut ids = Vec::new();
    for name in ["a", "b"] {
        let v = f
            .volumes
            .create(Caller::Orchestrator, new_volume(name, "dir", 1 << 20))
            .await
            .unwrap();
        ids.push(v.id);
    }
    let (group, members) = f.volumes.snapshot_group("g", ids.clone()).await.unwrap();
    assert_eq!(members.len(), 2);
    let (again, _) = f.volumes.get_group(&group.id).await.unwrap();
    assert_eq!(again.id, group.id);
    f.volumes.delete_group(&group.id, Vec::new()).await.unwrap();
    let gone = f.volumes.get_group(&group.id).await.unwrap_err();
    assert_eq!(code(gone), Code::NotFound);
}

/// A one-file layer tarball.
fn layer_tar(content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append_data(&mut h, "etc/motd", content).unwrap();
    b.into_inner().unwrap()
}

#[tokio::test]
async fn layers_are_imported_listed_and_removed_only_when_unused() {
    let f = fixture();
    let layer = f
        .volumes
        .import_tar(std::io::Cursor::new(layer_tar(b"hello\n")))
        .await
        .unwrap();
    assert!(!layer.deduplicated);
    let again = f
        .volumes
        .import_tar(std::io::Cursor::new(layer_tar(b"hello\n")))
        .await
        .unwrap();
    assert!(again.deduplicated);
    assert_eq!(f.volumes.layers().await.unwrap().len(), 1);
    let key = layer.info.key.to_string();
    let mut image = new_volume("img", "image", 1 << 20);
    image.parameters.insert(
        volume_core::params::LAYERS.into(),
        layer.info.diff_id.clone(),
    );
    let vol = f.volumes.create(Caller::Person, image).await.unwrap();
    let used = f.volumes.remove_layer(&key).await.unwrap_err();
    assert!(
        matches!(&used, Error::FailedPrecondition(m) if m.contains("img")),
        "{used:?}"
    );
    f.volumes.delete(Caller::Person, &vol.id).await.unwrap();
    f.volumes.remove_layer(&key).await.unwrap();
    assert!(f.volumes.layers().await.unwrap().is_empty());
    let missing = f.volumes.remove_layer(&key).await.unwrap_err();
    assert_eq!(code(missing), Code::NotFound);
    let relative = f.volumes.import_oci_layout("oci".into()).await.unwrap_err();
    assert_eq!(code(relative), Code::InvalidArgument);
    let nowhere = f
        .volumes
        .import_oci_layout(f._dir.path().join("no-such-layout"))
        .await
        .unwrap_err();
    assert_eq!(code(nowhere), Code::NotFound);
}

#[tokio::test]
async fn replicas_this_node_does_not_hold_are_not_found() {
    let f = fixture();
    assert!(f.volumes.replicas().await.unwrap().is_empty());
    let promote = f.volumes.promote("nothing").await.unwrap_err();
    assert_eq!(code(promote), Code::NotFound);
    let remove = f.volumes.remove_replica("nothing").await.unwrap_err();
    assert_eq!(code(remove), Code::NotFound);
}
