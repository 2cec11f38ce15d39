//! Reading volumes, attaching them, group snapshots, the layer store, replicas, peers.

use super::*;

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
        .attach_into("a", 0, f.dir.path().join("t"), false)
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
        .import_oci_layout(f.dir.path().join("no-such-layout"))
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

#[tokio::test]
async fn a_peer_sees_free_space_and_holdings_and_cannot_resume_nothing() {
    use volume_core::replication::{Holding, IncomingHeader, StreamFormat};
    let f = fixture();
    assert!(f.volumes.available().await.unwrap() > 0);
    let id = format!("v-{}", "1".repeat(32));
    assert!(matches!(
        f.volumes.holding(&id).await.unwrap(),
        Holding::Nothing
    ));
    assert!(!f.volumes.drop_copy(&id, 1).await.unwrap());
    let header = IncomingHeader {
        volume_id: id,
        name: "r".into(),
        kind: VolumeKind::Dir,
        fs: None,
        capacity: 1 << 20,
        snapshot: "1-g1".into(),
        parent: None,
        source_node_id: "node-2".into(),
        generation: 1,
        taken_at: 1,
        spec: None,
        format: StreamFormat::Btrfs,
    };
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let e = f.volumes.receive(header, 4096, rx).await.unwrap_err();
    assert_eq!(code(e), Code::FailedPrecondition);
}

#[tokio::test]
async fn detaching_what_is_not_attached_into_a_container_is_refused() {
    let f = fixture();
    made(&f, "a", "dir", 1 << 20).await;
    let e = f
        .volumes
        .detach_from("a", 0, f.dir.path().join("t"))
        .await
        .unwrap_err();
    // Not attached there: nothing to undo, and the caller is told so.
    assert_eq!(code(e), Code::FailedPrecondition);
    let missing = f
        .volumes
        .detach_from("nothing", 1, f.dir.path().join("t"))
        .await
        .unwrap_err();
    assert_eq!(code(missing), Code::NotFound);
}
